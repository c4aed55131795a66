"""The node agent process: one per node (`ketch agent run`), Istio's istio-cni node agent.

It runs in the node's network namespace and does, in this order (docs/node-agent.md):

1. **Restore** (so a restart loses nothing): list this node's pods annotated
   `ambient.istio.io/redirection` (`enabled` or `pending`) that are not terminal, reopen their
   network namespaces and re-apply the in-pod rules (idempotent). They form the snapshot.
2. **Probe SNAT** in the node netns for the node's pod CIDR (`ketch.netns.install_host_rules`)
   so kubelet probes keep working under STRICT mTLS.
3. **Serve** ZDS (`ZdsServer`: node proxies connect) and CNI events (`CniServer`: the kubelet
   asks during pod start).
4. **Reconcile**, on every store change and every `resync` seconds: `enrollment.plan` over
   the store's Pods and Namespaces, then each action in order.

Enrolling a pod (ZDS.md section 6): in-pod rules (`ketch.netns.install_rules`) -> ZDS `add`
with the netns fd to the newest node proxy, its ack awaited -> annotation
`ambient.istio.io/redirection=enabled` on the Pod (compare-and-swap on resourceVersion,
retried on conflict). With no node proxy connected (or a NACK) the rules stay, the
annotation says `pending` and the add is retried. The control plane advertises a pod as
HBONE only once the annotation says `enabled`.

Removing: rules deleted (if the pod still runs) -> `del` to every node proxy -> annotation
removed -> netns fd closed.

Where a pod's netns is: the path the kubelet gave in the CNI event (remembered in
`netns.json`, so it survives restarts), else `netns_template` formatted with `{uid}`,
`{uidhash}` (first 12 hex of sha256(uid)), `{name}`, `{namespace}`.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ketch.agent.cni_server import CniEvent, CniRefused, CniServer
from ketch.agent.enrollment import (
    DEFAULT_EXCLUDED,
    REDIRECTION_ANNOTATION,
    REDIRECTION_ENABLED,
    REDIRECTION_PENDING,
    Enroll,
    PodView,
    Remove,
    mesh_problem,
    plan,
)
from ketch.agent.zds_server import Nacked, NoNodeProxy, SnapshotEntry, ZdsServer
from ketch.netns import (
    NetnsError,
    install_host_rules,
    install_rules,
    remove_rules,
)
from ketch.store import ConflictError, NotFoundError, Store, StoreError
from ketch.util.tasks import spawn
from ketch.zds.messages import Add, WorkloadInfo

log = logging.getLogger("ketch.agent")

RESYNC = 5.0
ANNOTATE_ATTEMPTS = 8


class AgentError(Exception):
    """The agent cannot start (bad flag, store, socket or host rules)."""


class EnrollError(Exception):
    """A pod could not be enrolled now (retried at the next reconcile)."""


@dataclass(frozen=True)
class AgentPaths:
    """Where one node's agent keeps its files: `<state_dir>/agent/<node>/`."""

    state_dir: Path
    node: str

    @property
    def dir(self) -> Path:
        return self.state_dir / "agent" / self.node

    @property
    def zds_socket(self) -> Path:
        return self.dir / "ztunnel.sock"

    @property
    def cni_socket(self) -> Path:
        return self.dir / "pluginevent.sock"

    @property
    def netns_file(self) -> Path:
        return self.dir / "netns.json"


@dataclass(frozen=True)
class AgentOptions:
    node: str
    paths: AgentPaths
    zds_socket: Path
    cni_socket: Path
    netns_template: str | None = None
    pod_cidrs: tuple[str, ...] = ()  # probe SNAT destinations; default: the Node's podCIDRs
    probe_snat: bool = True
    excluded: frozenset[str] = DEFAULT_EXCLUDED
    resync: float = RESYNC


def uid_hash(uid: str) -> str:
    return hashlib.sha256(uid.encode()).hexdigest()[:12]


class NetnsLocator:
    """uid -> netns path: what the CNI event said (persisted), else the template."""

    def __init__(self, file: Path, template: str | None) -> None:
        self.file = file
        self.template = template
        self._known: dict[str, str] = {}
        try:
            raw = json.loads(file.read_text())
            if isinstance(raw, dict):
                self._known = {str(k): str(v) for k, v in raw.items()}
        except FileNotFoundError:
            pass
        except (OSError, ValueError) as e:
            log.warning("%s unreadable (%s); starting with no recorded netns paths", file, e)

    def record(self, uid: str, path: str) -> None:
        if self._known.get(uid) != path:
            self._known[uid] = path
            self._save()

    def prune(self, alive: set[str]) -> None:
        gone = [u for u in self._known if u not in alive]
        if gone:
            for u in gone:
                del self._known[u]
            self._save()

    def _save(self) -> None:
        self.file.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.file.with_suffix(".tmp")
        tmp.write_text(json.dumps(self._known, indent=1, sort_keys=True))
        os.replace(tmp, self.file)

    def path(self, pod: PodView) -> str | None:
        if pod.uid in self._known:
            return self._known[pod.uid]
        if self.template is None:
            return None
        return self.template.format(
            uid=pod.uid, uidhash=uid_hash(pod.uid), name=pod.name, namespace=pod.namespace
        )


