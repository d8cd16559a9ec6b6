"""Command groups of the CLI: one module each (drop, keys, runs, drops, tenants)."""
