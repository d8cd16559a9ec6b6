"""Reference consumer: from the downstream queue into PostgreSQL, each row once, each drop whole.

Used by the ``consume_rows`` queue trigger (``functions/consume.py``) and by ``viva-relay consume``.
See ``docs/consumer.md``.
"""

from __future__ import annotations

from .contract import Complete, Failed, Parsed, Poison, Rows, parse
from .runner import Consumer, DrainReport, connect, drain
from .schema import SCHEMA, migrate
from .store import Applied, Published

__all__ = [
    "SCHEMA",
    "Applied",
    "Complete",
    "Consumer",
    "DrainReport",
    "Failed",
    "Parsed",
    "Poison",
    "Published",
    "Rows",
    "connect",
    "drain",
    "migrate",
    "parse",
]
