"""The token file is shared by processes: the CLI creates, the control plane redeems."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from ketch.identity.errors import TokenError
from ketch.identity.tokens import TokenStore


def _in_other_process(state: Path, code: str) -> str:
    prog = f"from pathlib import Path\nfrom ketch.identity.tokens import TokenStore\nts = TokenStore(Path({str(state)!r}))\n{code}"
    return subprocess.run(
        [sys.executable, "-c", prog], capture_output=True, text=True, check=True, timeout=60
    ).stdout.strip()


def test_token_created_by_another_process_is_redeemable_once(tmp_path: Path) -> None:
    state = tmp_path / "nodes.json"
    server_view = TokenStore(state)  # a long-running process that loaded the file first
    token = _in_other_process(state, "print(ts.create('node-a'))")
    server_view.redeem(token, "node-a")
    with pytest.raises(TokenError):
        server_view.redeem(token, "node-a")
    # The other process sees that it was used, too.
    out = _in_other_process(
        state,
        f"""
try:
    ts.redeem({token!r}, 'node-a')
    print('redeemed')
except Exception as e:
    print(type(e).__name__)
""",
    )
    assert out == "TokenError"


def test_revoke_in_another_process_takes_effect(tmp_path: Path) -> None:
    state = tmp_path / "nodes.json"
    server_view = TokenStore(state)
    server_view.replace_certs("node-a", 0xABC)
    assert server_view.is_current("node-a", 0xABC)
    assert _in_other_process(state, "print(ts.revoke('node-a'))") == "True"
    assert not server_view.is_current("node-a", 0xABC)
