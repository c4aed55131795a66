"""scripts/install.sh takes the Debian mirror for the non-free netperf source from the
machine's own apt sources (no registry address is written in the repository)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[3] / "scripts" / "install.sh"


def _function() -> str:
    text = SCRIPT.read_text()
    start = text.index("debian_source_for() {")
    end = text.index("\n}\n", start) + 3
    return text[start:end]


def source_for(root: Path, codename: str) -> str:
    script = f"{_function()}\ndebian_source_for {codename} | head -n 1\n"
    out = subprocess.run(
        ["bash", "-c", script],
        env={"APT_ROOT": str(root), "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        check=True,
    )
    return out.stdout.strip("\n")


def _write(root: Path, name: str, text: str) -> None:
    path = root / "etc/apt" / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def test_deb822_source_of_the_release(tmp_path: Path) -> None:
    _write(
        tmp_path,
        "sources.list.d/debian.sources",
        "Types: deb\nURIs: http://mirror.example/debian-security\nSuites: bookworm-security\n"
        "Components: main\nSigned-By: /k/sec.gpg\n\n"
        "Types: deb\nURIs: http://mirror.example/debian\nSuites: bookworm bookworm-updates\n"
        "Components: main\nSigned-By: /k/main.gpg\n",
    )
    assert source_for(tmp_path, "bookworm") == "http://mirror.example/debian\t/k/main.gpg"


def test_one_line_source(tmp_path: Path) -> None:
    _write(
        tmp_path,
        "sources.list",
        "# comment\ndeb [arch=amd64] http://mirror.example/debian bookworm main\n",
    )
    assert source_for(tmp_path, "bookworm") == "http://mirror.example/debian\t"


@pytest.mark.parametrize("codename", ["trixie", "bookworm-security"])
def test_no_source_for_the_release(tmp_path: Path, codename: str) -> None:
    _write(
        tmp_path,
        "sources.list.d/debian.sources",
        "Types: deb\nURIs: http://mirror.example/debian\nSuites: bookworm\nComponents: main\n",
    )
    assert source_for(tmp_path, codename) == ""


def test_no_registry_address_in_the_scripts() -> None:
    for script in SCRIPT.parent.glob("*.sh"):
        assert "debian.org" not in script.read_text(), script
