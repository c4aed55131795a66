"""`ketch` at kubectl grade (issue 12): real manifests, honest warnings, scriptable output,
the verbs users reach for, consistent errors and exit codes. The CLI runs in-process over a
real SQLite store file (the subprocess tests in test_cli.py cover the executable itself)."""

from __future__ import annotations

import io
import json
import os
import re
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from ketch.cli import main as cli_main

ROOT = Path(__file__).resolve().parents[3]
REAL_WORLD = ROOT / "examples" / "real-world"


@dataclass
class Result:
    code: int
    out: str
    err: str


class Ketch:
    def __init__(self, store: Path, capsys: pytest.CaptureFixture[str], mp: pytest.MonkeyPatch):
        self.store = store
        self.capsys = capsys
        self.mp = mp

    def __call__(self, *args: str, stdin: str | None = None, code: int = 0) -> Result:
        self.capsys.readouterr()
        self.mp.setattr(sys, "argv", ["ketch", "--store", str(self.store), *args])
        self.mp.setattr(sys, "stdin", io.StringIO(stdin or ""))
        try:
            cli_main.main()
            rc = 0
        except SystemExit as e:
            rc = int(e.code or 0)
        captured = self.capsys.readouterr()
        result = Result(rc, captured.out, captured.err)
        assert rc == code, f"ketch {' '.join(args)} exited {rc}, wanted {code}:\n{captured.err}"
        assert "Traceback" not in captured.err
        return result


