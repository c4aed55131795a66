"""One test per class of validation error, asserting the whole message the user sees."""

from __future__ import annotations

import textwrap

import pytest

from ketch.api import Problem, ResourceError, load_text


def errors(text: str, source: str = "pods.yaml") -> list[str]:
    with pytest.raises(ResourceError) as info:
        load_text(textwrap.dedent(text), source)
    return str(info.value).splitlines()


POD_OK = """
apiVersion: v1
kind: Pod
metadata: {name: ok}
spec:
  containers: [{name: c, command: ["true"]}]
"""


def pod(container: str, meta: str = "{name: p}") -> str:
    return f"""
apiVersion: v1
kind: Pod
metadata: {meta}
spec:
  containers:
    - {container}
"""


def test_wrong_type_names_file_doc_and_path() -> None:
    text = POD_OK + "---" + pod("{name: c, command: [x], ports: [{containerPort: http}]}")
    assert errors(text) == [
        "pods.yaml doc 2: spec.containers[0].ports[0].containerPort: "
        "expected integer 1-65535, got 'http'"
    ]


def test_out_of_range() -> None:
    assert errors(pod("{name: c, command: [x], ports: [{containerPort: 70000}]}")) == [
        "pods.yaml doc 1: spec.containers[0].ports[0].containerPort: "
        "expected integer 1-65535, got 70000"
    ]


def test_strict_types_no_coercion() -> None:
    assert errors(pod("{name: c, command: [x], env: [{name: N, value: 5}]}")) == [
        "pods.yaml doc 1: spec.containers[0].env[0].value: expected string, got 5"
    ]


def test_unknown_field_names_the_field_and_suggests() -> None:
    assert errors(pod("{name: c, command: [x], ports: [{containerPort: 80, protocl: TCP}]}")) == [
        "pods.yaml doc 1: spec.containers[0].ports[0].protocl: unknown field "
        "(did you mean 'protocol'?); known fields: name, containerPort, protocol, hostPort, hostIP"
    ]


def test_python_field_names_are_not_accepted_in_yaml() -> None:
    assert errors(pod("{name: c, command: [x], working_dir: /tmp}")) == [
        "pods.yaml doc 1: spec.containers[0].working_dir: unknown field "
        "(did you mean 'workingDir'?); known fields: name, image, command, args, env, ports, "
        "workingDir, readinessProbe, livenessProbe, startupProbe, imagePullPolicy, resources, "
        "securityContext, volumeMounts, envFrom, lifecycle, terminationMessagePath, "
        "terminationMessagePolicy, stdin, stdinOnce, tty, restartPolicy"
    ]


def test_enum_value() -> None:
    text = pod("{name: c, command: [x], ports: [{containerPort: 80, protocol: tcp}]}")
    assert errors(text) == [
        "pods.yaml doc 1: spec.containers[0].ports[0].protocol: "
        "expected 'TCP', 'UDP' or 'SCTP', got 'tcp'"
    ]


def test_bad_name() -> None:
    assert errors(pod("{name: c, command: [x]}", meta="{name: Web_1}")) == [
        "pods.yaml doc 1: metadata.name: must be a DNS-1123 subdomain: lowercase letters, "
        "digits, '-' and '.', starting and ending with a letter or digit, got 'Web_1'"
    ]


def test_service_name_is_a_dns1035_label() -> None:
    text = """
    apiVersion: v1
    kind: Service
    metadata: {name: 1web}
    spec: {ports: [{port: 80}]}
    """
    assert errors(text, "svc.yaml") == [
        "svc.yaml doc 1: metadata.name: must be a DNS-1035 label: lowercase letters, digits "
        "and '-', starting with a letter and ending with a letter or digit, got '1web'"
    ]


