"""Go's `strconv` parsing rules, where Istio reads user strings with them."""

from __future__ import annotations

_TRUE = frozenset({"1", "t", "T", "TRUE", "true", "True"})
_FALSE = frozenset({"0", "f", "F", "FALSE", "false", "False"})


def parse_bool(value: str) -> bool | None:
    """`strconv.ParseBool`: the accepted spellings of true and false; None otherwise."""
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    return None