@pytest.fixture
def ketch(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> Ketch:
    monkeypatch.delenv("KETCH_STORE", raising=False)
    return Ketch(tmp_path / "ketch.db", capsys, monkeypatch)


def warnings(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.startswith("Warning:")]


SHOP = """
apiVersion: v1
kind: Namespace
metadata: {name: shop}
---
apiVersion: v1
kind: Service
metadata: {name: web, namespace: shop, labels: {app: web}}
spec:
  selector: {app: web}
  ports: [{name: http, port: 80, targetPort: 8080}]
---
apiVersion: v1
kind: Service
metadata: {name: db, namespace: shop}
spec:
  selector: {app: db}
  ports: [{port: 5432}]
"""

# --- 1. real manifests -------------------------------------------------------------------


def test_real_world_set_applies_with_one_warning_per_kind_of_field(ketch: Ketch) -> None:
    res = ketch("apply", "-f", str(REAL_WORLD))
    runtime = "Ketch's local runtime"
    both = "(in 2 objects: deployment/frontend, deployment/catalog)"
    front = "(in 1 object: deployment/frontend)"
    assert warnings(res.err) == [
        "Warning: image and imagePullPolicy are ignored: Ketch runs `command`/`args` as a "
        "process in the pod's network namespace and cannot pull images " + both,
        "Warning: resources (cpu/memory requests and limits) are stored but not enforced by "
        f"{runtime} {both}",
        "Warning: securityContext (users, groups, capabilities, seccomp, read-only root "
        f"filesystem) is stored but not applied by {runtime} {front}",
        f"Warning: volumes and volumeMounts are stored but not mounted by {runtime} {front}",
        f"Warning: startupProbe is stored but not run by {runtime} (readinessProbe and "
        f"livenessProbe are) {front}",
        f"Warning: lifecycle hooks (postStart, preStop) are stored but not run by {runtime} "
        f"{front}",
        f"Warning: env valueFrom and envFrom are stored but not resolved by {runtime} (those "
        f"variables are not set) {front}",
        "Warning: scheduling constraints (tolerations, affinity, topologySpreadConstraints, "
        "priority) are stored but not used: Ketch places pods by nodeName and nodeSelector "
        f"only {front}",
        "Warning: HorizontalPodAutoscaler is stored but nothing acts on it: Ketch has no "
        "metrics pipeline or autoscaler; set the Deployment's replicas (ketch scale) instead "
        "(in 1 object: horizontalpodautoscaler/frontend)",
        "Warning: PodDisruptionBudget is stored but nothing acts on it: Ketch never evicts pods "
        "(in 1 object: poddisruptionbudget/frontend)",
        "Warning: ConfigMaps and Secrets are stored (Secrets unencrypted, in the config store) "
        f"but not mounted or injected by {runtime} (in 1 object: configmap/frontend-config)",
    ]
    assert res.err == "\n".join(warnings(res.err)) + "\n"  # warnings only, no error
    assert "horizontalpodautoscaler/frontend created" in res.out
    assert ketch("apply", "-f", str(REAL_WORLD)).out.count(" unchanged\n") == 16


def test_real_manifest_fields_round_trip(ketch: Ketch) -> None:
    ketch("apply", "-f", str(REAL_WORLD))
    docs = list(yaml.safe_load_all((REAL_WORLD / "10-frontend.yaml").read_text()))
    stored = yaml.safe_load(ketch("get", "deploy", "frontend", "-n", "shop", "-o", "yaml").out)
    assert stored["spec"] == docs[0]["spec"]
    svc = yaml.safe_load(ketch("get", "svc", "frontend", "-n", "shop", "-o", "yaml").out)
    assert {k: v for k, v in svc["spec"].items() if k != "clusterIP"} == docs[1]["spec"]
    hpa = yaml.safe_load(ketch("get", "hpa", "frontend", "-n", "shop", "-o", "yaml").out)
    assert hpa["spec"] == docs[2]["spec"]


@pytest.mark.parametrize(
    ("api_version", "kind", "message"),
    [
        (
            "networking.istio.io/v1",
            "VirtualService",
            "Ketch does not implement Istio's VirtualService: route with a Gateway API "
            "HTTPRoute (parentRefs: the Service, as in Istio ambient) and a waypoint; see "
            "docs/resources.md",
        ),
        (
            "networking.istio.io/v1beta1",
            "DestinationRule",
            "Ketch does not implement Istio's DestinationRule: mesh traffic is always mutual "
            "TLS (HBONE), load balancing is round robin, and subsets become one Service per "
            "version used as HTTPRoute backendRefs with weights; remove it from the file",
        ),
        (
            "networking.istio.io/v1",
            "ServiceEntry",
            "Ketch does not implement Istio's ServiceEntry: there is no egress or "
            "external-service registry; a Service without a selector plus an EndpointSlice "
            "names endpoints outside the mesh",
        ),
        (
            "networking.istio.io/v1",
            "Sidecar",
            "Sidecar does not apply in ambient mode (there are no sidecars; Istio ignores it "
            "for ambient workloads too); remove it from the file",
        ),
        (
            "networking.istio.io/v1",
            "Gateway",
            "Ketch does not implement Istio's networking.istio.io Gateway: use a Gateway API "
            "Gateway (apiVersion gateway.networking.k8s.io/v1) with HTTPRoutes",
        ),
    ],
)
def test_istio_networking_kinds_are_refused_with_what_to_use(
    ketch: Ketch, api_version: str, kind: str, message: str
) -> None:
    doc = f"apiVersion: {api_version}\nkind: {kind}\nmetadata: {{name: x}}\nspec: {{}}\n"
    res = ketch("apply", "-f", "-", stdin=doc, code=1)
    assert res.err == f"error: <stdin> doc 1: kind: {message}\n"


def test_image_only_container_keeps_its_clear_error(ketch: Ketch) -> None:
    doc = "apiVersion: v1\nkind: Pod\nmetadata: {name: p}\nspec: {containers: [{name: c, image: nginx}]}\n"
    res = ketch("apply", "-f", "-", stdin=doc, code=1)
    assert res.err == (
        "error: <stdin> doc 1: spec.containers[0].command: container 'c' has image 'nginx' but "
        "no command: Ketch runs `command`/`args` as a process in the pod's network namespace "
        "and cannot pull images; give the program to run, e.g. command: [python3, -m, "
        'http.server, "8080"]\n'
    )


def test_volume_mount_must_name_a_volume(ketch: Ketch) -> None:
    doc = (
        "apiVersion: v1\nkind: Pod\nmetadata: {name: p}\nspec:\n  containers:\n"
        "  - {name: c, command: [x], volumeMounts: [{name: data, mountPath: /d}]}\n"
    )
    res = ketch("apply", "-f", "-", stdin=doc, code=1)
    assert res.err == (
        "error: <stdin> doc 1: spec.containers[0].volumeMounts[0].name: volume 'data' is not a "
        "volume of the pod (its volumes: none); add it to spec.volumes\n"
    )


# --- 2. what is not enforced ----------------------------------------------------------------

NO_WAYPOINT = (
    SHOP
    + """---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: web, namespace: shop}
spec:
  parentRefs: [{group: "", kind: Service, name: web}]
  rules: [{backendRefs: [{name: web, port: 80}]}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: get-only, namespace: shop}
spec:
  targetRefs: [{kind: Gateway, group: gateway.networking.k8s.io, name: waypoint}]
  rules: [{to: [{operation: {methods: [GET]}}]}]
---
apiVersion: v1
kind: Namespace
metadata: {name: odd, labels: {istio.io/dataplane-mode: sidecar}}
"""
)


def test_apply_warns_about_objects_nothing_acts_on(ketch: Ketch) -> None:
    res = ketch("apply", "-f", "-", stdin=NO_WAYPOINT)
    assert warnings(res.err) == [
        'Warning: <stdin> doc 6: metadata.labels["istio.io/dataplane-mode"]: '
        "istio.io/dataplane-mode: 'sidecar' is stored but means nothing to Ketch: the values "
        "are 'ambient' (join the mesh) and 'none' (opt out)",
        "Warning: <stdin> doc 4: httproute/web is stored but not enforced (NoWaypoint): "
        "Service shop/web uses no waypoint (label it, or its namespace, "
        "istio.io/use-waypoint=<waypoint>): no waypoint programs this route",
        "Warning: <stdin> doc 5: authorizationpolicy/get-only is stored but not enforced "
        "(NoWaypoint): waypoint Gateway shop/waypoint does not exist: no waypoint enforces "
        "this policy",
    ]
    table = ketch("get", "httproute,ap", "-n", "shop").out
    assert "httproute/web   <none>      False      NoWaypoint   " in table
    assert "authorizationpolicy/get-only   ALLOW    False      NoWaypoint   " in table
    wide = ketch("get", "ap", "get-only", "-n", "shop", "-o", "wide", "--no-headers").out
    assert "   NoWaypoint   waypoint Gateway shop/waypoint does not exist: no waypoint " in wide
    # Adding the waypoint and the label makes both accepted, computed at read time.
    waypoint = (
        "apiVersion: gateway.networking.k8s.io/v1\nkind: Gateway\n"
        "metadata: {name: waypoint, namespace: shop}\n"
        "spec: {gatewayClassName: istio-waypoint, "
        "listeners: [{name: mesh, port: 15008, protocol: HBONE}]}\n"
    )
    assert warnings(ketch("apply", "-f", "-", stdin=waypoint).err) == []
    ketch("label", "svc", "web", "-n", "shop", "istio.io/use-waypoint=waypoint")
    got = ketch("get", "httproute,ap", "-n", "shop", "-o", "custom-columns=NAME:.metadata.name").out
    assert got.splitlines() == ["NAME", "web", "get-only"]
    table = ketch("get", "httproute", "-n", "shop", "--no-headers").out
    assert table.startswith("web   <none>   True   Accepted   ")
    waypoint_text = ketch("describe", "gateway", "waypoint", "-n", "shop").out
    assert "Used by:\n  Service shop/web\n" in waypoint_text
    described = ketch("describe", "httproute", "web", "-n", "shop").out
    assert "Accepted   True     Accepted   programmed into the parents' waypoints" in described


def test_request_authentication_without_waypoint(ketch: Ketch) -> None:
    doc = (
        "apiVersion: security.istio.io/v1\nkind: RequestAuthentication\n"
        "metadata: {name: jwt}\nspec: {jwtRules: [{issuer: x}]}\n"
    )
    res = ketch("apply", "-f", "-", stdin=doc)
    assert warnings(res.err) == [
        "Warning: <stdin> doc 1: spec: RequestAuthentication is enforced only by a waypoint: "
        "without targetRefs it has no effect in ambient mode (use targetRefs to a Service or "
        "Gateway)"
    ]
    assert ketch("get", "ra", "--no-headers").out.startswith("jwt   False   NoWaypoint   ")


# --- 3. output ----------------------------------------------------------------------------


def test_tables_are_never_cut_and_have_no_trailing_spaces(ketch: Ketch) -> None:
    long = "a-very-long-service-name-that-would-not-fit-in-a-narrow-term"
    ketch("apply", "-f", "-", stdin=SHOP.replace("name: db,", f"name: {long},"))
    ketch.mp.setenv("COLUMNS", "20")
    text = ketch("get", "svc", "-n", "shop", "-o", "wide", "--show-labels").out
    header, first, second = text.splitlines()
    assert header.split() == [
        "NAME",
        "TYPE",
        "CLUSTER-IP",
        "PORT(S)",
        "AGE",
        "SELECTOR",
        "WAYPOINT",
        "LABELS",
    ]
    assert header.startswith("NAME" + " " * (len(long) - 4) + "   TYPE        CLUSTER-IP   ")
    assert first.startswith(long + "   ClusterIP   10.96.")
    assert first.endswith("   app=db     <none>     <none>")  # the last cell: no padding after
    assert second.endswith("   app=web    <none>     app=web")
    assert [line.index("CLUSTER-IP") for line in [header]] == [first.index("10.96.")]


def test_get_through_a_pipe_equals_the_table(tmp_path: Path) -> None:
    """`ketch get ... | cat` is the terminal's table: the real executable, stdout a pipe."""
    env = {**os.environ, "KETCH_STORE": str(tmp_path / "k.db"), "COLUMNS": "30"}
    run = [sys.executable, "-m", "ketch.cli.main"]
    subprocess.run(
        [*run, "apply", "-f", "-"], input=SHOP, env=env, check=True, text=True, capture_output=True
    )
    piped = subprocess.run(
        [*run, "get", "svc", "-n", "shop", "-o", "wide"],
        env=env,
        check=True,
        text=True,
        capture_output=True,
    ).stdout
    header, *rows = piped.splitlines()
    assert header.split() == [
        "NAME",
        "TYPE",
        "CLUSTER-IP",
        "PORT(S)",
        "AGE",
        "SELECTOR",
        "WAYPOINT",
    ]
    assert [r.split()[0] for r in rows] == ["db", "web"]
    assert all(len(r.split()) == 7 for r in rows)


def test_get_in_a_terminal_equals_get_through_a_pipe(tmp_path: Path) -> None:
    """The acceptance check `ketch get ... | cat` == the terminal's table, with a real pty
    (a narrow one: nothing is cut or wrapped either way)."""
    import fcntl
    import pty
    import struct
    import termios

    env = {**os.environ, "KETCH_STORE": str(tmp_path / "k.db")}
    env.pop("COLUMNS", None)
    run = [sys.executable, "-m", "ketch.cli.main"]
    subprocess.run(
        [*run, "apply", "-f", "-"], input=SHOP, env=env, check=True, text=True, capture_output=True
    )
    args = [*run, "get", "svc", "-n", "shop", "-o", "wide", "--show-labels"]
    piped = subprocess.run(args, env=env, check=True, text=True, capture_output=True).stdout
    leader, follower = pty.openpty()
    fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 40, 0, 0))
    try:
        proc = subprocess.run(args, env=env, stdout=follower, stderr=subprocess.DEVNULL, timeout=60)
        assert proc.returncode == 0
        os.close(follower)
        chunks = []
        while True:
            try:
                chunk = os.read(leader, 4096)
            except OSError:  # EIO: the terminal's writer has gone
                break
            if not chunk:
                break
            chunks.append(chunk)
    finally:
        os.close(leader)
    terminal = b"".join(chunks).decode().replace("\r\n", "\n")

    def same_age(text: str) -> str:  # the two runs are seconds apart
        return re.sub(r"   (?:[0-9]+[smhd]|AGE) +", "   AGE ", text)

    assert same_age(terminal) == same_age(piped)
    assert max(len(line) for line in piped.splitlines()) > 40  # wider than the terminal


