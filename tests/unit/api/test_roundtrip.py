"""Every kind round-trips: YAML -> object -> YAML gives back exactly what the user wrote."""

from __future__ import annotations

import json
from typing import Any

import pytest
import yaml

from ketch.api import (
    KINDS,
    AuthorizationPolicy,
    Deployment,
    Gateway,
    HTTPRoute,
    ObjectMeta,
    PeerAuthentication,
    Pod,
    Service,
    from_manifest,
    is_dry_run,
    to_manifest,
)
from ketch.api.core import Container, PodSpec

NAMESPACE = """
apiVersion: v1
kind: Namespace
metadata:
  name: shop
  labels: {istio.io/dataplane-mode: ambient, istio.io/use-waypoint: waypoint}
  annotations: {owner: "team-a"}
  uid: 8b0c
  resourceVersion: "12"
  generation: 1
  creationTimestamp: "2024-05-01T10:00:00Z"
status: {phase: Active}
"""

NODE = """
apiVersion: v1
kind: Node
metadata: {name: node-1}
spec: {podCIDR: 10.244.1.0/24, unschedulable: false}
status:
  addresses:
    - {type: InternalIP, address: 172.18.0.2}
    - {type: Hostname, address: node-1}
"""

SERVICE_ACCOUNT = """
apiVersion: v1
kind: ServiceAccount
metadata: {name: reviews, namespace: shop}
automountServiceAccountToken: false
"""

POD = """
apiVersion: v1
kind: Pod
metadata:
  name: web-0
  namespace: shop
  labels: {app: web}
spec:
  nodeName: node-1
  serviceAccountName: web
  restartPolicy: OnFailure
  containers:
    - name: web
      command: [python3, -m, http.server]
      args: ["8080"]
      env: [{name: MODE, value: test}, {name: EMPTY}]
      workingDir: /srv
      ports: [{name: http, containerPort: 8080, protocol: TCP}]
      readinessProbe:
        httpGet: {path: /healthz, port: http}
        initialDelaySeconds: 1
        periodSeconds: 2
        timeoutSeconds: 1
        failureThreshold: 3
    - name: side
      command: [sleep, infinity]
      readinessProbe:
        exec: {command: ["true"]}
status:
  phase: Running
  podIP: 10.244.1.5
  podIPs: [{ip: 10.244.1.5}]
  hostIP: 172.18.0.2
  conditions:
    - {type: Ready, status: "True", lastTransitionTime: "2024-05-01T10:00:00Z"}
  containerStatuses:
    - name: web
      ready: true
      restartCount: 0
      state: {running: {startedAt: "2024-05-01T10:00:00Z"}}
"""

DEPLOYMENT = """
apiVersion: apps/v1
kind: Deployment
metadata: {name: web, namespace: shop}
spec:
  replicas: 3
  selector:
    matchLabels: {app: web}
    matchExpressions: [{key: tier, operator: In, values: [front]}]
  strategy: {type: RollingUpdate, rollingUpdate: {maxSurge: 1, maxUnavailable: 25%}}
  template:
    metadata: {labels: {app: web, tier: front}}
    spec:
      containers:
        - name: web
          command: [python3, -m, http.server, "8080"]
          readinessProbe: {tcpSocket: {port: 8080}}
status: {replicas: 3, readyReplicas: 2, observedGeneration: 4}
"""

SERVICE = """
apiVersion: v1
kind: Service
metadata: {name: web, namespace: shop}
spec:
  type: ClusterIP
  clusterIP: 10.96.0.10
  selector: {app: web}
  ports:
    - {name: http, port: 80, targetPort: http, protocol: TCP, appProtocol: http}
    - {name: admin, port: 9000, targetPort: 9001}
status: {loadBalancer: {}}
"""

