"""The `ketch` CLI end to end over a real SQLite store file, run as a real process."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

EXAMPLES = Path(__file__).resolve().parents[3] / "examples"


class Ketch:
    def __init__(self, store: Path) -> None:
        self.env = {**os.environ, "KETCH_STORE": str(store), "COLUMNS": "200"}

    def __call__(
        self, *args: str, stdin: str | None = None, ok: bool = True
    ) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run(
            [sys.executable, "-m", "ketch.cli.main", *args],
            input=stdin,
            capture_output=True,
            text=True,
            env=self.env,
            timeout=60,
        )
        if ok and proc.returncode != 0:
            raise AssertionError(
                f"ketch {' '.join(args)} failed ({proc.returncode}):\n{proc.stderr}"
            )
        return proc


@pytest.fixture
def ketch(tmp_path: Path) -> Ketch:
    return Ketch(tmp_path / "ketch.db")


NS_AND_SVC = """
apiVersion: v1
kind: Namespace
metadata: {name: shop, labels: {istio.io/dataplane-mode: ambient}}
---
apiVersion: v1
kind: Service
metadata: {name: web, namespace: shop}
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


def test_apply_example_then_get_everything(ketch: Ketch) -> None:
    res = ketch("apply", "-f", str(EXAMPLES / "bookinfo.yaml"))
    lines = res.stdout.strip().splitlines()
    assert lines, res.stdout
    assert all(line.endswith(" created") for line in lines), res.stdout
    kinds = {line.split("/")[0] for line in lines}
    for k in (
        "namespace",
        "serviceaccount",
        "deployment",
        "service",
        "authorizationpolicy",
        "peerauthentication",
        "gateway",
        "httproute",
    ):
        assert k in kinds, f"{k} missing from {kinds}"
    listing = ketch("get", "all", "-A").stdout
    for k in ("deployment/", "service/", "authorizationpolicy/", "gateway/", "httproute/"):
        assert k in listing
    # Re-applying the same file changes nothing.
    again = ketch("apply", "-f", str(EXAMPLES / "bookinfo.yaml")).stdout.strip().splitlines()
    assert all(line.endswith(" unchanged") for line in again), again


def test_service_cluster_ips_are_allocated_unique_and_stable(ketch: Ketch) -> None:
    ketch("apply", "-f", "-", stdin=NS_AND_SVC)
    svcs = json.loads(ketch("get", "svc", "-n", "shop", "-o", "json").stdout)["items"]
    ips = {s["metadata"]["name"]: s["spec"]["clusterIP"] for s in svcs}
    assert len(set(ips.values())) == 2
    assert all(ip.startswith("10.96.") for ip in ips.values())
    # Re-apply keeps the addresses: the file has no clusterIP, the stored one stays.
    ketch("apply", "-f", "-", stdin=NS_AND_SVC)
    again = json.loads(ketch("get", "svc", "-n", "shop", "-o", "json").stdout)["items"]
    assert {s["metadata"]["name"]: s["spec"]["clusterIP"] for s in again} == ips
    table = ketch("get", "svc", "-n", "shop").stdout
    assert "CLUSTER-IP" in table
    assert ips["web"] in table
    assert "80/TCP" in table


def test_cluster_ip_conflict_and_immutability(ketch: Ketch) -> None:
    ketch("apply", "-f", "-", stdin=NS_AND_SVC)
    web_ip = json.loads(ketch("get", "svc", "web", "-n", "shop", "-o", "json").stdout)["spec"][
        "clusterIP"
    ]
    clash = f"""
apiVersion: v1
kind: Service
metadata: {{name: other, namespace: shop}}
spec: {{clusterIP: {web_ip}, ports: [{{port: 1}}]}}
"""
    res = ketch("apply", "-f", "-", stdin=clash, ok=False)
    assert res.returncode == 1
    assert f"spec.clusterIP: {web_ip} is already allocated" in res.stderr
    change = NS_AND_SVC.replace(
        "selector: {app: web}", "selector: {app: web}\n  clusterIP: 10.96.9.9"
    )
    res = ketch("apply", "-f", "-", stdin=change, ok=False)
    assert "spec.clusterIP: cannot be changed (is " in res.stderr


def test_validation_error_is_one_clear_line_and_nothing_is_stored(
    ketch: Ketch, tmp_path: Path
) -> None:
    bad = tmp_path / "pods.yaml"
    bad.write_text(
        NS_AND_SVC
        + """---
apiVersion: v1
kind: Pod
metadata: {name: p, namespace: shop}
spec:
  containers:
  - name: c
    command: [sleep, "1"]
    ports: [{containerPort: http}]
"""
    )
    res = ketch("apply", "-f", str(bad), ok=False)
    assert res.returncode == 1
    assert "Traceback" not in res.stderr
    assert "pods.yaml doc 4: spec.containers[0].ports[0].containerPort:" in res.stderr
    assert ketch("get", "ns", "shop", ok=False).returncode == 1  # all-or-nothing


