"""kubectl's JSONPath dialect, checked by hand against the examples of kubectl's JSONPath
reference (kubernetes.io/docs/reference/kubectl/jsonpath) and kubectl's behaviour: maps and
lists print as compact JSON (kubectl 1.19+; the reference table still shows `map[cpu:4]`)."""

from __future__ import annotations

import contextlib
import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ketch.cli.jsonpath import JSONPathError, Template, compile, relaxed

DOC = json.loads(
    """{
  "kind": "List",
  "items":[
    {"kind":"None",
     "metadata":{"name":"127.0.0.1", "labels":{"kubernetes.io/hostname":"127.0.0.1"}},
     "status":{"capacity":{"cpu":"4"},
               "addresses":[{"type": "LegacyHostIP", "address":"127.0.0.1"}]}},
    {"kind":"None",
     "metadata":{"name":"127.0.0.2"},
     "status":{"capacity":{"cpu":"8"},
               "addresses":[{"type": "LegacyHostIP", "address":"127.0.0.2"},
                            {"type": "another", "address":"127.0.0.3"}]}}
  ],
  "users":[
    {"name": "myself", "user": {}},
    {"name": "e2e", "user": {"username": "admin", "password": "secret"}}
  ]
}"""
)

CASES = [
    # (template, output) — the reference's table, row by row
    ("kind is {.kind}", "kind is List"),
    ("{.kind}", "List"),
    ("{['kind']}", "List"),
    ("{$.kind}", "List"),
    ("{..name}", "127.0.0.1 127.0.0.2 myself e2e"),
    ("{.items[*].metadata.name}", "127.0.0.1 127.0.0.2"),
    ("{.users[0].name}", "myself"),
    (
        "{.items[*]['metadata.name', 'status.capacity']}",
        '127.0.0.1 127.0.0.2 {"cpu":"4"} {"cpu":"8"}',
    ),
    ('{.users[?(@.name=="e2e")].user.password}', "secret"),
    (
        "{range .items[*]}[{.metadata.name}, {.status.capacity}] {end}",
        '[127.0.0.1, {"cpu":"4"}] [127.0.0.2, {"cpu":"8"}] ',
    ),
    ('{range .items[*]}{.metadata.name}{"\\t"}{end}', "127.0.0.1\t127.0.0.2\t"),
    # more of the dialect
    ("{.items[-1].metadata.name}", "127.0.0.2"),
    ("{.items[0:1].metadata.name}", "127.0.0.1"),
    ("{.users[::-1].name}", "e2e myself"),
    ("{.items[0,1].status.capacity.cpu}", "4 8"),
    ("{.items[*].status.addresses[?(@.type!='LegacyHostIP')].address}", "127.0.0.3"),
    ("{.users[?(@.user.password)].name}", "e2e"),
    ("{.items[0].metadata.labels.kubernetes\\.io/hostname}", "127.0.0.1"),
    ("{.items[0].metadata.labels['kubernetes\\.io/hostname']}", "127.0.0.1"),
    ("{.missing}", ""),
    ("{.items[5].metadata.name}", ""),
    ("{.users[1].user}", '{"password":"secret","username":"admin"}'),
    ('{range .users[*]}{.name}{"\\n"}{end}', "myself\ne2e\n"),
    ("{range .users}{.name};{end}", "myself;e2e;"),
    ("{.items[?(@.status.capacity.cpu=='8')].metadata.name}", "127.0.0.2"),
    ("plain text", "plain text"),
]


@pytest.mark.parametrize(("template", "expected"), CASES)
def test_kubectl_reference_examples(template: str, expected: str) -> None:
    assert compile(template).render(DOC) == expected


def test_current_object() -> None:
    assert json.loads(compile("{@}").render(DOC)) == DOC
    assert compile("{range .users[*]}{@.name} {end}").render(DOC) == "myself e2e "


def test_numbers_and_booleans_print_as_json_would() -> None:
    data = {"a": 3, "b": 1.5, "c": True, "d": [1, 2], "e": 2.0}
    assert compile("{.a} {.b} {.c} {.d} {.e}").render(data) == "3 1.5 true [1,2] 2"
    assert (
        compile("{.items[?(@.n>1)].n}").render({"items": [{"n": 1}, {"n": 2}, {"n": 3}]}) == "2 3"
    )


@pytest.mark.parametrize(
    ("template", "message"),
    [
        ("{.a", "unclosed '{'"),
        ("{range .items[*]}{.a}", "{range} without {end}"),
        ("{end}", "{end} without {range}"),
        ("{.a[}", "unclosed '['"),
        ("{.a[x]}", "expected an index"),
        ('{"abc}', "unclosed '{'"),
        ("{.a[?(@.b==)]}", "expected a value"),
        ("{.a b}", "unexpected"),
        ("{.a[::0]}", "slice step must not be 0"),
    ],
)
def test_mistakes_name_the_problem(template: str, message: str) -> None:
    with pytest.raises(JSONPathError, match=message.replace("{", r"\{").replace("[", r"\[")):
        compile(template)


def test_relaxed_expressions_as_custom_columns_and_sort_by_take_them() -> None:
    assert relaxed(".metadata.name") == "{.metadata.name}"
    assert relaxed("metadata.name") == "{.metadata.name}"
    assert relaxed("{.metadata.name}") == "{.metadata.name}"


def test_hostile_templates_do_not_crash() -> None:
    for bad in [
        "{",
        "}",
        "{{}}",
        "{[}",
        "{.a[?(}",
        "{..}",
        "{range}",
        "{'}",
        "\x00{.\x00}",
        "{" * 1000,
        "{.a" + "[?(@.b" * 5000 + "}",
    ]:
        with contextlib.suppress(JSONPathError):
            compile(bad).render(DOC)


@settings(max_examples=400, deadline=None)
@given(st.text(alphabet="{}[]().@$*?'\"\\=!<>,:-_ abc0123\t", max_size=40))
def test_any_template_parses_or_fails_with_a_message(template: str) -> None:
    """Garbage in: a JSONPathError naming the problem, or a template that renders; never
    another exception (the CLI turns JSONPathError into one `error:` line)."""
    compiled: Template | None = None
    message = ""
    try:
        compiled = compile(template)
    except JSONPathError as e:
        message = str(e)
    if compiled is None:
        assert message.startswith("jsonpath ")
        return
    compiled.render(DOC)
    compiled.render({"a": [1, "x", None, {"b": []}]})
