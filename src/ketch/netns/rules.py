"""The in-pod redirection rules, as pure functions (no I/O; `iptables.py` applies them).

What the rules do inside a pod's network namespace (REFERENCE.md "In-pod redirection"):

mangle PREROUTING -> ISTIO_PRERT
    ``-m mark --mark 0x539/0xfff -j CONNMARK --set-xmark 0x111/0xfff``
    A packet carrying the proxy's mark arrives (over lo) from a socket the proxy opened in
    this netns: remember on the *connection* that the proxy made it.
mangle OUTPUT -> ISTIO_OUTPUT
    ``-m connmark --mark 0x111/0xfff -j CONNMARK --restore-mark``
    The workload's packets on such a connection (its replies) get packet mark 0x111, which
    policy routing (``fwmark 0x111/0xfff lookup 100``; table 100 ``local 0.0.0.0/0 dev lo``)
    delivers back over loopback to the proxy, even when the proxy used the remote peer's
    address as source (transparent), instead of routing them out of eth0.
nat PREROUTING -> ISTIO_PRERT
    ``-s 169.254.7.127/32 -p tcp -j ACCEPT``: kubelet probes, which the node SNATs to this
    link-local address (see "Probe exception" below), reach the app without the proxy.
    ``! -d 127.0.0.1/32 -p tcp ! --dport 15008 -m mark ! --mark 0x539/0xfff
    -j REDIRECT --to-ports 15006``
    Inbound TCP from outside the pod goes to the plaintext inbound listener, except HBONE
    (15008, dialled directly) and the proxy's own traffic.
nat OUTPUT -> ISTIO_OUTPUT
    ``-d 169.254.7.127/32 -p tcp -j ACCEPT``: nothing the pod sends to the probe address
    is captured either.
    ``-m mark --mark 0x111/0xfff -j ACCEPT``: replies on proxy-made connections are not
    captured again; ``! -d 127.0.0.1/32 -o lo -j ACCEPT``: traffic to the pod's own
    addresses stays local; ``! -d 127.0.0.1/32 -p tcp -m mark ! --mark 0x539/0xfff
    -j REDIRECT --to-ports 15001``: every other outbound TCP connection of the workload goes
    to the outbound listener.

Probe exception (istio-cni's; ISTIO-PARITY.md §6). Kubelet probes come from the node, have
no mesh identity, and under a STRICT PeerAuthentication the proxy's 15006 would refuse
them: pods would never become ready. So the *node* netns gets, in nat POSTROUTING ->
ISTIO_POSTRT (`render_host_rules`)::

    -A ISTIO_POSTRT -d <pod CIDR or pod IP> -p tcp -m owner --socket-exists
        -j SNAT --to-source 169.254.7.127

`--socket-exists` matches only packets of a socket on the node itself (kubelet's), never
traffic the node forwards for other pods or nodes (no local socket), so a plaintext peer
cannot borrow the exception by routing through the node. istio-cni selects the
destinations with an ipset of enrolled pod IPs; we take an explicit destination list
(the node's pod CIDR, or one /32 per enrolled pod for the exact ipset behaviour) so that
no ipset tooling or xt_set module is needed; re-installing with a new list replaces the
chain atomically. IPv6 uses fd16:9254:7127:1337:ffff:ffff:ffff:ffff the same way.

Fail closed: REDIRECT always points at a port on this pod's loopback. If no proxy listens
there the connection is refused (RST); it never leaves the pod in plaintext.

The rule text is written in the canonical form `iptables-save` prints, so that an installed
rule set can be compared line by line with what we rendered.
"""

from __future__ import annotations

import ipaddress
import json
import shlex
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal

from ketch.netns.constants import (
    CHAIN_HOST_POSTROUTING,
    CHAIN_OUTPUT,
    CHAIN_PREROUTING,
    CONNMARK,
    HBONE_PORT,
    INBOUND_PLAINTEXT_PORT,
    MARK_MASK,
    OUTBOUND_PORT,
    PROBE_SNAT_IPV4,
    PROBE_SNAT_IPV6,
    PROXY_MARK,
    ROUTE_TABLE,
    RULE_PRIORITY,
)

