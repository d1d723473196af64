"""Parsing JSON that a client sent, with its nesting bounded first.

``json.loads`` recurses once per level of nesting, so ``"[" * 100000`` raises
RecursionError (not ValueError) deep inside the parser: a handler that only
expected ValueError answers 500 and the client gets no error frame. Every place
that parses a client's bytes goes through ``loads`` here, which measures the
nesting in one linear pass (strings skipped) before parsing.
"""

from __future__ import annotations

import json
import re
from typing import Any

MAX_NESTING = 32
"""Deeper than any message of the protocol (the deepest is 3), far below the
parser's recursion limit."""

_STRING = re.compile(r'"(?:[^"\\]|\\.)*"', re.DOTALL)
_NOT_A_BRACKET = re.compile(r"[^\[\]{}]+")


class TooDeep(ValueError):
    """The document nests arrays and objects deeper than allowed."""


def nesting(text: str) -> int:
    """How deep arrays and objects nest in ``text`` (brackets inside strings ignored)."""
    brackets = _NOT_A_BRACKET.sub("", _STRING.sub("", text))
    depth = deepest = 0
    for bracket in brackets:
        if bracket in "[{":
            depth += 1
            deepest = max(deepest, depth)
        else:
            depth -= 1
    return deepest


def loads(data: str | bytes | bytearray, *, max_nesting: int = MAX_NESTING) -> Any:
    """``json.loads`` for a client's bytes; raises ValueError (TooDeep, or the
    parser's JSONDecodeError, or UnicodeDecodeError) for anything it refuses."""
    text = data.decode("utf-8") if isinstance(data, bytes | bytearray) else data
    if nesting(text) > max_nesting:
        raise TooDeep(f"JSON nested deeper than {max_nesting} levels")
    return json.loads(text)
