"""The one place tasks are created: every task is named and referenced until done.

asyncio only keeps weak references to tasks, so a fire-and-forget task can be garbage
collected mid-flight; `spawn` keeps a strong reference in a set until the task finishes
and logs any exception that was not retrieved (one logged boundary per task).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Coroutine
from typing import Any, TypeVar

T = TypeVar("T")
log = logging.getLogger("ketch.tasks")
_live: set[asyncio.Task[Any]] = set()


def _done(task: asyncio.Task[Any]) -> None:
    _live.discard(task)
    if task.cancelled():
        return
    exc = task.exception()
    if exc is not None:
        log.error("task %s failed: %r", task.get_name(), exc, exc_info=exc)


def spawn(coro: Coroutine[Any, Any, T], name: str) -> asyncio.Task[T]:
    """Start `coro` as a named task whose failure is logged, never silently dropped."""
    task = asyncio.get_running_loop().create_task(coro, name=name)
    _live.add(task)
    task.add_done_callback(_done)
    return task
