"""`ketch --help`: commands in the order users reach for them, summaries never cut off."""

from __future__ import annotations

from typer._click.core import Context  # typer vendors click (pinned by uv.lock)
from typer._click.formatting import HelpFormatter
from typer.core import TyperGroup

ORDER = (
    # the config store, kubectl's verbs first
    "apply", "get", "describe", "delete", "diff", "edit", "label", "scale",
    "explain", "api-resources",
    # a local cluster
    "up", "down", "status", "restart", "exec", "logs", "cluster",
    # the mesh's own processes
    "control-plane", "node", "agent", "ztunnel", "proxy-status", "ztunnel-config",
    "version",
)  # fmt: skip
"""Commands not listed here come after these, in registration order."""


def first_sentence(text: str) -> str:
    """The first paragraph's first sentence ("e.g." does not end it), whole."""
    para = " ".join(text.strip().split("\n\n")[0].split())
    for i, ch in enumerate(para):
        if ch == "." and (i + 1 == len(para) or para[i + 1] == " "):
            words = para[: i + 1].split()
            if words and words[-1].lower() in ("e.g.", "i.e.", "etc."):
                continue
            return para[: i + 1]
    return para


class KetchGroup(TyperGroup):
    def list_commands(self, ctx: Context) -> list[str]:
        names = list(super().list_commands(ctx))
        rank = {name: i for i, name in enumerate(ORDER)}
        return sorted(names, key=lambda n: (rank.get(n, len(ORDER)), names.index(n)))

    def format_commands(self, ctx: Context, formatter: HelpFormatter) -> None:
        rows = []
        for name in self.list_commands(ctx):
            cmd = self.get_command(ctx, name)
            if cmd is None or cmd.hidden:
                continue
            text = cmd.short_help or first_sentence(cmd.help or "")
            rows.append((name, text))
        if rows:
            with formatter.section("Commands"):
                formatter.write_dl(rows)
