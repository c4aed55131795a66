"""Network namespaces: entering them, sockets inside pods, redirection rules, the fabric.

* `enter`     — run code or processes inside a netns without moving the caller
                (`in_netns`, `run_in_netns`, `open_netns`, `ns_run`, `ns_popen`).
* `sockets`   — the node proxy's in-pod sockets: `pod_listener`, `pod_connect_socket`,
                `original_dst` (SO_ORIGINAL_DST), all marked SO_MARK 0x539;
                listeners are dual-stack, `canonical_ip` unmaps ::ffff:a.b.c.d.
* `rules`     — the in-pod iptables rules as pure functions (`render_rules`, ...).
* `iptables`  — apply/remove them inside a pod netns (`install_rules`, `remove_rules`),
                and the probe SNAT in a node netns (`install_host_rules`, ...).
* `fabric`    — a local cluster of node and pod namespaces for tests, benchmarks and
                the local `ketch` cluster (`Fabric`, `Node`, `Pod`, `cleanup_stale`).
* `constants` — ports 15001/15006/15008, marks 0x539/0x111, routing table 100.

See docs/netns.md.
"""

from ketch.netns.constants import (
    CONNMARK,
    HBONE_PORT,
    INBOUND_PLAINTEXT_PORT,
    MARK_MASK,
    OUTBOUND_PORT,
    PROBE_SNAT_IPV4,
    PROBE_SNAT_IPV6,
    PROXY_MARK,
    ROUTE_TABLE,
)
from ketch.netns.enter import (
    NetnsRef,
    close_netns,
    current_netns_id,
    in_netns,
    netns_fd,
    netns_path,
    ns_popen,
    ns_run,
    open_netns,
    run_in_netns,
    serve_netns,
    stop_serving,
)
from ketch.netns.errors import (
    CommandError,
    FabricError,
    IptablesError,
    NetnsEnterError,
    NetnsError,
    NetnsNotFound,
    NoOriginalDestination,
)
from ketch.netns.iptables import (
    detect_backend,
    host_rules_installed,
    install_host_rules,
    install_rules,
    remove_host_rules,
    remove_rules,
    rules_installed,
)
from ketch.netns.rules import (
    HostProbeSpec,
    RedirectSpec,
    render_host_removal,
    render_host_rules,
    render_removal,
    render_rules,
)
from ketch.netns.sockets import (
    DUAL_STACK,
    canonical_ip,
    original_dst,
    pod_connect,
    pod_connect_socket,
    pod_listener,
    pod_listener_async,
    socket_mark,
)

__all__ = [
    "CONNMARK",
    "DUAL_STACK",
    "HBONE_PORT",
    "INBOUND_PLAINTEXT_PORT",
    "MARK_MASK",
    "OUTBOUND_PORT",
    "PROBE_SNAT_IPV4",
    "PROBE_SNAT_IPV6",
    "PROXY_MARK",
    "ROUTE_TABLE",
    "CommandError",
    "FabricError",
    "HostProbeSpec",
    "IptablesError",
    "NetnsEnterError",
    "NetnsError",
    "NetnsNotFound",
    "NetnsRef",
    "NoOriginalDestination",
    "RedirectSpec",
    "canonical_ip",
    "close_netns",
    "current_netns_id",
    "detect_backend",
    "host_rules_installed",
    "in_netns",
    "install_host_rules",
    "install_rules",
    "netns_fd",
    "netns_path",
    "ns_popen",
    "ns_run",
    "open_netns",
    "original_dst",
    "pod_connect",
    "pod_connect_socket",
    "pod_listener",
    "pod_listener_async",
    "remove_host_rules",
    "remove_rules",
    "render_host_removal",
    "render_host_rules",
    "render_removal",
    "render_rules",
    "rules_installed",
    "run_in_netns",
    "serve_netns",
    "socket_mark",
    "stop_serving",
]
