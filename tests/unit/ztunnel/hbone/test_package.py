"""The package's boundaries: what it imports, and the names callers import from it."""

from __future__ import annotations

import ast
from pathlib import Path

import ketch.ztunnel.hbone as hbone

PACKAGE = Path(hbone.__file__).parent
ALLOWED = ("ketch.identity.spiffe", "ketch.util", "ketch.ztunnel.hbone")


def test_imports_only_spiffe_util_and_itself() -> None:
    for path in PACKAGE.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            for name in names:
                if name.startswith("ketch"):
                    assert name.startswith(ALLOWED), f"{path.name} imports {name}"


def test_names_callers_use_are_exported() -> None:
    # ztunnel/inbound.py, outbound.py, proxy.py and the benchmark import these.
    for name in ("HboneClientPool", "HboneServer", "IncomingConnect", "Tunnel", "relay"):
        assert name in hbone.__all__
    from ketch.ztunnel.hbone.driver import H2Protocol
    from ketch.ztunnel.hbone.tcp_relay import RelayResult, relay

    assert relay is hbone.relay
    assert H2Protocol.__module__ == "ketch.ztunnel.hbone.driver"
    assert RelayResult.__module__ == "ketch.ztunnel.hbone.tcp_relay"
