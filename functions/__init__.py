"""Azure Functions blueprints: one per trigger, each a thin shell over ``shared``."""
