"""Kubernetes core and apps kinds: Namespace, Node, ServiceAccount, Pod, Deployment, ReplicaSet,
Service.

Ketch's local runtime runs each container as a process inside the pod's network namespace;
it does not pull images. So a container must give `command` (and optionally `args`);
`image` alone is rejected, `image` next to a command is ignored (a warning says so).
"""

from __future__ import annotations

import base64
import binascii
import ipaddress
import re
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


# --- ConfigMap, Secret ----------------------------------------------------------------------

_CONFIG_KEY = re.compile(r"^[-._a-zA-Z0-9]+$")


def _config_keys(value: Any, *, base64_values: bool = False) -> dict[str, str]:
    if not isinstance(value, dict):
        raise fail(f"expected a mapping of keys to strings, got {describe(value)}")
    for key, item in value.items():
        if not isinstance(key, str) or not _CONFIG_KEY.match(key) or len(key) > 253:
            raise fail(
                f"key {describe(key)} must be letters, digits, '-', '_' or '.' (at most 253)"
            )
        if not isinstance(item, str):
            raise fail(f"{key}: expected a string (quote it in YAML), got {describe(item)}")
        if base64_values:
            try:
                base64.b64decode(item, validate=True)
            except (binascii.Error, ValueError):
                raise fail(f"{key}: expected base64 (use stringData for plain text)") from None
    return dict(value)


ConfigData = Annotated[dict[str, str], PlainValidator(_config_keys)]
Base64Data = Annotated[
    dict[str, str], PlainValidator(lambda v: _config_keys(v, base64_values=True))
]


class ConfigMap(Resource):
    """v1 ConfigMap: stored, not mounted or injected by Ketch's local runtime."""

    api_version: Literal["v1"] = Field(default="v1", alias="apiVersion")
    kind: Literal["ConfigMap"] = "ConfigMap"
    spec: None = None
    status: None = None
    data: ConfigData | None = None
    binary_data: Base64Data | None = Field(default=None, alias="binaryData")
    immutable: bool | None = None


class Secret(Resource):
    """v1 Secret: stored (unencrypted, in the config store), not mounted or injected."""

    api_version: Literal["v1"] = Field(default="v1", alias="apiVersion")
    kind: Literal["Secret"] = "Secret"
    spec: None = None
    status: None = None
    type: str | None = None
    data: Base64Data | None = None
    string_data: ConfigData | None = Field(default=None, alias="stringData")
    immutable: bool | None = None


# --- Pod -----------------------------------------------------------------------------------


class EnvVar(KetchModel):
    name: str
    value: str | None = None
    value_from: dict[str, Any] | None = Field(
        default=None,
        alias="valueFrom",
        description="fieldRef, resourceFieldRef, configMapKeyRef or secretKeyRef: stored, "
        "not resolved by Ketch's local runtime (the variable is not set).",
    )

    @model_validator(mode="after")
    def _check(self) -> EnvVar:
        if not self.name or "=" in self.name:
            raise fail(
                f"expected an environment variable name without '=', got {describe(self.name)}",
                "name",
            )
        return self


def _check_quantity(value: Any) -> str | int | float:
    """A Kubernetes resource quantity: 500m, 1, 0.5, 128Mi, 1Gi, 1e3."""
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        raise fail(f"expected a quantity like '500m', '1' or '128Mi', got {describe(value)}")
    if isinstance(value, str) and not _QUANTITY.match(value):
        raise fail(f"expected a quantity like '500m', '1' or '128Mi', got {describe(value)}")
    return value


_QUANTITY = re.compile(
    r"^[+-]?([0-9]+(\.[0-9]*)?|\.[0-9]+)([eE][+-]?[0-9]+|Ki|Mi|Gi|Ti|Pi|Ei|n|u|m|k|M|G|T|P|E)?$"
)
Quantity = Annotated[str | int | float, PlainValidator(_check_quantity)]


class ResourceRequirements(KetchModel):
    """Compute resources (stored, not enforced by Ketch's local runtime)."""

    limits: dict[str, Quantity] | None = Field(
        default=None,
        description="Maximum amount of each resource, e.g. {cpu: 500m, memory: 128Mi}.",
    )
    requests: dict[str, Quantity] | None = Field(
        default=None, description="Amount of each resource the scheduler reserves."
    )
    claims: list[dict[str, Any]] | None = None


class Capabilities(KetchModel):
    add: list[str] | None = None
    drop: list[str] | None = None


class SeccompProfile(KetchModel):
    type: Literal["RuntimeDefault", "Localhost", "Unconfined"]
    localhost_profile: str | None = Field(default=None, alias="localhostProfile")