AUTHORIZATION_POLICY = """
apiVersion: security.istio.io/v1beta1
kind: AuthorizationPolicy
metadata:
  name: web
  namespace: shop
  annotations: {istio.io/dry-run: "true"}
spec:
  selector: {matchLabels: {app: web}}
  action: DENY
  rules:
    - from:
        - source:
            principals: [cluster.local/ns/shop/sa/bad]
            notPrincipals: ["*"]
            requestPrincipals: [iss/sub]
            notRequestPrincipals: [x]
            namespaces: [shop]
            notNamespaces: [prod]
            ipBlocks: [10.0.0.0/8, 192.168.1.1]
            notIpBlocks: ["fd00::/8"]
            remoteIpBlocks: [1.2.3.4]
            notRemoteIpBlocks: [5.6.7.0/24]
        - source: {serviceAccounts: [shop/web], notServiceAccounts: [shop/db]}
      to:
        - operation:
            hosts: [web.shop.svc.cluster.local]
            notHosts: [x]
            ports: ["8080"]
            notPorts: ["9090"]
            methods: [GET]
            notMethods: [DELETE]
            paths: [/api/*]
            notPaths: [/admin]
      when:
        - {key: source.ip, values: [10.0.0.1]}
        - {key: destination.port, notValues: ["22"]}
        - {key: "request.headers[x-user]", values: [bob]}
"""

AUTHORIZATION_POLICY_CUSTOM = """
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: ext, namespace: shop}
spec:
  targetRefs: [{group: gateway.networking.k8s.io, kind: Gateway, name: waypoint}]
  action: CUSTOM
  provider: {name: my-authz}
  rules: [{to: [{operation: {paths: [/admin]}}]}]
"""

PEER_AUTHENTICATION = """
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: web, namespace: shop}
spec:
  selector: {matchLabels: {app: web}}
  mtls: {mode: STRICT}
  portLevelMtls:
    8080: {mode: PERMISSIVE}
"""

REQUEST_AUTHENTICATION = """
apiVersion: security.istio.io/v1
kind: RequestAuthentication
metadata: {name: jwt, namespace: shop}
spec:
  targetRefs: [{kind: Service, group: "", name: web}]
  jwtRules:
    - issuer: https://issuer.example.com
      audiences: [web]
      jwksUri: https://issuer.example.com/jwks.json
      fromHeaders: [{name: x-jwt, prefix: "Bearer "}]
      fromParams: [token]
      fromCookies: [session]
      outputPayloadToHeader: x-jwt-payload
      forwardOriginalToken: true
      outputClaimToHeaders: [{header: x-sub, claim: sub}]
      timeout: 5s
"""

GATEWAY = """
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata:
  name: waypoint
  namespace: shop
  labels: {istio.io/waypoint-for: all}
spec:
  gatewayClassName: istio-waypoint
  listeners:
    - name: mesh
      port: 15008
      protocol: HBONE
      allowedRoutes: {namespaces: {from: Same}}
    - name: https
      port: 443
      protocol: HTTPS
      hostname: "*.example.com"
      tls:
        mode: Terminate
        certificateRefs: [{kind: Secret, name: cert}]
  addresses: [{type: IPAddress, value: 10.96.0.50}]
"""

HTTP_ROUTE = """
apiVersion: gateway.networking.k8s.io/v1beta1
kind: HTTPRoute
metadata: {name: web, namespace: shop}
spec:
  parentRefs:
    - {group: "", kind: Service, name: web, port: 80}
    - {name: waypoint, sectionName: mesh, namespace: shop}
  hostnames: [web.example.com]
  rules:
    - matches:
        - path: {type: PathPrefix, value: /api}
          headers: [{type: Exact, name: x-version, value: v2}]
          queryParams: [{type: RegularExpression, name: debug, value: "1|true"}]
          method: GET
      filters:
        - type: RequestHeaderModifier
          requestHeaderModifier:
            set: [{name: x-a, value: b}]
            add: [{name: x-c, value: d}]
            remove: [x-e]
        - type: URLRewrite
          urlRewrite: {path: {type: ReplacePrefixMatch, replacePrefixMatch: /v2}}
      backendRefs:
        - name: web-v2
          port: 80
          weight: 90
          filters:
            - type: ResponseHeaderModifier
              responseHeaderModifier: {set: [{name: x-backend, value: v2}]}
        - {name: web-v1, port: 80, weight: 10}
      timeouts: {request: 10s, backendRequest: 2s}
      retry: {codes: [503], attempts: 2, backoff: 100ms}
    - filters:
        - type: RequestRedirect
          requestRedirect: {scheme: https, statusCode: 301}
        - type: RequestMirror
          requestMirror: {backendRef: {name: shadow, port: 80}, percent: 10}
"""

