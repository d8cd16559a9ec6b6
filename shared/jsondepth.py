"""How deep JSON text nests, measured without parsing it (a parser recurses, and can be made to overflow)."""

from __future__ import annotations

import re

_STRING_RE = re.compile(rb'"(?:[^"\\]|\\.)*"', re.DOTALL)
_IDENTITY = bytes(range(256))
_NOT_BRACKETS = bytes(set(range(256)) - set(b"[]{}"))


def json_depth(raw: bytes) -> int:
    """How deep the arrays and objects of JSON text nest, without parsing it (linear time).

    Brackets inside strings do not count; for text that is not JSON the figure is an upper bound.
    """
    brackets = _STRING_RE.sub(b"", raw).translate(_IDENTITY, _NOT_BRACKETS)
    depth = deepest = 0
    # Scan in slices so a long run of one kind is handled by counting, not a Python step per byte.
    for run in re.finditer(rb"[\[{]+|[\]}]+", brackets):
        piece = run.group()
        if piece[0] in b"[{":
            depth += len(piece)
            deepest = max(deepest, depth)
        else:
            depth -= len(piece)
    return deepest
