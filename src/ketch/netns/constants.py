"""Ports, marks and routing numbers of the in-pod redirection model.

These values are the ones Istio's ambient mode uses (REFERENCE.md "Components and ports",
"In-pod redirection"); keeping them identical means rules, captures and habits carry over.
"""

from __future__ import annotations

from typing import Final

#: Outbound capture listener inside each pod netns (reads SO_ORIGINAL_DST).
OUTBOUND_PORT: Final = 15001
#: Inbound plaintext capture listener inside each pod netns (peers without the mesh).
INBOUND_PLAINTEXT_PORT: Final = 15006
#: Inbound HBONE listener inside each pod netns; dialled directly, never redirected.
HBONE_PORT: Final = 15008
#: DNS proxy inside each pod netns (localhost, optional).
DNS_PORT: Final = 15053

#: Ports whose traffic addressed to a pod is a self-call (loop prevention).
PROXY_PORTS: Final = frozenset({OUTBOUND_PORT, INBOUND_PLAINTEXT_PORT, HBONE_PORT})

#: SO_MARK the proxy sets on every socket it opens inside a pod netns ("1337").
PROXY_MARK: Final = 0x539
#: Connection mark for connections the proxy made into the pod (replies stay on lo).
CONNMARK: Final = 0x111
#: Mask applied to both marks; the upper bits stay free for other users (e.g. Kubernetes).
MARK_MASK: Final = 0xFFF
#: Policy routing table that sends connmarked replies back over loopback.
ROUTE_TABLE: Final = 100
#: Priority of the `fwmark 0x111/0xfff lookup 100` rule: istio-cni's, just before the
#: kernel's `main` (32766) and `default` (32767) rules, so an operator can tell it apart.
RULE_PRIORITY: Final = 32764

#: The source address the node's SNAT gives to kubelet probes (node-originated TCP to a
#: local pod), which the pod's rules then let past the proxy: istio-cni's defaults
#: (HOST_PROBE_SNAT_IP / HOST_PROBE_SNAT_IPV6). Link-local: it never leaves the node.
PROBE_SNAT_IPV4: Final = "169.254.7.127"
PROBE_SNAT_IPV6: Final = "fd16:9254:7127:1337:ffff:ffff:ffff:ffff"

#: TCP keepalive on every proxied pod socket, as ztunnel sets it (zt:src/socket.rs):
#: first probe after 180 s idle, then every 180 s, give up after 9 unanswered probes.
#: Dead peers (a node gone without a RST) are then noticed in 30 min instead of never.
KEEPALIVE_IDLE: Final = 180
KEEPALIVE_INTERVAL: Final = 180
KEEPALIVE_COUNT: Final = 9

#: The two chains we own in the mangle and nat tables of a pod netns.
CHAIN_PREROUTING: Final = "ISTIO_PRERT"
CHAIN_OUTPUT: Final = "ISTIO_OUTPUT"
#: Our chain in the nat table of a *node* netns (the probe SNAT), hooked to POSTROUTING.
CHAIN_HOST_POSTROUTING: Final = "ISTIO_POSTRT"
