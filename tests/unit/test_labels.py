import pytest

from ketch.labels import SelectorError, from_label_selector, from_match_labels, parse_selector

LABELS = {"app": "web", "tier": "front", "env": "prod"}


@pytest.mark.parametrize(
    ("selector", "expected"),
    [
        ("", True),
        ("app=web", True),
        ("app==web", True),
        ("app=db", False),
        ("app!=db", True),
        ("app!=web", False),
        ("missing!=x", True),
        ("app=web,tier=front", True),
        ("app=web,tier=back", False),
        ("env in (prod,staging)", True),
        ("env in (dev)", False),
        ("env notin (dev)", True),
        ("env notin (prod)", False),
        ("missing notin (x)", True),
        ("tier", True),
        ("missing", False),
        ("!missing", True),
        ("!app", False),
        (" app = web , !legacy ", True),
        ("example.com/role=x", False),
    ],
)
def test_matches(selector: str, expected: bool) -> None:
    assert parse_selector(selector).matches(LABELS) is expected


@pytest.mark.parametrize(
    "bad", ["app=", "=web", "app in (", "app in ()", "a b", "app=w,", "app=we b"]
)
def test_rejects(bad: str) -> None:
    if bad == "app=":  # empty value is legal in Kubernetes (matches label with empty value)
        assert parse_selector(bad).matches({"app": ""})
        return
    with pytest.raises(SelectorError):
        parse_selector(bad)


def test_error_names_position() -> None:
    with pytest.raises(SelectorError, match="position 9"):
        parse_selector("app=web,=x")


def test_label_selector_objects() -> None:
    assert from_match_labels({"app": "web"}).matches(LABELS)
    assert not from_match_labels({"app": "db"}).matches(LABELS)
    sel = from_label_selector(
        {"app": "web"}, [{"key": "env", "operator": "In", "values": ["prod"]}]
    )
    assert sel.matches(LABELS)
    assert not from_label_selector(None, [{"key": "env", "operator": "DoesNotExist"}]).matches(
        LABELS
    )
    with pytest.raises(SelectorError, match="operator"):
        from_label_selector(None, [{"key": "env", "operator": "Near"}])
