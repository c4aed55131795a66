"""The node proxy's ZDS client: pods from the node agent (ztunnel `src/inpod/`).

Connects to the agent's SEQPACKET socket (backoff 10 ms doubling to 15 s), says hello, then
serves requests one at a time through `ketch.zds.session.ProxySession`:

- `add` (netns fd attached): the fd must be a network namespace (else a protocol error);
  the same uid with the same netns inode is a no-op; the pod's redirection rules must be in
  its netns ("ready means captured": without them the pod's traffic would bypass the proxy
  while it reported ready), then `Ztunnel.add_pod` opens 15001/15006/15008 inside it. Any
  failure is NACKed with the reason and the pod stays pending (readiness held) until the
  agent sends it again, deletes it, or a new snapshot leaves it out;
- `keep`: nothing to do (the pod keeps running); `del`: the pod is removed at once;
- `snapshot_sent`: pods not in this snapshot are removed.

Every request is answered with an `Ack` (empty error = success). On a protocol error or
when the agent goes away the connection is dropped and re-established; existing pods keep
serving meanwhile (and readiness drops until the next snapshot), as ztunnel's do.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from ketch.netns import NetnsError, rules_installed
from ketch.util.tasks import spawn
from ketch.zds.messages import (
    Ack,
    Hello,
    ZdsProtocolError,
    decode_request,
    encode_ack,
    encode_hello,
)
from ketch.zds.session import ForgetPod, KeepPod, ProxySession, StartPod, StopAllExcept, StopPod
from ketch.zds.transport import ConnectionClosed, ZdsSocket, check_netns_fd, close_fds
from ketch.ztunnel.pod import PodHandle
from ketch.ztunnel.proxy import ProxyError, Ztunnel

log = logging.getLogger("ketch.ztunnel.zds")

BACKOFF_MIN = 0.01
BACKOFF_MAX = 15.0

RulesCheck = Callable[[int], Awaitable[bool]]


async def _rules_in_netns(fd: int) -> bool:
    return await asyncio.to_thread(rules_installed, fd)


def _inode(fd: int) -> tuple[int, int] | None:
    try:
        st = os.fstat(fd)
    except OSError:
        return None
    return st.st_dev, st.st_ino


class ZdsClient:
    """See the module docstring."""

    def __init__(
        self,
        zt: Ztunnel,
        path: str | Path,
        *,
        rules_check: RulesCheck | None = _rules_in_netns,
    ) -> None:
        self.zt = zt
        self.path = Path(path)
        self.session = ProxySession()
        self._rules_check = rules_check
        self._task: asyncio.Task[None] | None = None
        self._sock: ZdsSocket | None = None
        self._pods: dict[str, tuple[int, int] | None] = {}  # uid -> netns inode (served)
        self._info: dict[str, dict[str, str]] = {}  # uid -> name/namespace of pending adds
        self.connected = False
        self.connects = 0
        self.last_error = ""

    @property
    def ready(self) -> bool:
        """Snapshot received on the current connection and no add pending."""
        return self.connected and self.session.ready

    async def start(self) -> None:
        self._task = spawn(self._run(), name="ztunnel-zds")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._sock is not None:
            self._sock.close()

    def status(self) -> dict[str, Any]:
        return {
            "socket": str(self.path),
            "connected": self.connected,
            "snapshotReceived": self.session.snapshot_done,
            "connects": self.connects,
            "lastError": self.last_error or None,
            "pending": dict(self.session.pending),
        }

    def pending_pods(self) -> list[dict[str, Any]]:
        """Pods the agent sent that are not served, with why (config_dump's `pods`)."""
        return [
            {
                "uid": uid,
                **self._info.get(uid, {}),
                "state": "not_enrolled",
                "error": why,
            }
            for uid, why in sorted(self.session.pending.items())
        ]

    # ------------------------------------------------------------------ connection loop

    async def _run(self) -> None:
        delay = BACKOFF_MIN
        while True:
            try:
                self._sock = await ZdsSocket.connect(self.path)
            except OSError as e:
                self._note(f"cannot connect to the node agent at {self.path}: {e.strerror}")
                await asyncio.sleep(delay)
                delay = min(delay * 2, BACKOFF_MAX)
                continue
            delay = BACKOFF_MIN
            self.connects += 1
            try:
                await self._sock.send(encode_hello(Hello()))
                self.connected = True
                log.info("ZDS: connected to the node agent at %s", self.path)
                await self._serve(self._sock)
            except ConnectionClosed as e:
                self._note(f"node agent connection lost: {e}", warn=True)
            except ZdsProtocolError as e:
                self._note(f"protocol error from the node agent: {e}", warn=True)
            finally:
                self.connected = False
                self.session.reset()
                self._sock.close()
            await asyncio.sleep(delay)

    def _note(self, msg: str, *, warn: bool = False) -> None:
        if msg != self.last_error:
            (log.warning if warn else log.info)("ZDS: %s (existing pods keep serving)", msg)
        self.last_error = msg

    async def _serve(self, sock: ZdsSocket) -> None:
        while True:
            data, fds = await sock.recv()
            try:
                req = decode_request(data, len(fds))
                cmd = self.session.on_request(req)
                if isinstance(cmd, StartPod):
                    check_netns_fd(fds[0])
            except ZdsProtocolError:
                close_fds(fds)
                raise
            error = await self._execute(cmd, fds[0] if fds else None)
            await sock.send(encode_ack(Ack(error)))

    async def _execute(self, cmd: object, fd: int | None) -> str:
        if isinstance(cmd, StartPod):
            assert fd is not None
            error = await self._add(cmd, fd)
            self.session.add_result(cmd.add.uid, error)
            if error:
                self._info[cmd.add.uid] = {
                    "name": cmd.add.info.name,
                    "namespace": cmd.add.info.namespace,
                }
                log.warning(
                    "ZDS: pod %s/%s not served: %s",
                    cmd.add.info.namespace,
                    cmd.add.info.name,
                    error,
                )
            else:
                self._info.pop(cmd.add.uid, None)
            return error
        if isinstance(cmd, StopPod):
            await self._remove(cmd.uid)
        elif isinstance(cmd, StopAllExcept):
            for uid in [u for u in self._pods if u not in cmd.keep]:
                await self._remove(uid)
            log.info("ZDS: snapshot received: %d pod(s) served", len(self._pods))
        elif isinstance(cmd, ForgetPod | KeepPod):
            pass
        return ""

    async def _add(self, cmd: StartPod, fd: int) -> str:
        add = cmd.add
        inode = _inode(fd)
        served = add.uid in self._pods and self.zt.pod(add.uid) is not None
        if served and self._pods[add.uid] == inode:
            os.close(fd)  # same pod, same netns: nothing to do
            return ""
        if self._rules_check is not None:
            try:
                captured = await self._rules_check(fd)
            except NetnsError as e:
                os.close(fd)
                return f"cannot inspect the pod's redirection rules: {e}"
            if not captured:
                os.close(fd)
                return (
                    "the pod's redirection rules are missing from its network namespace: its "
                    "traffic would not be captured (the node agent installs them before add)"
                )
        try:
            await self.zt.add_pod(
                PodHandle(add.uid, add.info.name, add.info.namespace, add.info.service_account, fd)
            )  # replaces a pod of the same uid with another netns; closes fd on failure
        except ProxyError as e:
            self._pods.pop(add.uid, None)
            return str(e)
        self._pods[add.uid] = inode
        return ""

    async def _remove(self, uid: str) -> None:
        self._pods.pop(uid, None)
        self._info.pop(uid, None)
        await self.zt.remove_pod(uid)


__all__ = ["ZdsClient"]
