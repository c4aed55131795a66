"""The pod's /etc files (what `ip netns exec` mounts over /etc)."""

from __future__ import annotations

import ipaddress

from ketch.cluster.podnet import hosts_file, resolv_conf


def test_resolv_conf_is_cluster_first() -> None:
    assert resolv_conf("shop") == (
        "search shop.svc.cluster.local svc.cluster.local cluster.local\n"
        "nameserver 10.96.0.10\n"
        "options ndots:5\n"
    )


def test_hosts_file_names_the_pod() -> None:
    text = hosts_file("web-1", ipaddress.IPv4Address("10.244.1.7"))
    assert "127.0.0.1\tlocalhost\n" in text
    assert text.endswith("10.244.1.7\tweb-1\n")