def test_output_formats(ketch: Ketch) -> None:
    ketch("apply", "-f", "-", stdin=SHOP)
    assert ketch("get", "svc", "-n", "shop", "-o", "name").out == "service/db\nservice/web\n"
    jp = ketch(
        "get",
        "svc",
        "-n",
        "shop",
        "-o",
        'jsonpath={range .items[*]}{.metadata.name}{"\\t"}{.spec.ports[0].port}{"\\n"}{end}',
    ).out
    assert jp == "db\t5432\nweb\t80\n"
    assert (
        ketch("get", "svc", "web", "-n", "shop", "-o", "jsonpath={.spec.ports[*].name}").out
        == "http"
    )
    assert (
        ketch(
            "get",
            "svc",
            "-n",
            "shop",
            "-o",
            'jsonpath={.items[?(@.metadata.name=="web")].spec.selector.app}',
        ).out
        == "web"
    )
    cc = ketch(
        "get",
        "svc",
        "-n",
        "shop",
        "-o",
        "custom-columns=NAME:.metadata.name,PORT:.spec.ports[*].port,APP:.metadata.labels.app",
        "--sort-by",
        ".spec.ports[0].port",
    ).out
    assert cc == "NAME   PORT   APP\nweb    80     web\ndb     5432   <none>\n"
    rows = ketch("get", "svc", "-n", "shop", "--no-headers", "--sort-by", "{.metadata.name}").out
    assert [r.split()[:2] for r in rows.splitlines()] == [["db", "ClusterIP"], ["web", "ClusterIP"]]
    one = json.loads(ketch("get", "svc", "web", "-n", "shop", "-o", "json").out)
    assert one["kind"] == "Service"
    listed = json.loads(ketch("get", "svc", "-n", "shop", "-l", "app=web", "-o", "json").out)
    assert listed["kind"] == "List"
    assert len(listed["items"]) == 1
    assert listed["metadata"]["resourceVersion"].isdigit()
    two = yaml.safe_load(ketch("get", "svc", "web", "db", "-n", "shop", "-o", "yaml").out)
    assert two["kind"] == "List"
    assert [i["metadata"]["name"] for i in two["items"]] == ["web", "db"]
    assert (
        yaml.safe_load(ketch("get", "svc/web", "-n", "shop", "-o", "yaml").out)["kind"] == "Service"
    )
    empty = yaml.safe_load(ketch("get", "svc", "-n", "default", "-o", "yaml").out)
    assert empty["kind"] == "List"
    assert empty["items"] == []
    bad = ketch("get", "svc", "-o", "jsonpath={.items[", code=2)
    assert bad.err.startswith("error: jsonpath '{.items[': unclosed '{' at position 1")