class SecurityContext(KetchModel):
    """Container security settings (stored, not applied by Ketch's local runtime)."""

    run_as_user: NonNegativeInt | None = Field(default=None, alias="runAsUser")
    run_as_group: NonNegativeInt | None = Field(default=None, alias="runAsGroup")
    run_as_non_root: bool | None = Field(default=None, alias="runAsNonRoot")
    read_only_root_filesystem: bool | None = Field(default=None, alias="readOnlyRootFilesystem")
    allow_privilege_escalation: bool | None = Field(default=None, alias="allowPrivilegeEscalation")
    privileged: bool | None = None
    capabilities: Capabilities | None = None
    seccomp_profile: SeccompProfile | None = Field(default=None, alias="seccompProfile")
    se_linux_options: dict[str, str] | None = Field(default=None, alias="seLinuxOptions")
    app_armor_profile: dict[str, str] | None = Field(default=None, alias="appArmorProfile")
    proc_mount: Literal["Default", "Unmasked"] | None = Field(default=None, alias="procMount")
    windows_options: dict[str, Any] | None = Field(default=None, alias="windowsOptions")


class PodSecurityContext(KetchModel):
    """Pod-wide security settings (stored, not applied by Ketch's local runtime)."""

    run_as_user: NonNegativeInt | None = Field(default=None, alias="runAsUser")
    run_as_group: NonNegativeInt | None = Field(default=None, alias="runAsGroup")
    run_as_non_root: bool | None = Field(default=None, alias="runAsNonRoot")
    fs_group: NonNegativeInt | None = Field(default=None, alias="fsGroup")
    fs_group_change_policy: Literal["OnRootMismatch", "Always"] | None = Field(
        default=None, alias="fsGroupChangePolicy"
    )
    supplemental_groups: list[NonNegativeInt] | None = Field(
        default=None, alias="supplementalGroups"
    )
    supplemental_groups_policy: str | None = Field(default=None, alias="supplementalGroupsPolicy")
    seccomp_profile: SeccompProfile | None = Field(default=None, alias="seccompProfile")
    se_linux_options: dict[str, str] | None = Field(default=None, alias="seLinuxOptions")
    app_armor_profile: dict[str, str] | None = Field(default=None, alias="appArmorProfile")
    sysctls: list[dict[str, str]] | None = None
    windows_options: dict[str, Any] | None = Field(default=None, alias="windowsOptions")


class VolumeMount(KetchModel):
    name: str = Field(description="Name of a volume of the pod (spec.volumes[].name).")
    mount_path: str = Field(alias="mountPath", description="Path inside the container.")
    read_only: bool | None = Field(default=None, alias="readOnly")
    sub_path: str | None = Field(default=None, alias="subPath")
    sub_path_expr: str | None = Field(default=None, alias="subPathExpr")
    mount_propagation: str | None = Field(default=None, alias="mountPropagation")
    recursive_read_only: str | None = Field(default=None, alias="recursiveReadOnly")


class Volume(KetchModel):
    """A pod volume: `name` plus one source (stored, not mounted by Ketch's local runtime)."""

    name: DNS1123Label
    empty_dir: dict[str, Any] | None = Field(default=None, alias="emptyDir")
    config_map: dict[str, Any] | None = Field(default=None, alias="configMap")
    secret: dict[str, Any] | None = None
    persistent_volume_claim: dict[str, Any] | None = Field(
        default=None, alias="persistentVolumeClaim"
    )
    host_path: dict[str, Any] | None = Field(default=None, alias="hostPath")
    projected: dict[str, Any] | None = None
    downward_api: dict[str, Any] | None = Field(default=None, alias="downwardAPI")
    csi: dict[str, Any] | None = None
    ephemeral: dict[str, Any] | None = None
    nfs: dict[str, Any] | None = None
    image: dict[str, Any] | None = None

    @model_validator(mode="after")
    def _one_source(self) -> Volume:
        sources = [n for n in self.model_fields_set if n != "name"]
        if len(sources) > 1:
            names = sorted(type(self).model_fields[n].alias or n for n in sources)
            raise fail(f"expected one volume source, got {len(sources)} ({', '.join(names)})")
        return self


class Toleration(KetchModel):
    key: str | None = None
    operator: Literal["Exists", "Equal"] | None = None
    value: str | None = None
    effect: Literal["NoSchedule", "PreferNoSchedule", "NoExecute"] | None = None
    toleration_seconds: int | None = Field(default=None, alias="tolerationSeconds")