Family = Literal[4, 6]
TABLES: tuple[str, ...] = ("mangle", "nat")
OUR_CHAINS: frozenset[str] = frozenset({CHAIN_PREROUTING, CHAIN_OUTPUT})
#: Tables and chains of the node (host) netns rules: the probe SNAT.
HOST_TABLES: tuple[str, ...] = ("nat",)
HOST_CHAINS: frozenset[str] = frozenset({CHAIN_HOST_POSTROUTING})
HOST_JUMPS: tuple[tuple[str, str, str], ...] = (("nat", "POSTROUTING", CHAIN_HOST_POSTROUTING),)
#: (table, built-in chain, our chain) hooks.
_CHAIN_ORDER = (CHAIN_PREROUTING, CHAIN_OUTPUT, CHAIN_HOST_POSTROUTING)
JUMPS: tuple[tuple[str, str, str], ...] = tuple(
    (table, builtin, ours)
    for table in TABLES
    for builtin, ours in (("PREROUTING", CHAIN_PREROUTING), ("OUTPUT", CHAIN_OUTPUT))
)


@dataclass(frozen=True)
class RedirectSpec:
    """The numbers the rules are made of; the defaults are Istio's."""

    family: Family = 4
    outbound_port: int = OUTBOUND_PORT
    inbound_port: int = INBOUND_PLAINTEXT_PORT
    hbone_port: int = HBONE_PORT
    proxy_mark: int = PROXY_MARK
    connmark: int = CONNMARK
    mask: int = MARK_MASK
    table: int = ROUTE_TABLE
    rule_priority: int = RULE_PRIORITY
    #: Let probes SNATed to `probe_snat_ipv4`/`_ipv6` by the node past the proxy.
    probe_bypass: bool = True
    probe_snat_ipv4: str = PROBE_SNAT_IPV4
    probe_snat_ipv6: str = PROBE_SNAT_IPV6

    def __post_init__(self) -> None:
        if self.family not in (4, 6):
            raise ValueError(f"family must be 4 or 6, not {self.family!r}")
        _check_ip(self.probe_snat_ipv4, 4, "probe_snat_ipv4")
        _check_ip(self.probe_snat_ipv6, 6, "probe_snat_ipv6")
        if not 0 < self.rule_priority < 32766:
            raise ValueError(
                f"rule priority {self.rule_priority} must be in 1..32765 "
                "(before the kernel's main table rule)"
            )
        for name in ("outbound_port", "inbound_port", "hbone_port"):
            port = getattr(self, name)
            if not 0 < port < 65536:
                raise ValueError(f"{name} {port} is not a TCP port")
        for name in ("proxy_mark", "connmark", "mask"):
            if not 0 < getattr(self, name) <= 0xFFFFFFFF:
                raise ValueError(f"{name} must be a non-zero 32-bit value")
        if not 0 < self.table < 2**31 or self.table in (253, 254, 255):
            raise ValueError(f"routing table {self.table} is reserved or invalid")

    @property
    def loopback(self) -> str:
        return "::1/128" if self.family == 6 else "127.0.0.1/32"

    @property
    def any_address(self) -> str:
        return "::/0" if self.family == 6 else "0.0.0.0/0"

    @property
    def probe_source(self) -> str:
        """The probe SNAT address of this family as iptables-save prints it (with /32, /128)."""
        return f"{self.probe_snat_ipv6}/128" if self.family == 6 else f"{self.probe_snat_ipv4}/32"


def _check_ip(value: str, version: int, name: str) -> None:
    try:
        addr = ipaddress.ip_address(value)
    except ValueError:
        raise ValueError(f"{name} {value!r} is not an IP address") from None
    if addr.version != version or str(addr) != value:
        raise ValueError(f"{name} must be a canonical IPv{version} address, not {value!r}")


