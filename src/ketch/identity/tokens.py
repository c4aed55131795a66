"""Bootstrap tokens and node enrolment records.

A node joins with a one-time token created by the control plane (`TokenStore.create`). Only
the SHA-256 of a token is stored; redeeming deletes it (one-time), and an expired token is
refused. After a join, the serial of the node certificate is recorded; the certificate service
accepts a node certificate only while its serial is recorded for that node, so `revoke` (or a
re-join, which replaces the serial) cuts a node off at once, even though its certificate has
not expired.

State is a small JSON file (0600) in the CA state dir, rewritten atomically on every change,
or kept in memory when no path is given (tests, standalone mode). Several processes share the
file (the control plane serving joins, `ketch node token create` in another process): every
operation takes an exclusive `flock` on a sibling lock file and re-reads the file when it
changed, so a token created by the CLI is redeemable at once and a revoke takes effect at once.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import os
import secrets
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

from ketch.identity.ca import write_private_file
from ketch.identity.errors import BadRequest, CaConfigError, TokenError
from ketch.identity.spiffe import InvalidSpiffeId, NodeId

log = logging.getLogger("ketch.identity.tokens")

TOKEN_PREFIX = "ketch-node-"
DEFAULT_TOKEN_TTL = timedelta(hours=1)
MAX_TOKEN_TTL = timedelta(days=7)
#: xDS tokens: a node proxy without a node certificate (a stock ztunnel) sends one as
#: `authorization: Bearer <token>`; it opens xDS streams only, as often as needed.
XDS_TOKEN_PREFIX = "ketch-xds-"
DEFAULT_XDS_TOKEN_TTL = timedelta(days=30)
MAX_XDS_TOKEN_TTL = timedelta(days=365)
MAX_SERIALS_PER_NODE = 4  # current + a few in-flight renewals


def token_id(token: str) -> str:
    """What is stored of a token (its SHA-256): names it without revealing it."""
    return _hash(token)


def _hash(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).hexdigest()


def check_node_name(name: str) -> None:
    try:
        NodeId("cluster.local", name)
    except InvalidSpiffeId as exc:
        raise BadRequest(f"invalid node name {name[:80]!r}: use a DNS-1123 name") from exc


@dataclass(frozen=True)
class NodeRecord:
    name: str
    serials: tuple[str, ...]


class TokenStore:
    """One-time, expiring, hashed bootstrap tokens plus each node's current cert serials."""

    def __init__(self, path: Path | None = None, *, clock: Callable[[], float] = time.time):
        self._path = path
        self._clock = clock
        self._lock = threading.Lock()
        self._tokens: dict[str, dict[str, Any]] = {}
        self._xds_tokens: dict[str, dict[str, Any]] = {}  # hash -> {node, expires}
        self._nodes: dict[str, list[str]] = {}
        self._seen: tuple[int, int, int] | None = None  # (mtime_ns, size, inode) last read
        with self._locked():
            pass

    def _reload(self) -> None:
        if self._path is None:
            return
        try:
            st = os.stat(self._path)
        except FileNotFoundError:
            return
        seen = (st.st_mtime_ns, st.st_size, st.st_ino)
        if seen == self._seen:
            return
        try:
            data = json.loads(self._path.read_text())
            self._tokens = dict(data.get("tokens", {}))
            self._xds_tokens = dict(data.get("xds_tokens", {}))
            self._nodes = {k: list(v) for k, v in data.get("nodes", {}).items()}
        except (ValueError, AttributeError, TypeError) as exc:
            raise CaConfigError(f"{self._path}: unreadable token/node state: {exc}") from exc
        self._seen = seen

    @contextmanager
    def _locked(self) -> Iterator[None]:
        """Thread lock, plus an exclusive flock across processes; state re-read inside."""
        with self._lock:
            if self._path is None:
                yield
                return
            self._path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            fd = os.open(str(self._path) + ".lock", os.O_RDWR | os.O_CREAT, 0o600)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX)
                self._reload()
                yield
            finally:
                os.close(fd)  # releases the flock

    @classmethod
    def in_state_dir(cls, state_dir: Path) -> TokenStore:
        state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        return cls(state_dir / "nodes.json")

    def _save(self) -> None:
        if self._path is None:
            return
        data = {
            "version": 1,
            "tokens": self._tokens,
            "xds_tokens": self._xds_tokens,
            "nodes": self._nodes,
        }
        write_private_file(self._path, json.dumps(data, indent=1, sort_keys=True).encode())
        st = os.stat(self._path)
        self._seen = (st.st_mtime_ns, st.st_size, st.st_ino)

    def _expire(self, now: float) -> None:
        for tokens in (self._tokens, self._xds_tokens):
            for h in [h for h, t in tokens.items() if t["expires"] <= now]:
                del tokens[h]

    def create(self, node_name: str, ttl: timedelta = DEFAULT_TOKEN_TTL) -> str:
        """A new one-time token for `node_name`, valid for `ttl`. Shown once; stored hashed."""
        check_node_name(node_name)
        if not timedelta(seconds=1) <= ttl <= MAX_TOKEN_TTL:
            raise BadRequest(f"token TTL {ttl} outside 1s..{MAX_TOKEN_TTL}")
        token = TOKEN_PREFIX + secrets.token_urlsafe(32)
        with self._locked():
            now = self._clock()
            self._expire(now)
            self._tokens[_hash(token)] = {
                "node": node_name,
                "expires": now + ttl.total_seconds(),
            }
            self._save()
        log.info("created a bootstrap token for node %s (expires in %s)", node_name, ttl)
        return token

    def redeem(self, token: str, node_name: str) -> None:
        """Consume `token` for `node_name`, or raise TokenError. A token is used at most once:
        presenting it for the wrong node burns it too."""
        with self._locked():
            entry = self._tokens.pop(_hash(token), None)
            now = self._clock()
            self._expire(now)
            self._save()
        if entry is None:
            raise TokenError(
                "bootstrap token unknown or already used; create a new one with "
                "`ketch node token create <node>`"
            )
        if entry["expires"] <= now:
            raise TokenError("bootstrap token expired; create a new one")
        if entry["node"] != node_name:
            raise TokenError(
                f"bootstrap token was created for node {entry['node']!r}, not {node_name!r} "
                "(the token is now used up)"
            )

    def record_cert(self, node_name: str, serial: int) -> None:
        """Remember `serial` as a current certificate of `node_name` (join or renewal)."""
        with self._locked():
            serials = self._nodes.setdefault(node_name, [])
            serials.append(format(serial, "x"))
            del serials[:-MAX_SERIALS_PER_NODE]
            self._save()

    def replace_certs(self, node_name: str, serial: int) -> None:
        """A (re-)join: only this serial is valid for the node from now on."""
        with self._locked():
            self._nodes[node_name] = [format(serial, "x")]
            self._save()

    def is_current(self, node_name: str, serial: int) -> bool:
        with self._locked():
            return format(serial, "x") in self._nodes.get(node_name, ())

    def revoke(self, node_name: str) -> bool:
        """Stop accepting every certificate and every xDS token of `node_name` now. True if
        it was enrolled or had an xDS token."""
        with self._locked():
            existed = self._nodes.pop(node_name, None) is not None
            xds = [h for h, t in self._xds_tokens.items() if t["node"] == node_name]
            for h in xds:
                del self._xds_tokens[h]
            self._save()
        if existed or xds:
            log.warning(
                "revoked node %s: its certificate service and xDS access end now", node_name
            )
        return existed or bool(xds)

    def create_xds_token(self, node_name: str, ttl: timedelta = DEFAULT_XDS_TOKEN_TTL) -> str:
        """A reusable bearer token with which `node_name`'s node proxy may open xDS streams
        (and nothing else: no certificates) until `ttl` passes or `revoke(node_name)`.
        Shown once; stored hashed."""
        check_node_name(node_name)
        if not timedelta(seconds=1) <= ttl <= MAX_XDS_TOKEN_TTL:
            raise BadRequest(f"xDS token TTL {ttl} outside 1s..{MAX_XDS_TOKEN_TTL}")
        token = XDS_TOKEN_PREFIX + secrets.token_urlsafe(32)
        with self._locked():
            now = self._clock()
            self._expire(now)
            self._xds_tokens[_hash(token)] = {
                "node": node_name,
                "expires": now + ttl.total_seconds(),
            }
            self._save()
        log.info("created an xDS token for node %s (expires in %s)", node_name, ttl)
        return token

    def xds_token_node(self, token: str) -> str:
        """The node an xDS token was created for, or TokenError (unknown, expired or revoked;
        a bootstrap token is not an xDS token and is not consumed by being tried here)."""
        if not token.startswith(XDS_TOKEN_PREFIX):
            raise TokenError(
                "not a Ketch xDS token: create one with `ketch node token create <node> --xds`"
                + (
                    " (a bootstrap token only joins a node)"
                    if token.startswith(TOKEN_PREFIX)
                    else ""
                )
            )
        with self._locked():
            entry = self._xds_tokens.get(_hash(token))
            now = self._clock()
        if entry is None:
            raise TokenError(
                "xDS token unknown or revoked; create a new one with "
                "`ketch node token create <node> --xds`"
            )
        if entry["expires"] <= now:
            raise TokenError(
                "xDS token expired; create a new one with `ketch node token create <node> --xds`"
            )
        return str(entry["node"])

    def xds_token_is_current(self, token_hash: str) -> bool:
        """Is the xDS token with this hash (`token_id`) still valid (not revoked/expired)?"""
        with self._locked():
            entry = self._xds_tokens.get(token_hash)
            return entry is not None and entry["expires"] > self._clock()

    def xds_token_nodes(self) -> list[tuple[str, float]]:
        """(node name, expiry epoch seconds) of valid xDS tokens."""
        with self._locked():
            self._expire(self._clock())
            return sorted((t["node"], t["expires"]) for t in self._xds_tokens.values())

    def nodes(self) -> list[NodeRecord]:
        with self._locked():
            return [NodeRecord(n, tuple(s)) for n, s in sorted(self._nodes.items())]

    def pending_tokens(self) -> list[tuple[str, float]]:
        """(node name, expiry epoch seconds) of unexpired, unused tokens."""
        with self._locked():
            self._expire(self._clock())
            return sorted((t["node"], t["expires"]) for t in self._tokens.values())
