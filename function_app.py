"""Viva Relay: the Azure Functions app (Python v2 programming model).

Each trigger lives in its own blueprint under ``functions/``; all logic is in ``shared/``.
"""

from __future__ import annotations

import azure.functions as func

from functions import cleanup, consume, health, ingest, recheck, schedule

BLUEPRINTS = (ingest.bp, recheck.bp, schedule.bp, cleanup.bp, health.bp)


def create_app() -> func.FunctionApp:
    """A FunctionApp with every blueprint registered (the consumer only when its database is set)."""
    application = func.FunctionApp()
    for blueprint in BLUEPRINTS + consume.blueprints():
        application.register_functions(blueprint)
    return application


app = create_app()
