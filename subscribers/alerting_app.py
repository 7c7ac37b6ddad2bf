"""The churn-alerting subscriber's entry point: ``faust -A subscribers.alerting_app worker``
(or ``clicksignals alerter``).

Faust's ``-A`` needs a module with an ``app``; this is that module and nothing more: it reads
the settings from the environment and builds the alerter once with
:func:`subscribers.alerter.create_alerter`, where the wiring and the agent's work are.
"""

from __future__ import annotations

from settings import load_settings
from subscribers.alerter import create_alerter

alerter = create_alerter(load_settings())
app = alerter.app
