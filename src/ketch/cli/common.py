"""State and helpers shared by the `ketch` sub-commands."""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import NoReturn

from rich.console import Console

from ketch.cluster.layout import default_state_dir
from ketch.control import admission
from ketch.store import Store

out = Console(soft_wrap=True, highlight=False)
err = Console(stderr=True, soft_wrap=True, highlight=False)


def default_store_path() -> tuple[Path, str]:
    """The store file and why it is that one: `$KETCH_STORE`, else `ketch.db` in the state
    directory (`$KETCH_HOME`, /var/lib/ketch as root, ~/.local/state/ketch otherwise; the one
    definition is `ketch.cluster.layout.default_state_dir`)."""
    if env := os.environ.get("KETCH_STORE"):
        return Path(env), "$KETCH_STORE"
    path = default_state_dir() / "ketch.db"
    if os.environ.get("KETCH_HOME"):
        return path, "$KETCH_HOME"
    return path, "default for root" if os.geteuid() == 0 else "default for this user"


class _State:
    store_path, store_origin = default_store_path()
    service_cidr: ipaddress.IPv4Network = admission.DEFAULT_SERVICE_CIDR


state = _State()


class CliError(Exception):
    """A failure to report as `error: <message>` with exit code 1."""


class UsageError(CliError):
    """A command line that cannot be run as given: `error: <message>`, exit code 2."""


def fail(message: str) -> NoReturn:
    raise CliError(message)


def usage(message: str) -> NoReturn:
    raise UsageError(message)


@contextmanager
def open_store() -> Iterator[Store]:
    from ketch.store.sqlite import SqliteStore

    state.store_path.parent.mkdir(parents=True, exist_ok=True)
    store = SqliteStore(state.store_path)
    try:
        admission.ensure_builtin_namespaces(store)
        yield store
    finally:
        store.close()