REPLICA_SET = """
apiVersion: apps/v1
kind: ReplicaSet
metadata:
  name: web-5d8f7c
  namespace: shop
  labels: {app: web, pod-template-hash: 5d8f7c}
  ownerReferences:
  - {apiVersion: apps/v1, kind: Deployment, name: web, uid: 1b2c, controller: true}
spec:
  replicas: 2
  selector: {matchLabels: {app: web, pod-template-hash: 5d8f7c}}
  template:
    metadata: {labels: {app: web, pod-template-hash: 5d8f7c}}
    spec:
      nodeSelector: {disk: ssd}
      containers:
      - name: web
        command: [python3, -m, http.server, "8080"]
        livenessProbe: {tcpSocket: {port: 8080}, periodSeconds: 5}
status: {replicas: 2, readyReplicas: 1, availableReplicas: 1, observedGeneration: 1}
"""

ENDPOINT_SLICE = """
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: web-abc12
  namespace: shop
  labels: {kubernetes.io/service-name: web}
addressType: IPv4
endpoints:
- addresses: [10.244.1.2]
  conditions: {ready: true, serving: true, terminating: false}
  nodeName: node1
  targetRef: {kind: Pod, namespace: shop, name: web-5d8f7c-x1, uid: 9f8e}
ports:
- {name: http, port: 8080, protocol: TCP}
"""

HPA = """
apiVersion: autoscaling/v2
kind: HorizontalPodAutoscaler
metadata: {name: web, namespace: shop}
spec:
  scaleTargetRef: {apiVersion: apps/v1, kind: Deployment, name: web}
  minReplicas: 2
  maxReplicas: 10
  metrics:
  - type: Resource
    resource: {name: cpu, target: {type: Utilization, averageUtilization: 70}}
  behavior: {scaleDown: {stabilizationWindowSeconds: 300}}
"""

POD_REAL_WORLD = """
apiVersion: v1
kind: Pod
metadata: {name: real, namespace: shop}
spec:
  serviceAccount: legacy
  automountServiceAccountToken: false
  securityContext: {runAsNonRoot: true, runAsUser: 1000, fsGroup: 2000, seccompProfile: {type: RuntimeDefault}}
  imagePullSecrets: [{name: regcred}]
  tolerations: [{key: k, operator: Equal, value: v, effect: NoSchedule, tolerationSeconds: 30}]
  affinity: {nodeAffinity: {requiredDuringSchedulingIgnoredDuringExecution: {nodeSelectorTerms: [{matchExpressions: [{key: zone, operator: In, values: [a]}]}]}}}
  topologySpreadConstraints: [{maxSkew: 1, topologyKey: zone, whenUnsatisfiable: DoNotSchedule}]
  priorityClassName: high
  dnsPolicy: ClusterFirst
  hostname: real
  terminationGracePeriodSeconds: 10
  volumes:
  - {name: data, emptyDir: {}}
  - {name: cfg, configMap: {name: c, items: [{key: a, path: a}]}}
  - {name: pvc, persistentVolumeClaim: {claimName: p}}
  initContainers:
  - {name: init, command: ["true"]}
  containers:
  - name: c
    image: busybox
    imagePullPolicy: IfNotPresent
    command: [sleep, "3600"]
    env:
    - {name: A, value: "1"}
    - {name: B, valueFrom: {fieldRef: {fieldPath: metadata.name}}}
    envFrom: [{configMapRef: {name: c}}]
    resources: {requests: {cpu: 100m, memory: 64Mi}, limits: {cpu: 1, memory: 1.5Gi}}
    securityContext: {allowPrivilegeEscalation: false, readOnlyRootFilesystem: true, capabilities: {drop: [ALL]}}
    volumeMounts: [{name: data, mountPath: /data}, {name: cfg, mountPath: /cfg, readOnly: true}]
    startupProbe: {httpGet: {path: /, port: 80, httpHeaders: [{name: X, value: y}]}, failureThreshold: 30}
    livenessProbe: {grpc: {port: 9000}, periodSeconds: 5, terminationGracePeriodSeconds: 3}
    lifecycle: {preStop: {exec: {command: [sleep, "5"]}}}
    terminationMessagePolicy: FallbackToLogsOnError
"""