#: Istio's numbers, IPv4.
DEFAULT_SPEC = RedirectSpec()


def chain_rules(spec: RedirectSpec = DEFAULT_SPEC) -> dict[str, list[str]]:
    """table -> the `-A` lines of our chains, in order, in iptables-save's canonical form."""
    mark = f"{spec.proxy_mark:#x}/{spec.mask:#x}"
    conn = f"{spec.connmark:#x}/{spec.mask:#x}"
    lo = spec.loopback
    pre, post = CHAIN_PREROUTING, CHAIN_OUTPUT
    probe_in = [f"-A {pre} -s {spec.probe_source} -p tcp -j ACCEPT"] if spec.probe_bypass else []
    probe_out = [f"-A {post} -d {spec.probe_source} -p tcp -j ACCEPT"] if spec.probe_bypass else []
    return {
        "mangle": [
            f"-A {pre} -m mark --mark {mark} -j CONNMARK --set-xmark {conn}",
            f"-A {post} -m connmark --mark {conn} -j CONNMARK --restore-mark"
            " --nfmask 0xffffffff --ctmask 0xffffffff",
        ],
        "nat": [
            *probe_in,
            f"-A {pre} ! -d {lo} -p tcp -m tcp ! --dport {spec.hbone_port}"
            f" -m mark ! --mark {mark} -j REDIRECT --to-ports {spec.inbound_port}",
            *probe_out,
            f"-A {post} -m mark --mark {conn} -j ACCEPT",
            f"-A {post} ! -d {lo} -o lo -j ACCEPT",
            f"-A {post} ! -d {lo} -p tcp -m mark ! --mark {mark}"
            f" -j REDIRECT --to-ports {spec.outbound_port}",
        ],
    }


@dataclass(frozen=True)
class SavedTable:
    """One table of `iptables-save` output: its chains and its `-A` rules, in order."""

    chains: tuple[str, ...]
    rules: tuple[str, ...]


def parse_save(text: str) -> dict[str, SavedTable]:
    """Parse `iptables-save` output into table -> SavedTable (comments and counters dropped)."""
    tables: dict[str, SavedTable] = {}
    name: str | None = None
    chains: list[str] = []
    rules: list[str] = []
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("*"):
            name, chains, rules = line[1:], [], []
        elif line == "COMMIT":
            if name is not None:
                tables[name] = SavedTable(tuple(chains), tuple(rules))
            name = None
        elif name is not None and line.startswith(":"):
            chains.append(line[1:].split()[0])
        elif name is not None and line.startswith("-A "):
            rules.append(line)
    return tables


def _rule_chain(rule: str) -> str:
    return rule.split()[1]


def _jump_target(rule: str) -> str | None:
    words = rule.split()
    for i, word in enumerate(words[:-1]):
        if word in ("-j", "-g"):
            return words[i + 1]
    return None


def our_rules(
    text: str, *, tables: Iterable[str] = TABLES, chains: frozenset[str] = OUR_CHAINS
) -> dict[str, list[str]]:
    """table -> lines of `iptables-save` output that belong to us: rules in our chains and
    jumps into them. Empty lists mean nothing of ours is installed. The defaults are the
    pod chains; pass `tables=HOST_TABLES, chains=HOST_CHAINS` for a node's probe SNAT."""
    saved = parse_save(text)
    out: dict[str, list[str]] = {}
    for table in tables:
        entry = saved.get(table)
        lines = [] if entry is None else list(entry.rules)
        out[table] = [r for r in lines if _rule_chain(r) in chains or _jump_target(r) in chains]
    return out


def has_our_chains(
    text: str, *, tables: Iterable[str] = TABLES, chains: frozenset[str] = OUR_CHAINS
) -> bool:
    """True if any of our chains (or a jump into them) exists in this `iptables-save` text."""
    saved = parse_save(text)
    if any(chains & set(t.chains) for t in saved.values()):
        return True
    return any(our_rules(text, tables=tables, chains=chains).values())