def test_bad_label_key_and_value() -> None:
    assert errors(pod("{name: c, command: [x]}", meta="{name: p, labels: {-app: web}}")) == [
        "pods.yaml doc 1: metadata.labels: invalid label key '-app': name part must be "
        "letters, digits, '-', '_' or '.', starting and ending with a letter or digit"
    ]
    assert errors(pod("{name: c, command: [x]}", meta="{name: p, labels: {app: 'a b'}}")) == [
        "pods.yaml doc 1: metadata.labels: invalid label 'app': value must be empty or "
        "letters, digits, '-', '_' or '.', starting and ending with a letter or digit, "
        "got 'a b'"
    ]
    assert errors(pod("{name: c, command: [x]}", meta="{name: p, labels: {version: 1}}")) == [
        "pods.yaml doc 1: metadata.labels: label 'version': value must be a string "
        "(quote it in YAML), got 1"
    ]


def test_missing_required() -> None:
    text = """
    apiVersion: v1
    kind: Pod
    metadata: {name: p}
    spec: {}
    """
    assert errors(text) == ["pods.yaml doc 1: spec.containers: required field is missing"]


def test_missing_kind() -> None:
    lines = errors("apiVersion: v1\nmetadata: {name: p}\n")
    assert len(lines) == 1
    assert lines[0].startswith(
        "pods.yaml doc 1: kind: required field is missing; known kinds: Namespace (v1), "
    )


def test_unknown_kind_lists_known_kinds() -> None:
    text = "apiVersion: example.com/v1\nkind: Widget\nmetadata: {name: v}\n"
    assert errors(text, "vs.yaml") == [
        "vs.yaml doc 1: kind: unknown kind 'Widget'; known kinds: Namespace (v1), "
        "Node (v1), ServiceAccount (v1), Pod (v1), Deployment (apps/v1), ReplicaSet (apps/v1), "
        "Service (v1), EndpointSlice (discovery.k8s.io/v1), "
        "AuthorizationPolicy (security.istio.io/v1), PeerAuthentication (security.istio.io/v1), "
        "RequestAuthentication (security.istio.io/v1), Gateway (gateway.networking.k8s.io/v1), "
        "HTTPRoute (gateway.networking.k8s.io/v1), "
        "HorizontalPodAutoscaler (autoscaling/v2), ConfigMap (v1), Secret (v1), "
        "PodDisruptionBudget (policy/v1)"
    ]


def test_secret_data_must_be_base64() -> None:
    text = "apiVersion: v1\nkind: Secret\nmetadata: {name: s}\ndata: {password: not base64!}\n"
    assert errors(text) == [
        "pods.yaml doc 1: data: password: expected base64 (use stringData for plain text)"
    ]


def test_istio_networking_kinds_say_what_to_use_instead() -> None:
    text = "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: v}\n"
    assert errors(text, "vs.yaml") == [
        "vs.yaml doc 1: kind: Ketch does not implement Istio's VirtualService: route with a "
        "Gateway API HTTPRoute (parentRefs: the Service, as in Istio ambient) and a waypoint; "
        "see docs/resources.md"
    ]


def test_wrong_case_kind_suggests() -> None:
    lines = errors("apiVersion: v1\nkind: pod\nmetadata: {name: p}\n")
    assert lines[0].startswith("pods.yaml doc 1: kind: unknown kind 'pod' (did you mean 'Pod'?);")


def test_unknown_api_version() -> None:
    text = "apiVersion: security.istio.io/v2\nkind: AuthorizationPolicy\nmetadata: {name: p}\n"
    assert errors(text, "ap.yaml") == [
        "ap.yaml doc 1: apiVersion: unknown apiVersion 'security.istio.io/v2' for kind "
        "AuthorizationPolicy; expected security.istio.io/v1 or security.istio.io/v1beta1"
    ]


def test_yaml_syntax_error_has_line_and_column() -> None:
    text = POD_OK + "---\napiVersion: v1\nkind: Pod\nmetadata: {name: [p}\n"
    assert errors(text) == [
        "pods.yaml doc 2 line 10 column 20: YAML syntax error: expected ',' or ']', "
        "but got '}' (while parsing a flow sequence)"
    ]


def test_duplicate_yaml_key() -> None:
    text = "apiVersion: v1\nkind: Pod\nmetadata: {name: p}\nkind: Pod\n"
    assert errors(text) == [
        "pods.yaml doc 1 line 4 column 1: YAML syntax error: duplicate key 'kind'"
    ]