CONFIG_MAP = """
apiVersion: v1
kind: ConfigMap
metadata: {name: cfg, namespace: shop}
data: {app.properties: "a=1\\n", LOG_LEVEL: debug}
binaryData: {logo.png: aGVsbG8=}
immutable: true
"""

SECRET = """
apiVersion: v1
kind: Secret
metadata: {name: creds, namespace: shop}
type: Opaque
data: {password: c2VjcmV0}
stringData: {user: admin}
"""

PDB = """
apiVersion: policy/v1
kind: PodDisruptionBudget
metadata: {name: web, namespace: shop}
spec:
  maxUnavailable: 25%
  selector: {matchLabels: {app: web}}
  unhealthyPodEvictionPolicy: AlwaysAllow
"""

CASES = {
    "ConfigMap": CONFIG_MAP,
    "Secret": SECRET,
    "PodDisruptionBudget": PDB,
    "HorizontalPodAutoscaler": HPA,
    "Pod-real-world": POD_REAL_WORLD,
    "Namespace": NAMESPACE,
    "Node": NODE,
    "ServiceAccount": SERVICE_ACCOUNT,
    "Pod": POD,
    "Deployment": DEPLOYMENT,
    "ReplicaSet": REPLICA_SET,
    "EndpointSlice": ENDPOINT_SLICE,
    "Service": SERVICE,
    "AuthorizationPolicy": AUTHORIZATION_POLICY,
    "AuthorizationPolicy-custom": AUTHORIZATION_POLICY_CUSTOM,
    "PeerAuthentication": PEER_AUTHENTICATION,
    "RequestAuthentication": REQUEST_AUTHENTICATION,
    "Gateway": GATEWAY,
    "HTTPRoute": HTTP_ROUTE,
}


def test_every_kind_has_a_round_trip_case() -> None:
    assert {name.split("-")[0] for name in CASES} == set(KINDS)


@pytest.mark.parametrize("name", sorted(CASES))
def test_yaml_round_trip(name: str) -> None:
    manifest = yaml.safe_load(CASES[name])
    resource = from_manifest(manifest, source=f"{name}.yaml")
    assert type(resource) is KINDS[manifest["kind"]].model
    assert to_manifest(resource) == manifest
    # and through YAML text again
    again = yaml.safe_load(yaml.safe_dump(to_manifest(resource)))
    assert to_manifest(from_manifest(again)) == manifest


@pytest.mark.parametrize("name", sorted(CASES))
def test_json_round_trip_as_the_store_keeps_it(name: str) -> None:
    """The store keeps manifests as JSON (dict keys become strings): they load again."""
    manifest = yaml.safe_load(CASES[name])
    stored = json.loads(json.dumps(to_manifest(from_manifest(manifest))))
    assert to_manifest(from_manifest(stored)) == to_manifest(from_manifest(manifest))


