"""`ketch api-resources` and `ketch explain KIND[.field...]`, from the models themselves.

`explain` walks the pydantic model of a kind (`ketch.api`) by YAML field names and prints,
like kubectl, the kind, version, the field's type and description, and its sub-fields with
their types (`<string>`, `<integer>`, `<[]Container>`, `<map[string]string>`, enum values)
and `-required-` marks.
"""

from __future__ import annotations

import inspect
import textwrap
import types
import typing
from typing import Annotated, Any

import typer
from pydantic import BaseModel
from pydantic.fields import FieldInfo

from ketch.api import KINDS
from ketch.api.registry import lookup_kind
from ketch.cli import output
from ketch.cli.common import fail, out
from ketch.cli.get_cmd import kind_of


def api_resources(
    namespaced: Annotated[
        bool | None,
        typer.Option(
            "--namespaced/--cluster-scoped",
            help="Only namespaced (or only cluster-scoped) kinds.",
            show_default=False,
        ),
    ] = None,
    no_headers: Annotated[bool, typer.Option("--no-headers", help="No header line.")] = False,
    output_fmt: Annotated[
        str, typer.Option("--output", "-o", help="table (default) or name.")
    ] = "table",
) -> None:
    """List the kinds Ketch stores (kubectl api-resources)."""
    infos = sorted(KINDS.values(), key=lambda i: i.plural)
    if namespaced is not None:
        infos = [i for i in infos if i.namespaced == namespaced]
    if output_fmt == "name":
        for i in infos:
            out.file.write(f"{i.plural}{'.' + i.group if i.group else ''}\n")
        return
    if output_fmt != "table":
        from ketch.cli.common import usage

        usage(f"-o {output_fmt!r}: expected table or name")
    rows = [
        [
            i.plural,
            ",".join(i.short_names),
            i.api_version,
            "true" if i.namespaced else "false",
            i.kind,
        ]
        for i in infos
    ]
    out.file.write(
        output.format_table(
            ["NAME", "SHORTNAMES", "APIVERSION", "NAMESPACED", "KIND"], rows, no_headers=no_headers
        )
    )


# --- types -----------------------------------------------------------------------------------

_SCALARS = {str: "string", int: "integer", float: "number", bool: "boolean"}


def _options(tp: Any) -> list[Any]:
    origin = typing.get_origin(tp)
    if origin is Annotated:
        return _options(typing.get_args(tp)[0])
    if origin in (typing.Union, types.UnionType):
        found: list[Any] = []
        for arg in typing.get_args(tp):
            if arg is not type(None):
                found += _options(arg)
        return found
    return [tp]


def type_name(tp: Any) -> str:
    """kubectl-style type: string, integer, boolean, []X, map[string]X, a model's name."""
    names = []
    for option in _options(tp):
        origin = typing.get_origin(option)
        if origin is list:
            names.append("[]" + type_name(typing.get_args(option)[0]))
        elif origin is dict:
            names.append("map[string]" + type_name(typing.get_args(option)[1]))
        elif origin is typing.Literal:
            values = typing.get_args(option)
            names.append(_SCALARS.get(type(values[0]), "string") if values else "string")
        elif isinstance(option, type) and issubclass(option, BaseModel):
            names.append(option.__name__)
        elif option is Any:
            names.append("Object")
        else:
            names.append(_SCALARS.get(option, getattr(option, "__name__", str(option))))
    unique = list(dict.fromkeys(names))
    return " | ".join(unique) if unique else "Object"


def enum_values(tp: Any) -> list[str]:
    values: list[str] = []
    for option in _options(tp):
        if typing.get_origin(option) is typing.Literal:
            values += [str(v) for v in typing.get_args(option)]
    return values


def _model_of(tp: Any) -> type[BaseModel] | None:
    for option in _options(tp):
        origin = typing.get_origin(option)
        if origin is list:
            return _model_of(typing.get_args(option)[0])
        if origin is dict:
            return _model_of(typing.get_args(option)[1])
        if isinstance(option, type) and issubclass(option, BaseModel):
            return option
    return None


def _yaml_fields(model: type[BaseModel]) -> dict[str, FieldInfo]:
    return {(f.alias or name): f for name, f in model.model_fields.items()}


def _description(field: FieldInfo | None, model: type[BaseModel] | None) -> str:
    if field is not None and field.description:
        return field.description
    if model is not None and model.__doc__ and model.__module__.startswith("ketch."):
        return inspect.cleandoc(model.__doc__)
    return ""


def explain_text(path: str) -> str:
    """The text `ketch explain PATH` prints (PATH is KIND or KIND.field.field...)."""
    parts = path.split(".")
    cut = next(  # the kind may carry its group: gateways.gateway.networking.k8s.io.spec
        (i for i in range(len(parts), 0, -1) if lookup_kind(".".join(parts[:i]))), 1
    )
    info = kind_of(".".join(parts[:cut]))
    fields = parts[cut:]
    model: type[BaseModel] | None = info.model
    field: FieldInfo | None = None
    walked: list[str] = []
    for name in fields:
        if model is None:
            fail(
                f'field "{name}" does not exist: {".".join(walked)} is a {type_name(field.annotation if field else None)}, not an object'
            )
        known = _yaml_fields(model)
        if name not in known:
            where = ".".join([info.kind, *walked])
            fail(f'field "{name}" does not exist in {where}; its fields: {", ".join(known)}')
        field = known[name]
        walked.append(name)
        model = _model_of(field.annotation)
    lines = [f"KIND:       {info.kind}", f"VERSION:    {info.api_version}", ""]
    if field is not None:
        lines += [f"FIELD: {walked[-1]} <{type_name(field.annotation)}>", ""]
    desc = _description(field, model) if field is not None else _description(None, info.model)
    if desc:
        lines.append("DESCRIPTION:")
        lines += ["    " + line for line in textwrap.wrap(desc, 76)] or [""]
        lines.append("")
    values = enum_values(field.annotation) if field is not None else []
    if values:
        lines.append("ENUM:")
        lines += [f"    {v}" for v in values]
        lines.append("")
    if model is not None and model.model_fields:
        lines.append("FIELDS:")
        for yaml_name, f in _yaml_fields(model).items():
            required = " -required-" if f.is_required() else ""
            lines.append(f"  {yaml_name}\t<{type_name(f.annotation)}>{required}")
            sub = _description(f, None)
            for line in textwrap.wrap(sub, 72):
                lines.append(f"    {line}")
            enum = enum_values(f.annotation)
            if enum and len(enum) > 1:
                lines.append(f"    enum: {', '.join(enum)}")
            lines.append("")
    return "\n".join(lines).rstrip("\n") + "\n"


def explain(
    path: Annotated[
        str, typer.Argument(help="KIND or KIND.field.subfield, e.g. pod.spec.containers.")
    ],
) -> None:
    """Describe a kind or one of its fields: type, description, sub-fields (kubectl explain)."""
    out.file.write(explain_text(path))
