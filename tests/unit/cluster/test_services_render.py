"""`render`: Services + EndpointSlices -> the nftables script, checked on the text."""

from __future__ import annotations

import re

import pytest

from ketch.cluster.services import delete_script, render, vip_ports
from tests.unit.cluster.factories import endpoint, eps, service


def block(text: str, header: str) -> str:
    """The body of `set NAME {` / `map NAME {` / `chain NAME {` in the rendered text."""
    start = text.index(f"\t{header} {{\n") + len(header) + 4
    depth = 1
    i = start
    while depth:
        if text[i] == "{":
            depth += 1
        elif text[i] == "}":
            depth -= 1
        i += 1
    return text[start : i - 1]


def elements(text: str, header: str) -> list[str]:
    body = block(text, header)
    if "elements = {" not in body:
        return []
    inner = body.split("elements = {", 1)[1].rsplit("}", 1)[0]
    return [line.strip().rstrip(",") for line in inner.splitlines() if line.strip()]


def dnats(text: str) -> list[tuple[str, str]]:
    """(protocol, "ip:port") of every DNAT target, single or in a numgen map."""
    out = re.findall(r"meta l4proto (\w+) dnat to ([\d.]+:\d+)", text)
    for proto, arms in re.findall(
        r"meta l4proto (\w+) dnat ip addr \. port to numgen random mod \d+ map \{ ([^}]*) \}", text
    ):
        for arm in arms.split(", "):
            ip, port = arm.split(" : ")[1].split(" . ")
            out.append((proto, f"{ip}:{port}"))
    return out


def test_single_endpoint() -> None:
    text = render([service("web")], [eps("web", [endpoint("10.244.1.2")])])
    chain = "svc-shop/web/tcp/10.96.0.20/80"
    assert elements(text, "map services") == [f"10.96.0.20 . tcp . 80 : goto {chain}"]
    assert block(text, f"chain {chain}").strip() == "meta l4proto tcp dnat to 10.244.1.2:8080"
    assert dnats(text) == [("tcp", "10.244.1.2:8080")]
    assert elements(text, "set no-endpoints") == []
    assert "numgen" not in text


def test_several_endpoints_are_load_balanced_uniformly() -> None:
    ips = ["10.244.2.3", "10.244.1.2", "10.244.1.10"]
    text = render([service("web")], [eps("web", [endpoint(ip) for ip in ips])])
    chain = "svc-shop/web/tcp/10.96.0.20/80"
    body = block(text, f"chain {chain}").strip()
    # sorted by address, one arm each
    assert body == (
        "meta l4proto tcp dnat ip addr . port to numgen random mod 3 map "
        "{ 0 : 10.244.1.2 . 8080, 1 : 10.244.1.10 . 8080, 2 : 10.244.2.3 . 8080 }"
    )
    assert dnats(text) == [
        ("tcp", "10.244.1.2:8080"),
        ("tcp", "10.244.1.10:8080"),
        ("tcp", "10.244.2.3:8080"),
    ]


def test_no_ready_endpoints_rejects() -> None:
    text = render([service("web")], [eps("web", [endpoint("10.244.1.2", ready=False)])])
    assert elements(text, "set no-endpoints") == ["10.96.0.20 . tcp . 80"]
    assert elements(text, "map services") == []
    assert dnats(text) == []
    assert "ip daddr . meta l4proto . th dport @no-endpoints goto refuse" in text
    refuse = block(text, "chain refuse")
    assert "meta l4proto tcp reject with tcp reset" in refuse
    assert "reject with icmp port-unreachable" in refuse


def test_service_without_any_slice_rejects() -> None:
    text = render([service("web")], [])
    assert elements(text, "set no-endpoints") == ["10.96.0.20 . tcp . 80"]


def test_unset_ready_counts_as_ready() -> None:
    text = render([service("web")], [eps("web", [endpoint("10.244.1.2", ready=None)])])
    assert dnats(text) == [("tcp", "10.244.1.2:8080")]


def test_named_target_port_resolved_per_slice() -> None:
    svc = service("web", ports=[{"name": "http", "port": 80, "targetPort": "web"}])
    a = eps("web", [endpoint("10.244.1.2")], [{"name": "http", "port": 8080}], name="web-a")
    b = eps("web", [endpoint("10.244.2.2")], [{"name": "http", "port": 9090}], name="web-b")
    text = render([svc], [a, b])
    assert dnats(text) == [("tcp", "10.244.1.2:8080"), ("tcp", "10.244.2.2:9090")]


def test_multi_port_service_matches_slice_ports_by_name() -> None:
    svc = service(
        "web",
        ports=[{"name": "http", "port": 80}, {"name": "admin", "port": 81, "targetPort": 9901}],
    )
    s = eps(
        "web",
        [endpoint("10.244.1.2")],
        [{"name": "admin", "port": 9901}, {"name": "http", "port": 8080}],
    )
    text = render([svc], [s])
    assert (
        "chain svc-shop/web/tcp/10.96.0.20/80 {\n\t\tmeta l4proto tcp dnat to 10.244.1.2:8080"
        in text
    )
    assert (
        "chain svc-shop/web/tcp/10.96.0.20/81 {\n\t\tmeta l4proto tcp dnat to 10.244.1.2:9901"
        in text
    )
    assert sorted(elements(text, "set service-ports")) == [
        "10.96.0.20 . tcp . 80",
        "10.96.0.20 . tcp . 81",
    ]


