"""The kubelet of one node: runs the Pods bound to it as processes in pod network namespaces.

Runs inside the node process (`ketch cluster node`, in the node's netns); every node-side
network step names the node netns explicitly (`ip -n`, probe sockets made there), so it works
from any netns. What happens to a Pod:

1. The store says `spec.nodeName` is this node (watched; list + watch, relist when the
   history is gone). `hostNetwork: true` is refused (status Failed, reason
   HostNetworkUnsupported): every Ketch pod needs its own netns. A Pod that does not
   validate gets Failed/InvalidPod; a Pod whose phase is already Succeeded/Failed is not
   run again.
2. Sandbox (`podnet.setup`): netns, veth, IP from the node's pod CIDR (`ipam`), routes,
   /etc/netns/<netns>/{resolv.conf,hosts}. Then, if the node agent's socket is configured,
   the CNI event (`cnievent.cmdadd`); a failure tears the sandbox down and retries with the
   back-off while the containers show `waiting: ContainerCreating` with the error.
3. Every container: `ip netns exec <netns> command args` (`process.py`), own process group,
   output appended to `layout.container_log(...)`. Exits are restarted per `restartPolicy`
   with CrashLoopBackOff (`backoff.py`); a failing liveness probe kills and restarts it;
   the readiness probe drives the Ready condition (`probes.py`).
4. Status (`podstatus.py`) is written whenever it changes: compare-and-swap on
   resourceVersion, retried on conflict, given up if the Pod is gone.
5. Pod deleted: SIGTERM to each container's process group, `terminationGracePeriodSeconds`
   (default 30), SIGKILL, sandbox torn down, IP released, pod directory removed.
   `stop`: every pod terminates the same way, in parallel; the Pod objects stay in the store
   and their status is left as it was (a node going away does not make pods terminal); the
   next start runs them again, on the same pod IP when it is still free.

Leftovers of a crashed kubelet: each pod directory has `kubelet.json` (node, sandbox, and per
container PID + /proc start time). On start the kubelet stops those processes (only if the
start time still matches) and removes their sandboxes before it recreates the pods.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import ipaddress
import json
import logging
import os
import shutil
import signal
import threading
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from ketch.api.core import Container, Node, Pod
from ketch.cluster import cnievent, podnet, process
from ketch.cluster.backoff import BackoffPolicy, CrashLoop
from ketch.cluster.ipam import IpamError, PodIpam
from ketch.cluster.layout import ClusterLayout
from ketch.cluster.podstatus import (
    ContainerFacts,
    PodFacts,
    Running,
    State,
    Terminated,
    Waiting,
    pod_status,
    terminated_reason,
)
from ketch.cluster.probes import (
    Dial,
    ProbeKind,
    ProbeResult,
    ProbeSpec,
    ProbeTracker,
    netns_dialer,
    run_probe,
    spec_from_api,
)
from ketch.store.base import (
    ConflictError,
    EventType,
    Manifest,
    NotFoundError,
    RevisionTooOldError,
    Store,
    StoreError,
)
from ketch.util.tasks import spawn

log = logging.getLogger("ketch.cluster.kubelet")

RECORD = "kubelet.json"
DEFAULT_GRACE = 30
NODE_POLL = 1.0
WATCH_IDLE = 0.5
LEFTOVER_GRACE = 3.0


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


class Kubelet:
    """Runs the Pods whose `spec.nodeName` is `node_name` (see the module docstring)."""

    def __init__(
        self,
        store: Store,
        layout: ClusterLayout,
        node_name: str,
        *,
        cni_event_socket: Path | None = None,
        backoff: BackoffPolicy | None = None,
    ) -> None:
        self.store = store
        self.layout = layout
        self.node_name = node_name
        self.node_netns = layout.node_netns(node_name)
        self.cni_event_socket = cni_event_socket
        self.backoff = backoff if backoff is not None else BackoffPolicy.from_env()
        self.dial: Dial = netns_dialer(self.node_netns)
        self.ipam: PodIpam | None = None
        self.host_ip: str | None = None
        self.pods: dict[str, PodWorker] = {}  # by uid
        self._terminating: set[asyncio.Task[None]] = set()
        self._invalid: set[str] = set()  # uids of pods we could not parse (said so once)

    # --- top level ---------------------------------------------------------------------

    async def run(self, stop: asyncio.Event) -> None:
        node = await self._wait_for_node(stop)
        if node is None:
            return
        self.ipam, self.host_ip = node
        log.info(
            "kubelet of node %s: pod CIDR %s, host IP %s, netns %s",
            self.node_name,
            self.ipam.cidr,
            self.host_ip,
            self.node_netns,
        )
        await asyncio.to_thread(self._clean_leftovers)
        events: asyncio.Queue[tuple[str, Any]] = asyncio.Queue()
        halt = threading.Event()
        loop = asyncio.get_running_loop()
        listing = await asyncio.to_thread(self.store.list, "Pod")
        self._resync(listing.items, rebuild=True)
        watcher = spawn(
            asyncio.to_thread(self._watch, listing.revision, loop, events, halt),
            f"kubelet-watch-{self.node_name}",
        )
        stopping = spawn(stop.wait(), f"kubelet-stop-{self.node_name}")
        try:
            while not stop.is_set():
                getter = spawn(events.get(), f"kubelet-event-{self.node_name}")
                done, _ = await asyncio.wait(
                    {getter, stopping}, return_when=asyncio.FIRST_COMPLETED
                )
                if getter not in done:
                    getter.cancel()
                    break
                what, payload = getter.result()
                if what == "event":
                    self._on_event(payload)
                elif what == "relist":
                    self._resync(payload, rebuild=False)
        finally:
            halt.set()
            stopping.cancel()
            workers = list(self.pods.values())
            if workers:
                log.info(
                    "kubelet of node %s stopping: terminating %d pod(s)",
                    self.node_name,
                    len(workers),
                )
            results = await asyncio.gather(
                *(w.finish(deleted=False) for w in workers),
                *self._terminating,
                return_exceptions=True,
            )
            for failure in (r for r in results if isinstance(r, Exception)):
                log.error(
                    "kubelet of node %s: a pod did not stop cleanly: %r", self.node_name, failure
                )
            self.pods.clear()
            await watcher
            log.info("kubelet of node %s stopped", self.node_name)

    async def _wait_for_node(self, stop: asyncio.Event) -> tuple[PodIpam, str] | None:
        said = ""
        while not stop.is_set():
            problem = ""
            try:
                manifest = await asyncio.to_thread(self.store.get, "Node", "", self.node_name)
                node = Node.model_validate(manifest)
                cidr = node.spec.pod_cidr if node.spec else None
                ips = node.internal_ips()
                if not cidr:
                    problem = f"Node {self.node_name} has no spec.podCIDR yet"
                elif not ips:
                    problem = f"Node {self.node_name} has no InternalIP address yet"
                else:
                    return PodIpam(str(cidr)), ips[0]
            except NotFoundError:
                problem = f"Node {self.node_name} is not in the store yet"
            except (ValidationError, StoreError) as exc:
                problem = f"Node {self.node_name} cannot be read: {exc}"
            except (IpamError, ValueError) as exc:
                problem = f"Node {self.node_name} has an unusable spec.podCIDR: {exc}"
            if problem != said:
                log.warning("%s; waiting for it (the runtime writes it at `ketch up`)", problem)
                said = problem
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), NODE_POLL)
        return None

    def _watch(
        self,
        since: int,
        loop: asyncio.AbstractEventLoop,
        events: asyncio.Queue[tuple[str, Any]],
        halt: threading.Event,
    ) -> None:
        """Thread: follow Pod changes and hand them to the event loop until `halt`."""
        while not halt.is_set():
            try:
                for ev in self.store.watch(since, "Pod", timeout=WATCH_IDLE):
                    since = ev.revision
                    loop.call_soon_threadsafe(events.put_nowait, ("event", ev))
                    if halt.is_set():
                        return
            except RevisionTooOldError:
                log.info("pod watch fell behind the store's history; listing again")
                try:
                    listing = self.store.list("Pod")
                except StoreError as exc:
                    log.warning("cannot list pods: %s; retrying", exc)
                    halt.wait(1.0)
                    continue
                since = listing.revision
                loop.call_soon_threadsafe(events.put_nowait, ("relist", listing.items))
            except StoreError as exc:
                log.warning("pod watch failed: %s; retrying in 1s", exc)
                halt.wait(1.0)

    # --- desired state -----------------------------------------------------------------

    def _mine(self, manifest: Manifest) -> bool:
        spec = manifest.get("spec")
        return isinstance(spec, dict) and spec.get("nodeName") == self.node_name

    def _resync(self, items: list[Manifest], *, rebuild: bool) -> None:
        mine = {str(m["metadata"].get("uid")): m for m in items if self._mine(m)}
        if rebuild and self.ipam is not None:
            holders = []
            for uid, m in mine.items():
                ip = (m.get("status") or {}).get("podIP")
                if isinstance(ip, str):
                    holders.append((uid, ip))
            for problem in self.ipam.rebuild(holders):
                log.warning("%s", problem)
        for uid, worker in list(self.pods.items()):
            if uid not in mine:
                self._forget(uid, worker)
        for m in mine.values():
            self._upsert(m)

    def _on_event(self, ev: Any) -> None:
        manifest: Manifest = ev.object
        uid = str((manifest.get("metadata") or {}).get("uid"))
        if ev.type is EventType.DELETED or not self._mine(manifest):
            self._invalid.discard(uid)
            worker = self.pods.get(uid)
            if worker is not None:
                self._forget(uid, worker)
            return
        self._upsert(manifest)

    def _upsert(self, manifest: Manifest) -> None:
        meta = manifest.get("metadata") or {}
        uid = str(meta.get("uid"))
        if uid in self.pods:
            return  # pods are immutable but for status (ours) and metadata
        where = f"{meta.get('namespace')}/{meta.get('name')}"
        try:
            pod = Pod.model_validate(manifest)
        except ValidationError as exc:
            first = exc.errors()[0]
            at = ".".join(str(p) for p in first.get("loc", ()))
            message = f"the pod is invalid, Ketch does not run it: {at}: {first.get('msg')}"
            if uid not in self._invalid:
                self._invalid.add(uid)
                log.warning("pod %s: %s", where, message)
                spawn(asyncio.to_thread(self._mark_invalid, manifest, message), f"invalid-{where}")
            return
        if not pod.metadata.uid:
            log.warning("pod %s has no uid (not written by the store?), ignored", where)
            return
        self.pods[uid] = PodWorker(self, pod, manifest.get("status"))

    def _mark_invalid(self, manifest: Manifest, message: str) -> None:
        """Thread: phase Failed with reason InvalidPod, unless the pod changed meanwhile."""
        meta = manifest.get("metadata") or {}
        status = {"phase": "Failed", "reason": "InvalidPod", "message": message}
        if manifest.get("status") == status:
            return
        update = dict(manifest, status=status)
        try:
            self.store.apply([update])
        except (ConflictError, NotFoundError):
            pass  # changed or gone: the watch brings the new version
        except StoreError as exc:
            log.warning(
                "pod %s/%s: cannot write status: %s", meta.get("namespace"), meta.get("name"), exc
            )

    def _forget(self, uid: str, worker: PodWorker) -> None:
        self.pods.pop(uid, None)
        task = worker.finish(deleted=True)
        self._terminating.add(task)
        task.add_done_callback(self._terminating.discard)

    # --- leftovers of a previous run ---------------------------------------------------

    def _clean_leftovers(self) -> None:
        root = self.layout.cluster_dir / "pods"
        if not root.is_dir():
            return
        for record_file in sorted(root.glob(f"*/{RECORD}")):
            try:
                record = json.loads(record_file.read_text())
            except (OSError, ValueError):
                continue
            if not isinstance(record, dict) or record.get("node") != self.node_name:
                continue
            stopped = _stop_recorded(record)
            sandbox = _sandbox_from_record(record)
            errors = podnet.teardown(sandbox) if sandbox is not None else []
            with contextlib.suppress(OSError):
                record_file.unlink()
            log.info(
                "cleaned up leftovers of pod %s/%s from an earlier run: %d process group(s) "
                "stopped, sandbox removed%s",
                record.get("namespace"),
                record.get("name"),
                stopped,
                f" (problems: {'; '.join(errors)})" if errors else "",
            )


def _stop_recorded(record: Mapping[str, Any]) -> int:
    groups = []
    for entry in (record.get("processes") or {}).values():
        if not isinstance(entry, dict):
            continue
        pid, ticks = entry.get("pid"), entry.get("start")
        if isinstance(pid, int) and pid > 1 and process.same_process(pid, ticks):
            groups.append(pid)
    for pgid in groups:
        process.signal_group(pgid, signal.SIGTERM)
    deadline = time.monotonic() + LEFTOVER_GRACE
    while any(process.start_ticks(g) for g in groups) and time.monotonic() < deadline:
        time.sleep(0.05)
    for pgid in groups:
        process.signal_group(pgid, signal.SIGKILL)
    return len(groups)


def _sandbox_from_record(record: Mapping[str, Any]) -> podnet.Sandbox | None:
    try:
        return podnet.Sandbox(
            node_netns=str(record["node_netns"]),
            netns=str(record["netns"]),
            veth=str(record["veth"]),
            ip=ipaddress.IPv4Address(record["ip"]),
            gateway=ipaddress.IPv4Address(record["gateway"]),
            etc_dir=Path(record["etc_dir"]),
            namespace=str(record.get("namespace")),
            pod_name=str(record.get("name")),
        )
    except (KeyError, ValueError):
        return None


class ContainerRunner:
    """One container of a pod: its process, restarts, probes and observed state."""

    def __init__(self, pod: PodWorker, spec: Container, prior: Mapping[str, Any] | None) -> None:
        self.pod = pod
        self.spec = spec
        self.name = spec.name
        self.state: State = Waiting("ContainerCreating")
        self.last: Terminated | None = None
        self.restart_count = 0
        if prior:
            count = prior.get("restartCount")
            # it ran before (running, stopped, or waiting to restart after a run)
            ran = bool(prior.get("lastState")) or any(
                k in (prior.get("state") or {}) for k in ("running", "terminated")
            )
            if isinstance(count, int) and count >= 0:
                # the earlier run's process is gone: starting again is a restart
                self.restart_count = count + (1 if ran else 0)
        self.readiness: bool | None = None
        self.proc: asyncio.subprocess.Process | None = None
        self.crashloop = CrashLoop(pod.kubelet.backoff)
        self.task: asyncio.Task[None] | None = None

    def facts(self) -> ContainerFacts:
        return ContainerFacts(
            self.name,
            self.state,
            self.last,
            self.restart_count,
            self.readiness,
            self.spec.image,
        )

    async def run(self) -> None:
        pod = self.pod
        while not pod.leaving.is_set():
            outcome = await self._run_once()
            if outcome is None or pod.leaving.is_set():
                return
            term, ran_for = outcome
            policy = pod.spec.spec.restart_policy
            restart = policy == "Always" or (policy == "OnFailure" and term.exit_code != 0)
            if not restart:
                self.state = term
                pod.changed()
                log.info(
                    "pod %s: container %s exited with %d (%s), not restarted (restartPolicy %s)",
                    pod.where,
                    self.name,
                    term.exit_code,
                    term.reason,
                    policy,
                )
                return
            delay = self.crashloop.on_exit(ran_for)
            self.last = term
            self.state = Waiting(
                "CrashLoopBackOff",
                f"back-off {delay:g}s restarting failed container={self.name} "
                f"pod={pod.spec.name}_{pod.spec.namespace}({pod.uid})",
            )
            pod.changed()
            log.info(
                "pod %s: container %s exited with %d (%s)%s; restarting in %gs (back-off)",
                pod.where,
                self.name,
                term.exit_code,
                term.reason,
                f": {term.message}" if term.message else "",
                delay,
            )
            if await pod.sleep(delay):
                return
            self.restart_count += 1

    async def _run_once(self) -> tuple[Terminated, float] | None:
        """Start the container and wait for it to end; None when the pod is leaving."""
        pod = self.pod
        env = process.container_env(
            pod.sandbox.host_name, [(e.name, e.value) for e in self.spec.env or []]
        )
        argv = process.container_argv(self.spec.command or [], self.spec.args or [], env)
        cwd = self.spec.working_dir
        started = _now()
        problem = process.start_problem(argv, env, cwd)
        if problem is not None:
            code, why = problem
            return Terminated(code, "StartError", started, _now(), None, why), 0.0
        log_path = pod.kubelet.layout.container_log(
            pod.spec.namespace, pod.spec.name, pod.uid, self.name, self.restart_count
        )
        try:
            log_path.parent.mkdir(parents=True, exist_ok=True)
            out = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o640)
        except OSError as exc:
            msg = f"cannot open the container log {log_path}: {exc.strerror}"
            return Terminated(process.CANNOT_RUN, "StartError", started, _now(), None, msg), 0.0
        try:
            proc = await asyncio.create_subprocess_exec(
                *process.pod_argv(pod.sandbox.netns, pod.sandbox.uts_path, argv),
                stdin=asyncio.subprocess.DEVNULL,
                stdout=out,
                stderr=out,
                env=env,
                cwd=cwd,
                start_new_session=True,
            )
        except (OSError, ValueError) as exc:  # ValueError: a NUL byte in argv or env
            msg = f"cannot start {argv[0]!r}: {getattr(exc, 'strerror', None) or exc}"
            return Terminated(process.CANNOT_RUN, "StartError", started, _now(), None, msg), 0.0
        finally:
            process.close_quietly(out)
        self.proc = proc
        if pod.leaving.is_set():  # the pod began terminating while this one started
            spawn(self.kill(pod.grace), f"kill-{pod.where}-{self.name}")
        pod.record_process(self.name, proc.pid)
        mono = time.monotonic()
        self.state = Running(started)
        self.readiness = False if self.spec.readiness_probe is not None else None
        pod.changed()
        log.info(
            "pod %s: container %s started (pid %d, restart %d)",
            pod.where,
            self.name,
            proc.pid,
            self.restart_count,
        )
        liveness_failed: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        probes = self._start_probes(mono, liveness_failed)
        waiter = spawn(proc.wait(), f"wait-{pod.where}-{self.name}")
        message: str | None = None
        try:
            either: set[asyncio.Future[Any]] = {waiter, liveness_failed}
            await asyncio.wait(either, return_when=asyncio.FIRST_COMPLETED)
            if not waiter.done() and liveness_failed.done():
                message = f"Liveness probe failed: {liveness_failed.result()}"
                log.info(
                    "pod %s: container %s failed its liveness probe (%s); killing it",
                    pod.where,
                    self.name,
                    liveness_failed.result(),
                )
                await self.kill(pod.grace)
            returncode = await waiter
        finally:
            for task in probes:
                task.cancel()
            await asyncio.gather(*probes, return_exceptions=True)
            if not liveness_failed.done():
                liveness_failed.cancel()
        # anything the container forked and left behind in its group goes with it
        process.signal_group(proc.pid, signal.SIGKILL)
        self.proc = None
        self.readiness = False if self.spec.readiness_probe is not None else None
        code, sig = process.exit_code(returncode)
        term = Terminated(code, terminated_reason(code), started, _now(), sig, message)
        self.state = term
        if pod.leaving.is_set():
            pod.changed()
            return None
        return term, time.monotonic() - mono

    def _start_probes(
        self, started: float, liveness_failed: asyncio.Future[str]
    ) -> list[asyncio.Task[None]]:
        tasks = []
        for kind, probe in (
            (ProbeKind.READINESS, self.spec.readiness_probe),
            (ProbeKind.LIVENESS, self.spec.liveness_probe),
        ):
            if probe is None:
                continue
            try:
                spec = spec_from_api(probe, self.spec)
            except ValueError as exc:
                log.warning("pod %s: %s probe ignored: %s", self.pod.where, kind, exc)
                continue
            tracker = ProbeTracker(kind, spec, started)
            tasks.append(
                spawn(
                    self._probe_loop(tracker, spec, liveness_failed),
                    f"probe-{kind}-{self.pod.where}-{self.name}",
                )
            )
        return tasks

    async def _probe_loop(
        self, tracker: ProbeTracker, spec: ProbeSpec, liveness_failed: asyncio.Future[str]
    ) -> None:
        pod = self.pod
        while True:
            await asyncio.sleep(max(0.0, tracker.due() - time.monotonic()))
            try:
                result = await run_probe(
                    spec, str(pod.sandbox.ip), pod.sandbox.netns, pod.kubelet.dial
                )
            except (OSError, ValueError) as exc:  # e.g. the netns vanished under us
                result = ProbeResult(False, str(exc))
            if not tracker.record(result, time.monotonic()):
                continue
            if tracker.kind is ProbeKind.READINESS:
                self.readiness = tracker.verdict
                pod.changed()
                log.info(
                    "pod %s: container %s is %s (readiness probe%s)",
                    pod.where,
                    self.name,
                    "ready" if tracker.verdict else "not ready",
                    f": {result.message}" if result.message and not result.ok else "",
                )
            elif not tracker.verdict and not liveness_failed.done():
                liveness_failed.set_result(result.message or "no detail")
                return

    async def kill(self, grace: float) -> None:
        """SIGTERM the container's process group, SIGKILL after `grace` seconds."""
        proc = self.proc
        if proc is None or proc.returncode is not None:
            return
        process.signal_group(proc.pid, signal.SIGTERM)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.shield(proc.wait()), grace)
            return
        log.info(
            "pod %s: container %s still running %gs after SIGTERM; sending SIGKILL",
            self.pod.where,
            self.name,
            grace,
        )
        process.signal_group(proc.pid, signal.SIGKILL)


