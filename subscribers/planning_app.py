"""The stock planner's entry point: ``faust -A subscribers.planning_app worker`` (or
``clicksignals planner``).

Faust's ``-A`` needs a module with an ``app``; this is that module and nothing more: it reads
the settings from the environment and builds the planner once with
:func:`subscribers.planner.create_planner`, where the wiring and the agent's work are.
"""

from __future__ import annotations

from settings import load_settings
from subscribers.planner import create_planner

planner = create_planner(load_settings())
app = planner.app
