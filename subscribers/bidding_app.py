"""The ad-bidding subscriber's entry point: ``faust -A subscribers.bidding_app worker`` (or
``clicksignals bidder``).

Faust's ``-A`` needs a module with an ``app``; this is that module and nothing more: it reads
the settings from the environment and builds the bidder once with
:func:`subscribers.bidder.create_bidder`, where the wiring and the agent's work are.
"""

from __future__ import annotations

from settings import load_settings
from subscribers.bidder import create_bidder

bidder = create_bidder(load_settings())
app = bidder.app
