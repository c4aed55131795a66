"""The two ends of one ZDS connection as state machines (sans-IO; ZDS.md sections 4 and 5).

`AgentSession` is a connection as the node agent sees it:

| state | input | effect |
|---|---|---|
| AWAIT_HELLO | hello V1 | -> SNAPSHOT (the caller queues the snapshot) |
| AWAIT_HELLO | anything else | protocol error |
| SNAPSHOT | ack of `snapshot_sent` | -> INCREMENTAL |
| any but AWAIT_HELLO | ack with nothing outstanding | protocol error |

Requests are queued and sent one at a time: `next_request()` hands out the next one only
when the previous one was acknowledged, so acks correlate by order (istio-cni serializes
sends per connection the same way). Each queued request carries an opaque `token` that
`receive_ack` returns with it (the I/O layer resolves a future with it).

`ProxySession` is the node proxy's end (ztunnel `src/inpod/statemanager.rs`):

| request | before `snapshot_sent` | after |
|---|---|---|
| add | remember uid; start the pod | start the pod |
| keep | remember uid | protocol error |
| del | forget uid and its pending entry | stop the pod at once |
| snapshot_sent | stop every pod not remembered; snapshot done | protocol error |

A failed add is NACKed and stays pending (retried by the caller) until it succeeds or the
pod is deleted. Readiness: snapshot received and nothing pending. `reset()` on disconnect:
the snapshot bookkeeping starts over (pods keep running until the next `snapshot_sent`).
"""

from __future__ import annotations

import enum
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass

from ketch.zds.messages import Ack, Add, Del, Hello, Keep, Request, SnapshotSent, ZdsProtocolError

# ---------------------------------------------------------------------- agent side


class AgentState(enum.Enum):
    AWAIT_HELLO = "await_hello"
    SNAPSHOT = "snapshot"
    INCREMENTAL = "incremental"


@dataclass(frozen=True)
class Queued:
    request: Request
    token: object = None


class AgentSession:
    """One node proxy connection at the agent (see the module docstring)."""

    def __init__(self) -> None:
        self.state = AgentState.AWAIT_HELLO
        self._queue: deque[Queued] = deque()
        self._outstanding: Queued | None = None

    def receive_hello(self, hello: Hello) -> None:
        if self.state is not AgentState.AWAIT_HELLO:
            raise ZdsProtocolError("a second hello on the same connection")
        self.state = AgentState.SNAPSHOT

    def queue_snapshot(self, items: Iterable[Queued]) -> None:
        """The snapshot: adds and keeps, then `snapshot_sent` (queued before anything else)."""
        if self.state is not AgentState.SNAPSHOT or self._outstanding or self._queue:
            raise RuntimeError("the snapshot is queued once, right after the hello")
        for q in items:
            if not isinstance(q.request, Add | Keep):
                raise ValueError(f"a snapshot holds adds and keeps, not {q.request}")
            self._queue.append(q)
        self._queue.append(Queued(SnapshotSent()))

    def queue(self, request: Add | Del, token: object = None) -> None:
        """An incremental add or del (sent after the snapshot, in order)."""
        if self.state is AgentState.AWAIT_HELLO:
            raise RuntimeError("nothing is sent before the node proxy's hello")
        if not isinstance(request, Add | Del):
            raise ValueError(f"incremental requests are add or del, not {request}")
        self._queue.append(Queued(request, token))

    def next_request(self) -> Queued | None:
        """The next request to send, if none is waiting for its ack; it is now outstanding."""
        if self._outstanding is not None or not self._queue:
            return None
        self._outstanding = self._queue.popleft()
        return self._outstanding

    @property
    def outstanding(self) -> Queued | None:
        return self._outstanding

    @property
    def idle(self) -> bool:
        """Nothing queued and nothing waiting for its ack."""
        return self._outstanding is None and not self._queue

    def receive_ack(self, ack: Ack) -> Queued:
        """The ack of the outstanding request (returned with its token)."""
        if self._outstanding is None:
            raise ZdsProtocolError(f"unexpected message from the node proxy: {ack} with no request")
        done, self._outstanding = self._outstanding, None
        if isinstance(done.request, SnapshotSent):
            self.state = AgentState.INCREMENTAL
        return done

    def drop_queued(self) -> list[Queued]:
        """Everything not acknowledged (the connection ended); the caller fails their futures."""
        out = ([self._outstanding] if self._outstanding else []) + list(self._queue)
        self._outstanding = None
        self._queue.clear()
        return out


# ---------------------------------------------------------------------- node proxy side


@dataclass(frozen=True)
class StartPod:
    """Serve the pod (the caller holds the fd that came with the add)."""

    add: Add


@dataclass(frozen=True)
class KeepPod:
    uid: str


@dataclass(frozen=True)
class ForgetPod:
    """A del before the snapshot: drop any pending entry; nothing runs to stop yet."""

    uid: str


@dataclass(frozen=True)
class StopPod:
    """A del after the snapshot: stop serving the pod now (no drain: it is gone)."""

    uid: str


@dataclass(frozen=True)
class StopAllExcept:
    """`snapshot_sent`: stop every running pod whose uid is not in `keep`."""

    keep: frozenset[str]


Command = StartPod | KeepPod | ForgetPod | StopPod | StopAllExcept


class ProxySession:
    """The node proxy's ZDS bookkeeping across connections (see the module docstring)."""

    def __init__(self) -> None:
        self.snapshot_done = False
        self._seen: set[str] = set()
        self.pending: dict[str, str] = {}  # uid -> why its add failed (retried)

    def on_request(self, req: Request) -> Command:
        if isinstance(req, Add):
            if not self.snapshot_done:
                self._seen.add(req.uid)
            return StartPod(req)
        if isinstance(req, Keep):
            if self.snapshot_done:
                raise ZdsProtocolError(f"keep {req.uid} after snapshot_sent")
            self._seen.add(req.uid)
            return KeepPod(req.uid)
        if isinstance(req, Del):
            self.pending.pop(req.uid, None)
            if not self.snapshot_done:
                self._seen.discard(req.uid)
                return ForgetPod(req.uid)
            return StopPod(req.uid)
        if self.snapshot_done:
            raise ZdsProtocolError("a second snapshot_sent on the same connection")
        self.snapshot_done = True
        keep = frozenset(self._seen)
        for uid in [u for u in self.pending if u not in keep]:
            del self.pending[uid]
        return StopAllExcept(keep)

    def add_result(self, uid: str, error: str = "") -> None:
        """Record how an add went: an error keeps the pod pending (readiness held)."""
        if error:
            self.pending[uid] = error
        else:
            self.pending.pop(uid, None)

    @property
    def ready(self) -> bool:
        return self.snapshot_done and not self.pending

    def reset(self) -> None:
        """The connection ended: a new one starts with a new snapshot."""
        self.snapshot_done = False
        self._seen.clear()


__all__ = [
    "AgentSession",
    "AgentState",
    "Command",
    "ForgetPod",
    "KeepPod",
    "ProxySession",
    "Queued",
    "StartPod",
    "StopAllExcept",
    "StopPod",
]