def render_rules(spec: RedirectSpec = DEFAULT_SPEC, *, existing: str = "") -> str:
    """`iptables-restore --noflush` input installing the rules.

    Declaring a chain (`:ISTIO_PRERT - [0:0]`) under --noflush creates it or, if it exists,
    flushes it, and each table is committed atomically, so re-installing replaces the rules
    with no window where traffic escapes. Jumps from the built-in chains are emitted only if
    `existing` (current `iptables-save` output of the same netns and family) lacks them, so
    installing twice leaves exactly one copy.
    """
    saved = parse_save(existing)
    rules = chain_rules(spec)
    out: list[str] = []
    for table in TABLES:
        present = saved.get(table, SavedTable((), ())).rules
        out.append(f"*{table}")
        out.extend(f":{chain} - [0:0]" for chain in (CHAIN_PREROUTING, CHAIN_OUTPUT))
        for jt, builtin, ours in JUMPS:
            jump = f"-A {builtin} -j {ours}"
            if jt == table and jump not in present:
                out.append(jump)
        out.extend(rules[table])
        out.append("COMMIT")
    return "\n".join(out) + "\n"


def render_removal(
    existing: str, *, tables: Iterable[str] = TABLES, chains: frozenset[str] = OUR_CHAINS
) -> str:
    """`iptables-restore --noflush` input removing everything of ours found in `existing`
    (`iptables-save` output): every rule jumping into our chains, then the chains.
    Returns "" when nothing of ours is there (removal is idempotent). The defaults are the
    pod chains; `render_host_removal` passes the node's."""
    saved = parse_save(existing)
    out: list[str] = []
    for table in tables:
        entry = saved.get(table)
        if entry is None:
            continue
        body: list[str] = []
        for rule in entry.rules:
            if _rule_chain(rule) not in chains and _jump_target(rule) in chains:
                body.append("-D " + rule[len("-A ") :])
        for chain in sorted(chains, key=_CHAIN_ORDER.index):
            if chain in entry.chains:
                body.extend((f"-F {chain}", f"-X {chain}"))
        if body:
            out.extend((f"*{table}", *body, "COMMIT"))
    return "\n".join(out) + "\n" if out else ""


# ---------------------------------------------------------------------------------------
# Node (host) netns: the probe SNAT


@dataclass(frozen=True)
class HostProbeSpec:
    """The node's probe SNAT for one family: node-originated TCP to `destinations` (the
    node's pod CIDR, or its enrolled pods' addresses) gets source `snat_ip`."""

    family: Family = 4
    destinations: tuple[str, ...] = ()
    snat_ip: str = ""

    def __post_init__(self) -> None:
        if self.family not in (4, 6):
            raise ValueError(f"family must be 4 or 6, not {self.family!r}")
        if not self.snat_ip:
            default = PROBE_SNAT_IPV6 if self.family == 6 else PROBE_SNAT_IPV4
            object.__setattr__(self, "snat_ip", default)
        _check_ip(self.snat_ip, self.family, "snat_ip")
        nets: list[str] = []
        for d in self.destinations:
            try:
                net = ipaddress.ip_network(d, strict=False)
            except ValueError:
                raise ValueError(f"probe SNAT destination {d!r} is not an IP or CIDR") from None
            if net.version != self.family:
                raise ValueError(f"probe SNAT destination {d} is not IPv{self.family}")
            nets.append(str(net))  # iptables-save's form: always with the prefix length
        object.__setattr__(self, "destinations", tuple(dict.fromkeys(nets)))


def split_destinations(destinations: Iterable[str]) -> dict[Family, tuple[str, ...]]:
    """Destinations (IPs or CIDRs, both families mixed) grouped by family."""
    out: dict[Family, list[str]] = {4: [], 6: []}
    for d in destinations:
        try:
            version = ipaddress.ip_network(d, strict=False).version
        except ValueError:
            raise ValueError(f"probe SNAT destination {d!r} is not an IP or CIDR") from None
        out[6 if version == 6 else 4].append(d)
    return {4: tuple(out[4]), 6: tuple(out[6])}