def test_namespace_must_exist(ketch: Ketch) -> None:
    doc = "apiVersion: v1\nkind: ServiceAccount\nmetadata: {name: a, namespace: nowhere}\n"
    res = ketch("apply", "-f", "-", stdin=doc, ok=False)
    assert res.returncode == 1
    assert "namespace 'nowhere' not found" in res.stderr


def test_label_get_selector_and_delete(ketch: Ketch) -> None:
    ketch("apply", "-f", "-", stdin=NS_AND_SVC)
    ketch("label", "svc", "web", "-n", "shop", "tier=front")
    names = ketch("get", "svc", "-n", "shop", "-l", "tier=front", "-o", "name").stdout.split()
    assert names == ["service/web"]
    res = ketch("label", "svc", "web", "-n", "shop", "tier=back", ok=False)
    assert res.returncode == 1
    assert "--overwrite" in res.stderr
    ketch("label", "svc", "web", "-n", "shop", "tier-")
    assert ketch("get", "svc", "-n", "shop", "-l", "tier", "-o", "name").stdout.strip() == ""
    bad = ketch("label", "svc", "web", "-n", "shop", "bad key=x", ok=False)
    assert bad.returncode == 1
    assert "Traceback" not in bad.stderr
    ketch("delete", "svc", "web", "-n", "shop")
    missing = ketch("get", "svc", "web", "-n", "shop", ok=False)
    assert missing.returncode == 1
    assert 'services "web" not found' in missing.stderr
    assert ketch("delete", "svc", "web", "-n", "shop", ok=False).returncode == 1
    assert ketch("delete", "svc", "web", "-n", "shop", "--ignore-not-found").returncode == 0


def test_get_yaml_round_trips_through_apply(ketch: Ketch) -> None:
    ketch("apply", "-f", "-", stdin=NS_AND_SVC)
    dumped = ketch("get", "svc", "web", "-n", "shop", "-o", "yaml").stdout
    obj = yaml.safe_load(dumped)
    assert obj["metadata"]["resourceVersion"]
    assert obj["metadata"]["uid"]
    # Applying what `get -o yaml` printed is a no-op.
    assert ketch("apply", "-f", "-", stdin=dumped).stdout.strip() == "service/web unchanged"


def test_stale_resource_version_is_a_conflict(ketch: Ketch) -> None:
    ketch("apply", "-f", "-", stdin=NS_AND_SVC)
    obj = yaml.safe_load(ketch("get", "svc", "web", "-n", "shop", "-o", "yaml").stdout)
    ketch("label", "svc", "web", "-n", "shop", "x=1")
    obj["spec"]["ports"][0]["port"] = 81
    res = ketch("apply", "-f", "-", stdin=yaml.safe_dump(obj), ok=False)
    assert res.returncode == 1
    assert "conflict" in res.stderr


def test_usage_errors(ketch: Ketch) -> None:
    assert ketch("get", ok=False).returncode == 2
    res = ketch("get", "gizmos", ok=False)
    assert res.returncode == 1
    assert "gizmos" in res.stderr
    assert ketch("get", "svc", "-o", "xml", ok=False).returncode == 2
    res = ketch("get", "svc", "-l", "a in (", ok=False)
    assert res.returncode == 2
    assert "Traceback" not in res.stderr
    assert "Usage" in ketch("--help").stdout


def test_describe(ketch: Ketch) -> None:
    ketch("apply", "-f", "-", stdin=NS_AND_SVC)
    text = ketch("describe", "svc", "web", "-n", "shop").stdout
    assert "Name:" in text
    assert "web" in text
    assert "clusterIP" in text


def test_delete_namespace_takes_its_objects(ketch: Ketch) -> None:
    ketch("apply", "-f", "-", stdin=NS_AND_SVC)
    ketch("delete", "ns", "shop")
    assert ketch("get", "svc", "-A", "-o", "name").stdout.strip() == ""


def test_apply_warns_about_policy_parts_the_node_proxy_cannot_enforce(
    ketch: Ketch, tmp_path: Path
) -> None:
    docs = tmp_path / "policies.yaml"
    docs.write_text(
        """apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: no-posts, namespace: default}
spec:
  action: DENY
  rules:
  - to: [{operation: {methods: [POST]}}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: odd-key, namespace: default}
spec:
  rules:
  - when: [{key: source.port, values: ["1"]}]
"""
    )
    res = ketch("apply", "-f", str(docs))
    warnings = [line for line in res.stderr.splitlines() if line.startswith("Warning:")]
    assert warnings == [
        f"Warning: {docs} doc 1: spec.rules[0]: L7 fields (methods) are enforced only by a "
        "waypoint: at L4 this DENY rule can never match, so it denies nothing (as in Istio "
        "ambient); attach the policy to a waypoint with targetRefs to enforce it",
        f"Warning: {docs} doc 2: spec.rules[0].when[0].key: unknown condition key "
        "'source.port': counted as an L7 attribute, which the node proxy cannot evaluate "
        "(L4 keys: destination.ip, destination.port, source.ip, source.namespace, "
        "source.principal)",
        f"Warning: {docs} doc 2: spec.rules[0]: L7 fields (when source.port) are enforced only "
        "by a waypoint: at L4 this ALLOW rule never matches",
    ]
    assert "authorizationpolicy/odd-key created" in res.stdout


