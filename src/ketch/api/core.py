"""Kubernetes core and apps kinds: Namespace, Node, ServiceAccount, Pod, Deployment, ReplicaSet,
Service.

Ketch's local runtime runs each container as a process inside the pod's network namespace;
it does not pull images. So a container must give `command` (and optionally `args`);
`image` alone is rejected, `image` next to a command is ignored (a warning says so).
"""

from __future__ import annotations

import ipaddress
from typing import Annotated, Any, ClassVar, Literal

from pydantic import Field, PlainValidator, ValidationInfo, field_validator, model_validator

from ketch.api.base import (
    CIDR,
    Condition,
    DNS1123Label,
    DNS1123Subdomain,
    IntOrPortName,
    IPAddress,
    KetchModel,
    Labels,
    LabelSelector,
    NameRule,
    NonNegativeInt,
    ObjectMeta,
    PortName,
    PortNumber,
    PositiveInt,
    Resource,
    Timestamp,
    describe,
    fail,
)
from ketch.api.base import Annotations as AnnotationsMap

NO_IMAGES = (
    "Ketch runs `command`/`args` as a process in the pod's network namespace and cannot pull images"
)

Protocol = Literal["TCP", "UDP", "SCTP"]

# --- Namespace, Node, ServiceAccount -------------------------------------------------------


class NamespaceSpec(KetchModel):
    finalizers: list[str] | None = None


class NamespaceStatus(KetchModel):
    phase: Literal["Active", "Terminating"] | None = None


class Namespace(Resource):
    """v1 Namespace (cluster-scoped). Label `istio.io/dataplane-mode: ambient` enrols it."""

    name_rule: ClassVar[NameRule] = "label"
    api_version: Literal["v1"] = Field(default="v1", alias="apiVersion")
    kind: Literal["Namespace"] = "Namespace"
    spec: NamespaceSpec | None = None
    status: NamespaceStatus | None = None


class NodeSpec(KetchModel):
    pod_cidr: CIDR | None = Field(default=None, alias="podCIDR")
    pod_cidrs: list[CIDR] | None = Field(default=None, alias="podCIDRs")
    unschedulable: bool | None = None


class NodeAddress(KetchModel):
    type: Literal["InternalIP", "ExternalIP", "Hostname", "InternalDNS", "ExternalDNS"]
    address: str


class NodeStatus(KetchModel):
    addresses: list[NodeAddress] | None = None
    conditions: list[Condition] | None = None


class Node(Resource):
    """v1 Node (cluster-scoped): a machine running a Ketch node agent and ztunnel."""

    api_version: Literal["v1"] = Field(default="v1", alias="apiVersion")
    kind: Literal["Node"] = "Node"
    spec: NodeSpec | None = None
    status: NodeStatus | None = None

    def internal_ips(self) -> list[str]:
        return [
            a.address
            for a in (self.status.addresses if self.status else None) or []
            if a.type == "InternalIP"
        ]


class LocalObjectReference(KetchModel):
    name: str


class ServiceAccount(Resource):
    """v1 ServiceAccount: the identity `spiffe://<td>/ns/<ns>/sa/<name>`."""

    api_version: Literal["v1"] = Field(default="v1", alias="apiVersion")
    kind: Literal["ServiceAccount"] = "ServiceAccount"
    spec: None = None
    status: None = None
    automount_service_account_token: bool | None = Field(
        default=None, alias="automountServiceAccountToken"
    )
    secrets: list[LocalObjectReference] | None = None
    image_pull_secrets: list[LocalObjectReference] | None = Field(
        default=None, alias="imagePullSecrets"
    )


# --- Pod -----------------------------------------------------------------------------------


class EnvVar(KetchModel):
    name: str
    value: str | None = None

    @model_validator(mode="after")
    def _check(self) -> EnvVar:
        if not self.name or "=" in self.name:
            raise fail(
                f"expected an environment variable name without '=', got {describe(self.name)}",
                "name",
            )
        return self