@dataclass(eq=False)
class _Enrolled:
    pod: PodView
    fd: int
    path: str
    acked: bool = False  # a node proxy acknowledged the add


# ---------------------------------------------------------------------- store helpers


def annotate(store: Store, pod: PodView, value: str | None) -> bool:
    """Set (or with None remove) the redirection annotation on the Pod, compare-and-swap on
    its resourceVersion, retried on conflict. False if the pod (with this uid) is gone."""
    for _ in range(ANNOTATE_ATTEMPTS):
        try:
            m = store.get("Pod", pod.namespace, pod.name)
        except NotFoundError:
            return False
        meta = m["metadata"]
        if meta.get("uid") != pod.uid:
            return False
        anns: dict[str, Any] = dict(meta.get("annotations") or {})
        if anns.get(REDIRECTION_ANNOTATION) == value:
            return True
        if value is None:
            anns.pop(REDIRECTION_ANNOTATION, None)
        else:
            anns[REDIRECTION_ANNOTATION] = value
        if anns:
            meta["annotations"] = anns
        else:
            meta.pop("annotations", None)
        try:
            store.apply([m])  # m carries the resourceVersion it was read at
            return True
        except ConflictError:
            continue
    raise StoreError(
        f"pod {pod.key}: the annotation could not be written after {ANNOTATE_ATTEMPTS} "
        "conflicting updates (something rewrites the pod constantly)"
    )


def _list(store: Store) -> tuple[list[PodView], dict[str, dict[str, str]], int]:
    pods = store.list("Pod")
    namespaces = store.list("Namespace")
    return (
        [PodView.from_manifest(m) for m in pods.items],
        {
            str(m["metadata"]["name"]): dict(m["metadata"].get("labels") or {})
            for m in namespaces.items
        },
        max(pods.revision, namespaces.revision),
    )


def _wait_change(store: Store, since: int, timeout: float) -> None:
    for ev in store.watch(since, timeout=timeout):
        if ev.object.get("kind") in ("Pod", "Namespace"):
            return


def _node_cidrs(store: Store, node: str) -> list[str]:
    try:
        m = store.get("Node", "", node)
    except NotFoundError:
        return []
    spec = m.get("spec") or {}
    cidrs = [str(c) for c in spec.get("podCIDRs") or []]
    if not cidrs and spec.get("podCIDR"):
        cidrs = [str(spec["podCIDR"])]
    return cidrs


# ---------------------------------------------------------------------- the agent


@dataclass
class AgentStats:
    enrolled: int = 0
    removed: int = 0
    failures: dict[str, str] = field(default_factory=dict)  # uid -> last reason


