"""State and helpers shared by the `ketch` sub-commands."""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import NoReturn

from rich.console import Console

from ketch.control import admission
from ketch.store import Store

out = Console(soft_wrap=True, highlight=False)
err = Console(stderr=True, soft_wrap=True, highlight=False)


def default_store_path() -> Path:
    if env := os.environ.get("KETCH_STORE"):
        return Path(env)
    if os.geteuid() == 0:
        return Path("/var/lib/ketch/ketch.db")
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "ketch" / "ketch.db"


class _State:
    store_path: Path = default_store_path()
    service_cidr: ipaddress.IPv4Network = admission.DEFAULT_SERVICE_CIDR


state = _State()


class CliError(Exception):
    """A failure to report as `error: <message>` with exit code 1."""


def fail(message: str) -> NoReturn:
    raise CliError(message)


@contextmanager
def open_store() -> Iterator[Store]:
    from ketch.store.sqlite import SqliteStore

    state.store_path.parent.mkdir(parents=True, exist_ok=True)
    store = SqliteStore(state.store_path)
    try:
        yield store
    finally:
        store.close()