class ContainerPort(KetchModel):
    name: PortName | None = None
    container_port: PortNumber = Field(alias="containerPort")
    protocol: Protocol = "TCP"


class HTTPGetAction(KetchModel):
    path: str = "/"
    port: IntOrPortName
    host: str | None = None
    scheme: Literal["HTTP", "HTTPS"] = "HTTP"


class TCPSocketAction(KetchModel):
    port: IntOrPortName
    host: str | None = None


class ExecAction(KetchModel):
    command: list[str]


class Probe(KetchModel):
    """Readiness or liveness probe. Ketch runs it from the node, into the pod's network
    namespace, as the kubelet does."""

    http_get: HTTPGetAction | None = Field(default=None, alias="httpGet")
    tcp_socket: TCPSocketAction | None = Field(default=None, alias="tcpSocket")
    exec: ExecAction | None = None
    initial_delay_seconds: NonNegativeInt = Field(default=0, alias="initialDelaySeconds")
    period_seconds: PositiveInt = Field(default=10, alias="periodSeconds")
    timeout_seconds: PositiveInt = Field(default=1, alias="timeoutSeconds")
    success_threshold: PositiveInt = Field(default=1, alias="successThreshold")
    failure_threshold: PositiveInt = Field(default=3, alias="failureThreshold")

    @model_validator(mode="after")
    def _one_handler(self) -> Probe:
        handlers = [h for h in (self.http_get, self.tcp_socket, self.exec) if h is not None]
        if len(handlers) != 1:
            raise fail(f"expected exactly one of httpGet, tcpSocket, exec, got {len(handlers)}")
        return self


class Container(KetchModel):
    name: DNS1123Label
    image: str | None = None
    command: list[str] | None = Field(default=None, validate_default=True)
    args: list[str] | None = None
    env: list[EnvVar] | None = None
    ports: list[ContainerPort] | None = None
    working_dir: str | None = Field(default=None, alias="workingDir")
    readiness_probe: Probe | None = Field(default=None, alias="readinessProbe")
    liveness_probe: Probe | None = Field(default=None, alias="livenessProbe")

    @field_validator("command")
    @classmethod
    def _need_command(cls, command: list[str] | None, info: ValidationInfo) -> list[str] | None:
        # A field validator with validate_default, so it runs even when other fields of the
        # container are invalid (all problems are reported at once).
        if not command:
            name, image = info.data.get("name"), info.data.get("image")
            who = f"container {name!r}" if name else "container"
            got = f"image {image!r} but no command" if image else "no command"
            raise fail(
                f"{who} has {got}: {NO_IMAGES}; give the program to run, "
                'e.g. command: [python3, -m, http.server, "8080"]'
            )
        return command

    @model_validator(mode="after")
    def _check(self) -> Container:
        names = [p.name for p in self.ports or [] if p.name]
        for i, name in enumerate(names):
            if name in names[:i]:
                raise fail(f"duplicate port name {name!r}", "ports")
        for kind, probe in (
            ("readinessProbe", self.readiness_probe),
            ("livenessProbe", self.liveness_probe),
        ):
            if probe is None:
                continue
            action = probe.http_get or probe.tcp_socket
            if action is not None and isinstance(action.port, str) and action.port not in names:
                field = "httpGet" if probe.http_get else "tcpSocket"
                raise fail(
                    f"named port {action.port!r} is not a port of container {self.name!r} "
                    f"(its named ports: {', '.join(names) or 'none'})",
                    f"{kind}.{field}.port",
                )
        return self

    def port_by_name(self, name: str) -> int | None:
        for port in self.ports or []:
            if port.name == name:
                return port.container_port
        return None