def test_not_a_mapping() -> None:
    assert errors("- a\n- b\n") == [
        "pods.yaml doc 1: expected a mapping with apiVersion, kind, metadata, got a list"
    ]


def test_image_without_command() -> None:
    assert errors(pod("{name: web, image: nginx:1.25}")) == [
        "pods.yaml doc 1: spec.containers[0].command: container 'web' has image 'nginx:1.25' "
        "but no command: Ketch runs `command`/`args` as a process in the pod's network "
        "namespace and cannot pull images; give the program to run, e.g. "
        'command: [python3, -m, http.server, "8080"]'
    ]


def test_selector_and_target_refs() -> None:
    text = """
    apiVersion: security.istio.io/v1
    kind: AuthorizationPolicy
    metadata: {name: p}
    spec:
      selector: {matchLabels: {app: web}}
      targetRefs: [{kind: Service, group: "", name: web}]
    """
    assert errors(text, "ap.yaml") == [
        "ap.yaml doc 1: spec.targetRefs: selector and targetRef(s) are mutually exclusive: "
        "selector picks workloads for the node proxy, targetRefs attach the policy to a "
        "waypoint/Service"
    ]


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        (
            "{action: CUSTOM}",
            "spec.provider: action CUSTOM requires provider {name: <extension provider>}",
        ),
        (
            "{rules: [{to: [{operation: {ports: [8080]}}]}]}",
            "spec.rules[0].to[0].operation.ports[0]: expected a port number as a string "
            '(quote it: "8080"), got 8080',
        ),
        (
            "{rules: [{from: [{source: {ipBlocks: [10.0.0.300]}}]}]}",
            "spec.rules[0].from[0].source.ipBlocks[0]: expected an IP address or CIDR "
            "(e.g. 10.0.0.1 or 10.0.0.0/16), got '10.0.0.300'",
        ),
        (
            "{rules: [{when: [{key: ' ', values: ['1']}]}]}",
            "spec.rules[0].when[0].key: condition key must not be empty",
        ),
        (
            "{action: PERMIT}",
            "spec.action: expected 'ALLOW', 'DENY', 'AUDIT' or 'CUSTOM', got 'PERMIT'",
        ),
    ],
)
def test_authorization_policy_istio_rules(spec: str, expected: str) -> None:
    text = f"apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {{name: p}}\nspec: {spec}\n"
    assert errors(text, "ap.yaml") == [f"ap.yaml doc 1: {expected}"]


def test_port_level_mtls_needs_selector() -> None:
    text = """
    apiVersion: security.istio.io/v1
    kind: PeerAuthentication
    metadata: {name: p}
    spec: {portLevelMtls: {8080: {mode: DISABLE}}}
    """
    assert errors(text, "pa.yaml") == [
        "pa.yaml doc 1: spec.portLevelMtls: portLevelMtls requires a selector with matchLabels "
        "(Istio rule: port-level settings apply to selected workloads only)"
    ]


def test_deployment_selector_mismatch() -> None:
    text = """
    apiVersion: apps/v1
    kind: Deployment
    metadata: {name: web}
    spec:
      selector: {matchLabels: {app: web}}
      template:
        metadata: {labels: {app: api}}
        spec: {containers: [{name: c, command: [x]}]}
    """
    assert errors(text, "deploy.yaml") == [
        "deploy.yaml doc 1: spec.template.metadata.labels: selector does not match template "
        "labels (app=api); the Deployment would never own its pods"
    ]


def test_service_type_and_cluster_ip() -> None:
    text = """
    apiVersion: v1
    kind: Service
    metadata: {name: web}
    spec: {type: LoadBalancer, clusterIP: 10.0.0, ports: [{port: 80, targetPort: 1.5}]}
    """
    assert errors(text, "svc.yaml") == [
        "svc.yaml doc 1: spec.ports[0].targetPort: expected integer 1-65535 or a port name, "
        "got 1.5",
        'svc.yaml doc 1: spec.clusterIP: expected an IP address, "None" (headless) or "", '
        "got '10.0.0'",
        "svc.yaml doc 1: spec.type: Ketch supports only type ClusterIP, got 'LoadBalancer' "
        "(NodePort, LoadBalancer and ExternalName are not implemented)",
    ]


