"""State and helpers shared by the `ketch` sub-commands."""

from __future__ import annotations

import ipaddress
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import NoReturn

import typer
from rich.console import Console

# typer 0.29 vendors click as typer._click; its usage errors are caught in `run_app` so
# that they print with Ketch's one error prefix (the version is pinned by uv.lock).
from typer._click.exceptions import NoArgsIsHelpError
from typer._click.exceptions import UsageError as ClickUsageError

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

    # A new store's directory is private: the store holds Secrets unencrypted.
    state.store_path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    store = SqliteStore(state.store_path)
    try:
        admission.ensure_builtin_namespaces(store)
        yield store
    finally:
        store.close()


def run_app(
    app: typer.Typer, *, prog_name: str = "ketch", failures: tuple[type[Exception], ...] = ()
) -> NoReturn:
    """Run a typer app with Ketch's one error boundary: every failure is `error: ...` lines
    on stderr, never a traceback; usage errors (click's and `usage()`) exit 2, failed
    requests (`fail()` and the `failures` given) 1, --help 0."""
    try:
        code = app(standalone_mode=False, prog_name=prog_name)
    except NoArgsIsHelpError as e:
        out.file.write(e.ctx.get_help() + "\n")
        sys.exit(2)
    except ClickUsageError as e:
        if e.ctx is not None:
            err.print(e.ctx.get_usage(), markup=False)
        err.print(f"error: {e.format_message()}", markup=False)
        if e.ctx is not None:
            err.print(f"Run '{e.ctx.command_path} --help' for usage.", markup=False)
        sys.exit(2)
    except typer.Abort:
        err.print("error: aborted", markup=False)
        sys.exit(130)
    except UsageError as e:
        err.print(f"error: {e}", markup=False)
        sys.exit(2)
    except Exception as e:
        if not isinstance(e, (CliError, *failures)):
            raise
        for line in str(e).splitlines():
            err.print(f"error: {line}", markup=False)
        sys.exit(1)
    sys.exit(code if isinstance(code, int) else 0)
