"""`ketch ztunnel run --zds-socket`: pods from the node agent; it excludes --pods and file mode."""

from __future__ import annotations

from pathlib import Path

import pytest

from ketch.standalone.run import StandaloneError, StandaloneOptions, StandaloneProxy


async def test_zds_socket_is_for_connected_mode(tmp_path: Path) -> None:
    p = StandaloneProxy(
        StandaloneOptions(
            config=tmp_path / "mesh.yaml", ca_dir=tmp_path / "ca", zds_socket=tmp_path / "z.sock"
        )
    )
    with pytest.raises(StandaloneError, match="--zds-socket is for --control-plane"):
        await p.start()


async def test_zds_socket_or_pods_file_not_both(tmp_path: Path) -> None:
    p = StandaloneProxy(
        StandaloneOptions(
            control_plane=f"unix:{tmp_path / 'ca.sock'}",
            node="node1",
            node_dir=tmp_path / "node",
            pods=tmp_path / "pods.yaml",
            zds_socket=tmp_path / "z.sock",
        )
    )
    with pytest.raises(StandaloneError, match="not both"):
        await p.start()