def test_apply_warns_about_peer_authentications_istiod_converts_to_less_mtls(
    ketch: Ketch, tmp_path: Path
) -> None:
    """The two istiod quirks that weaken mTLS are kept on the wire; `ketch apply` says what
    happens and how to write it so it does not, also when the policy that triggers it is
    already stored (the mesh-wide one here), and not again once the advice is followed."""
    mesh = tmp_path / "mesh.yaml"
    mesh.write_text(
        """apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: default, namespace: istio-system}
spec: {mtls: {mode: STRICT}}
"""
    )
    assert "Warning" not in ketch("apply", "-f", str(mesh)).stderr
    workloads = tmp_path / "workloads.yaml"
    workloads.write_text(
        """apiVersion: v1
kind: Namespace
metadata: {name: shop}
---
apiVersion: v1
kind: Namespace
metadata: {name: web}
---
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: db, namespace: shop}
spec:
  selector: {matchLabels: {app: db}}
  mtls: {mode: PERMISSIVE}
  portLevelMtls: {5432: {mode: STRICT}}
---
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: default, namespace: web}
spec: {}
---
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: front, namespace: web}
spec:
  selector: {matchLabels: {app: front}}
  portLevelMtls: {9090: {mode: PERMISSIVE}}
"""
    )
    res = ketch("apply", "-f", str(workloads))
    assert res.returncode == 0, res.stderr
    warnings = [line for line in res.stderr.splitlines() if line.startswith("Warning:")]
    assert warnings == [
        "Warning: PeerAuthentication shop/db: spec.portLevelMtls: port(s) 5432 set to STRICT "
        "under mode PERMISSIVE are not enforced: with the mesh-wide STRICT policy "
        "istio-system/default and no namespace-wide mode, istiod's conversion (kept by Ketch "
        "for ztunnel compatibility) skips them, so they accept plaintext; to enforce them, add "
        "a PeerAuthentication without selector in namespace shop with `mode: STRICT` (the "
        "namespace's effective mode already, from istio-system/default)",
        "Warning: PeerAuthentication web/front: spec.portLevelMtls: mTLS is enforced on no "
        "port of the selected workloads, not only the PERMISSIVE ones: with the namespace-wide "
        "policy web/default of mode UNSET under the mesh-wide STRICT policy "
        "istio-system/default, istiod's conversion (kept by Ketch for ztunnel compatibility) "
        "sends no policy for this one; to keep the other ports STRICT, set `mode: STRICT` on "
        "the namespace-wide PeerAuthentication web/default (the namespace's effective mode "
        "already, from istio-system/default)",
    ]
    fixes = tmp_path / "fixes.yaml"
    fixes.write_text(
        """apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: default, namespace: shop}
spec: {mtls: {mode: STRICT}}
---
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: default, namespace: web}
spec: {mtls: {mode: STRICT}}
"""
    )
    res = ketch("apply", "-f", str(fixes))
    assert res.returncode == 0, res.stderr
    assert "Warning" not in res.stderr


PODS_FOR_MESH = """
apiVersion: v1
kind: Namespace
metadata: {name: plain}
---
apiVersion: v1
kind: Pod
metadata: {name: a, namespace: shop, annotations: {ambient.istio.io/redirection: enabled}}
spec: {containers: [{name: c, command: [sleep, "1"]}]}
---
apiVersion: v1
kind: Pod
metadata: {name: b, namespace: shop}
spec: {containers: [{name: c, command: [sleep, "1"]}]}
---
apiVersion: v1
kind: Pod
metadata: {name: c, namespace: plain}
spec: {containers: [{name: c, command: [sleep, "1"]}]}
"""


def test_get_pods_wide_shows_mesh_status_and_the_label_is_all_it_takes(ketch: Ketch) -> None:
    ketch("apply", "-f", "-", stdin=NS_AND_SVC)
    ketch("apply", "-f", "-", stdin=PODS_FOR_MESH)

    def mesh() -> dict[str, str]:
        lines = ketch("get", "pods", "-A", "-o", "wide").stdout.splitlines()
        assert lines[0].split()[-1] == "MESH"
        return {ln.split()[1]: ln.split()[-1] for ln in lines[1:]}

    assert mesh() == {"a": "ambient", "b": "pending", "c": "none"}
    assert "MESH" not in ketch("get", "pods", "-A").stdout  # wide only
    ketch("label", "ns", "shop", "istio.io/dataplane-mode-")
    assert mesh() == {"a": "ambient", "b": "none", "c": "none"}  # a: until the agent acts
    ketch("label", "ns", "plain", "istio.io/dataplane-mode=ambient")
    assert mesh() == {"a": "ambient", "b": "none", "c": "pending"}
