"""Viva Relay: the Azure Functions app (Python v2 programming model).

Each trigger lives in its own blueprint under ``functions/``; all logic is in ``shared/``.
"""

from __future__ import annotations

import azure.functions as func

from functions import cleanup, health, ingest, recheck, schedule

BLUEPRINTS = (ingest.bp, recheck.bp, schedule.bp, cleanup.bp, health.bp)


def create_app() -> func.FunctionApp:
    """A FunctionApp with every blueprint registered (tests build their own)."""
    application = func.FunctionApp()
    for blueprint in BLUEPRINTS:
        application.register_functions(blueprint)
    return application


app = create_app()