def test_waypoint_needs_mesh_listener() -> None:
    text = """
    apiVersion: gateway.networking.k8s.io/v1
    kind: Gateway
    metadata: {name: waypoint, labels: {istio.io/waypoint-for: service}}
    spec:
      gatewayClassName: istio-waypoint
      listeners: [{name: http, port: 80, protocol: HTTP}]
    """
    assert errors(text, "gw.yaml") == [
        "gw.yaml doc 1: spec.listeners: a waypoint (gatewayClassName istio-waypoint) needs a "
        "listener {name: mesh, port: 15008, protocol: HBONE}"
    ]


def test_waypoint_for_label_value() -> None:
    text = """
    apiVersion: gateway.networking.k8s.io/v1
    kind: Gateway
    metadata: {name: waypoint, labels: {istio.io/waypoint-for: pods}}
    spec:
      gatewayClassName: istio-waypoint
      listeners: [{name: mesh, port: 15008, protocol: HBONE}]
    """
    assert errors(text, "gw.yaml") == [
        "gw.yaml doc 1: metadata.labels: invalid label 'istio.io/waypoint-for': expected one "
        "of service, workload, all, none, got 'pods'"
    ]


def test_httproute_filter_and_duration() -> None:
    text = """
    apiVersion: gateway.networking.k8s.io/v1
    kind: HTTPRoute
    metadata: {name: r}
    spec:
      rules:
        - filters: [{type: RequestHeaderModifier}]
          backendRefs: [{name: web}]
          timeouts: {request: 10 seconds}
    """
    assert errors(text, "route.yaml") == [
        "route.yaml doc 1: spec.rules[0].filters[0].requestHeaderModifier: filter type "
        "RequestHeaderModifier requires requestHeaderModifier",
        "route.yaml doc 1: spec.rules[0].backendRefs[0].port: port is required when the "
        "backend is a Service",
        "route.yaml doc 1: spec.rules[0].timeouts.request: expected a duration like '10s', "
        "'500ms' or '1h30m', got '10 seconds'",
    ]


def test_multiple_problems_are_all_collected() -> None:
    text = (
        pod("{name: c, image: nginx, ports: [{containerPort: 0}]}", meta="{name: P}")
        + "---\n"
        + POD_OK
        + "---\napiVersion: v1\nkind: Widget\nmetadata: {name: s}\n"
    )
    lines = errors(text)
    assert lines[:3] == [
        "pods.yaml doc 1: metadata.name: must be a DNS-1123 subdomain: lowercase letters, "
        "digits, '-' and '.', starting and ending with a letter or digit, got 'P'",
        "pods.yaml doc 1: spec.containers[0].command: container 'c' has image 'nginx' but no "
        "command: Ketch runs `command`/`args` as a process in the pod's network namespace and "
        'cannot pull images; give the program to run, e.g. command: [python3, -m, http.server, "8080"]',
        "pods.yaml doc 1: spec.containers[0].ports[0].containerPort: expected integer 1-65535, got 0",
    ]
    assert lines[3].startswith("pods.yaml doc 3: kind: unknown kind 'Widget'; known kinds: ")
    assert len(lines) == 4


def test_problem_format() -> None:
    assert str(Problem("a.yaml", 2, "spec.x", "bad")) == "a.yaml doc 2: spec.x: bad"
    assert str(Problem("a.yaml", 0, "", "no such file")) == "a.yaml: no such file"
    assert str(Problem("", 0, "", "unknown resource type")) == "unknown resource type"
    assert (
        str(Problem("a.yaml", 1, "", "YAML syntax error: x", line=3, column=4))
        == "a.yaml doc 1 line 3 column 4: YAML syntax error: x"
    )