class PodSpec(KetchModel):
    node_name: DNS1123Subdomain | None = Field(default=None, alias="nodeName")
    node_selector: Labels | None = Field(default=None, alias="nodeSelector")
    host_network: bool | None = Field(default=None, alias="hostNetwork")
    service_account_name: DNS1123Subdomain = Field(default="default", alias="serviceAccountName")
    containers: list[Container]
    restart_policy: Literal["Always", "OnFailure", "Never"] = Field(
        default="Always", alias="restartPolicy"
    )
    termination_grace_period_seconds: NonNegativeInt | None = Field(
        default=None, alias="terminationGracePeriodSeconds"
    )

    @model_validator(mode="after")
    def _check(self) -> PodSpec:
        if not self.containers:
            raise fail("expected at least one container", "containers")
        seen: set[str] = set()
        for i, c in enumerate(self.containers):
            if c.name in seen:
                raise fail(f"duplicate container name {c.name!r}", f"containers[{i}].name")
            seen.add(c.name)
        return self

    def port_by_name(self, name: str) -> int | None:
        """Resolve a named port (a Service's targetPort) against all containers."""
        for container in self.containers:
            port = container.port_by_name(name)
            if port is not None:
                return port
        return None


class PodIP(KetchModel):
    ip: IPAddress


class ContainerStateRunning(KetchModel):
    started_at: Timestamp = Field(default=None, alias="startedAt")


class ContainerStateWaiting(KetchModel):
    reason: str | None = None
    message: str | None = None


class ContainerStateTerminated(KetchModel):
    exit_code: int = Field(alias="exitCode")
    signal: int | None = None
    reason: str | None = None
    message: str | None = None
    started_at: Timestamp = Field(default=None, alias="startedAt")
    finished_at: Timestamp = Field(default=None, alias="finishedAt")


class ContainerState(KetchModel):
    running: ContainerStateRunning | None = None
    waiting: ContainerStateWaiting | None = None
    terminated: ContainerStateTerminated | None = None


class ContainerStatus(KetchModel):
    name: str
    ready: bool = False
    started: bool | None = None
    restart_count: NonNegativeInt = Field(default=0, alias="restartCount")
    state: ContainerState | None = None
    last_state: ContainerState | None = Field(default=None, alias="lastState")
    image: str | None = None


class PodStatus(KetchModel):
    phase: Literal["Pending", "Running", "Succeeded", "Failed", "Unknown"] | None = None
    pod_ip: IPAddress | None = Field(default=None, alias="podIP")
    pod_ips: list[PodIP] | None = Field(default=None, alias="podIPs")
    host_ip: IPAddress | None = Field(default=None, alias="hostIP")
    host_ips: list[PodIP] | None = Field(default=None, alias="hostIPs")
    conditions: list[Condition] | None = None
    container_statuses: list[ContainerStatus] | None = Field(
        default=None, alias="containerStatuses"
    )
    start_time: Timestamp = Field(default=None, alias="startTime")
    reason: str | None = None
    message: str | None = None


class Pod(Resource):
    """v1 Pod, run by Ketch's local runtime as processes in a network namespace."""

    api_version: Literal["v1"] = Field(default="v1", alias="apiVersion")
    kind: Literal["Pod"] = "Pod"
    spec: PodSpec
    status: PodStatus | None = None

    def is_ready(self) -> bool:
        for cond in (self.status.conditions if self.status else None) or []:
            if cond.type == "Ready":
                return cond.status == "True"
        return False


# --- Deployment ----------------------------------------------------------------------------


class TemplateMeta(KetchModel):
    name: str | None = None
    labels: Labels | None = None
    annotations: AnnotationsMap | None = None


class PodTemplateSpec(KetchModel):
    metadata: TemplateMeta | None = None
    spec: PodSpec


class RollingUpdate(KetchModel):
    max_surge: Annotated[int | str, PlainValidator(lambda v: _int_or_percent(v))] | None = Field(
        default=None, alias="maxSurge"
    )
    max_unavailable: Annotated[int | str, PlainValidator(lambda v: _int_or_percent(v))] | None = (
        Field(default=None, alias="maxUnavailable")
    )


