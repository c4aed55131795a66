"""The benchmark's cluster: two nodes, one client pod (node1) and one server pod (node2) per
leg, and the proxies of each leg.

    leg          client pod       proxies                                   client dials
    direct       direct-a         none                                      direct-b IP
    ketch        ketch-a          `ketch ztunnel run` in node1 and node2     ketch-b IP
                 (redirection     netns, serving the pods in-pod (15001 ->   (captured)
                 rules in both)   HBONE -> ketch-b IP:15008)
    envoy-hbone  hbone-a          Envoy in hbone-a (tcp_proxy tunnelling     127.0.0.1
                                  over HTTP/2 CONNECT, mTLS) and in hbone-b
                                  (CONNECT terminator on hbone-b IP:15008)
    envoy-mtls   mtls-a           Envoy in mtls-a (originates mTLS) and in   127.0.0.1
                                  mtls-b (terminates it on port + 10000)

Every server pod runs the same apps (`tools.server_commands`). Everything lives in
namespaces of one `Fabric`; its `close()` stops every process started here (by PID) and
deletes the namespaces.
"""

from __future__ import annotations

import http.client
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from ambient_bench import envoy, tools
from ketch.identity.ca import CertificateAuthority
from ketch.netns import install_rules
from ketch.netns.fabric import Endpoint, Fabric, Node, Pod

TRUST_DOMAIN = "cluster.local"
NAMESPACE = "bench"
CLIENT_ID = f"spiffe://{TRUST_DOMAIN}/ns/{NAMESPACE}/sa/a"
SERVER_ID = f"spiffe://{TRUST_DOMAIN}/ns/{NAMESPACE}/sa/b"

BIN = Path(sys.prefix) / "bin"
ENVOY = shutil.which("envoy", path=str(BIN)) or shutil.which("envoy") or str(BIN / "envoy")
KETCH = str(BIN / "ketch")

#: leg -> prefix of its pods' names (<prefix>-a on node1, <prefix>-b on node2), in run order
LEGS = {"direct": "direct", "ketch": "ketch", "envoy-hbone": "hbone", "envoy-mtls": "mtls"}

# The admin/readiness endpoints: Envoy's admin in its pod, ketch's in its node netns.
ENVOY_ADMIN_PORT = 15000
KETCH_READINESS_PORT = 15021
KETCH_METRICS_PORT = 15020


class SetupError(RuntimeError):
    """The testbed could not be built or a proxy did not become ready."""


@dataclass
class Proxy:
    """One proxy process of a leg."""

    side: str  # "client" or "server"
    where: Endpoint  # the netns it was started in
    proc: subprocess.Popen[bytes]
    log: Path

    @property
    def pid(self) -> int:
        return self.proc.pid

    def log_tail(self, chars: int = 3000) -> str:
        try:
            return self.log.read_text(errors="replace")[-chars:]
        except OSError:
            return ""


@dataclass
class Leg:
    name: str
    client: Pod
    server: Pod
    target: str  # the address the client app dials
    proxies: list[Proxy] = field(default_factory=list)

    def check_alive(self) -> None:
        """SetupError, with its log, if one of the leg's proxies exited."""
        for p in self.proxies:
            if p.proc.poll() is not None:
                raise SetupError(
                    f"{self.name}: the {p.side}-side proxy (pid {p.pid}) exited with "
                    f"{p.proc.returncode}; its log:\n{p.log_tail()}"
                )

    def log_tails(self) -> str:
        return "\n".join(f"--- {p.side} side ({p.log}):\n{p.log_tail()}" for p in self.proxies)


def _http_get(where: Endpoint, port: int, path: str, timeout: float = 2.0) -> tuple[int, str]:
    """GET http://127.0.0.1:<port><path> from inside `where`'s netns."""

    def get() -> tuple[int, str]:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
        try:
            conn.request("GET", path)
            resp = conn.getresponse()
            return resp.status, resp.read().decode(errors="replace")
        finally:
            conn.close()

    return where.call(get)


def _wait(what: str, ready: Callable[[], bool], leg: Leg, within: float) -> None:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        leg.check_alive()
        try:
            if ready():
                return
        except OSError:
            pass
        time.sleep(0.1)
    raise SetupError(f"{what} not ready within {within}s\n{leg.log_tails()}")


