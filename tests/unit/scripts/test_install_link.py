"""scripts/install.sh never silently repoints the global `ketch` at another clone: it links
when missing, keeps a link to this clone, leaves another clone's link (saying so) unless
KETCH_LINK_GLOBAL=1, and never replaces a file it did not make."""

from __future__ import annotations

import subprocess
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[3] / "scripts" / "install.sh"


def _function() -> str:
    text = SCRIPT.read_text()
    start = text.index("link_global_ketch() {")
    end = text.index("\n}\n", start) + 3
    return text[start:end]


def link(target: Path, at: Path, *, force: bool = False) -> str:
    script = f'{_function()}\nlink_global_ketch "{target}" "{at}"\n'
    env = {"PATH": "/usr/bin:/bin", **({"KETCH_LINK_GLOBAL": "1"} if force else {})}
    out = subprocess.run(
        ["bash", "-c", script, "install.sh"], env=env, capture_output=True, text=True, check=True
    )
    return out.stdout.strip()


def test_links_when_missing_and_keeps_its_own(tmp_path: Path) -> None:
    mine, at = tmp_path / "clone-a/.venv/bin/ketch", tmp_path / "bin/ketch"
    at.parent.mkdir()
    assert link(mine, at) == f"ketch install: {at} -> {mine} (this clone)"
    assert at.readlink() == mine
    assert link(mine, at) == f"ketch install: {at} already runs this clone ({mine})"


def test_another_clones_link_is_left_unless_asked(tmp_path: Path) -> None:
    mine, other = tmp_path / "clone-a/ketch", tmp_path / "clone-b/ketch"
    at = tmp_path / "ketch"
    at.symlink_to(other)
    assert link(mine, at) == (
        f"ketch install: {at} runs another clone ({other}), left as it is; run this clone's "
        f"ketch as {mine}, or repoint the global one with KETCH_LINK_GLOBAL=1 install.sh"
    )
    assert at.readlink() == other
    assert link(mine, at, force=True) == (
        f"ketch install: {at} now runs this clone ({mine}); it ran {other} before"
    )
    assert at.readlink() == mine


def test_a_file_it_did_not_make_is_never_replaced(tmp_path: Path) -> None:
    at = tmp_path / "ketch"
    at.write_text("#!/bin/sh\n")
    out = link(tmp_path / "clone/ketch", at, force=True)
    assert out.startswith(f"ketch install: {at} exists and is not a link Ketch made, left as it is")
    assert at.read_text() == "#!/bin/sh\n"
