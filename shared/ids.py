"""Identifier rules shared by every module: one home for "is this a tenant/application GUID"."""

from __future__ import annotations

import re
from typing import Final

#: A GUID in its canonical 8-4-4-4-12 hex form (either case).
GUID_PATTERN: Final = r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}"
#: Anchored at both ends with ``\Z`` (not ``$``, which also accepts a trailing newline), so ``.match`` is whole.
GUID_RE: Final = re.compile(rf"^{GUID_PATTERN}\Z")


def is_guid(text: str) -> bool:
    """True when ``text`` is exactly one GUID (no surrounding spaces, braces or trailing newline)."""
    return re.fullmatch(GUID_PATTERN, text) is not None