class NodeAgent:
    """See the module docstring."""

    def __init__(self, opts: AgentOptions, store: Store) -> None:
        self.opts = opts
        self.store = store
        self.locator = NetnsLocator(opts.paths.netns_file, opts.netns_template)
        self.zds = ZdsServer(opts.zds_socket, self._snapshot)
        self.cni = CniServer(opts.cni_socket, self._cni_add)
        self._pods: dict[str, _Enrolled] = {}
        self._lock = asyncio.Lock()
        self._kick = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self.stats = AgentStats()
        self.zds.on_connect.append(self._kick.set)

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        await self._restore()
        if self.opts.probe_snat:
            await self._host_rules()
        try:
            await self.zds.start()
            await self.cni.start()
        except OSError as e:
            raise AgentError(f"cannot listen: {e} (is another agent running for this node?)") from e
        self._task = spawn(self._loop(), name="agent-reconcile")
        log.info(
            "node agent for node %r: %d pod(s) restored; ZDS on %s, CNI events on %s",
            self.opts.node,
            len(self._pods),
            self.opts.zds_socket,
            self.opts.cni_socket,
        )

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await self.cni.close()
        await self.zds.close()
        for p in self._pods.values():
            with contextlib.suppress(OSError):
                os.close(p.fd)
        self._pods.clear()

    async def _restore(self) -> None:
        try:
            pods, _, _ = await asyncio.to_thread(_list, self.store)
        except StoreError as e:
            raise AgentError(f"cannot read the store: {e}") from e
        for pod in pods:
            if pod.node != self.opts.node or pod.terminal or not pod.uid:
                continue
            if pod.redirection not in (REDIRECTION_ENABLED, REDIRECTION_PENDING):
                continue
            try:
                await self._capture(pod, None)
            except EnrollError as e:
                log.warning("pod %s was enrolled but cannot be restored: %s", pod.key, e)
                continue
            self._pods[pod.uid].acked = pod.redirection == REDIRECTION_ENABLED
            log.info("pod %s (%s): enrollment restored, rules re-applied", pod.key, pod.uid)

    async def _host_rules(self) -> None:
        cidrs = list(self.opts.pod_cidrs) or await asyncio.to_thread(
            _node_cidrs, self.store, self.opts.node
        )
        if not cidrs:
            log.warning(
                "no pod CIDR for node %r (give --pod-cidr, or set spec.podCIDR on the Node): "
                "kubelet probes of enrolled pods are not exempted from the mesh",
                self.opts.node,
            )
            return
        try:
            await asyncio.to_thread(install_host_rules, "/proc/self/ns/net", cidrs)
        except NetnsError as e:
            raise AgentError(f"cannot install the probe SNAT rules for {cidrs}: {e}") from e
        log.info("probe SNAT installed in the node netns for %s", ", ".join(cidrs))

    # ------------------------------------------------------------------ ZDS snapshot

    def _snapshot(self) -> Sequence[SnapshotEntry]:
        return [SnapshotEntry(_add_message(e.pod), e.fd) for e in self._pods.values()]

    # ------------------------------------------------------------------ reconcile loop

    async def _loop(self) -> None:
        revision = 0
        while True:
            try:
                pods, namespaces, revision = await asyncio.to_thread(_list, self.store)
                await self.reconcile(pods, namespaces)
            except StoreError as e:
                log.warning("store unavailable (%s); retrying", e)
            waiter = spawn(
                asyncio.to_thread(_wait_change, self.store, revision, self.opts.resync),
                name="agent-store-watch",
            )
            kick = spawn(self._kick.wait(), name="agent-kick")
            try:
                await asyncio.wait([waiter, kick], return_when=asyncio.FIRST_COMPLETED)
            finally:
                kick.cancel()
                if not waiter.done():
                    # the thread ends at its own timeout; do not leave its result unread
                    waiter.add_done_callback(lambda t: t.cancelled() or t.exception())
                elif not waiter.cancelled() and waiter.exception() is not None:
                    log.warning("store watch failed: %s", waiter.exception())
                self._kick.clear()

    async def reconcile(
        self, pods: Sequence[PodView], namespaces: Mapping[str, Mapping[str, str]]
    ) -> None:
        async with self._lock:
            enrolled = {uid: e.pod for uid, e in self._pods.items()}
            for action in plan(
                pods, namespaces, enrolled, node=self.opts.node, excluded=self.opts.excluded
            ):
                if isinstance(action, Enroll):
                    await self._try_enroll(action.pod)
                else:
                    await self._remove(action)
            # retry adds the node proxy has not acknowledged yet; repair annotations
            by_uid = {p.uid: p for p in pods}
            for uid, e in list(self._pods.items()):
                current = by_uid.get(uid)
                if current is None:
                    continue
                if not e.acked:
                    await self._try_enroll(current)
                elif current.redirection != REDIRECTION_ENABLED:
                    await asyncio.to_thread(annotate, self.store, current, REDIRECTION_ENABLED)
            # annotations nobody backs (an agent crash between the steps)
            for p in pods:
                if (
                    p.node == self.opts.node
                    and p.uid not in self._pods
                    and p.redirection
                    and not p.terminal
                ):
                    await asyncio.to_thread(annotate, self.store, p, None)
            self.locator.prune({p.uid for p in pods})

    async def _try_enroll(self, pod: PodView) -> None:
        try:
            await self._enroll(pod, None)
        except EnrollError as e:
            if self.stats.failures.get(pod.uid) != str(e):
                log.warning("pod %s not enrolled yet (will retry): %s", pod.key, e)
            self.stats.failures[pod.uid] = str(e)
        else:
            self.stats.failures.pop(pod.uid, None)

    # ------------------------------------------------------------------ enroll / remove

    async def _capture(self, pod: PodView, netns: str | None) -> _Enrolled:
        """Open the pod's netns and install the in-pod rules (idempotent); cache it."""
        have = self._pods.get(pod.uid)
        if have is not None and (netns is None or _same_file(netns, have.fd)):
            have.pod = pod
            return have
        path = netns or self.locator.path(pod)
        if path is None:
            raise EnrollError(
                "its network namespace is unknown (no CNI event recorded one and no "
                "--netns-template is set)"
            )
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except OSError as e:
            raise EnrollError(f"cannot open its network namespace {path}: {e.strerror}") from None
        try:
            await asyncio.to_thread(install_rules, fd)
        except NetnsError as e:
            os.close(fd)
            raise EnrollError(f"installing the redirection rules failed: {e}") from None
        if have is not None:  # a new netns for the same pod (sandbox recreated)
            with contextlib.suppress(OSError):
                os.close(have.fd)
        entry = self._pods[pod.uid] = _Enrolled(pod, fd, path)
        return entry

    async def _enroll(self, pod: PodView, netns: str | None) -> None:
        """Rules -> ZDS add, ack awaited -> annotation `enabled` (ZDS.md section 6)."""
        entry = await self._capture(pod, netns)
        try:
            await self.zds.add(_add_message(pod), entry.fd)
        except (NoNodeProxy, Nacked) as e:
            entry.acked = False
            await asyncio.to_thread(annotate, self.store, pod, REDIRECTION_PENDING)
            why = "node proxy refused it: " if isinstance(e, Nacked) else ""
            raise EnrollError(f"{why}{e}; rules are in place, annotated pending") from None
        entry.acked = True
        if not await asyncio.to_thread(annotate, self.store, pod, REDIRECTION_ENABLED):
            log.info("pod %s disappeared while being enrolled", pod.key)
        self.stats.enrolled += 1
        log.info("pod %s (%s) enrolled", pod.key, pod.uid)

    async def _remove(self, action: Remove) -> None:
        """Rules deleted (if the pod still runs) -> del to all node proxies -> annotation
        removed -> fd closed."""
        pod = action.pod
        entry = self._pods.pop(pod.uid, None)
        if entry is not None and action.still_running:
            try:
                await asyncio.to_thread(remove_rules, entry.fd)
            except NetnsError as e:
                log.warning("pod %s: removing the redirection rules failed: %s", pod.key, e)
        acked = await self.zds.delete(pod.uid)
        with contextlib.suppress(StoreError):
            await asyncio.to_thread(annotate, self.store, pod, None)
        if entry is not None:
            with contextlib.suppress(OSError):
                os.close(entry.fd)
        self.stats.removed += 1
        log.info(
            "pod %s (%s) removed from the mesh (%d node proxy ack(s))", pod.key, pod.uid, acked
        )

    # ------------------------------------------------------------------ CNI events

    async def _cni_add(self, ev: CniEvent) -> None:
        try:
            m = await asyncio.to_thread(self.store.get, "Pod", ev.pod_namespace, ev.pod_name)
        except NotFoundError:
            raise CniRefused(
                f"pod {ev.pod_namespace}/{ev.pod_name} is not in the store", 404
            ) from None
        except StoreError as e:
            raise CniRefused(f"store unavailable: {e}", 503) from None
        pod = PodView.from_manifest(m)
        if ev.pod_uid and ev.pod_uid != pod.uid:
            raise CniRefused(
                f"pod {pod.key} has uid {pod.uid} in the store, not {ev.pod_uid} (stale event?)",
                409,
            )
        self.locator.record(pod.uid, ev.netns)
        try:
            ns = await asyncio.to_thread(self.store.get, "Namespace", "", pod.namespace)
            ns_labels = dict(ns["metadata"].get("labels") or {})
        except NotFoundError:
            ns_labels = {}
        problem = mesh_problem(pod, ns_labels, excluded=self.opts.excluded)
        if problem is not None:
            log.debug("CNI add %s: not in the mesh (%s)", pod.key, problem)
            return
        if pod.node and pod.node != self.opts.node:
            raise CniRefused(f"pod {pod.key} is scheduled to {pod.node}, not {self.opts.node}", 400)
        if not pod.ips and ev.ips:
            pod = PodView(
                pod.uid, pod.name, pod.namespace, pod.node, pod.service_account, pod.phase,
                ev.ips, pod.host_network, pod.labels, pod.annotations,
            )  # fmt: skip
        async with self._lock:
            try:
                await self._enroll(pod, ev.netns)
            except EnrollError as e:
                raise CniRefused(f"pod {pod.key} cannot join the mesh: {e}", 503) from None


def _same_file(path: str, fd: int) -> bool:
    """Is `path` the namespace `fd` holds? (A sandbox recreated under the same name is a
    new namespace: compare inodes, not paths.)"""
    try:
        a, b = os.stat(path), os.fstat(fd)
    except OSError:
        return False
    return (a.st_dev, a.st_ino) == (b.st_dev, b.st_ino)


def _add_message(pod: PodView) -> Add:
    return Add(pod.uid, WorkloadInfo(pod.name, pod.namespace, pod.service_account))


__all__ = [
    "AgentError",
    "AgentOptions",
    "AgentPaths",
    "NetnsLocator",
    "NodeAgent",
    "annotate",
    "uid_hash",
]