def _int_or_percent(value: Any) -> int | str:
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return value
    if isinstance(value, str) and value.endswith("%") and value[:-1].isdigit():
        return value
    raise fail(f"expected an integer >= 0 or a percentage like '25%', got {describe(value)}")


class DeploymentStrategy(KetchModel):
    type: Literal["RollingUpdate", "Recreate"] = "RollingUpdate"
    rolling_update: RollingUpdate | None = Field(default=None, alias="rollingUpdate")


class DeploymentSpec(KetchModel):
    replicas: NonNegativeInt = 1
    selector: LabelSelector
    template: PodTemplateSpec
    strategy: DeploymentStrategy | None = None
    min_ready_seconds: NonNegativeInt | None = Field(default=None, alias="minReadySeconds")
    revision_history_limit: NonNegativeInt | None = Field(
        default=None, alias="revisionHistoryLimit"
    )

    @model_validator(mode="after")
    def _selector_matches(self) -> DeploymentSpec:
        if self.selector.is_empty():
            raise fail(
                "expected a non-empty selector (matchLabels or matchExpressions)", "selector"
            )
        labels = (self.template.metadata.labels if self.template.metadata else None) or {}
        if not self.selector.matches(labels):
            raise fail(
                "selector does not match template labels "
                f"({_fmt_labels(labels) or 'none'}); the Deployment would never own its pods",
                "template.metadata.labels",
            )
        return self


def _fmt_labels(labels: dict[str, str]) -> str:
    return ", ".join(f"{k}={v}" for k, v in labels.items())


class DeploymentStatus(KetchModel):
    observed_generation: NonNegativeInt | None = Field(default=None, alias="observedGeneration")
    replicas: NonNegativeInt | None = None
    updated_replicas: NonNegativeInt | None = Field(default=None, alias="updatedReplicas")
    ready_replicas: NonNegativeInt | None = Field(default=None, alias="readyReplicas")
    available_replicas: NonNegativeInt | None = Field(default=None, alias="availableReplicas")
    unavailable_replicas: NonNegativeInt | None = Field(default=None, alias="unavailableReplicas")
    conditions: list[Condition] | None = None


class Deployment(Resource):
    """apps/v1 Deployment: keeps `replicas` pods from `template` running."""

    api_version: Literal["apps/v1"] = Field(default="apps/v1", alias="apiVersion")
    kind: Literal["Deployment"] = "Deployment"
    spec: DeploymentSpec
    status: DeploymentStatus | None = None


class ReplicaSetSpec(KetchModel):
    replicas: NonNegativeInt = 1
    selector: LabelSelector
    template: PodTemplateSpec
    min_ready_seconds: NonNegativeInt | None = Field(default=None, alias="minReadySeconds")


class ReplicaSetStatus(KetchModel):
    replicas: NonNegativeInt = 0
    fully_labeled_replicas: NonNegativeInt | None = Field(
        default=None, alias="fullyLabeledReplicas"
    )
    ready_replicas: NonNegativeInt | None = Field(default=None, alias="readyReplicas")
    available_replicas: NonNegativeInt | None = Field(default=None, alias="availableReplicas")
    observed_generation: NonNegativeInt | None = Field(default=None, alias="observedGeneration")
    conditions: list[Condition] | None = None


class ReplicaSet(Resource):
    """apps/v1 ReplicaSet: normally created and owned by a Deployment's controller."""

    api_version: Literal["apps/v1"] = Field(default="apps/v1", alias="apiVersion")
    kind: Literal["ReplicaSet"] = "ReplicaSet"
    spec: ReplicaSetSpec
    status: ReplicaSetStatus | None = None


# --- Service -------------------------------------------------------------------------------


