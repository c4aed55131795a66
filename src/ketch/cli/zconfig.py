"""`ketch ztunnel-config SECTION`: what a running node proxy holds, from its admin endpoint
(`/config_dump` on 127.0.0.1:15000), in the spirit of `istioctl ztunnel-config`.

The dump has ztunnel's shape (`ketch.ztunnel.configdump`): workloads with `workloadIps`,
services with `vips` as `network/ip` and a `ports` map, policies with their nested `rules`,
certificates with a `certChain`; `pods` and `connections` are Ketch's own sections.

The tables are pure functions of the config dump (`table_rows`), so they are tested without
a proxy; `fetch_dump` is the I/O: an HTTP GET, optionally from inside a network namespace
(the local cluster's node proxies listen on the node netns' loopback).
"""

from __future__ import annotations

import http.client
import json
import socket
from collections.abc import Callable
from typing import Any

from ketch.cli.common import CliError

Row = list[str]
Cell = str | Callable[[dict[str, Any]], Any]  # a config_dump key, or a function of the item
Column = tuple[str, Cell]


def _s(v: Any) -> str:
    if v is None or v == "" or v == [] or v == {}:
        return "-"
    if isinstance(v, list):
        return ",".join(str(x) for x in v)
    return str(v)


def _ports(svc: dict[str, Any]) -> list[str]:
    ports = svc.get("ports") or {}
    return [f"{sp}->{tp}" if tp else f"{sp}->(named)" for sp, tp in ports.items()]


def _addr(network_ip: str) -> str:
    """`network/ip` -> `ip` when the network is the default (empty) one."""
    return network_ip[1:] if network_ip.startswith("/") else network_ip


def _vips(svc: dict[str, Any]) -> list[str]:
    return [_addr(v) for v in svc.get("vips", [])]


def _waypoint(item: dict[str, Any]) -> str | None:
    wp = item.get("waypoint")
    if not wp:
        return None
    return f"{_addr(str(wp.get('destination', '')))}:{wp.get('hboneMtlsPort', 15008)}"


def _identity(w: dict[str, Any]) -> str:
    return f"spiffe://{w.get('trustDomain')}/ns/{w.get('namespace')}/sa/{w.get('serviceAccount')}"


def _leaf(field: str) -> Callable[[dict[str, Any]], Any]:
    def get(cert: dict[str, Any]) -> Any:
        chain = cert.get("certChain") or []
        return chain[0].get(field) if chain else None

    return get


def _action(p: dict[str, Any]) -> str:
    return _s(p.get("action")) + (" (dry-run)" if p.get("dryRun") else "")


# section -> (config_dump list, columns); `policies` also lists the PeerAuthentications
SECTIONS: dict[str, tuple[str, list[Column]]] = {
    "workloads": (
        "workloads",
        [
            ("NAMESPACE", "namespace"),
            ("NAME", "name"),
            ("ADDRESSES", "workloadIps"),
            ("NODE", "node"),
            ("PROTOCOL", "protocol"),
            ("WAYPOINT", _waypoint),
            ("IDENTITY", _identity),
        ],
    ),
    "services": (
        "services",
        [
            ("NAMESPACE", "namespace"),
            ("NAME", "name"),
            ("VIPS", _vips),
            ("PORTS", _ports),
            ("ENDPOINTS", lambda s: len(s.get("endpoints") or {})),
            ("WAYPOINT", _waypoint),
        ],
    ),
    "policies": (
        "policies",
        [
            ("NAMESPACE", "namespace"),
            ("NAME", "name"),
            ("KIND", lambda _: "AuthorizationPolicy"),
            ("SCOPE", "scope"),
            ("ACTION/MODE", _action),
            ("RULES", lambda p: len(p.get("rules") or [])),
        ],
    ),
    "certificates": (
        "certificates",
        [
            ("IDENTITY", "identity"),
            ("STATE", "state"),
            ("SERIAL", _leaf("serialNumber")),
            ("NOT-BEFORE", _leaf("validFrom")),
            ("NOT-AFTER", _leaf("expirationTime")),
        ],
    ),
    "pods": (
        "pods",
        [
            ("NAMESPACE", "namespace"),
            ("NAME", "name"),
            ("ADDRESSES", "addresses"),
            ("IDENTITY", "identity"),
            ("STATE", "state"),
            ("ERROR", "error"),
        ],
    ),
    "connections": (
        "connections",
        [
            ("DIRECTION", "direction"),
            ("SRC", "src"),
            ("SRC-IDENTITY", "src_identity"),
            ("DST", "dst"),
            ("DST-IDENTITY", "dst_identity"),
            ("POD", "pod"),
        ],
    ),
}
# PeerAuthentications share the policies table
_PEER_AUTHN: list[Column] = [
    ("NAMESPACE", "namespace"),
    ("NAME", "name"),
    ("KIND", lambda _: "PeerAuthentication"),
    ("SCOPE", lambda _: None),
    ("ACTION/MODE", "mode"),
    ("RULES", lambda _: None),
]


def _rows(items: list[dict[str, Any]], columns: list[Column]) -> list[Row]:
    return [
        [_s(cell(item) if callable(cell) else item.get(cell)) for _, cell in columns]
        for item in items
    ]


ALIASES = {s[:-1]: s for s in SECTIONS} | {"certs": "certificates", "cert": "certificates"}
ALIASES |= {"policy": "policies", "conns": "connections", "connection": "connections"}


def resolve_section(name: str) -> str:
    key = name.lower()
    key = ALIASES.get(key, key)
    if key not in SECTIONS and key != "all":
        raise CliError(f"unknown section {name!r}; use one of: {', '.join(SECTIONS)}, all")
    return key


def table_rows(section: str, dump: dict[str, Any]) -> tuple[list[str], list[Row]]:
    key, columns = SECTIONS[section]
    rows = _rows(dump.get(key, []), columns)
    if section == "policies":
        rows += _rows(dump.get("peerAuthentications", []), _PEER_AUTHN)
    return [h for h, _ in columns], rows


def fetch_dump(
    host: str, port: int, netns: str | None = None, timeout: float = 5.0
) -> dict[str, Any]:
    """GET /config_dump from the proxy's admin endpoint (inside `netns` if given)."""
    where = f"{host}:{port}" + (f" in netns {netns}" if netns else "")
    try:
        if netns:
            from ketch.netns import NetnsError, in_netns

            try:
                sock = in_netns(netns, socket.create_connection, (host, port), timeout)
            except NetnsError as e:
                raise CliError(f"cannot enter netns {netns}: {e}") from e
        else:
            sock = socket.create_connection((host, port), timeout)
        conn = http.client.HTTPConnection(host, port, timeout=timeout)
        conn.sock = sock
        try:
            conn.request("GET", "/config_dump")
            resp = conn.getresponse()
            body = resp.read()
        finally:
            conn.close()
    except OSError as e:
        raise CliError(
            f"cannot reach the node proxy's admin endpoint at {where}: {e.strerror or e}; "
            "is `ketch ztunnel run` running there (see --admin-addr)?"
        ) from e
    if resp.status != 200:
        raise CliError(f"{where}: /config_dump answered {resp.status}: {body[:200]!r}")
    try:
        dump = json.loads(body)
    except ValueError as e:
        raise CliError(f"{where}: /config_dump is not JSON: {e}") from e
    if not isinstance(dump, dict):
        raise CliError(f"{where}: /config_dump is not a JSON object")
    return dump
