"""Apply and remove the in-pod redirection rules (the thin I/O layer over `rules.py`).

Everything runs *inside* the pod netns via `nsenter --net=<path>` (see `enter.py`):
`iptables-save` to read the current state, `iptables-restore --noflush` with the text
`rules.render_rules` produced, and `ip rule`/`ip route` for the policy routing.

Backend (nf_tables vs legacy x_tables). Both kernels' hooks exist side by side, and rules of
one backend are invisible to the other backend's tools, so we must pick one per netns and
stay with it. Order of choice:

1. ``KETCH_IPTABLES_BACKEND=nft|legacy`` in the environment (operator override);
2. the backend that already holds our chains in this netns (so re-install and removal touch
   the copy that is there);
3. legacy if the netns already has legacy tables with rules in them (someone else's rules
   are legacy: do as they do, as Istio does);
4. nft if `iptables-nft-restore` is installed, else legacy.

Legacy tables are only inspected when the kernel reports them loaded for that netns
(/proc/<tid>/net/ip_tables_names), so probing never instantiates legacy tables in a pod.

IPv6 rules are installed too when `ip6tables-<backend>-restore` exists and the kernel has
IPv6; pass ``ipv6=False`` to skip.

The node (host) netns gets one more chain, the probe SNAT (`install_host_rules`,
`remove_host_rules`; see rules.py "Probe exception"), with the same backend choice and
the same idempotent replace-in-one-commit installation.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from ketch.netns.constants import PROBE_SNAT_IPV4, PROBE_SNAT_IPV6
from ketch.netns.enter import NetnsRef, in_netns, ns_run
from ketch.netns.errors import IptablesError
from ketch.netns.rules import (
    DEFAULT_SPEC,
    HOST_CHAINS,
    HOST_TABLES,
    OUR_CHAINS,
    TABLES,
    Family,
    HostProbeSpec,
    RedirectSpec,
    has_our_chains,
    parse_save,
    policy_route_args,
    policy_rule_args,
    policy_rule_priorities,
    render_host_removal,
    render_host_rules,
    render_removal,
    render_rules,
    split_destinations,
)

BackendName = Literal["nft", "legacy"]
ENV_BACKEND = "KETCH_IPTABLES_BACKEND"
_LOCK_WAIT = "5"  # seconds to wait for the xtables lock (legacy backend shares one lock file)


@dataclass(frozen=True)
class IptablesBackend:
    """The binaries of one iptables backend."""

    name: BackendName

    def save(self, family: Family) -> str:
        return f"{'ip6tables' if family == 6 else 'iptables'}-{self.name}-save"

    def restore(self, family: Family) -> str:
        return f"{'ip6tables' if family == 6 else 'iptables'}-{self.name}-restore"

    def available(self, family: Family = 4) -> bool:
        return shutil.which(self.restore(family)) is not None and (
            shutil.which(self.save(family)) is not None
        )


NFT = IptablesBackend("nft")
LEGACY = IptablesBackend("legacy")
_BY_NAME: dict[str, IptablesBackend] = {"nft": NFT, "legacy": LEGACY}


def _families(ipv6: bool | None, backend: IptablesBackend) -> tuple[Family, ...]:
    if ipv6 is None:
        ipv6 = os.path.exists("/proc/sys/net/ipv6") and backend.available(6)
    return (4, 6) if ipv6 else (4,)


def _legacy_tables_loaded(netns: NetnsRef, family: Family) -> bool:
    name = "ip6_tables_names" if family == 6 else "ip_tables_names"

    def read() -> str:
        try:
            with open(f"/proc/thread-self/net/{name}") as f:
                return f.read()
        except FileNotFoundError:  # x_tables module not loaded at all
            return ""

    return bool(in_netns(netns, read).strip())


def saved_rules(netns: NetnsRef, *, family: Family = 4, backend: IptablesBackend = NFT) -> str:
    """`iptables-save` (or ip6tables-save) output of `backend` inside `netns`."""
    return ns_run(netns, [backend.save(family)], error=IptablesError).stdout


def _has_rules(text: str) -> bool:
    return any(t.rules for t in parse_save(text).values())


def detect_backend(netns: NetnsRef, *, host: bool = False) -> IptablesBackend:
    """The iptables backend to use in `netns` (see the module docstring for the order).
    `host`: look for the node's probe SNAT chain instead of the pod chains."""
    tables, chains = (HOST_TABLES, HOST_CHAINS) if host else (TABLES, OUR_CHAINS)
    forced = os.environ.get(ENV_BACKEND, "").strip().lower()
    if forced:
        if forced not in _BY_NAME:
            raise IptablesError(
                f"{ENV_BACKEND}={forced!r} is not 'nft' or 'legacy'",
                argv=[],
                returncode=-1,
                stderr="",
            )
        return _BY_NAME[forced]
    nft_ok = NFT.available()
    legacy_ok = LEGACY.available() and _legacy_tables_loaded(netns, 4)
    if nft_ok and has_our_chains(saved_rules(netns, backend=NFT), tables=tables, chains=chains):
        return NFT
    if legacy_ok:
        legacy_text = saved_rules(netns, backend=LEGACY)
        if has_our_chains(legacy_text, tables=tables, chains=chains) or _has_rules(legacy_text):
            return LEGACY
    if nft_ok:
        return NFT
    if LEGACY.available():
        return LEGACY
    raise IptablesError(
        "no iptables-restore found (need iptables-nft-restore or iptables-legacy-restore); "
        "install the Debian 'iptables' package",
        argv=[],
        returncode=-1,
        stderr="",
    )


