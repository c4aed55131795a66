"""What happens to an object between `ketch apply` and the store.

This is the Kubernetes API server's job in a real cluster: merge the user's object onto the
stored one (keeping server-owned metadata and status), reject objects in namespaces that do
not exist, allocate Service ClusterIPs, and report created/configured/unchanged per object.

ClusterIPs are allocated the way Kubernetes' range allocator did it: one cluster-scoped
`RangeAllocation` object records the allocated addresses and is written, with optimistic
concurrency on its resourceVersion, in the same atomic store transaction as the Services it
allocates for. Two writers racing for the same address cannot both commit: the loser gets a
ConflictError and retries against the new state.
"""

from __future__ import annotations

import copy
import enum
import ipaddress
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from ketch.store import ConflictError, Manifest, NotFoundError, ObjectKey, Store, StoreError

DEFAULT_SERVICE_CIDR = ipaddress.IPv4Network("10.96.0.0/16")
ALLOCATION_KIND = "RangeAllocation"
ALLOCATION_API_VERSION = "ketch.io/v1"
ALLOCATION_NAME = "service-cluster-ips"
# Namespaces that exist without being applied, as in Kubernetes.
BUILTIN_NAMESPACES = ("default", "istio-system", "ketch-system")
_MAX_RETRIES = 8
_SERVER_METADATA = ("uid", "resourceVersion", "generation", "creationTimestamp")


class AdmissionError(Exception):
    """An object was refused; the message names the object and what to change.

    `key` is the refused object and `path` the field (YAML names), so a caller that knows
    which file and document the object came from can say so (as `ketch apply` does)."""

    def __init__(self, message: str, key: ObjectKey | None = None, path: str = "") -> None:
        self.key = key
        self.path = path
        self.reason = message
        parts = [str(key)] if key is not None else []
        parts += [path] if path else []
        super().__init__(": ".join([*parts, message]))


class Action(enum.StrEnum):
    CREATED = "created"
    CONFIGURED = "configured"
    UNCHANGED = "unchanged"


@dataclass(frozen=True)
class Outcome:
    key: ObjectKey
    action: Action
    manifest: Manifest


def _meta(m: Manifest) -> dict[str, Any]:
    meta = m.setdefault("metadata", {})
    assert isinstance(meta, dict)
    return meta


def merge_onto(existing: Manifest | None, incoming: Manifest) -> Manifest:
    """The object to store: the user's fields replace the stored ones (like `kubectl
    replace`), server-owned metadata and `status` are kept. A resourceVersion the user sent
    is kept too, so that it is checked (explicit optimistic concurrency)."""
    desired = copy.deepcopy(incoming)
    if existing is None:
        return desired
    meta, old_meta = _meta(desired), existing.get("metadata", {})
    for field in _SERVER_METADATA:
        if field == "resourceVersion" and meta.get(field):
            continue
        if field in old_meta:
            meta[field] = old_meta[field]
    if "status" in existing and "status" not in desired:
        desired["status"] = copy.deepcopy(existing["status"])
    return desired


def _user_view(m: Manifest) -> Manifest:
    """The parts of an object a user owns, for change detection."""
    view = {k: v for k, v in m.items() if k not in ("metadata", "status")}
    meta = m.get("metadata", {})
    view["metadata"] = {
        k: v for k, v in meta.items() if k not in _SERVER_METADATA and v not in (None, {}, [])
    }
    return view


def is_headless(svc: Manifest) -> bool:
    return str(svc.get("spec", {}).get("clusterIP", "")) == "None"


