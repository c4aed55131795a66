"""Graceful drain: stop accepting, let open connections finish up to a deadline, then
force-close what is left (REFERENCE.md "Reliability behaviour": the old proxy drains while
a new one, bound with SO_REUSEPORT in every pod, already accepts).

The proxy calls `drain_connections(tracker, grace, stop_accepting=..., graceful=...)`:

1. `stop_accepting()` closes every listening socket (15001/15006/15008 in every pod); the
   kernel then refuses new connections unless another proxy shares the port;
2. `graceful(remaining)` coroutines run alongside (HBONE servers send GOAWAY, so peers open
   new streams elsewhere, and finish their streams);
3. when the tracker is empty, or at the deadline, the remaining connections are aborted.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence

from ketch.util.tasks import spawn
from ketch.ztunnel.connections import ConnectionTracker

log = logging.getLogger("ketch.ztunnel.drain")


async def drain_connections(
    tracker: ConnectionTracker,
    grace: float,
    *,
    stop_accepting: Callable[[], None],
    graceful: Sequence[Callable[[float], Awaitable[None]]] = (),
) -> int:
    """Drain (see the module docstring); returns how many connections were force-closed."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + max(0.0, grace)
    stop_accepting()
    tasks = [spawn(_run(g, grace), name="ztunnel-drain") for g in graceful]
    open_before = len(tracker)
    if open_before:
        log.info("draining %d open connection(s) for up to %.1fs", open_before, grace)
    await tracker.wait_empty(deadline - loop.time())
    left = tracker.all()
    if left:
        log.warning("drain deadline reached: force-closing %d connection(s) still open", len(left))
        tracker.close([c.id for c in left], "proxy drain deadline reached")
    if tasks:
        await asyncio.wait(tasks, timeout=max(0.1, deadline - loop.time()) + 1.0)
    return len(left)


async def _run(g: Callable[[float], Awaitable[None]], grace: float) -> None:
    await g(grace)
