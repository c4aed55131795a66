"""Every test under tests/integration is marked `integration` (so it needs root, and
`-m "not integration"` never runs it), and no test elsewhere is.

Collected by a real pytest run, so the check covers exactly what CI and developers select.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def _collect(*args: str) -> list[str]:
    out = subprocess.run(
        [sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider", *args],
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode in (0, 5), out.stdout + out.stderr  # 5: nothing collected
    return [line for line in out.stdout.splitlines() if "::" in line]


def test_every_integration_test_is_marked_and_no_other_test_is() -> None:
    under_integration = _collect("tests/integration")
    marked = _collect("-m", "integration", "tests")
    assert len(under_integration) > 50  # the directory was really collected
    assert sorted(marked) == sorted(under_integration)