def _restore(netns: NetnsRef, backend: IptablesBackend, family: Family, text: str) -> None:
    argv = [backend.restore(family), "--noflush"]
    if backend.name == "legacy":
        argv += ["-w", _LOCK_WAIT]
    ns_run(netns, argv, input=text, error=IptablesError)


def _ip(netns: NetnsRef, family: Family, *args: str, check: bool = True) -> str:
    return ns_run(netns, ["ip", f"-{family}", *args], check=check, error=IptablesError).stdout


def _policy_rules(netns: NetnsRef, spec: RedirectSpec) -> list[int]:
    return policy_rule_priorities(_ip(netns, spec.family, "-j", "rule", "show"), spec)


def install_rules(
    netns: NetnsRef,
    *,
    ipv6: bool | None = None,
    backend: IptablesBackend | None = None,
    spec: RedirectSpec = DEFAULT_SPEC,
) -> IptablesBackend:
    """Install the redirection rules and policy routing in `netns`; returns the backend used.

    Idempotent: running it again replaces our chains atomically and adds no duplicate
    jump, ip rule or route; a fwmark rule left at another priority (older Ketch: none
    given, the kernel picked 32765) is moved to `spec.rule_priority`. Raises
    `IptablesError` with the tool's message on failure.
    """
    chosen = backend or detect_backend(netns)
    for family in _families(ipv6, chosen):
        fspec = dataclasses.replace(spec, family=family)
        existing = saved_rules(netns, family=family, backend=chosen)
        _restore(netns, chosen, family, render_rules(fspec, existing=existing))
        _ip(netns, family, "route", "replace", *policy_route_args(fspec))
        priorities = _policy_rules(netns, fspec)
        if fspec.rule_priority not in priorities:
            _ip(netns, family, "rule", "add", *policy_rule_args(fspec))
        for pref in priorities:
            if pref != fspec.rule_priority:
                _ip(netns, family, "rule", "del", *policy_rule_args(fspec, pref))
    return chosen