class ContainerPort(KetchModel):
    name: PortName | None = None
    container_port: PortNumber = Field(alias="containerPort")
    protocol: Protocol = "TCP"
    host_port: PortNumber | None = Field(default=None, alias="hostPort")
    host_ip: IPAddress | None = Field(default=None, alias="hostIP")


class HTTPGetAction(KetchModel):
    path: str = "/"
    port: IntOrPortName
    host: str | None = None
    scheme: Literal["HTTP", "HTTPS"] = "HTTP"
    http_headers: list[dict[str, str]] | None = Field(default=None, alias="httpHeaders")


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
    termination_grace_period_seconds: PositiveInt | None = Field(
        default=None, alias="terminationGracePeriodSeconds"
    )
    grpc: dict[str, Any] | None = None

    @model_validator(mode="after")
    def _one_handler(self) -> Probe:
        handlers = [
            h for h in (self.http_get, self.tcp_socket, self.exec, self.grpc) if h is not None
        ]
        if len(handlers) != 1:
            raise fail(
                f"expected exactly one of httpGet, tcpSocket, exec, grpc, got {len(handlers)}"
            )
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
    startup_probe: Probe | None = Field(
        default=None, alias="startupProbe", description="Stored, not run by Ketch's local runtime."
    )
    image_pull_policy: Literal["Always", "IfNotPresent", "Never"] | None = Field(
        default=None, alias="imagePullPolicy", description="Ignored: Ketch pulls no images."
    )
    resources: ResourceRequirements | None = None
    security_context: SecurityContext | None = Field(default=None, alias="securityContext")
    volume_mounts: list[VolumeMount] | None = Field(default=None, alias="volumeMounts")
    env_from: list[dict[str, Any]] | None = Field(
        default=None, alias="envFrom", description="Stored, not resolved by Ketch's runtime."
    )
    lifecycle: dict[str, Any] | None = Field(
        default=None, description="postStart/preStop hooks: stored, not run by Ketch's runtime."
    )
    termination_message_path: str | None = Field(default=None, alias="terminationMessagePath")
    termination_message_policy: Literal["File", "FallbackToLogsOnError"] | None = Field(
        default=None, alias="terminationMessagePolicy"
    )
    stdin: bool | None = None
    stdin_once: bool | None = Field(default=None, alias="stdinOnce")
    tty: bool | None = None
    restart_policy: Literal["Always"] | None = Field(
        default=None, alias="restartPolicy", description="Only for init containers (sidecars)."
    )

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
            ("startupProbe", self.startup_probe),
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
    node_name: DNS1123Subdomain | None = Field(
        default=None, alias="nodeName", description="Run the pod on this node."
    )
    node_selector: Labels | None = Field(
        default=None, alias="nodeSelector", description="Run on a node with these labels."
    )
    host_network: bool | None = Field(
        default=None, alias="hostNetwork", description="Run in the node's network namespace."
    )
    service_account_name: DNS1123Subdomain = Field(
        default="default",
        alias="serviceAccountName",
        description="The pod's identity: spiffe://<trust domain>/ns/<namespace>/sa/<name>.",
    )
    service_account: DNS1123Subdomain | None = Field(
        default=None,
        alias="serviceAccount",
        description="Deprecated spelling of serviceAccountName (used when that is not set).",
    )
    automount_service_account_token: bool | None = Field(
        default=None, alias="automountServiceAccountToken"
    )
    containers: list[Container] = Field(description="The processes to run.")
    init_containers: list[Container] | None = Field(
        default=None, alias="initContainers", description="Stored, not run by Ketch's runtime."
    )
    restart_policy: Literal["Always", "OnFailure", "Never"] = Field(
        default="Always", alias="restartPolicy"
    )
    termination_grace_period_seconds: NonNegativeInt | None = Field(
        default=None,
        alias="terminationGracePeriodSeconds",
        description="Seconds between SIGTERM and SIGKILL when the pod stops.",
    )
    active_deadline_seconds: PositiveInt | None = Field(default=None, alias="activeDeadlineSeconds")
    volumes: list[Volume] | None = None
    security_context: PodSecurityContext | None = Field(default=None, alias="securityContext")
    image_pull_secrets: list[LocalObjectReference] | None = Field(
        default=None, alias="imagePullSecrets"
    )
    tolerations: list[Toleration] | None = None
    affinity: dict[str, Any] | None = Field(
        default=None, description="nodeAffinity, podAffinity, podAntiAffinity: stored, not used."
    )
    topology_spread_constraints: list[dict[str, Any]] | None = Field(
        default=None, alias="topologySpreadConstraints"
    )
    priority_class_name: str | None = Field(default=None, alias="priorityClassName")
    priority: int | None = None
    preemption_policy: str | None = Field(default=None, alias="preemptionPolicy")
    scheduler_name: str | None = Field(default=None, alias="schedulerName")
    runtime_class_name: str | None = Field(default=None, alias="runtimeClassName")
    dns_policy: Literal["ClusterFirst", "ClusterFirstWithHostNet", "Default", "None"] | None = (
        Field(default=None, alias="dnsPolicy")
    )
    dns_config: dict[str, Any] | None = Field(default=None, alias="dnsConfig")
    hostname: DNS1123Label | None = None
    subdomain: DNS1123Label | None = None
    set_hostname_as_fqdn: bool | None = Field(default=None, alias="setHostnameAsFQDN")
    host_aliases: list[dict[str, Any]] | None = Field(default=None, alias="hostAliases")
    host_pid: bool | None = Field(default=None, alias="hostPID")
    host_ipc: bool | None = Field(default=None, alias="hostIPC")
    share_process_namespace: bool | None = Field(default=None, alias="shareProcessNamespace")
    enable_service_links: bool | None = Field(default=None, alias="enableServiceLinks")
    readiness_gates: list[dict[str, Any]] | None = Field(default=None, alias="readinessGates")
    os: dict[str, Any] | None = None
    overhead: dict[str, Quantity] | None = None

    @model_validator(mode="after")
    def _check(self) -> PodSpec:
        if not self.containers:
            raise fail("expected at least one container", "containers")
        seen: set[str] = set()
        for i, c in enumerate(self.containers):
            if c.name in seen:
                raise fail(f"duplicate container name {c.name!r}", f"containers[{i}].name")
            seen.add(c.name)
        host_ports: dict[tuple[str, str, int], str] = {}  # Kubernetes refuses these
        for group, containers in (
            ("containers", self.containers),
            ("initContainers", self.init_containers or []),
        ):
            for i, c in enumerate(containers):
                for j, p in enumerate(c.ports or []):
                    if not p.host_port:
                        continue
                    at = f"{group}[{i}].ports[{j}]"
                    key = (p.protocol, str(p.host_ip or ""), p.host_port)
                    if key in host_ports:
                        raise fail(
                            f"duplicate hostPort {p.host_port}/{p.protocol}"
                            f"{f' on {p.host_ip}' if p.host_ip else ''}: {host_ports[key]} "
                            "has it already; give each a different hostPort",
                            f"{at}.hostPort",
                        )
                    host_ports[key] = f"spec.{at}"
        volumes = [v.name for v in self.volumes or []]
        for i, name in enumerate(volumes):
            if name in volumes[:i]:
                raise fail(f"duplicate volume name {name!r}", f"volumes[{i}].name")
        for group, containers in (
            ("containers", self.containers),
            ("initContainers", self.init_containers or []),
        ):
            for i, c in enumerate(containers):
                for j, mount in enumerate(c.volume_mounts or []):
                    if mount.name not in volumes:
                        raise fail(
                            f"volume {mount.name!r} is not a volume of the pod (its volumes: "
                            f"{', '.join(volumes) or 'none'}); add it to spec.volumes",
                            f"{group}[{i}].volumeMounts[{j}].name",
                        )
        if self.service_account is not None and "service_account_name" not in (
            self.model_fields_set
        ):
            # Kubernetes: serviceAccount (deprecated) is used when serviceAccountName is unset.
            # Set the attribute without marking it set, so the manifest round-trips.
            object.__setattr__(self, "service_account_name", self.service_account)
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
    progress_deadline_seconds: PositiveInt | None = Field(
        default=None, alias="progressDeadlineSeconds"
    )
    paused: bool | None = None

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
    session_affinity: Literal["None", "ClientIP"] | None = Field(
        default=None, alias="sessionAffinity"
    )
    session_affinity_config: dict[str, Any] | None = Field(
        default=None, alias="sessionAffinityConfig"
    )
    ip_families: list[Literal["IPv4", "IPv6"]] | None = Field(default=None, alias="ipFamilies")
    ip_family_policy: Literal["SingleStack", "PreferDualStack", "RequireDualStack"] | None = Field(
        default=None, alias="ipFamilyPolicy"
    )
    internal_traffic_policy: Literal["Cluster", "Local"] | None = Field(
        default=None, alias="internalTrafficPolicy"
    )
    publish_not_ready_addresses: bool | None = Field(default=None, alias="publishNotReadyAddresses")
    traffic_distribution: str | None = Field(default=None, alias="trafficDistribution")

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
    "ConfigMap",
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
    "Secret",
    "Service",
    "ServiceAccount",
    "ServicePort",
    "ServiceSpec",
    "ServiceStatus",
    "TCPSocketAction",
]