def host_chain_rules(spec: HostProbeSpec) -> list[str]:
    """The `-A ISTIO_POSTRT` lines (nat table), in iptables-save's canonical form."""
    return [
        f"-A {CHAIN_HOST_POSTROUTING} -d {dst} -p tcp -m owner --socket-exists"
        f" -j SNAT --to-source {spec.snat_ip}"
        for dst in spec.destinations
    ]


def render_host_rules(spec: HostProbeSpec, *, existing: str = "") -> str:
    """`iptables-restore --noflush` input installing (or replacing) the node's probe SNAT.
    Like `render_rules`: the chain is declared (created or flushed) and refilled in one
    commit, and the POSTROUTING jump is added only if `existing` lacks it."""
    present = parse_save(existing).get("nat", SavedTable((), ())).rules
    out = ["*nat", f":{CHAIN_HOST_POSTROUTING} - [0:0]"]
    for _table, builtin, ours in HOST_JUMPS:
        jump = f"-A {builtin} -j {ours}"
        if jump not in present:
            out.append(jump)
    out.extend(host_chain_rules(spec))
    out.append("COMMIT")
    return "\n".join(out) + "\n"


def render_host_removal(existing: str) -> str:
    """`iptables-restore --noflush` input removing the node's probe SNAT ("" if absent)."""
    return render_removal(existing, tables=HOST_TABLES, chains=HOST_CHAINS)


# ---------------------------------------------------------------------------------------
# Policy routing: fwmark 0x111/0xfff lookup 100; table 100: local 0.0.0.0/0 dev lo


def policy_rule_args(spec: RedirectSpec = DEFAULT_SPEC, priority: int | None = None) -> list[str]:
    """Arguments after `ip -4|-6 rule add|del`: our fwmark rule at `priority` (default the
    spec's, 32764 as istio-cni; pass another to delete a rule left at another priority)."""
    pref = spec.rule_priority if priority is None else priority
    return [
        "fwmark",
        f"{spec.connmark:#x}/{spec.mask:#x}",
        "lookup",
        str(spec.table),
        "pref",
        str(pref),
    ]


def policy_route_args(spec: RedirectSpec = DEFAULT_SPEC) -> list[str]:
    """Arguments after `ip -4|-6 route replace|del`."""
    return ["local", spec.any_address, "dev", "lo", "table", str(spec.table)]


def count_policy_rules(ip_json: str, spec: RedirectSpec = DEFAULT_SPEC) -> int:
    """How many of our fwmark rules `ip -j rule show` lists (at any priority)."""
    return len(policy_rule_priorities(ip_json, spec))


def policy_rule_priorities(ip_json: str, spec: RedirectSpec = DEFAULT_SPEC) -> list[int]:
    """The priorities of our fwmark rules in `ip -j rule show` output, one per rule."""
    text = ip_json.strip()
    entries = json.loads(text) if text else []
    found: list[int] = []
    for entry in entries:
        if not isinstance(entry, dict):
            continue
        mark = entry.get("fwmark")
        mask = entry.get("fwmask")
        if (
            mark is not None
            and int(str(mark), 0) == spec.connmark
            and int(str(mask if mask is not None else "0xffffffff"), 0) == spec.mask
            and str(entry.get("table")) == str(spec.table)
        ):
            found.append(int(entry.get("priority", 0)))
    return found


def describe(spec: RedirectSpec = DEFAULT_SPEC) -> str:
    """Human-readable listing of everything `install_rules` sets up (for docs and CLI)."""
    v = f"-{spec.family}"
    lines = [render_rules(spec).rstrip("\n")]
    lines.append(shlex.join(["ip", v, "rule", "add", *policy_rule_args(spec)]))
    lines.append(shlex.join(["ip", v, "route", "replace", *policy_route_args(spec)]))
    return "\n".join(lines)