def test_udp() -> None:
    svc = service("dns", ip="10.96.0.53", ports=[{"name": "dns", "port": 53, "protocol": "UDP"}])
    s = eps("dns", [endpoint("10.244.1.5")], [{"name": "dns", "port": 5353, "protocol": "UDP"}])
    text = render([svc], [s])
    assert elements(text, "map services") == [
        "10.96.0.53 . udp . 53 : goto svc-shop/dns/udp/10.96.0.53/53"
    ]
    assert dnats(text) == [("udp", "10.244.1.5:5353")]


def test_udp_port_does_not_take_tcp_slice_port() -> None:
    svc = service("dns", ip="10.96.0.53", ports=[{"name": "dns", "port": 53, "protocol": "UDP"}])
    s = eps("dns", [endpoint("10.244.1.5")], [{"name": "dns", "port": 5353, "protocol": "TCP"}])
    assert elements(render([svc], [s]), "set no-endpoints") == ["10.96.0.53 . udp . 53"]


def test_headless_gets_no_rules() -> None:
    svc = service("db", ip="None")
    text = render([svc], [eps("db", [endpoint("10.244.1.2")])])
    assert vip_ports([svc], []) == []
    assert elements(text, "set cluster-ips") == []
    assert elements(text, "map services") == []
    assert dnats(text) == []


def test_service_removed_disappears_and_table_is_replaced() -> None:
    web, api = service("web"), service("api", ip="10.96.0.30")
    slices = [eps("web", [endpoint("10.244.1.2")]), eps("api", [endpoint("10.244.1.3")])]
    before = render([web, api], slices)
    after = render([web], slices)
    assert "10.96.0.30" in before
    assert "10.96.0.30" not in after
    assert "10.244.1.3" not in after
    # one transaction: ensure the table exists, delete it, define it anew
    assert after.splitlines()[1:4] == [
        "table ip ketch-svc",
        "delete table ip ketch-svc",
        "table ip ketch-svc {",
    ]


def test_slices_of_other_namespaces_and_families_ignored() -> None:
    text = render(
        [service("web")],
        [
            eps("web", [endpoint("10.244.9.9")], ns="other"),
            eps("web", [endpoint("fd00:10:244:1::2")], family="IPv6", name="web-v6"),
            eps("web", [endpoint("10.244.1.2")]),
        ],
    )
    assert dnats(text) == [("tcp", "10.244.1.2:8080")]


def test_duplicate_endpoints_across_slices_counted_once() -> None:
    text = render(
        [service("web")],
        [
            eps("web", [endpoint("10.244.1.2")], name="a"),
            eps("web", [endpoint("10.244.1.2")], name="b"),
        ],
    )
    assert dnats(text) == [("tcp", "10.244.1.2:8080")]


def test_hairpin_set_holds_local_endpoints_only() -> None:
    slices = [eps("web", [endpoint("10.244.1.2"), endpoint("10.244.2.2")])]
    text = render([service("web")], slices, node_pod_cidr="10.244.1.0/24")
    assert elements(text, "set hairpin") == ["10.244.1.2 . 10.244.1.2"]
    assert "ct status dnat ip saddr . ip daddr @hairpin masquerade" in text
    every = render([service("web")], slices)
    assert elements(every, "set hairpin") == ["10.244.1.2 . 10.244.1.2", "10.244.2.2 . 10.244.2.2"]


def test_prerouting_and_output_hooks() -> None:
    text = render([service("web")], [eps("web", [endpoint("10.244.1.2")])])
    for chain in ("nat-prerouting", "nat-output"):
        assert "ip daddr . meta l4proto . th dport vmap @services" in block(text, f"chain {chain}")
    assert "type nat hook prerouting priority dstnat" in text
    assert "type nat hook output priority -100" in text
    assert "type filter hook prerouting priority dstnat - 10" in text


def test_other_ports_of_a_vip_are_refused() -> None:
    text = render([service("web")], [eps("web", [endpoint("10.244.1.2")])])
    assert elements(text, "set cluster-ips") == ["10.96.0.20"]
    assert (
        "ip daddr @cluster-ips ip daddr . meta l4proto . th dport != @service-ports goto refuse"
        in block(text, "chain check")
    )


def test_stable_text_regardless_of_input_order() -> None:
    svcs = [service("web"), service("api", ip="10.96.0.30")]
    slices = [
        eps("web", [endpoint("10.244.1.2"), endpoint("10.244.2.2")]),
        eps("api", [endpoint("10.244.1.3")]),
    ]
    assert render(svcs, slices) == render(svcs[::-1], slices[::-1])


def test_empty() -> None:
    text = render([], [])
    assert text.startswith("# Ketch service proxy: 0 service ports")
    assert elements(text, "map services") == []


@pytest.mark.parametrize("table", ["ketch-svc", "t1-svc"])
def test_delete_script(table: str) -> None:
    assert delete_script(table) == f"table ip {table}\ndelete table ip {table}\n"


def test_cluster_dns_port_is_never_refused() -> None:
    # even if a Service claims the DNS address, port 53 there stays the cluster DNS's
    text = render([service("odd", ip="10.96.0.10")], [])
    check = block(text, "chain check").strip().splitlines()
    assert (
        check[0]
        .strip()
        .startswith("ip daddr 10.96.0.10 meta l4proto { tcp, udp } th dport 53 return")
    )
    assert "dns_ip" not in text
    other = render([], [], dns_ip="10.96.5.5")
    assert "ip daddr 10.96.5.5 meta l4proto { tcp, udp } th dport 53 return" in other