def test_watch_prints_changes_after_the_list_and_stops(tmp_path: Path) -> None:
    env = {**os.environ, "KETCH_STORE": str(tmp_path / "k.db")}
    run = [sys.executable, "-m", "ketch.cli.main"]
    subprocess.run(
        [*run, "apply", "-f", "-"], input=SHOP, env=env, check=True, text=True, capture_output=True
    )
    watcher = subprocess.Popen(
        [*run, "get", "svc", "-n", "shop", "-w", "-o", "name"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        assert watcher.stdout is not None
        assert watcher.stdout.readline() == "service/db\n"
        assert watcher.stdout.readline() == "service/web\n"
        subprocess.run(
            [*run, "label", "svc", "web", "-n", "shop", "x=1"],
            env=env,
            check=True,
            capture_output=True,
        )
        subprocess.run(
            [*run, "delete", "svc", "db", "-n", "shop"], env=env, check=True, capture_output=True
        )
        assert watcher.stdout.readline() == "service/web\n"  # MODIFIED
        assert watcher.stdout.readline() == "service/db\n"  # DELETED
    finally:
        if watcher.poll() is None:
            watcher.kill()  # the watch runs until interrupted; stop the one we started
        watcher.wait()
        assert watcher.stdout is not None
        watcher.stdout.close()


RS_AND_PODS = """
apiVersion: apps/v1
kind: Deployment
metadata: {name: web, namespace: shop, uid: will-be-replaced}
spec:
  selector: {matchLabels: {app: web}}
  template:
    metadata: {labels: {app: web}}
    spec: {containers: [{name: c, command: [x]}]}
"""


def test_describe_shows_related_objects_conditions_and_history(ketch: Ketch) -> None:
    ketch("apply", "-f", "-", stdin=SHOP)
    dep = RS_AND_PODS.replace(", uid: will-be-replaced", "")
    ketch("apply", "-f", "-", stdin=dep)
    uid = json.loads(ketch("get", "deploy", "web", "-n", "shop", "-o", "json").out)["metadata"][
        "uid"
    ]
    owned = f"""
apiVersion: apps/v1
kind: ReplicaSet
metadata:
  name: web-5d8f
  namespace: shop
  ownerReferences: [{{apiVersion: apps/v1, kind: Deployment, name: web, uid: {uid}, controller: true}}]
spec:
  replicas: 1
  selector: {{matchLabels: {{app: web}}}}
  template:
    metadata: {{labels: {{app: web}}}}
    spec: {{containers: [{{name: c, command: [x]}}]}}
---
apiVersion: v1
kind: Pod
metadata:
  name: web-5d8f-abcde
  namespace: shop
  labels: {{app: web}}
  ownerReferences: [{{apiVersion: apps/v1, kind: ReplicaSet, name: web-5d8f, uid: x, controller: true}}]
spec: {{containers: [{{name: c, command: [x]}}]}}
status:
  phase: Running
  podIP: 10.244.0.7
  conditions: [{{type: Ready, status: "True"}}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {{name: web-abc, namespace: shop, labels: {{kubernetes.io/service-name: web}}}}
addressType: IPv4
endpoints: [{{addresses: [10.244.0.7], conditions: {{ready: true}}, targetRef: {{kind: Pod, name: web-5d8f-abcde}}}}]
ports: [{{name: http, port: 8080}}]
"""
    ketch("apply", "-f", "-", stdin=owned)
    text = ketch("describe", "deploy", "web", "-n", "shop").out
    assert (
        "ReplicaSets:\n  web-5d8f (0/1 ready)\nPods:\n  web-5d8f-abcde (Running, 10.244.0.7)\n"
        in text
    )
    assert "Events (the store's change history):\n  REVISION   TYPE    GENERATION\n" in text
    svc = ketch("describe", "svc/web", "-n", "shop").out
    assert "Endpoints:\n  10.244.0.7 ports http:8080 (ready, web-5d8f-abcde)\n" in svc
    assert "Selected pods:\n  web-5d8f-abcde (Running, 10.244.0.7)\n" in svc
    pod = ketch("describe", "pod", "web-5d8f-abcde", "-n", "shop").out
    assert "Controlled By:\n  ReplicaSet/web-5d8f\n" in pod
    assert "Conditions:\n  TYPE    STATUS   REASON   MESSAGE\n  Ready   True\n" in pod


# --- 4. verbs -------------------------------------------------------------------------------


def test_api_resources(ketch: Ketch) -> None:
    lines = ketch("api-resources").out.splitlines()
    assert lines[0].split() == ["NAME", "SHORTNAMES", "APIVERSION", "NAMESPACED", "KIND"]
    assert lines[1].split() == [
        "authorizationpolicies",
        "ap",
        "security.istio.io/v1",
        "true",
        "AuthorizationPolicy",
    ]
    assert any(line.split() == ["namespaces", "ns", "v1", "false", "Namespace"] for line in lines)
    assert any(
        line.split()
        == ["horizontalpodautoscalers", "hpa", "autoscaling/v2", "true", "HorizontalPodAutoscaler"]
        for line in lines
    )
    assert "deployments.apps\n" in ketch("api-resources", "-o", "name").out


def test_explain(ketch: Ketch) -> None:
    text = ketch("explain", "pod.spec.containers.resources").out
    assert text.startswith(
        "KIND:       Pod\nVERSION:    v1\n\nFIELD: resources <ResourceRequirements>\n\n"
        "DESCRIPTION:\n    Compute resources (stored, not enforced by Ketch's local runtime).\n"
    )
    assert "  limits\t<map[string]string | integer | number>\n" in text
    spec = ketch("explain", "deploy.spec").out
    assert "  replicas\t<integer>\n" in spec
    assert "  selector\t<LabelSelector> -required-\n" in spec
    policy = ketch("explain", "ap.spec.action").out
    assert "ENUM:\n    ALLOW\n    DENY\n    AUDIT\n    CUSTOM\n" in policy
    grouped = ketch("explain", "httproutes.gateway.networking.k8s.io.spec.parentRefs").out
    assert grouped.startswith("KIND:       HTTPRoute\nVERSION:    gateway.networking.k8s.io/v1\n")
    bad = ketch("explain", "pod.spec.nope", code=1)
    assert bad.err.startswith(
        'error: field "nope" does not exist in Pod.spec; its fields: nodeName,'
    )


def test_diff(ketch: Ketch, tmp_path: Path) -> None:
    f = tmp_path / "shop.yaml"
    f.write_text(SHOP)
    first = ketch("diff", "-f", str(f), code=1)
    assert "--- LIVE/Namespace.shop\n+++ MERGED/Namespace.shop\n" in first.out
    ketch("apply", "-f", str(f))
    assert ketch("diff", "-f", str(f)).out == ""
    f.write_text(SHOP.replace("port: 80,", "port: 81,"))
    changed = ketch("diff", "-f", str(f), code=1).out
    assert changed.startswith("--- LIVE/Service.shop.web\n+++ MERGED/Service.shop.web\n")
    assert (
        "\n-  - name: http\n-    port: 80\n" in changed
        or "\n-    port: 80\n+    port: 81\n" in changed
    )
    f.write_text("kind: Nope\n")
    assert ketch("diff", "-f", str(f), code=2).err.startswith(f"error: {f} doc 1: ")


def test_edit_revalidates_reopens_and_is_conflict_safe(ketch: Ketch, tmp_path: Path) -> None:
    ketch("apply", "-f", "-", stdin=SHOP)
    script = tmp_path / "editor.py"
    calls = tmp_path / "calls"
    script.write_text(
        "import sys, pathlib\n"
        f"calls = pathlib.Path({str(calls)!r})\n"
        "n = int(calls.read_text()) if calls.exists() else 0\n"
        "calls.write_text(str(n + 1))\n"
        "p = pathlib.Path(sys.argv[1])\n"
        "t = p.read_text()\n"
        "if n == 0:\n"
        "    t = t.replace('port: 80', 'port: 0')\n"  # invalid: reopened with the error
        "else:\n"
        "    assert '# <stdin>' not in t and 'expected integer 1-65535, got 0' in t, t\n"
        "    t = t.replace('port: 0', 'port: 8080')\n"
        "p.write_text(t)\n"
    )
    ketch.mp.setenv("EDITOR", f"{sys.executable} {script}")
    res = ketch("edit", "svc", "web", "-n", "shop")
    assert res.out == "service/web edited\n"
    assert calls.read_text() == "2"
    port = ketch("get", "svc", "web", "-n", "shop", "-o", "jsonpath={.spec.ports[0].port}").out
    assert port == "8080"
    # No change: cancelled.
    ketch.mp.setenv("EDITOR", "true")
    assert ketch("edit", "svc/web", "-n", "shop").out == "Edit cancelled, no changes made.\n"
    # A change made while the editor is open is a conflict, never overwritten.
    racer = tmp_path / "racer.py"
    racer.write_text(
        "import sys, pathlib, subprocess\n"
        f"subprocess.run([sys.executable, '-m', 'ketch.cli.main', '--store', {str(ketch.store)!r},"
        " 'label', 'svc', 'web', '-n', 'shop', 'raced=yes'], check=True)\n"
        "p = pathlib.Path(sys.argv[1])\n"
        "p.write_text(p.read_text().replace('port: 8080', 'port: 9090'))\n"
    )
    ketch.mp.setenv("EDITOR", f"{sys.executable} {racer}")
    res = ketch("edit", "svc", "web", "-n", "shop", code=1)
    assert "conflict" in res.err
    assert "your edit is in" in res.err
    assert (
        ketch("get", "svc", "web", "-n", "shop", "-o", "jsonpath={.spec.ports[0].port}").out
        == "8080"
    )


def test_delete_file_with_namespace_cascade_and_ignore_not_found(
    ketch: Ketch, tmp_path: Path
) -> None:
    f = tmp_path / "shop.yaml"
    f.write_text(SHOP)
    ketch("apply", "-f", str(f))
    res = ketch("delete", "-f", str(f))
    assert res.out == 'namespace "shop" deleted\nservice "web" deleted\nservice "db" deleted\n'
    again = ketch("delete", "-f", str(f), code=1)
    assert again.err.splitlines()[0] == 'error: namespaces "shop" not found'
    assert ketch("delete", "-f", str(f), "--ignore-not-found").out == ""


def test_label_says_not_labeled_when_nothing_changes(ketch: Ketch) -> None:
    ketch("apply", "-f", "-", stdin=SHOP)
    assert ketch("label", "svc", "web", "-n", "shop", "app=web").out == "service/web not labeled\n"
    assert ketch("label", "svc", "web", "-n", "shop", "gone-").out == "service/web not labeled\n"
    assert ketch("label", "svc", "web", "-n", "shop", "tier=front").out == "service/web labeled\n"


# --- 5. consistency ------------------------------------------------------------------------


def test_builtin_namespaces_are_objects(ketch: Ketch) -> None:
    names = ketch("get", "ns", "-o", "name").out.split()
    assert names == ["namespace/default", "namespace/istio-system", "namespace/ketch-system"]
    assert yaml.safe_load(ketch("get", "ns", "default", "-o", "yaml").out)["metadata"]["uid"]
    res = ketch("delete", "ns", "default", code=1)
    assert res.err == (
        "error: Namespace default: namespace 'default' is built in and may not be deleted "
        "(built in: default, istio-system, ketch-system)\n"
    )


def test_empty_lists(ketch: Ketch) -> None:
    assert ketch("get", "nodes").err == "No resources found\n"
    assert ketch("get", "svc").err == "No resources found in default namespace.\n"
    assert ketch("get", "svc", "-A").err == "No resources found\n"


@pytest.mark.parametrize(
    "args",
    [
        ("get",),
        ("get", "svc", "--bogus"),
        ("nosuchverb",),
        ("get", "svc", "-o", "xml"),
        ("get", "svc", "a", "-A"),
        ("apply",),
        ("delete", "svc"),
        ("delete",),
        ("label", "svc", "web", "nonsense"),
        ("--service-cidr", "nope", "get", "svc"),
        ("get", "svc", "-l", "a in ("),
        ("describe", "svc"),
        ("diff",),
    ],
)
def test_usage_errors_exit_2_with_one_prefix(ketch: Ketch, args: tuple[str, ...]) -> None:
    res = ketch(*args, code=2)
    errors = [line for line in res.err.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1, res.err
    assert not [line for line in res.err.splitlines() if line.startswith("Error")]


def test_failed_requests_exit_1(ketch: Ketch) -> None:
    assert ketch("get", "gizmos", code=1).err.startswith("error: unknown resource type 'gizmos'")
    assert (
        ketch("get", "svc", "nope", code=1).err
        == 'error: services "nope" not found in namespace default\n'
    )


def test_help_lists_what_users_do_first_and_keeps_summaries_whole(ketch: Ketch) -> None:
    text = ketch("--help").out
    commands = text.split("Commands:\n")[1]
    names = [
        line.split()[0]
        for line in commands.splitlines()
        if line.startswith("  ") and not line.startswith("    ")
    ]
    assert names[:10] == [
        "apply",
        "get",
        "describe",
        "delete",
        "diff",
        "edit",
        "label",
        "scale",
        "explain",
        "api-resources",
    ]
    assert names[-1] == "version"
    assert "..." not in commands
    assert "(key=value sets, key- removes)." in " ".join(commands.split())


def test_cross_object_errors_name_file_and_document(ketch: Ketch, tmp_path: Path) -> None:
    f = tmp_path / "objs.yaml"
    f.write_text(
        SHOP
        + "---\napiVersion: v1\nkind: ServiceAccount\nmetadata: {name: a, namespace: nowhere}\n"
    )
    assert ketch("apply", "-f", str(f), code=1).err == (
        f"error: {f} doc 4: metadata.namespace: namespace 'nowhere' not found; create it first "
        "(a Namespace document in the same apply is fine)\n"
    )
    f.write_text(SHOP + "---\napiVersion: v1\nkind: Namespace\nmetadata: {name: shop}\n")
    assert ketch("apply", "-f", str(f), code=1).err == (
        f"error: {f} doc 4: appears more than once in this apply (each object once per apply)\n"
    )
    ketch("apply", "-f", "-", stdin=SHOP)
    ip = ketch("get", "svc", "web", "-n", "shop", "-o", "jsonpath={.spec.clusterIP}").out
    f.write_text(
        f"apiVersion: v1\nkind: Service\nmetadata: {{name: other, namespace: shop}}\n"
        f"spec: {{clusterIP: {ip}, ports: [{{port: 1}}]}}\n"
    )
    assert ketch("apply", "-f", str(f), code=1).err == (
        f"error: {f} doc 1: spec.clusterIP: {ip} is already allocated (to another Service); "
        "leave clusterIP empty to have a free one allocated\n"
    )


def test_standalone_config_errors_use_apply_wording(tmp_path: Path) -> None:
    from ketch.api import ResourceError, load
    from ketch.standalone.config import ConfigError, parse_config

    with pytest.raises(ConfigError) as exc:
        parse_config("workloads: [{name: a, adresses: [10.0.0.1], namespace: 5}]", "mesh.yaml")
    assert [p.split("; known")[0] for p in exc.value.problems] == [
        "mesh.yaml: workloads[0].namespace: expected string, got 5",
        "mesh.yaml: workloads[0].adresses: unknown field (did you mean 'addresses'?)",
    ]
    pod = tmp_path / "p.yaml"
    pod.write_text("apiVersion: v1\nkind: Pod\nmetadata: {name: p}\nspec: {containres: []}\n")
    with pytest.raises(ResourceError) as api_exc:
        load([str(pod)])
    assert "spec.containres: unknown field (did you mean 'containers'?); known fields: " in str(
        api_exc.value
    )
    with pytest.raises(ConfigError) as yaml_exc:
        parse_config("workloads: [a", "mesh.yaml")
    assert yaml_exc.value.problems[0].startswith("mesh.yaml line 1 column 14: YAML syntax error: ")


# --- 6. store location ---------------------------------------------------------------------


def test_version_says_which_store(tmp_path: Path) -> None:
    run = [sys.executable, "-m", "ketch.cli.main", "version"]
    env = {k: v for k, v in os.environ.items() if k not in ("KETCH_STORE", "KETCH_HOME")}
    home = subprocess.run(
        run, env={**env, "KETCH_HOME": str(tmp_path)}, capture_output=True, text=True, check=True
    ).stdout
    assert home.splitlines()[1] == f"store: {tmp_path}/ketch.db ($KETCH_HOME)"
    explicit = subprocess.run(
        run,
        env={**env, "KETCH_STORE": str(tmp_path / "x.db")},
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert explicit.splitlines()[1] == f"store: {tmp_path}/x.db ($KETCH_STORE)"
    flag = subprocess.run(
        [*run[:-1], "--store", "/tmp/y.db", "version"],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert flag.splitlines()[1] == "store: /tmp/y.db (--store)"
    default = subprocess.run(run, env=env, capture_output=True, text=True, check=True).stdout
    expected = (
        "/var/lib/ketch/ketch.db (default for root)"
        if os.geteuid() == 0
        else (f"{Path.home()}/.local/state/ketch/ketch.db (default for this user)")
    )
    assert default.splitlines()[1] == f"store: {expected}"


def test_watch_request_timeout_ends_the_watch(ketch: Ketch) -> None:
    ketch("apply", "-f", "-", stdin=SHOP)
    start = time.monotonic()
    res = ketch("get", "svc", "-n", "shop", "-w", "--request-timeout", "0.5", "--no-headers")
    assert [r.split()[0] for r in res.out.splitlines()] == ["db", "web"]
    assert time.monotonic() - start < 30  # ended by the timeout, not by an event
