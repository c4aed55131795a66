"""The `ketch` executable. `ketch ztunnel run` is a long-lived data-path process, so it
starts from a small app that does not import the resource API, the store CLI and their
models (about 7 MiB of resident memory per node proxy); every other command gets the full
CLI (`ketch.cli.main`)."""

from __future__ import annotations

import sys


def main() -> None:
    if sys.argv[1:3] == ["ztunnel", "run"]:
        from ketch.cli.ztunnel_cmd import run_main

        run_main()
        return
    from ketch.cli.main import main as full

    full()
