"""kubectl's JSONPath dialect (`-o jsonpath=`, `-o custom-columns=`, `--sort-by`).

A template is text with `{...}` expressions:

- paths: `{.kind}`, `{$.kind}`, `{['kind']}`, `{..name}` (recursive descent), `{.items[*]}`,
  `{.items[0]}`, `{.items[-1]}`, `{.items[0:2]}`, `{.items[::2]}`, `{.*}`, unions
  `{.items[*]['metadata.name', 'status.capacity']}` (in brackets a `.` separates fields,
  `\\.` is a literal dot, as in `{['name\\.type']}`), filters `[?(@.type=="x")]` with
  `== != < > <= >=` or a bare `[?(@.field)]` (present);
- `{@}` the current object; `{"\\t"}` a quoted string with escapes;
- `{range <path>}...{end}`, inside which paths are relative to each item.

Results of one expression are separated by a space; strings print as they are, numbers and
booleans as JSON would spell them, maps and lists as compact JSON with sorted keys (what
kubectl 1.19+ prints; its documentation still shows Go's older `map[cpu:4]` form). Missing
fields print nothing, as kubectl (which allows missing keys for `get -o jsonpath`).

`compile(template)` parses once (raising `JSONPathError` with the position of a mistake);
`Template.render(data)` evaluates. Pure: no I/O.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Union


class JSONPathError(ValueError):
    """A template that cannot be parsed or evaluated; the message says where."""


# --- syntax tree ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Field:
    name: str  # "*" for every value


@dataclass(frozen=True)
class Recursive:
    step: Step  # applied to every descendant (and the value itself)


@dataclass(frozen=True)
class Index:
    index: int


@dataclass(frozen=True)
class Slice:
    start: int | None
    stop: int | None
    step: int | None


@dataclass(frozen=True)
class Union_:
    paths: tuple[tuple[Step, ...], ...]  # each alternative is a relative path


@dataclass(frozen=True)
class Filter:
    left: Path
    op: str | None  # None: the left path exists
    right: Path | Literal | None


@dataclass(frozen=True)
class Literal:
    value: Any


Step = Union[Field, Recursive, Index, Slice, Union_, Filter]  # noqa: UP007 (forward refs)


@dataclass(frozen=True)
class Path:
    root: str  # "$" (the whole input) or "@" (the current object)
    steps: tuple[Step, ...]


@dataclass(frozen=True)
class Text:
    text: str


@dataclass(frozen=True)
class Range:
    path: Path
    body: tuple[Node, ...]


Node = Union[Text, Path, Literal, Range]  # noqa: UP007


# --- parsing ---------------------------------------------------------------------------------

_NAME = re.compile(r"(?:\\.|[A-Za-z0-9_\-/$?])+")
_NUMBER = re.compile(r"-?[0-9]+(?:\.[0-9]+)?(?:[eE][+-]?[0-9]+)?")
_ESCAPES = {"t": "\t", "n": "\n", "r": "\r", '"': '"', "\\": "\\", "'": "'", "0": "\0"}


class _Parser:
    def __init__(self, text: str, template: str, offset: int) -> None:
        self.s = text
        self.i = 0
        self.template = template
        self.offset = offset

    def error(self, message: str) -> JSONPathError:
        return JSONPathError(
            f"jsonpath {self.template!r}: {message} at position {self.offset + self.i + 1}"
        )

    def peek(self, n: int = 1) -> str:
        return self.s[self.i : self.i + n]

    def eat(self, token: str) -> bool:
        if self.s.startswith(token, self.i):
            self.i += len(token)
            return True
        return False

    def skip_space(self) -> None:
        while self.i < len(self.s) and self.s[self.i] == " ":
            self.i += 1

    def at_end(self) -> bool:
        return self.i >= len(self.s)

    def quoted(self) -> str:
        quote = self.s[self.i]
        self.i += 1
        out = []
        while self.i < len(self.s):
            c = self.s[self.i]
            if c == "\\" and self.i + 1 < len(self.s):
                nxt = self.s[self.i + 1]
                out.append(_ESCAPES.get(nxt, "\\" + nxt))
                self.i += 2
                continue
            if c == quote:
                self.i += 1
                return "".join(out)
            out.append(c)
            self.i += 1
        raise self.error(f"unterminated string (missing {quote})")

    def path(self) -> Path:
        root = "@"
        if self.eat("$"):
            root = "$"
        elif self.eat("@"):
            root = "@"
        steps: list[Step] = []
        while not self.at_end():
            c = self.peek()
            if self.eat(".."):
                step = self.dot_step(recursive=True)
                steps.append(Recursive(step))
            elif c == ".":
                self.i += 1
                if self.at_end() or self.peek() in " )=!<>,]":
                    continue  # `{.}`: the current object
                steps.append(self.dot_step(recursive=False))
            elif c == "[":
                steps.append(self.bracket())
            else:
                break
        return Path(root, tuple(steps))

    def dot_step(self, *, recursive: bool) -> Step:
        if self.peek() == "[":
            return self.bracket()
        if self.eat("*"):
            return Field("*")
        m = _NAME.match(self.s, self.i)
        if not m:
            raise self.error("expected a field name after '.'")
        self.i = m.end()
        return Field(re.sub(r"\\(.)", r"\1", m.group()))

    def bracket(self) -> Step:
        start = self.i
        self.i += 1  # [
        self.skip_space()
        if self.eat("?("):
            flt = self.filter()
            self.skip_space()
            if not self.eat(")"):
                raise self.error("expected ')' to close the filter")
            self.skip_space()
            if not self.eat("]"):
                raise self.error("expected ']' after the filter")
            return flt
        if self.eat("*"):
            self.skip_space()
            if not self.eat("]"):
                raise self.error("expected ']' after '*'")
            return Field("*")
        if self.peek() in ("'", '"'):
            alternatives: list[tuple[Step, ...]] = []
            while True:
                self.skip_space()
                if self.peek() not in ("'", '"'):
                    raise self.error("expected a quoted field name")
                key = self.quoted()
                parts = re.split(r"(?<!\\)\.", key)
                alternatives.append(tuple(Field(p.replace("\\.", ".")) for p in parts if p))
                self.skip_space()
                if self.eat(","):
                    continue
                if self.eat("]"):
                    break
                raise self.error("expected ',' or ']' in a bracketed field list")
            if len(alternatives) == 1 and len(alternatives[0]) == 1:
                return alternatives[0][0]
            return Union_(tuple(alternatives))
        end = self.s.find("]", self.i)
        if end < 0:
            self.i = start
            raise self.error("unclosed '['")
        body = self.s[self.i : end].replace(" ", "")
        self.i = end + 1
        if ":" in body:
            parts = body.split(":")
            if len(parts) > 3:
                raise self.error(f"bad slice [{body}]")
            try:
                nums = [int(p) if p else None for p in parts] + [None] * (3 - len(parts))
            except ValueError:
                raise self.error(f"bad slice [{body}]") from None
            if nums[2] == 0:
                raise self.error("slice step must not be 0")
            return Slice(nums[0], nums[1], nums[2])
        try:
            indexes = [int(p) for p in body.split(",")]
        except ValueError:
            raise self.error(
                f"expected an index, slice, '*', filter or quoted name in [{body}]"
            ) from None
        if len(indexes) == 1:
            return Index(indexes[0])
        return Union_(tuple((Index(n),) for n in indexes))

    def operand(self) -> Path | Literal:
        self.skip_space()
        c = self.peek()
        if c in ("'", '"'):
            return Literal(self.quoted())
        if c in ("@", "$", "."):
            return self.path()
        m = _NUMBER.match(self.s, self.i)
        if m:
            self.i = m.end()
            text = m.group()
            return Literal(float(text) if any(ch in text for ch in ".eE") else int(text))
        for word, value in (("true", True), ("false", False), ("null", None)):
            if self.eat(word):
                return Literal(value)
        raise self.error("expected a value (a quoted string, number, true/false or @.path)")

    def filter(self) -> Filter:
        self.skip_space()
        left = self.operand()
        if not isinstance(left, Path):
            raise self.error("a filter starts with @.field")
        self.skip_space()
        for op in ("==", "!=", "<=", ">=", "<", ">"):
            if self.eat(op):
                return Filter(left, op, self.operand())
        return Filter(left, None, None)


def _split_template(template: str) -> Iterator[tuple[str, str, int]]:
    """("text" | "expr", content, offset) pieces; braces inside quotes do not count."""
    i = 0
    while i < len(template):
        start = template.find("{", i)
        if start < 0:
            yield "text", template[i:], i
            return
        if start > i:
            yield "text", template[i:start], i
        j = start + 1
        quote = ""
        while j < len(template):
            c = template[j]
            if quote:
                if c == "\\":
                    j += 2
                    continue
                if c == quote:
                    quote = ""
            elif c in ("'", '"'):
                quote = c
            elif c == "}":
                break
            j += 1
        if j >= len(template):
            raise JSONPathError(f"jsonpath {template!r}: unclosed '{{' at position {start + 1}")
        yield "expr", template[start + 1 : j], start + 1
        i = j + 1


def compile(template: str) -> Template:
    """Parse a kubectl JSONPath template."""
    try:
        return _compile(template)
    except RecursionError:
        raise JSONPathError(
            f"jsonpath: template nested too deeply ({len(template)} characters)"
        ) from None


def _compile(template: str) -> Template:
    stack: list[list[Node]] = [[]]
    ranges: list[Path] = []
    for what, content, offset in _split_template(template):
        if what == "text":
            stack[-1].append(Text(content))
            continue
        body = content.strip()
        if body == "end":
            if not ranges:
                raise JSONPathError(f"jsonpath {template!r}: {{end}} without {{range}}")
            nodes = stack.pop()
            stack[-1].append(Range(ranges.pop(), tuple(nodes)))
            continue
        if body.startswith("range ") or body.startswith("range\t"):
            parser = _Parser(body[6:].strip(), template, offset)
            path = parser.path()
            if not parser.at_end():
                raise parser.error("unexpected text after the range path")
            ranges.append(path)
            stack.append([])
            continue
        parser = _Parser(body, template, offset)
        if body[:1] in ("'", '"'):
            node: Node = Literal(parser.quoted())
        else:
            node = parser.path()
        parser.skip_space()
        if not parser.at_end():
            raise parser.error(f"unexpected {parser.s[parser.i :]!r}")
        stack[-1].append(node)
    if ranges:
        raise JSONPathError(f"jsonpath {template!r}: {{range}} without {{end}}")
    return Template(template, tuple(stack[0]))


def relaxed(expression: str) -> str:
    """kubectl's relaxed form for custom-columns and --sort-by: `.a.b`, `a.b` and `{.a.b}`
    all mean `{.a.b}`."""
    expr = expression.strip()
    if expr.startswith("{") and expr.endswith("}"):
        return expr
    if not expr.startswith((".", "$", "@", "[")):
        expr = "." + expr
    return "{" + expr + "}"


# --- evaluation ------------------------------------------------------------------------------


def _children(value: Any) -> list[Any]:
    if isinstance(value, dict):
        return [value[k] for k in sorted(value)]
    if isinstance(value, list):
        return list(value)
    return []


def _descendants(value: Any) -> Iterator[Any]:
    yield value
    for child in _children(value):
        yield from _descendants(child)


def _step(values: list[Any], step: Step, root: Any) -> list[Any]:
    out: list[Any] = []
    if isinstance(step, Union_):  # each alternative over all values, in turn (as kubectl)
        for alternative in step.paths:
            current = values
            for sub in alternative:
                current = _step(current, sub, root)
            out += current
        return out
    for value in values:
        if isinstance(step, Field):
            if step.name == "*":
                out += _children(value)
            elif isinstance(value, dict) and step.name in value:
                out.append(value[step.name])
        elif isinstance(step, Recursive):
            for d in _descendants(value):
                out += _step([d], step.step, root)
        elif isinstance(step, Index):
            if isinstance(value, list):
                n = step.index if step.index >= 0 else len(value) + step.index
                if 0 <= n < len(value):
                    out.append(value[n])
        elif isinstance(step, Slice):
            if isinstance(value, list):
                out += value[step.start : step.stop : step.step]
        elif isinstance(step, Filter):
            candidates = value if isinstance(value, list) else _children(value)
            out += [c for c in candidates if _matches(step, c, root)]
    return out


def _eval_path(path: Path, current: Any, root: Any) -> list[Any]:
    values = [root if path.root == "$" else current]
    for step in path.steps:
        values = _step(values, step, root)
    return values


def _compare(a: Any, op: str, b: Any) -> bool:
    if op == "==":
        return bool(a == b)
    if op == "!=":
        return bool(a != b)
    numeric = (int, float)
    if isinstance(a, bool) or isinstance(b, bool):
        return False
    if not (isinstance(a, numeric) and isinstance(b, numeric)) and not (
        isinstance(a, str) and isinstance(b, str)
    ):
        return False
    x: Any = a
    y: Any = b
    if op == "<":
        return bool(x < y)
    if op == ">":
        return bool(x > y)
    if op == "<=":
        return bool(x <= y)
    return bool(x >= y)


def _matches(flt: Filter, item: Any, root: Any) -> bool:
    lefts = _eval_path(flt.left, item, root)
    if flt.op is None:
        return bool(lefts)
    if isinstance(flt.right, Literal):
        rights = [flt.right.value]
    else:
        assert flt.right is not None
        rights = _eval_path(flt.right, item, root)
    return any(_compare(a, flt.op, b) for a in lefts for b in rights)


def to_text(value: Any) -> str:
    """How kubectl prints one result."""
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    if value is None:
        return "<nil>"
    if isinstance(value, dict | list):
        return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return str(value)


@dataclass(frozen=True)
class Template:
    source: str
    nodes: tuple[Node, ...]

    def results(self, data: Any) -> list[list[Any]]:
        """The values of each top-level expression (text nodes left out)."""
        return [_eval_path(node, data, data) for node in self.nodes if isinstance(node, Path)]

    def render(self, data: Any) -> str:
        out: list[str] = []
        self._render(self.nodes, data, data, out)
        return "".join(out)

    def _render(self, nodes: tuple[Node, ...], current: Any, root: Any, out: list[str]) -> None:
        for node in nodes:
            if isinstance(node, Text):
                out.append(node.text)
            elif isinstance(node, Literal):
                out.append(to_text(node.value))
            elif isinstance(node, Path):
                out.append(" ".join(to_text(v) for v in _eval_path(node, current, root)))
            else:
                items = _eval_path(node.path, current, root)
                if len(items) == 1 and isinstance(items[0], list):
                    items = items[0]  # {range .items} iterates the list, as {range .items[*]}
                for item in items:
                    self._render(node.body, item, root, out)