def remove_rules(
    netns: NetnsRef, *, ipv6: bool | None = None, spec: RedirectSpec = DEFAULT_SPEC
) -> None:
    """Remove everything `install_rules` added to `netns`, from whichever backend holds it.
    Removing when nothing is installed is fine."""
    families: tuple[Family, ...] = (4, 6) if ipv6 is not False else (4,)
    for family in families:
        fspec = dataclasses.replace(spec, family=family)
        for backend in (NFT, LEGACY):
            if not backend.available(family):
                continue
            if backend is LEGACY and not _legacy_tables_loaded(netns, family):
                continue
            text = render_removal(saved_rules(netns, family=family, backend=backend))
            if text:
                _restore(netns, backend, family, text)
        if family == 6 and not os.path.exists("/proc/sys/net/ipv6"):
            continue
        for pref in _policy_rules(netns, fspec):
            _ip(netns, family, "rule", "del", *policy_rule_args(fspec, pref))
        # Absent route: `ip route del` fails with "No such process"; that is the goal anyway.
        _ip(netns, family, "route", "del", *policy_route_args(fspec), check=False)


def rules_installed(netns: NetnsRef, *, backend: IptablesBackend | None = None) -> bool:
    """True if our IPv4 chains are present in `netns` (any backend unless given)."""
    backends = [backend] if backend else [NFT, LEGACY]
    for b in backends:
        if not b.available():
            continue
        if b is LEGACY and not _legacy_tables_loaded(netns, 4):
            continue
        if has_our_chains(saved_rules(netns, backend=b)):
            return True
    return False


def install_host_rules(
    netns: NetnsRef,
    destinations: Sequence[str],
    *,
    ipv6: bool | None = None,
    backend: IptablesBackend | None = None,
    snat_ipv4: str = PROBE_SNAT_IPV4,
    snat_ipv6: str = PROBE_SNAT_IPV6,
) -> IptablesBackend:
    """Install (or replace) the probe SNAT in a *node* netns: node-originated TCP to
    `destinations` (IPs or CIDRs of the node's pods, both families mixed) leaves with
    source `snat_ipv4`/`snat_ipv6`, which the pods' rules let past the proxy.

    Idempotent, and atomic per family: calling it again with another list (a pod enrolled
    or gone) swaps the chain's rules in one commit. Returns the backend used."""
    chosen = backend or detect_backend(netns, host=True)
    by_family = split_destinations(destinations)
    families = _families(ipv6, chosen)
    if by_family[6] and 6 not in families:
        raise IptablesError(
            f"IPv6 probe destinations {list(by_family[6])} given, but IPv6 rules cannot be "
            f"installed ({chosen.restore(6)} missing, or ipv6=False)",
            argv=[],
            returncode=-1,
            stderr="",
        )
    for family in families:
        spec = HostProbeSpec(family, by_family[family], snat_ipv6 if family == 6 else snat_ipv4)
        existing = saved_rules(netns, family=family, backend=chosen)
        _restore(netns, chosen, family, render_host_rules(spec, existing=existing))
    return chosen


def remove_host_rules(netns: NetnsRef, *, ipv6: bool | None = None) -> None:
    """Remove the probe SNAT from a node netns, from whichever backend holds it.
    Removing when nothing is installed is fine."""
    families: tuple[Family, ...] = (4, 6) if ipv6 is not False else (4,)
    for family in families:
        for backend in (NFT, LEGACY):
            if not backend.available(family):
                continue
            if backend is LEGACY and not _legacy_tables_loaded(netns, family):
                continue
            text = render_host_removal(saved_rules(netns, family=family, backend=backend))
            if text:
                _restore(netns, backend, family, text)


def host_rules_installed(netns: NetnsRef) -> bool:
    """True if the IPv4 probe SNAT chain is present in `netns` (any backend)."""
    for b in (NFT, LEGACY):
        if not b.available() or (b is LEGACY and not _legacy_tables_loaded(netns, 4)):
            continue
        if has_our_chains(saved_rules(netns, backend=b), tables=HOST_TABLES, chains=HOST_CHAINS):
            return True
    return False


__all__ = [
    "ENV_BACKEND",
    "LEGACY",
    "NFT",
    "IptablesBackend",
    "detect_backend",
    "host_rules_installed",
    "install_host_rules",
    "install_rules",
    "remove_host_rules",
    "remove_rules",
    "rules_installed",
    "saved_rules",
]
