"""`ketch ztunnel-config SECTION`: what a running node proxy holds, from its admin endpoint
(`/config_dump` on 127.0.0.1:15000), in the spirit of `istioctl ztunnel-config`.

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
Section = tuple[list[str], Callable[[dict[str, Any]], list[Row]]]


def _s(v: Any) -> str:
    if v is None or v == "" or v == [] or v == {}:
        return "-"
    if isinstance(v, list):
        return ",".join(str(x) for x in v)
    return str(v)


def _workloads(d: dict[str, Any]) -> list[Row]:
    return [
        [
            _s(w.get("namespace")),
            _s(w.get("name")),
            _s(w.get("addresses")),
            _s(w.get("node")),
            _s(w.get("protocol")),
            _s(w.get("waypoint")),
            _s(w.get("identity")),
        ]
        for w in d.get("workloads", [])
    ]


def _services(d: dict[str, Any]) -> list[Row]:
    return [
        [
            _s(s.get("namespace")),
            _s(s.get("name")),
            _s(s.get("vips")),
            _s([f"{p['port']}->{p['targetPort']}" for p in s.get("ports", [])]),
            _s(s.get("waypoint")),
        ]
        for s in d.get("services", [])
    ]


def _policies(d: dict[str, Any]) -> list[Row]:
    rows = [
        [
            _s(p.get("namespace")),
            _s(p.get("name")),
            "AuthorizationPolicy",
            _s(p.get("scope")),
            _s(p.get("action")) + (" (dry-run)" if p.get("dryRun") else ""),
            _s(p.get("rules")),
        ]
        for p in d.get("policies", [])
    ]
    rows += [
        [
            _s(p.get("namespace")),
            _s(p.get("name")),
            "PeerAuthentication",
            "-",
            _s(p.get("mode")),
            "-",
        ]
        for p in d.get("peerAuthentications", [])
    ]
    return rows


def _certificates(d: dict[str, Any]) -> list[Row]:
    return [
        [
            _s(c.get("identity")),
            _s(c.get("state")),
            _s(c.get("serial")),
            _s(c.get("not_before")),
            _s(c.get("not_after")),
            _s(c.get("reason")),
        ]
        for c in d.get("certificates", [])
    ]


def _pods(d: dict[str, Any]) -> list[Row]:
    return [
        [
            _s(p.get("namespace")),
            _s(p.get("name")),
            _s(p.get("addresses")),
            _s(p.get("identity")),
            _s(p.get("state")),
            _s(p.get("error")),
        ]
        for p in d.get("pods", [])
    ]


def _connections(d: dict[str, Any]) -> list[Row]:
    return [
        [
            _s(c.get("direction")),
            _s(c.get("src")),
            _s(c.get("src_identity")),
            _s(c.get("dst")),
            _s(c.get("dst_identity")),
            _s(c.get("pod")),
        ]
        for c in d.get("connections", [])
    ]


SECTIONS: dict[str, Section] = {
    "workloads": (
        ["NAMESPACE", "NAME", "ADDRESSES", "NODE", "PROTOCOL", "WAYPOINT", "IDENTITY"],
        _workloads,
    ),
    "services": (["NAMESPACE", "NAME", "VIPS", "PORTS", "WAYPOINT"], _services),
    "policies": (["NAMESPACE", "NAME", "KIND", "SCOPE", "ACTION/MODE", "RULES"], _policies),
    "certificates": (
        ["IDENTITY", "STATE", "SERIAL", "NOT-BEFORE", "NOT-AFTER", "REASON"],
        _certificates,
    ),
    "pods": (["NAMESPACE", "NAME", "ADDRESSES", "IDENTITY", "STATE", "ERROR"], _pods),
    "connections": (
        ["DIRECTION", "SRC", "SRC-IDENTITY", "DST", "DST-IDENTITY", "POD"],
        _connections,
    ),
}
ALIASES = {s[:-1]: s for s in SECTIONS} | {"certs": "certificates", "cert": "certificates"}
ALIASES |= {"policy": "policies", "conns": "connections", "connection": "connections"}


def resolve_section(name: str) -> str:
    key = name.lower()
    key = ALIASES.get(key, key)
    if key not in SECTIONS and key != "all":
        raise CliError(f"unknown section {name!r}; use one of: {', '.join(SECTIONS)}, all")
    return key


def table_rows(section: str, dump: dict[str, Any]) -> tuple[list[str], list[Row]]:
    head, rows = SECTIONS[section]
    return head, rows(dump)


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
