"""Kubernetes label selectors, pure: parse the text form and match label sets.

Grammar (as kubectl accepts it), requirements joined by commas, all must hold:
    key=value  key==value  key!=value  key in (v1,v2)  key notin (v1)  key  !key
A `!=` or `notin` requirement also matches objects that do not have the key, as in Kubernetes.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any


class SelectorError(ValueError):
    pass


class Op(enum.StrEnum):
    EQ = "="
    NEQ = "!="
    IN = "in"
    NOTIN = "notin"
    EXISTS = "exists"
    NOT_EXISTS = "!"


@dataclass(frozen=True)
class Requirement:
    key: str
    op: Op
    values: frozenset[str] = frozenset()

    def matches(self, labels: Mapping[str, str]) -> bool:
        has = self.key in labels
        match self.op:
            case Op.EQ | Op.IN:
                return has and labels[self.key] in self.values
            case Op.NEQ | Op.NOTIN:
                return not has or labels[self.key] not in self.values
            case Op.EXISTS:
                return has
            case Op.NOT_EXISTS:
                return not has
        raise AssertionError(self.op)


@dataclass(frozen=True)
class Selector:
    requirements: tuple[Requirement, ...] = ()

    def matches(self, labels: Mapping[str, str] | None) -> bool:
        labels = labels or {}
        return all(r.matches(labels) for r in self.requirements)

    @property
    def empty(self) -> bool:
        return not self.requirements


_KEY = r"(?:[a-z0-9A-Z](?:[-a-z0-9A-Z_.]*[a-z0-9A-Z])?/)?[a-zA-Z0-9](?:[-a-zA-Z0-9_.]*[a-zA-Z0-9])?"
_VALUE = r"(?:[a-zA-Z0-9](?:[-a-zA-Z0-9_.]*[a-zA-Z0-9])?)?"
_TOKEN = re.compile(
    rf"\s*(?:(?P<set>(?P<skey>{_KEY})\s+(?P<sop>in|notin)\s*\((?P<vals>[^)]*)\))"
    rf"|(?P<cmp>(?P<ckey>{_KEY})\s*(?P<cop>==|=|!=)\s*(?P<cval>{_VALUE}))"
    rf"|(?P<nex>!\s*(?P<nkey>{_KEY}))"
    rf"|(?P<ex>(?P<ekey>{_KEY})))\s*(?:,|$)"
)
_VALUE_RE = re.compile(rf"^{_VALUE}$")


def parse_selector(text: str) -> Selector:
    """Parse kubectl's selector syntax; SelectorError names the position of a mistake."""
    reqs: list[Requirement] = []
    pos = 0
    text = text.strip()
    if text.endswith(","):
        raise SelectorError(f"selector {text!r} ends with ','; remove it or add a requirement")
    while pos < len(text):
        m = _TOKEN.match(text, pos)
        if m is None or m.end() == pos:
            raise SelectorError(
                f"cannot parse selector at position {pos + 1} ({text[pos : pos + 20]!r}); expected "
                "key=value, key!=value, key in (a,b), key notin (a), key or !key"
            )
        if m["set"]:
            vals = [v.strip() for v in m["vals"].split(",")]
            bad = [v for v in vals if not _VALUE_RE.match(v)]
            if bad or not vals or vals == [""]:
                raise SelectorError(
                    f"{m['skey']} {m['sop']} (...): invalid value list {m['vals']!r}"
                )
            reqs.append(Requirement(m["skey"], Op(m["sop"]), frozenset(vals)))
        elif m["cmp"]:
            op = Op.NEQ if m["cop"] == "!=" else Op.EQ
            reqs.append(Requirement(m["ckey"], op, frozenset([m["cval"]])))
        elif m["nex"]:
            reqs.append(Requirement(m["nkey"], Op.NOT_EXISTS))
        else:
            reqs.append(Requirement(m["ekey"], Op.EXISTS))
        pos = m.end()
    return Selector(tuple(reqs))


def from_match_labels(match_labels: Mapping[str, str] | None) -> Selector:
    return Selector(
        tuple(
            Requirement(k, Op.EQ, frozenset([v])) for k, v in sorted((match_labels or {}).items())
        )
    )


_EXPR_OPS = {"In": Op.IN, "NotIn": Op.NOTIN, "Exists": Op.EXISTS, "DoesNotExist": Op.NOT_EXISTS}


def from_label_selector(
    match_labels: Mapping[str, str] | None = None,
    match_expressions: Iterable[Mapping[str, Any]] | None = None,
) -> Selector:
    """A metav1.LabelSelector (matchLabels + matchExpressions)."""
    reqs = list(from_match_labels(match_labels).requirements)
    for i, expr in enumerate(match_expressions or ()):
        op = _EXPR_OPS.get(str(expr.get("operator")))
        if op is None:
            raise SelectorError(
                f"matchExpressions[{i}].operator: expected In, NotIn, Exists or DoesNotExist, "
                f"got {expr.get('operator')!r}"
            )
        values = frozenset(str(v) for v in expr.get("values") or ())
        if op in (Op.IN, Op.NOTIN) and not values:
            raise SelectorError(f"matchExpressions[{i}].values: required for {expr['operator']}")
        reqs.append(Requirement(str(expr.get("key")), op, values))
    return Selector(tuple(reqs))