@dataclass
class _Allocator:
    cidr: ipaddress.IPv4Network
    used: set[ipaddress.IPv4Address]
    record: Manifest  # the RangeAllocation object, with resourceVersion when it exists
    dirty: bool = False

    def reserved(self) -> dict[ipaddress.IPv4Address, str]:
        """Addresses never handed to a Service: .1 (Kubernetes' `kubernetes` Service) and .10,
        where the local cluster's DNS answers (`ketch.cluster.layout.DNS_IP`)."""
        base = self.cidr.network_address
        return {base + 1: "the API server's address", base + 10: "the cluster DNS address"}

    def claim(self, ip: ipaddress.IPv4Address, owner: ObjectKey) -> None:
        why = self.reserved().get(ip)
        if why is not None:
            raise AdmissionError(
                f"{owner}: spec.clusterIP {ip} is reserved ({why}); "
                "leave clusterIP empty to have one allocated"
            )
        if ip not in self.cidr:
            raise AdmissionError(
                f"{ip} is outside the service CIDR {self.cidr}; "
                "leave clusterIP empty to have one allocated",
                owner,
                "spec.clusterIP",
            )
        if ip in self.used:
            raise AdmissionError(
                f"{ip} is already allocated (to another Service); leave clusterIP empty to "
                "have a free one allocated",
                owner,
                "spec.clusterIP",
            )
        self.used.add(ip)
        self.dirty = True

    def allocate(self, owner: ObjectKey) -> ipaddress.IPv4Address:
        # Start after the reserved .10 (cluster DNS), then wrap to the low addresses.
        hosts = list(self.cidr.hosts())
        reserved = self.reserved()
        for ip in hosts[10:] + hosts[:10]:
            if ip not in self.used and ip not in reserved:
                self.used.add(ip)
                self.dirty = True
                return ip
        raise AdmissionError(
            f"the service CIDR {self.cidr} is exhausted; delete unused Services",
            owner,
            "spec.clusterIP",
        )

    def manifest(self) -> Manifest:
        record = copy.deepcopy(self.record)
        record["range"] = str(self.cidr)
        record["addresses"] = sorted(str(ip) for ip in self.used)
        return record


def _load_allocator(store: Store, cidr: ipaddress.IPv4Network) -> _Allocator:
    try:
        record = store.get(ALLOCATION_KIND, "", ALLOCATION_NAME)
        recorded_range = record.get("range")
        if recorded_range and recorded_range != str(cidr):
            raise AdmissionError(
                f"this store allocates ClusterIPs from {recorded_range}, not {cidr}; "
                "use the same --service-cidr as when the store was created"
            )
    except NotFoundError:
        record = {
            "apiVersion": ALLOCATION_API_VERSION,
            "kind": ALLOCATION_KIND,
            "metadata": {"name": ALLOCATION_NAME},
        }
    # The live Services are the truth; the record only serialises concurrent allocators.
    used = set()
    for svc in store.list("Service").items:
        ip = svc.get("spec", {}).get("clusterIP")
        if ip and ip != "None":
            used.add(ipaddress.IPv4Address(ip))
    return _Allocator(cidr, used, record)


def _admit_service(
    desired: Manifest, existing: Manifest | None, alloc: _Allocator, key: ObjectKey
) -> None:
    spec = desired.setdefault("spec", {})
    spec.setdefault("type", "ClusterIP")
    wanted = spec.get("clusterIP") or ""
    old = (existing or {}).get("spec", {}).get("clusterIP") or ""
    if existing is not None and old:
        if wanted and wanted != old:
            raise AdmissionError(
                f"cannot be changed (is {old}, you sent {wanted}); "
                "delete and re-create the Service to change it",
                key,
                "spec.clusterIP",
            )
        spec["clusterIP"] = old
        return
    if wanted == "None":
        return
    if wanted:
        try:
            ip = ipaddress.IPv4Address(wanted)
        except ValueError:
            raise AdmissionError(
                f"expected an IPv4 address or 'None', got {wanted!r}", key, "spec.clusterIP"
            ) from None
        alloc.claim(ip, key)
        spec["clusterIP"] = str(ip)
    else:
        spec["clusterIP"] = str(alloc.allocate(key))


def _get(store: Store, key: ObjectKey) -> Manifest | None:
    try:
        return store.get(key.kind, key.namespace, key.name)
    except NotFoundError:
        return None