def test_attributes_are_snake_case_with_defaults() -> None:
    pod = from_manifest(yaml.safe_load(POD))
    assert isinstance(pod, Pod)
    assert pod.spec.containers[0].ports is not None
    assert pod.spec.containers[0].ports[0].container_port == 8080
    assert pod.spec.service_account_name == "web"
    assert pod.is_ready()
    assert pod.spec.port_by_name("http") == 8080

    minimal = from_manifest(
        {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": "p"},
            "spec": {"containers": [{"name": "c", "command": ["true"]}]},
        }
    )
    assert isinstance(minimal, Pod)
    assert minimal.spec.service_account_name == "default"
    assert minimal.spec.restart_policy == "Always"
    # defaults are not written back: the manifest stays as the user wrote it
    assert "serviceAccountName" not in to_manifest(minimal)["spec"]

    dep = from_manifest(yaml.safe_load(DEPLOYMENT.replace("  replicas: 3\n", "")))
    assert isinstance(dep, Deployment)
    assert dep.spec.replicas == 1

    svc = from_manifest(yaml.safe_load(SERVICE))
    assert isinstance(svc, Service)
    assert svc.spec.ports is not None
    assert [p.effective_target_port() for p in svc.spec.ports] == ["http", 9001]

    ap = from_manifest(yaml.safe_load(AUTHORIZATION_POLICY))
    assert isinstance(ap, AuthorizationPolicy)
    assert is_dry_run(ap)
    rules = ap.spec.rules or []
    assert rules[0].from_ is not None
    assert rules[0].from_[0].source.ip_blocks == ["10.0.0.0/8", "192.168.1.1"]

    pa = from_manifest(yaml.safe_load(PEER_AUTHENTICATION))
    assert isinstance(pa, PeerAuthentication)
    assert pa.spec.mode_for_port(8080) == "PERMISSIVE"
    assert pa.spec.mode_for_port(80) == "STRICT"

    gw = from_manifest(yaml.safe_load(GATEWAY))
    assert isinstance(gw, Gateway)
    assert gw.is_waypoint
    assert gw.waypoint_for == "all"

    route = from_manifest(yaml.safe_load(HTTP_ROUTE))
    assert isinstance(route, HTTPRoute)
    assert route.spec.rules is not None
    assert route.spec.rules[1].effective_matches()[0].path is not None


def test_ap_default_action_is_allow() -> None:
    ap = from_manifest(
        {
            "apiVersion": "security.istio.io/v1",
            "kind": "AuthorizationPolicy",
            "metadata": {"name": "x"},
        }
    )
    assert isinstance(ap, AuthorizationPolicy)
    assert ap.spec.action == "ALLOW"
    assert not is_dry_run(ap)


def test_objects_built_in_python_serialise_with_apiversion_and_kind() -> None:
    pod = Pod(
        metadata=ObjectMeta(name="p", namespace="ns"),
        spec=PodSpec(containers=[Container(name="c", command=["sleep", "1"])]),
    )
    manifest: dict[str, Any] = to_manifest(pod)
    assert manifest == {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "p", "namespace": "ns"},
        "spec": {"containers": [{"name": "c", "command": ["sleep", "1"]}]},
    }
    assert to_manifest(from_manifest(manifest)) == manifest


def test_unquoted_timestamp_is_kept_as_rfc3339_text() -> None:
    manifest = yaml.safe_load(NAMESPACE.replace('"2024-05-01T10:00:00Z"', "2024-05-01T10:00:00Z"))
    ns = from_manifest(manifest)
    assert to_manifest(ns)["metadata"]["creationTimestamp"] == "2024-05-01T10:00:00Z"


def test_deprecated_service_account_is_the_identity_when_service_account_name_is_unset() -> None:
    pod = from_manifest(yaml.safe_load(POD_REAL_WORLD))
    assert isinstance(pod, Pod)
    assert pod.spec.service_account_name == "legacy"
    assert "serviceAccountName" not in to_manifest(pod)["spec"]  # still round-trips
