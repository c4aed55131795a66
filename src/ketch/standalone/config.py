"""Standalone mode: the node proxy's whole view of the mesh from one YAML file instead of a
control plane.

Example (docs/ztunnel-policy.md has a longer one):

    trustDomain: cluster.local
    node: node-1
    workloads:
    - name: server
      namespace: app
      addresses: [10.0.0.2]
      serviceAccount: server
      labels: {app: server}
      ports: {http: 8080}          # named container ports, for named targetPorts
    services:
    - name: web
      namespace: app
      vips: [10.96.0.10]
      ports: [{port: 80, targetPort: http}]
      selector: {app: server}      # or list the service under a workload's `services`
    policies:                      # AuthorizationPolicy / PeerAuthentication, Istio YAML
    - apiVersion: security.istio.io/v1
      kind: AuthorizationPolicy
      ...

`load_config(path)` validates everything (pydantic at this edge, then the typed
constructors) and returns a `ProxyState` plus warnings; every problem is reported at once
with its field path (`workloads[0].addresses[1]: ...`). Watching and reloading the file is
the runtime's job, not this module's.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv6Address, ip_address
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PlainValidator,
    ValidationError,
    model_validator,
)

from ketch.api.errors import Problem
from ketch.api.loader import translate_errors
from ketch.control.translate.policy import PolicyError, translate_policies
from ketch.identity.spiffe import InvalidSpiffeId, SpiffeId
from ketch.mesh import (
    DEFAULT_ROOT_NAMESPACE,
    DEFAULT_TRUST_DOMAIN,
    HBONE_PORT,
    AppProtocol,
    GatewayAddress,
    HealthStatus,
    Locality,
    MeshError,
    NamespacedHostname,
    Service,
    ServicePort,
    TunnelProtocol,
    Workload,
    WorkloadType,
    selector_matches,
)
from ketch.ztunnel.state import ProxyState


def yaml_problem(source: str, e: yaml.YAMLError) -> Problem:
    """A YAML syntax error worded as `ketch apply` words it (file, line, column)."""
    mark = getattr(e, "problem_mark", None)
    what = getattr(e, "problem", None) or str(e)
    context = getattr(e, "context", None)
    message = f"YAML syntax error: {what}" + (f" ({context})" if context else "")
    if mark is None:
        return Problem(source, 0, "", message)
    return Problem(source, 0, "", message, line=mark.line + 1, column=mark.column + 1)


def field_problems(
    source: str, prefix: str, e: ValidationError, model: type[BaseModel]
) -> list[str]:
    """Validation errors worded as `ketch apply` words them: `file: path: expected ...`,
    `unknown field; known fields: ...`, `required field is missing` (ketch.api.loader)."""
    out = []
    for at, message in translate_errors(e, model):
        path = prefix + ("." if prefix and at and not at.startswith("[") else "") + at
        out.append(str(Problem(source, 0, path or "<top>", message)))
    return out


class ConfigError(ValueError):
    """The config file is unusable; `problems` lists every reason with its location."""

    def __init__(self, problems: Sequence[str]) -> None:
        self.problems = list(problems)
        super().__init__("\n".join(self.problems))


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


_Port = Field(ge=1, le=65535)


# Custom validators for the unions below, so errors read "workloads[0].addresses[1]: ..."
# instead of naming each union member.
def _ip(v: Any) -> IPv4Address | IPv6Address:
    if isinstance(v, IPv4Address | IPv6Address):
        return v
    try:
        return ip_address(v if isinstance(v, str) else str(v))
    except ValueError:
        raise ValueError(f"{v!r} is not an IPv4 or IPv6 address") from None


def _port_or_name(v: Any) -> int | str:
    if isinstance(v, bool) or not isinstance(v, int | str):
        raise ValueError(f"{v!r} is not a port number or port name")
    return v


def _service_refs(v: Any) -> list[str] | dict[str, dict[int, int]]:
    if isinstance(v, list) and all(isinstance(x, str) for x in v):
        return v
    if isinstance(v, dict):
        out: dict[str, dict[int, int]] = {}
        for ref, ports in v.items():
            if not isinstance(ports, dict) or not all(
                isinstance(a, int) and isinstance(b, int) and 1 <= a <= 65535 and 1 <= b <= 65535
                for a, b in ports.items()
            ):
                raise ValueError(
                    f"service {ref!r}: expected a mapping of service port to target port"
                )
            out[str(ref)] = dict(ports)
        return out
    raise ValueError(
        "expected a list of service names or a mapping of service name to {port: targetPort}"
    )


IpAddress = Annotated[IPv4Address | IPv6Address, PlainValidator(_ip)]


class WaypointConfig(_Model):
    """Exactly one of `address` (a waypoint workload IP or service VIP), `service` (a
    service name in `namespace`) or `hostname` (a service hostname in `namespace`)."""

    address: IpAddress | None = None
    service: str | None = None
    hostname: str | None = None
    namespace: str | None = None  # default: the namespace of the object declaring it
    hbone_port: int = Field(default=HBONE_PORT, alias="hbonePort", ge=1, le=65535)
    identity: str | None = None  # spiffe://... the waypoint must present

    @model_validator(mode="after")
    def _one_destination(self) -> WaypointConfig:
        given = [x for x in (self.address, self.service, self.hostname) if x is not None]
        if len(given) != 1:
            raise ValueError("set exactly one of address, service, hostname")
        if self.identity is not None:
            SpiffeId.parse(self.identity)
        return self


class LocalityConfig(_Model):
    region: str = ""
    zone: str = ""
    subzone: str = ""


class WorkloadConfig(_Model):
    name: str = Field(min_length=1)
    namespace: str = Field(default="default", min_length=1)
    uid: str | None = None  # default: <namespace>/<name>
    addresses: list[IpAddress] = Field(default_factory=list)
    service_account: str = Field(default="default", alias="serviceAccount")
    trust_domain: str | None = Field(default=None, alias="trustDomain")
    node: str = ""
    labels: dict[str, str] = Field(default_factory=dict)
    protocol: Literal["HBONE", "NONE"] = "HBONE"
    status: Literal["HEALTHY", "UNHEALTHY"] = "HEALTHY"
    waypoint: WaypointConfig | None = None
    ports: dict[str, int] = Field(default_factory=dict)  # named container ports
    # service names (same namespace) or "namespace/hostname" keys; or a mapping of those
    # to explicit {servicePort: targetPort}
    services: Annotated[list[str] | dict[str, dict[int, int]], PlainValidator(_service_refs)] = (
        Field(default_factory=list)
    )
    workload_name: str = Field(default="", alias="workloadName")
    workload_type: Literal["deployment", "cronjob", "pod", "job"] = Field(
        default="pod", alias="workloadType"
    )
    canonical_name: str = Field(default="", alias="canonicalName")
    canonical_revision: str = Field(default="", alias="canonicalRevision")
    cluster_id: str = Field(default="", alias="clusterId")
    network: str = ""
    locality: LocalityConfig | None = None
    # standalone enrollment: the pod's network namespace, a path (/run/netns/NAME,
    # /proc/PID/ns/net) or a name under /run/netns. A proxy captures the workloads that
    # have one and run on its node.
    netns: str | None = Field(default=None, min_length=1)


class ServicePortConfig(_Model):
    port: int = _Port
    target_port: Annotated[int | str, PlainValidator(_port_or_name)] | None = Field(
        default=None, alias="targetPort"
    )
    app_protocol: str | None = Field(default=None, alias="appProtocol")
    name: str | None = None


class ServiceConfig(_Model):
    name: str = Field(min_length=1)
    namespace: str = Field(default="default", min_length=1)
    hostname: str | None = None  # default: <name>.<namespace>.svc.cluster.local
    vips: list[IpAddress] = Field(default_factory=list)
    ports: list[ServicePortConfig] = Field(default_factory=list)
    selector: dict[str, str] | None = None
    subject_alt_names: list[str] = Field(default_factory=list, alias="subjectAltNames")
    waypoint: WaypointConfig | None = None


class StandaloneConfig(_Model):
    trust_domain: str = Field(default=DEFAULT_TRUST_DOMAIN, alias="trustDomain")
    root_namespace: str = Field(default=DEFAULT_ROOT_NAMESPACE, alias="rootNamespace")
    node: str = ""
    workloads: list[WorkloadConfig] = Field(default_factory=list)
    services: list[ServiceConfig] = Field(default_factory=list)
    policies: list[dict[str, Any]] = Field(default_factory=list)


@dataclass(frozen=True)
class LocalPod:
    """A workload the standalone proxy enrolls itself (it has `netns`)."""

    uid: str
    name: str
    namespace: str
    service_account: str
    node: str
    netns: str

    @property
    def netns_path(self) -> str:
        return self.netns if "/" in self.netns else f"/run/netns/{self.netns}"


@dataclass(frozen=True)
class LoadedConfig:
    state: ProxyState
    warnings: tuple[str, ...]
    node: str
    trust_domain: str
    pods: tuple[LocalPod, ...] = ()

    def pods_on(self, node: str) -> list[LocalPod]:
        """The pods a proxy for `node` enrolls: those with a netns on that node (a pod
        with no node set belongs to every proxy)."""
        return [p for p in self.pods if not p.node or not node or p.node == node]


_APP_PROTOCOLS = {
    "http": AppProtocol.HTTP11,
    "http1": AppProtocol.HTTP11,
    "http/1.1": AppProtocol.HTTP11,
    "http2": AppProtocol.HTTP2,
    "h2c": AppProtocol.HTTP2,
    "kubernetes.io/h2c": AppProtocol.HTTP2,
    "grpc": AppProtocol.GRPC,
}


def _loc(loc: Sequence[int | str]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out


def _default_hostname(name: str, namespace: str) -> str:
    return f"{name}.{namespace}.svc.cluster.local"


class _Builder:
    def __init__(self, cfg: StandaloneConfig, source: str) -> None:
        self.cfg = cfg
        self.source = source
        self.errors: list[str] = []
        self.warnings: list[str] = []

    def err(self, path: str, msg: str) -> None:
        self.errors.append(f"{self.source}: {path}: {msg}")

    def gateway(
        self, path: str, wp: WaypointConfig | None, namespace: str
    ) -> GatewayAddress | None:
        if wp is None:
            return None
        ns = wp.namespace or namespace
        dest: IPv4Address | IPv6Address | NamespacedHostname
        if wp.address is not None:
            dest = wp.address
        elif wp.service is not None:
            dest = NamespacedHostname(ns, self._hostname_of(wp.service, ns))
        else:
            assert wp.hostname is not None  # validated
            dest = NamespacedHostname(ns, wp.hostname)
        identity = SpiffeId.parse(wp.identity) if wp.identity else None
        return GatewayAddress(dest, wp.hbone_port, identity)

    def _hostname_of(self, name: str, ns: str) -> str:
        for s in self.cfg.services:
            if s.name == name and s.namespace == ns:
                return s.hostname or _default_hostname(s.name, s.namespace)
        return _default_hostname(name, ns)

    def services(self) -> list[tuple[ServiceConfig, Service]]:
        out = []
        for i, sc in enumerate(self.cfg.services):
            path = f"services[{i}]"
            ports = []
            for j, pc in enumerate(sc.ports):
                target = pc.target_port
                if target is None:
                    target = pc.port
                if isinstance(target, str):
                    # a named port (0) is resolved per workload below
                    target = int(target) if target.isdigit() else 0
                if not (0 if isinstance(pc.target_port, str) else 1) <= target <= 65535:
                    self.err(f"{path}.ports[{j}].targetPort", f"{target} is not a port (1..65535)")
                    continue
                proto = AppProtocol.UNKNOWN
                if pc.app_protocol is not None:
                    proto = _APP_PROTOCOLS.get(pc.app_protocol.lower(), AppProtocol.UNKNOWN)
                ports.append(ServicePort(pc.port, target, proto))
            sans = []
            for j, san in enumerate(sc.subject_alt_names):
                try:
                    sans.append(SpiffeId.parse(san))
                except InvalidSpiffeId as e:
                    self.err(f"{path}.subjectAltNames[{j}]", str(e))
            try:
                svc = Service(
                    name=sc.name,
                    namespace=sc.namespace,
                    hostname=sc.hostname or _default_hostname(sc.name, sc.namespace),
                    vips=tuple(sc.vips),
                    ports=tuple(ports),
                    subject_alt_names=tuple(sans),
                    waypoint=self.gateway(f"{path}.waypoint", sc.waypoint, sc.namespace),
                )
            except (MeshError, InvalidSpiffeId) as e:
                self.err(path, str(e))
                continue
            out.append((sc, svc))
        return out

    def workloads(self, services: list[tuple[ServiceConfig, Service]]) -> list[Workload]:
        by_key = {s.key: (sc, s) for sc, s in services}
        by_name = {(s.namespace, s.name): (sc, s) for sc, s in services}
        out = []
        for i, wc in enumerate(self.cfg.workloads):
            path = f"workloads[{i}]"
            members: dict[str, dict[int, int]] = {}
            refs: list[tuple[str, dict[int, int] | None]] = (
                [(r, None) for r in wc.services]
                if isinstance(wc.services, list)
                else [(r, dict(p)) for r, p in wc.services.items()]
            )
            for ref, explicit in refs:
                found = by_key.get(ref) or by_name.get((wc.namespace, ref))
                if found is None:
                    self.err(
                        f"{path}.services.{ref}",
                        f"no service {ref!r} (use a service name in namespace "
                        f"{wc.namespace!r} or <namespace>/<hostname>)",
                    )
                    continue
                members[found[1].key] = explicit if explicit is not None else {}
            for sc, svc in services:
                if (
                    sc.selector
                    and sc.namespace == wc.namespace
                    and selector_matches(sc.selector, wc.labels)
                ):
                    members.setdefault(svc.key, {})
            # resolve named target ports against this workload's named ports
            for key, portmap in members.items():
                sc, svc = by_key[key]
                for sp, pc in zip(svc.ports, sc.ports, strict=True):
                    if sp.target_port == 0 and sp.service_port not in portmap:
                        name = str(pc.target_port)
                        if name in wc.ports:
                            portmap[sp.service_port] = wc.ports[name]
                        else:
                            self.warnings.append(
                                f"{self.source}: {path}: has no port named {name!r}, so it "
                                f"receives no traffic for {svc.key} port {sp.service_port}"
                            )
            try:
                out.append(
                    Workload(
                        uid=wc.uid or f"{wc.namespace}/{wc.name}",
                        name=wc.name,
                        namespace=wc.namespace,
                        addresses=tuple(wc.addresses),
                        service_account=wc.service_account,
                        trust_domain=wc.trust_domain or self.cfg.trust_domain,
                        node=wc.node or self.cfg.node,
                        protocol=TunnelProtocol(wc.protocol),
                        waypoint=self.gateway(f"{path}.waypoint", wc.waypoint, wc.namespace),
                        canonical_name=wc.canonical_name,
                        canonical_revision=wc.canonical_revision,
                        workload_name=wc.workload_name,
                        workload_type=WorkloadType(wc.workload_type),
                        status=HealthStatus(wc.status),
                        cluster_id=wc.cluster_id,
                        labels=wc.labels,
                        services=members,
                        network=wc.network,
                        locality=(
                            Locality(wc.locality.region, wc.locality.zone, wc.locality.subzone)
                            if wc.locality
                            else Locality()
                        ),
                    )
                )
            except (MeshError, InvalidSpiffeId) as e:
                self.err(path, str(e))
        return out


def parse_config(text: str, source: str = "<config>") -> LoadedConfig:
    """Parse and validate a standalone config document. Raises `ConfigError`."""
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise ConfigError([str(yaml_problem(source, e))]) from e
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError([f"{source}: the top level must be a mapping, got {type(raw).__name__}"])
    try:
        cfg = StandaloneConfig.model_validate(raw)
    except ValidationError as e:
        raise ConfigError(field_problems(source, "", e, StandaloneConfig)) from e

    b = _Builder(cfg, source)
    services = b.services()
    workloads = b.workloads(services)
    try:
        conv = translate_policies(cfg.policies, root_namespace=cfg.root_namespace, source=source)
    except PolicyError as e:
        b.errors += e.problems
        conv = None
    if b.errors:
        raise ConfigError(b.errors)
    assert conv is not None
    try:
        state = ProxyState.build(
            workloads,
            [s for _, s in services],
            conv.authorizations,
            conv.peer_authentications,
            root_namespace=cfg.root_namespace,
        )
    except MeshError as e:
        raise ConfigError([f"{source}: {e}"]) from e
    pods = tuple(
        LocalPod(
            uid=w.uid,
            name=w.name,
            namespace=w.namespace,
            service_account=w.service_account,
            node=w.node,
            netns=wc.netns,
        )
        for wc, w in zip(cfg.workloads, workloads, strict=True)
        if wc.netns is not None
    )
    return LoadedConfig(state, (*b.warnings, *conv.warnings), cfg.node, cfg.trust_domain, pods)


def read_config(path: str | Path) -> LoadedConfig:
    """Read and validate a standalone config file. Raises `ConfigError`."""
    p = Path(path)
    try:
        text = p.read_text()
    except OSError as e:
        raise ConfigError([f"{p}: cannot read the config file: {e.strerror or e}"]) from e
    except UnicodeDecodeError as e:
        raise ConfigError([f"{p}: the config file is not UTF-8 text: {e}"]) from e
    return parse_config(text, str(p))


def load_config(path: str | Path) -> tuple[ProxyState, list[str]]:
    """Read a standalone config file: (state, warnings). Raises `ConfigError`."""
    loaded = read_config(path)
    return loaded.state, list(loaded.warnings)
