import pytest

from ketch.identity.spiffe import InvalidSpiffeId, SpiffeId


def test_round_trip() -> None:
    sid = SpiffeId.parse("spiffe://cluster.local/ns/default/sa/bookinfo-reviews")
    assert sid == SpiffeId("cluster.local", "default", "bookinfo-reviews")
    assert sid.uri == "spiffe://cluster.local/ns/default/sa/bookinfo-reviews"
    assert sid.principal == "cluster.local/ns/default/sa/bookinfo-reviews"
    assert SpiffeId.parse(sid.principal) == sid


@pytest.mark.parametrize(
    "bad",
    [
        "spiffe://cluster.local/ns/default",
        "spiffe://cluster.local/sa/x/ns/y",
        "spiffe://Cluster.local/ns/a/sa/b",
        "spiffe://cluster.local/ns/a/sa/b/extra",
        "spiffe://cluster.local/ns/A_B/sa/b",
        "spiffe:///ns/a/sa/b",
    ],
)
def test_rejects(bad: str) -> None:
    with pytest.raises(InvalidSpiffeId):
        SpiffeId.parse(bad)