class ServicePort(KetchModel):
    name: PortName | None = None
    port: PortNumber
    target_port: IntOrPortName | None = Field(default=None, alias="targetPort")
    protocol: Protocol = "TCP"
    app_protocol: str | None = Field(default=None, alias="appProtocol")

    def effective_target_port(self) -> int | str:
        """targetPort, defaulting to port as Kubernetes does."""
        return self.target_port if self.target_port is not None else self.port


def _check_cluster_ip(value: Any) -> str:
    if value in ("", "None"):
        return str(value)
    if not isinstance(value, str):
        raise fail(f'expected an IP address, "None" (headless) or "", got {describe(value)}')
    try:
        ipaddress.ip_address(value)
    except ValueError:
        raise fail(
            f'expected an IP address, "None" (headless) or "", got {describe(value)}'
        ) from None
    return value


ClusterIP = Annotated[str, PlainValidator(_check_cluster_ip)]


def _check_service_type(value: Any) -> str:
    if value == "ClusterIP":
        return "ClusterIP"
    raise fail(
        f"Ketch supports only type ClusterIP, got {describe(value)} "
        "(NodePort, LoadBalancer and ExternalName are not implemented)"
    )


class ServiceSpec(KetchModel):
    selector: Labels | None = None
    ports: list[ServicePort] | None = None
    cluster_ip: ClusterIP | None = Field(default=None, alias="clusterIP")
    cluster_ips: list[ClusterIP] | None = Field(default=None, alias="clusterIPs")
    type: Annotated[str, PlainValidator(_check_service_type)] = "ClusterIP"

    @model_validator(mode="after")
    def _check(self) -> ServiceSpec:
        ports = self.ports or []
        if len(ports) > 1:
            for i, p in enumerate(ports):
                if not p.name:
                    raise fail(
                        "each port needs a name when a Service has more than one port",
                        f"ports[{i}].name",
                    )
        seen: set[tuple[int, str]] = set()
        names: set[str] = set()
        for i, p in enumerate(ports):
            if (p.port, p.protocol) in seen:
                raise fail(f"duplicate port {p.port}/{p.protocol}", f"ports[{i}].port")
            seen.add((p.port, p.protocol))
            if p.name:
                if p.name in names:
                    raise fail(f"duplicate port name {p.name!r}", f"ports[{i}].name")
                names.add(p.name)
        if not ports and self.cluster_ip != "None":
            raise fail(
                "expected at least one port (only a headless Service may have none)", "ports"
            )
        return self

    @property
    def headless(self) -> bool:
        return self.cluster_ip == "None"


class LoadBalancerStatus(KetchModel):
    ingress: list[dict[str, Any]] | None = None


class ServiceStatus(KetchModel):
    load_balancer: LoadBalancerStatus | None = Field(default=None, alias="loadBalancer")
    conditions: list[Condition] | None = None


class Service(Resource):
    """v1 Service of type ClusterIP; Ketch allocates clusterIP when it is empty."""

    name_rule: ClassVar[NameRule] = "dns1035"
    api_version: Literal["v1"] = Field(default="v1", alias="apiVersion")
    kind: Literal["Service"] = "Service"
    spec: ServiceSpec
    status: ServiceStatus | None = None


__all__ = [
    "NO_IMAGES",
    "Container",
    "ContainerPort",
    "ContainerState",
    "ContainerStatus",
    "Deployment",
    "DeploymentSpec",
    "DeploymentStatus",
    "EnvVar",
    "ExecAction",
    "HTTPGetAction",
    "Namespace",
    "Node",
    "NodeAddress",
    "NodeSpec",
    "NodeStatus",
    "ObjectMeta",
    "Pod",
    "PodSpec",
    "PodStatus",
    "PodTemplateSpec",
    "Probe",
    "ReplicaSet",
    "ReplicaSetSpec",
    "ReplicaSetStatus",
    "Service",
    "ServiceAccount",
    "ServicePort",
    "ServiceSpec",
    "ServiceStatus",
    "TCPSocketAction",
]
