"""The pod's /etc files (what `ip netns exec` mounts over /etc) and its hostname."""

from __future__ import annotations

import ipaddress
from pathlib import Path

import pytest

from ketch.cluster.layout import UTS_RUN_DIR
from ketch.cluster.podnet import Sandbox, hosts_file, pod_hostname, remove_uts, resolv_conf


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


@pytest.mark.parametrize(
    ("pod_name", "spec_hostname", "want"),
    [
        ("web-1", None, "web-1"),
        ("web-1", "front", "front"),  # spec.hostname wins
        ("a" * 70, None, "a" * 63),  # a DNS label: at most 63 characters
        ("a" * 62 + "-b", None, "a" * 62),  # cut, then no trailing '-'
        ("a" * 61 + ".-b", None, "a" * 61),  # ... nor '.'
    ],
)
def test_pod_hostname(pod_name: str, spec_hostname: str | None, want: str) -> None:
    assert pod_hostname(pod_name, spec_hostname) == want


def _sandbox(**kw: str) -> Sandbox:
    return Sandbox(
        node_netns="t-n-node1",
        netns="t-p-0123456789ab",
        veth="v0123456789ab",
        ip=ipaddress.IPv4Address("10.244.1.7"),
        gateway=ipaddress.IPv4Address("10.244.1.1"),
        etc_dir=Path("/etc/netns/t-p-0123456789ab"),
        namespace="demo",
        pod_name="web-1",
        **kw,
    )


def test_sandbox_names_its_hostname_and_uts_file() -> None:
    assert _sandbox().host_name == "web-1"
    assert _sandbox(hostname="front").host_name == "front"
    assert _sandbox().uts_path == UTS_RUN_DIR / "t-p-0123456789ab"


def test_remove_uts_of_a_plain_file_and_of_nothing(tmp_path: Path) -> None:
    # not a mount point (umount says EINVAL): still removed; nothing there: no problem
    f = tmp_path / "t-p-0123456789ab"
    f.touch()
    assert remove_uts(f) is None
    assert not f.exists()
    assert remove_uts(f) is None


def test_remove_uts_says_what_it_cannot_remove(tmp_path: Path) -> None:
    d = tmp_path / "t-p-0123456789ab"
    (d / "x").mkdir(parents=True)  # a non-empty directory cannot be unlinked
    problem = remove_uts(d)
    assert problem is not None
    assert problem.startswith(f"cannot remove {d}")