class Testbed:
    """Builds the fabric's nodes, pods, certificates, apps and proxies (see module doc)."""

    def __init__(
        self,
        fabric: Fabric,
        workdir: Path,
        *,
        envoy_concurrency: int = 1,
        ketch_ciphersuites: str | None = None,
    ) -> None:
        self.fabric = fabric
        self.workdir = workdir
        self.envoy_concurrency = envoy_concurrency
        self.ketch_ciphersuites = ketch_ciphersuites
        self.ca_dir = workdir / "ca"
        self.legs: dict[str, Leg] = {}

    # ---- building

    def build(self) -> list[Leg]:
        nodes = self.fabric.add_node("node1"), self.fabric.add_node("node2")
        for name, pods in LEGS.items():
            a = self.fabric.add_pod(nodes[0], f"{pods}-a")
            b = self.fabric.add_pod(nodes[1], f"{pods}-b")
            # the Envoy legs' apps dial their Envoy; direct and ketch dial the server pod
            target = "127.0.0.1" if name.startswith("envoy-") else b.ip
            self.legs[name] = Leg(name, a, b, target)
        for leg in self.legs.values():
            self._start_apps(leg.server)
        ca = CertificateAuthority.create(TRUST_DOMAIN, state_dir=self.ca_dir)
        self._start_ketch(self.legs["ketch"], nodes)
        self._start_envoy_hbone(self.legs["envoy-hbone"], ca)
        self._start_envoy_mtls(self.legs["envoy-mtls"], ca)
        for leg in self.legs.values():
            for port in (tools.NETPERF_CONTROL_PORT, tools.IPERF_PORT):
                leg.server.wait_for_tcp("127.0.0.1", port, timeout=15)
        self._wait_ketch_ready(self.legs["ketch"])
        for name in ("envoy-hbone", "envoy-mtls"):
            self._wait_envoy_ready(self.legs[name])
        return list(self.legs.values())

    def _log(self, name: str) -> Path:
        return self.workdir / f"{name}.log"

    def _exec(
        self, where: Endpoint, argv: list[str], log: Path, **kw: object
    ) -> subprocess.Popen[bytes]:
        with log.open("wb") as out:
            return where.exec(argv, stdout=out, stderr=subprocess.STDOUT, **kw)

    def _start_apps(self, pod: Pod) -> None:
        for argv in tools.server_commands():
            self._exec(pod, argv, self._log(f"{pod.name}-{argv[0]}"), stdin=subprocess.DEVNULL)

    # ---- ketch

    def _start_ketch(self, leg: Leg, nodes: tuple[Node, Node]) -> None:
        workloads = []
        for pod, sa in ((leg.client, "a"), (leg.server, "b")):
            install_rules(pod.netns)
            workloads.append(
                {
                    "name": pod.name,
                    "namespace": NAMESPACE,
                    "uid": f"{NAMESPACE}/{pod.name}",
                    "addresses": [pod.ip],
                    "serviceAccount": sa,
                    "node": pod.node,
                    "labels": {"app": pod.name},
                    "netns": pod.netns_path,
                }
            )
        config = self.workdir / "ketch.yaml"
        config.write_text(yaml.safe_dump({"trustDomain": TRUST_DOMAIN, "workloads": workloads}))
        env = None
        if self.ketch_ciphersuites:
            # Python's ssl cannot set TLS 1.3 suites; OpenSSL's config file can (tls.py).
            conf = self.workdir / "openssl.cnf"
            conf.write_text(
                "openssl_conf = ketch_bench\n[ketch_bench]\nssl_conf = ssl_sect\n"
                "[ssl_sect]\nsystem_default = tls_defaults\n"
                f"[tls_defaults]\nCiphersuites = {self.ketch_ciphersuites}\n"
            )
            env = {**os.environ, "OPENSSL_CONF": str(conf)}
        for side, node in zip(("client", "server"), nodes, strict=True):
            argv = [
                KETCH,
                *("ztunnel", "run", "--config", str(config), "--node", node.name),
                *("--ca-dir", str(self.ca_dir), "--drain-timeout", "1"),
            ]
            log = self._log(f"ketch-{node.name}")
            proc = self._exec(node, argv, log, env=env, stdin=subprocess.DEVNULL)
            leg.proxies.append(Proxy(side, node, proc, log))

    def _wait_ketch_ready(self, leg: Leg, within: float = 60.0) -> None:
        def ready() -> bool:
            return all(
                _http_get(p.where, KETCH_READINESS_PORT, "/healthz/ready")[0] == 200
                for p in leg.proxies
            )

        _wait("ketch node proxies", ready, leg, within)

    def ketch_mtls_connections(self) -> float:
        """istio_tcp_connections_opened_total{reporter="destination",
        connection_security_policy="mutual_tls"} of the server-side node proxy: proves the
        ketch leg's traffic arrived over HBONE, not in plaintext."""
        server = next(p for p in self.legs["ketch"].proxies if p.side == "server")
        status, text = _http_get(server.where, KETCH_METRICS_PORT, "/metrics")
        if status != 200:
            raise SetupError(f"ketch metrics answered {status}")
        total = 0.0
        for line in text.splitlines():
            if (
                line.startswith("istio_tcp_connections_opened_total{")
                and 'reporter="destination"' in line
                and 'connection_security_policy="mutual_tls"' in line
            ):
                total += float(line.rsplit(" ", 1)[1])
        return total

    # ---- envoy

    def _tls(self, ca: CertificateAuthority, spiffe_id: str, name: str) -> envoy.TlsFiles:
        cert = ca.issue_workload(spiffe_id)
        d = self.workdir / name
        d.mkdir(mode=0o700)
        files = envoy.TlsFiles(d / "chain.pem", d / "key.pem", d / "roots.pem")
        files.chain.write_bytes(b"".join(cert.chain_pem))
        files.key.write_bytes(cert.key_pem)
        files.roots.write_bytes(ca.trust_bundle_pem)
        return files

    def _start_envoy(self, leg: Leg, side: str, pod: Pod, doc: object) -> None:
        cfg = envoy.write(doc, self.workdir / f"{pod.name}-envoy.json")
        argv = [
            ENVOY,
            *("-c", str(cfg), "--disable-hot-restart"),
            *("--concurrency", str(self.envoy_concurrency), "-l", "warning"),
        ]
        log = self._log(f"{pod.name}-envoy")
        proc = self._exec(pod, argv, log, stdin=subprocess.DEVNULL)
        leg.proxies.append(Proxy(side, pod, proc, log))

    def _start_envoy_hbone(self, leg: Leg, ca: CertificateAuthority) -> None:
        client_tls = self._tls(ca, CLIENT_ID, "hbone-a-tls")
        server_tls = self._tls(ca, SERVER_ID, "hbone-b-tls")
        ip = leg.server.ip
        self._start_envoy(
            leg, "client", leg.client, envoy.hbone_client(tools.PORTS, ip, SERVER_ID, client_tls)
        )
        self._start_envoy(
            leg, "server", leg.server, envoy.hbone_server(tools.PORTS, ip, TRUST_DOMAIN, server_tls)
        )

    def _start_envoy_mtls(self, leg: Leg, ca: CertificateAuthority) -> None:
        client_tls = self._tls(ca, CLIENT_ID, "mtls-a-tls")
        server_tls = self._tls(ca, SERVER_ID, "mtls-b-tls")
        ip = leg.server.ip
        self._start_envoy(
            leg, "client", leg.client, envoy.mtls_client(tools.PORTS, ip, SERVER_ID, client_tls)
        )
        self._start_envoy(
            leg, "server", leg.server, envoy.mtls_server(tools.PORTS, ip, TRUST_DOMAIN, server_tls)
        )

    def _wait_envoy_ready(self, leg: Leg, within: float = 30.0) -> None:
        def ready() -> bool:
            return all(
                _http_get(p.where, ENVOY_ADMIN_PORT, "/ready")[0] == 200 for p in leg.proxies
            )

        _wait(f"{leg.name} Envoys", ready, leg, within)

    def envoy_tls_summary(self, leg: Leg) -> str:
        """Which TLS versions/ciphers/curves the leg's Envoys negotiated and how many TLS
        handshakes they made, from their admin stats (e.g. to show HBONE pooling)."""
        parts = []
        for p in leg.proxies:
            status, text = _http_get(p.where, ENVOY_ADMIN_PORT, "/stats?filter=ssl\\.")
            if status != 200:
                continue
            seen: dict[str, int] = {}
            for line in text.splitlines():
                m = re.match(r"\S*ssl\.(ciphers|versions|curves|handshake)\.?(\S*): (\d+)$", line)
                if m and int(m.group(3)):
                    key = m.group(2) or m.group(1)
                    seen[key] = seen.get(key, 0) + int(m.group(3))
            handshakes = seen.pop("handshake", 0)
            desc = ", ".join(sorted(seen))
            parts.append(f"{p.side}: {desc} ({handshakes} handshakes)")
        return "; ".join(parts)
