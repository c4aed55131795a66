"""Problems found while loading resources, and the one exception family of `ketch.api`.

Every rejection and every warning is a `Problem`: where (source file, 1-based document index,
field path written with the YAML names, e.g. ``spec.containers[0].ports[0].containerPort``)
and what was expected. `ResourceError` carries all the problems of one load, so a user fixes
a file in one pass instead of one error at a time.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class Problem:
    """One error or warning about a document. `doc` is 1-based; 0 means "not a document"."""

    source: str
    doc: int
    path: str
    message: str
    line: int | None = None  # 1-based, for YAML syntax errors
    column: int | None = None

    def location(self) -> str:
        parts = [self.source] if self.source else []
        if self.doc:
            parts.append(f"doc {self.doc}")
        if self.line is not None:
            parts.append(f"line {self.line}")
            if self.column is not None:
                parts.append(f"column {self.column}")
        return " ".join(parts)

    def __str__(self) -> str:
        parts = [p for p in (self.location(), self.path) if p]
        return ": ".join([*parts, self.message])


class ResourceError(Exception):
    """The input could not be turned into valid resources; `problems` lists every reason."""

    def __init__(self, problems: Sequence[Problem]) -> None:
        if not problems:
            raise ValueError("ResourceError needs at least one problem")
        self.problems: list[Problem] = list(problems)
        super().__init__(str(self))

    def __str__(self) -> str:
        return "\n".join(str(p) for p in self.problems)