class PodWorker:
    """One pod on this node, from sandbox to teardown."""

    def __init__(self, kubelet: Kubelet, pod: Pod, prior_status: Any) -> None:
        self.kubelet = kubelet
        self.spec = pod
        self.uid = str(pod.metadata.uid)
        self.where = f"{pod.namespace}/{pod.name}"
        prior = prior_status if isinstance(prior_status, dict) else {}
        self.prior_ip = prior.get("podIP") if isinstance(prior.get("podIP"), str) else None
        prior_containers = {
            c.get("name"): c for c in prior.get("containerStatuses") or [] if isinstance(c, dict)
        }
        self.runners = [
            ContainerRunner(self, c, prior_containers.get(c.name)) for c in pod.spec.containers
        ]
        self.leaving = asyncio.Event()
        self._changed = asyncio.Event()
        self.refused: tuple[str, str] | None = None
        self.pod_ip: str | None = None
        self.start_time: dt.datetime | None = None
        self.sandbox = self._sandbox(ipaddress.IPv4Address("0.0.0.0"))
        self.processes: dict[str, dict[str, int | None]] = {}
        grace = pod.spec.termination_grace_period_seconds
        self.grace = float(DEFAULT_GRACE if grace is None else grace)
        self._terminal = prior.get("phase") in ("Succeeded", "Failed")
        self.task = spawn(self._run(), f"pod-{self.where}")
        # A finished pod's status is final: leave it as it is.
        self.status_task = (
            None if self._terminal else spawn(self._status_loop(), f"pod-status-{self.where}")
        )
        self._finished: asyncio.Task[None] | None = None

    # --- helpers -----------------------------------------------------------------------

    def _sandbox(self, ip: ipaddress.IPv4Address) -> podnet.Sandbox:
        layout = self.kubelet.layout
        netns = layout.pod_netns(self.uid)
        assert self.kubelet.ipam is not None
        return podnet.Sandbox(
            node_netns=self.kubelet.node_netns,
            netns=netns,
            veth=layout.pod_veth(self.uid),
            ip=ip,
            gateway=self.kubelet.ipam.gateway,
            etc_dir=layout.etc_dir(netns),
            namespace=self.spec.namespace,
            pod_name=self.spec.name,
            hostname=podnet.pod_hostname(self.spec.name, self.spec.spec.hostname),
        )

    @property
    def pod_dir(self) -> Path:
        return self.kubelet.layout.pod_dir(self.spec.namespace, self.spec.name, self.uid)

    def changed(self) -> None:
        self._changed.set()

    async def sleep(self, seconds: float) -> bool:
        """Wait `seconds` or until the pod is leaving; True if it is leaving."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.leaving.wait(), seconds)
        return self.leaving.is_set()

    def facts(self) -> PodFacts:
        return PodFacts(
            restart_policy=self.spec.spec.restart_policy,
            containers=tuple(r.facts() for r in self.runners),
            pod_ip=self.pod_ip,
            host_ip=self.kubelet.host_ip,
            start_time=self.start_time,
            refused=self.refused,
        )

    def _write_record(self) -> None:
        sb = self.sandbox
        record = {
            "node": self.kubelet.node_name,
            "namespace": self.spec.namespace,
            "name": self.spec.name,
            "uid": self.uid,
            "node_netns": sb.node_netns,
            "netns": sb.netns,
            "veth": sb.veth,
            "ip": str(sb.ip),
            "gateway": str(sb.gateway),
            "etc_dir": str(sb.etc_dir),
            "processes": {
                name: {"pid": p["pid"], "start": p["start"]} for name, p in self.processes.items()
            },
        }
        path = self.pod_dir / RECORD
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(RECORD + ".tmp")
            tmp.write_text(json.dumps(record, indent=1))
            os.replace(tmp, path)
        except OSError as exc:
            log.warning("pod %s: cannot write %s: %s", self.where, path, exc)

    def record_process(self, container: str, pid: int) -> None:
        self.processes[container] = {"pid": pid, "start": process.start_ticks(pid)}
        self._write_record()

    # --- lifecycle ---------------------------------------------------------------------

    async def _run(self) -> None:
        if self.spec.spec.host_network:
            self.refused = (
                "HostNetworkUnsupported",
                "hostNetwork: true is not supported: Ketch runs every pod in its own network "
                "namespace; remove hostNetwork from the pod spec",
            )
            for r in self.runners:
                r.state = Waiting("PodRefused", self.refused[1])
            log.warning("pod %s refused: %s", self.where, self.refused[1])
            self.changed()
            return
        if self._terminal:
            log.info("pod %s has finished (its phase is terminal); not running it", self.where)
            return
        if not await self._make_sandbox():
            return
        self.start_time = _now()
        self.changed()
        for r in self.runners:
            r.task = spawn(r.run(), f"container-{self.where}-{r.name}")

    async def _make_sandbox(self) -> bool:
        kubelet = self.kubelet
        assert kubelet.ipam is not None
        loop = CrashLoop(kubelet.backoff)
        while not self.leaving.is_set():
            try:
                ip = kubelet.ipam.allocate(self.uid, self.prior_ip)
                self.sandbox = self._sandbox(ip)
                self._write_record()
                await asyncio.to_thread(podnet.setup, self.sandbox)
                if kubelet.cni_event_socket is not None:
                    body = cnievent.payload(
                        self.sandbox.netns_path,
                        self.spec.name,
                        self.spec.namespace,
                        self.uid,
                        [str(ip)],
                    )
                    await cnievent.cmdadd(kubelet.cni_event_socket, body)
            except (IpamError, podnet.SandboxError, cnievent.CniEventError) as exc:
                await asyncio.to_thread(podnet.teardown, self.sandbox)
                delay = loop.on_exit(0.0)
                message = f"failed to create the pod sandbox: {exc}"
                for r in self.runners:
                    r.state = Waiting("ContainerCreating", message)
                self.changed()
                log.warning("pod %s: %s; retrying in %gs", self.where, message, delay)
                if await self.sleep(delay):
                    return False
                continue
            self.pod_ip = str(ip)
            log.info("pod %s: sandbox ready (netns %s, IP %s)", self.where, self.sandbox.netns, ip)
            return True
        return False

    def finish(self, *, deleted: bool) -> asyncio.Task[None]:
        """Terminate the pod (idempotent); `deleted`: the Pod is gone from the store, so its
        IP is released and its directory removed."""
        if self._finished is None:
            self._finished = spawn(self._terminate(deleted), f"pod-terminate-{self.where}")
        return self._finished

    async def _terminate(self, deleted: bool) -> None:
        self.leaving.set()
        # No status writes from here on: a deleted pod is gone, and a pod stopped with its
        # node keeps the status it had (it must not turn Failed/Succeeded because we
        # stopped it: the next start would not run a finished pod again).
        if self.status_task is not None:
            self.status_task.cancel()
            await asyncio.gather(self.status_task, return_exceptions=True)
        # the start-up step has returned (it checks `leaving`); a failure of it was logged
        await asyncio.gather(self.task, return_exceptions=True)
        running = [r for r in self.runners if r.proc is not None]
        if running:
            log.info(
                "pod %s: %s; stopping %d container(s) (grace %gs)",
                self.where,
                "deleted" if deleted else "node stopping",
                len(running),
                self.grace,
            )
        await asyncio.gather(*(r.kill(self.grace) for r in self.runners))
        tasks = [r.task for r in self.runners if r.task is not None]
        await asyncio.gather(*tasks, return_exceptions=True)
        errors: list[str] = []
        if self.refused is None and not self._terminal:
            errors = await asyncio.to_thread(podnet.teardown, self.sandbox)
        if deleted and self.kubelet.ipam is not None:
            self.kubelet.ipam.release(self.uid)
        if deleted:
            await asyncio.to_thread(shutil.rmtree, self.pod_dir, True)
        else:
            with contextlib.suppress(OSError):
                (self.pod_dir / RECORD).unlink()
        log.info(
            "pod %s: terminated and cleaned up%s",
            self.where,
            f" (problems: {'; '.join(errors)})" if errors else "",
        )

    # --- status ------------------------------------------------------------------------

    async def _status_loop(self) -> None:
        written: dict[str, Any] | None = None
        self.changed()
        while True:
            await self._changed.wait()
            self._changed.clear()
            facts = self.facts()
            try:
                result = await asyncio.to_thread(self._write_status, facts, written)
            except StoreError as exc:
                log.warning("pod %s: cannot write status: %s; retrying", self.where, exc)
                await asyncio.sleep(1.0)
                self.changed()
                continue
            if result is None:
                return  # the pod is gone
            written = result
            await asyncio.sleep(0.05)  # coalesce bursts of changes into one write

    def _write_status(
        self, facts: PodFacts, written: dict[str, Any] | None
    ) -> dict[str, Any] | None:
        """Thread: compare-and-swap the status; returns what is stored, None if the pod is
        gone (deleted, or replaced by another with the same name)."""
        store = self.kubelet.store
        for _ in range(10):
            try:
                current = store.get("Pod", self.spec.namespace, self.spec.name)
            except NotFoundError:
                return None
            if str((current.get("metadata") or {}).get("uid")) != self.uid:
                return None
            previous = current.get("status")
            status = pod_status(facts, previous if isinstance(previous, dict) else None, _now())
            if status == previous:
                return status
            current["status"] = status
            try:
                store.apply([current])
            except ConflictError:
                continue
            except NotFoundError:
                return None
            return status
        log.warning("pod %s: status update kept conflicting; will retry", self.where)
        return written