def _check_namespaces(store: Store, manifests: Sequence[Manifest]) -> None:
    applied = {ObjectKey.of(m).name for m in manifests if m.get("kind") == "Namespace"}
    checked: set[str] = set()
    for m in manifests:
        ns = ObjectKey.of(m).namespace
        if not ns or ns in checked or ns in applied or ns in BUILTIN_NAMESPACES:
            continue
        if _get(store, ObjectKey("Namespace", "", ns)) is None:
            raise AdmissionError(
                f"namespace {ns!r} not found; create it first "
                f"(a Namespace document in the same apply is fine)",
                ObjectKey.of(m),
                "metadata.namespace",
            )
        checked.add(ns)


def apply(
    store: Store,
    manifests: Sequence[Manifest],
    *,
    service_cidr: ipaddress.IPv4Network = DEFAULT_SERVICE_CIDR,
    dry_run: bool = False,
) -> list[Outcome]:
    """Admit and store `manifests` atomically; return what happened to each, in order."""
    keys = [ObjectKey.of(m) for m in manifests]
    if len(set(keys)) != len(keys):
        dup = next(k for k in keys if keys.count(k) > 1)
        raise AdmissionError(
            "appears more than once in this apply (each object once per apply)", dup
        )
    _check_namespaces(store, manifests)
    for attempt in range(_MAX_RETRIES):
        alloc = _load_allocator(store, service_cidr)
        outcomes: list[Outcome] = []
        to_write: list[Manifest] = []
        for key, incoming in zip(keys, manifests, strict=True):
            existing = _get(store, key)
            desired = merge_onto(existing, incoming)
            if key.kind == "Service" and not is_headless(desired):
                _admit_service(desired, existing, alloc, key)
            if existing is not None and _user_view(desired) == _user_view(existing):
                outcomes.append(Outcome(key, Action.UNCHANGED, existing))
                continue
            action = Action.CREATED if existing is None else Action.CONFIGURED
            outcomes.append(Outcome(key, action, desired))
            to_write.append(desired)
        if dry_run or not to_write:
            return outcomes
        batch = to_write + ([alloc.manifest()] if alloc.dirty else [])
        try:
            stored = store.apply(batch)
        except ConflictError:
            # Someone else wrote one of these objects (or allocated an address) since we read
            # it. A conflict on a resourceVersion the user sent is theirs to resolve.
            if any(m.get("metadata", {}).get("resourceVersion") for m in manifests):
                raise
            if attempt == _MAX_RETRIES - 1:
                raise
            continue
        by_key = {ObjectKey.of(m): m for m in stored}
        return [Outcome(o.key, o.action, by_key.get(o.key, o.manifest)) for o in outcomes]
    raise AssertionError("unreachable")


def delete(store: Store, key: ObjectKey) -> Manifest:
    """Delete one object (a Namespace takes its objects with it; see docs/store.md). The
    built-in namespaces cannot be deleted, as in Kubernetes."""
    if key.kind == "Namespace" and key.name in BUILTIN_NAMESPACES:
        raise AdmissionError(
            f"namespace {key.name!r} is built in and may not be deleted "
            f"(built in: {', '.join(BUILTIN_NAMESPACES)})",
            key,
        )
    return store.delete(key.kind, key.namespace, key.name)


def builtin_namespace(name: str) -> Manifest:
    return {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}}


def ensure_builtin_namespaces(store: Store) -> list[Manifest]:
    """Create the built-in namespaces (`default`, `istio-system`, `ketch-system`) that are
    missing, so they exist as objects (`ketch get ns default`), as in Kubernetes where the
    API server creates them. Returns the ones created; a store that cannot be written to
    (read-only file) is left as it is."""
    existing = {
        str(m["metadata"]["name"])
        for m in store.list("Namespace").items
        if m["metadata"]["name"] in BUILTIN_NAMESPACES
    }
    missing = [builtin_namespace(n) for n in BUILTIN_NAMESPACES if n not in existing]
    if not missing:
        return []
    try:
        return store.apply(missing, create_only=True)
    except (ConflictError, StoreError):
        return []  # created meanwhile by another process, or a read-only store
