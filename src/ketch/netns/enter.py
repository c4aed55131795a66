"""Entering network namespaces without ever moving the caller.

A network namespace is a per-thread attribute in Linux: setns(2) with CLONE_NEWNET changes
only the calling thread. Python 3.11 has no `os.setns`, so we call libc's `setns` through
ctypes (one function, no extra dependency). `in_netns` runs a function on a fresh,
short-lived thread that setns()s into the target netns, runs the function and exits; the
main thread and the event loop never change namespace. Sockets keep the namespace they were
created in for their whole life, so a listener created by `in_netns` stays in the pod netns
after the thread is gone; this is how the node proxy listens "inside" every pod (ztunnel's
in-pod model, REFERENCE.md "In-pod redirection").

Helper binaries (ip, iptables-restore, sysctl, workloads in tests) run inside a netns through
`nsenter --net=<path>`: it only switches the network namespace (no mount namespace games as
`ip netns exec` plays), it works for any netns file (a /run/netns name, a /proc/<pid>/ns/net
path, or an fd we hold, passed down as /proc/self/fd/<n>), and it is in util-linux, which is
on every Debian machine.

A netns is referred to by a `NetnsRef`: an open fd (int), a name under /run/netns, or a path.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import errno
import os
import queue
import subprocess
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any, TypeVar

from ketch.netns.errors import CommandError, NetnsEnterError, NetnsNotFound

T = TypeVar("T")
NetnsRef = int | str | os.PathLike[str]

#: Where `ip netns add` keeps its bind mounts.
NETNS_RUN_DIR = "/run/netns"
_CLONE_NEWNET = 0x40000000

_libc: ctypes.CDLL | None = None


def _setns(fd: int) -> None:
    global _libc
    if _libc is None:
        _libc = ctypes.CDLL(None, use_errno=True)
    if _libc.setns(fd, _CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        hint = (
            "run as root (CAP_SYS_ADMIN is required)"
            if err == errno.EPERM
            else "is the fd a network namespace (/run/netns/<name>, /proc/<pid>/ns/net)?"
        )
        raise NetnsEnterError(f"setns(fd={fd}, CLONE_NEWNET) failed: {os.strerror(err)}; {hint}")


def netns_path(ref: NetnsRef) -> str:
    """The filesystem path of a netns: names map to /run/netns/<name>, fds to /proc/self/fd/<n>."""
    if isinstance(ref, int):
        return f"/proc/self/fd/{ref}"
    text = os.fspath(ref)
    if "/" in text:
        return text
    return f"{NETNS_RUN_DIR}/{text}"


def open_netns(ref: str | os.PathLike[str]) -> int:
    """Open a netns by name or path and return an fd (O_CLOEXEC); close it with `close_netns`."""
    path = netns_path(ref)
    try:
        return os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        raise NetnsNotFound(
            f"network namespace {os.fspath(ref)!r} not found at {path} (see `ip netns list`)"
        ) from None
    except OSError as exc:
        raise NetnsNotFound(f"cannot open network namespace {path}: {exc.strerror}") from exc


def close_netns(fd: int) -> None:
    """Close a netns fd; closing an already-closed fd is not an error."""
    try:
        os.close(fd)
    except OSError as exc:
        if exc.errno != errno.EBADF:
            raise


@contextmanager
def netns_fd(ref: NetnsRef) -> Iterator[int]:
    """Yield an fd for `ref`; fds passed in are borrowed (not closed), names/paths are opened
    and closed here."""
    if isinstance(ref, int):
        yield ref
        return
    fd = open_netns(ref)
    try:
        yield fd
    finally:
        close_netns(fd)


def current_netns_id() -> tuple[int, int]:
    """(device, inode) of the calling thread's netns, to compare namespaces."""
    st = os.stat("/proc/thread-self/ns/net")
    return (st.st_dev, st.st_ino)


def _start_in_netns(
    ref: NetnsRef,
    fn: Callable[..., T],
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    done: Callable[[T | None, BaseException | None], None],
) -> threading.Thread:
    fd = ref if isinstance(ref, int) else open_netns(ref)
    owned = not isinstance(ref, int)

    def body() -> None:
        result: T | None = None
        error: BaseException | None = None
        try:
            # This thread is ours alone and ends right after fn: no need to switch back.
            _setns(fd)
            result = fn(*args, **kwargs)
        except BaseException as exc:  # handed to the caller, never swallowed
            error = exc
        finally:
            if owned:
                close_netns(fd)
        done(result, error)

    name = f"netns:{os.fspath(ref) if not isinstance(ref, int) else f'fd{ref}'}"
    thread = threading.Thread(target=body, name=name, daemon=True)
    try:
        thread.start()
    except BaseException:
        if owned:
            close_netns(fd)
        raise
    return thread


def in_netns(ref: NetnsRef, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """Run `fn(*args, **kwargs)` inside the netns `ref` on a dedicated thread; return its
    result or re-raise its exception. Blocks the calling thread (use `run_in_netns` from
    async code). The caller's own netns never changes."""
    box: list[tuple[T | None, BaseException | None]] = []
    thread = _start_in_netns(ref, fn, args, kwargs, lambda r, e: box.append((r, e)))
    thread.join()
    result, error = box[0]
    if error is not None:
        raise error
    return result  # type: ignore[return-value]


Done = Callable[[Any, BaseException | None], None]


class NetnsWorker:
    """A long-lived thread that entered one netns once and runs short functions there for
    the event loop. The node proxy keeps one per enrolled pod (`serve_netns`), so that a
    socket made in the pod netns (every inbound delivery, passthrough and HBONE dial) costs
    a queue hand-off instead of starting a thread (measured: ~97 µs per call with a fresh
    thread). The caller's threads still never change namespace."""

    def __init__(self, fd: int) -> None:
        self._fd = os.dup(fd)  # ours: the caller may close or reuse its fd number
        self._q: queue.SimpleQueue[
            tuple[Callable[..., Any], tuple[Any, ...], dict[str, Any], Done] | None
        ] = queue.SimpleQueue()
        self._started = threading.Event()
        self._error: BaseException | None = None
        self.closed = False
        self._thread = threading.Thread(target=self._body, name=f"netns-worker:fd{fd}", daemon=True)
        self._thread.start()
        self._started.wait()
        if self._error is not None:
            self._thread.join()
            raise self._error

    def _body(self) -> None:
        try:
            try:
                _setns(self._fd)
            except BaseException as exc:
                self._error = exc
                return
            finally:
                self._started.set()
            while (item := self._q.get()) is not None:
                fn, args, kwargs, done = item
                result: Any = None
                error: BaseException | None = None
                try:
                    result = fn(*args, **kwargs)
                except BaseException as exc:  # handed to the caller, never swallowed
                    error = exc
                done(result, error)
        finally:
            close_netns(self._fd)

    def submit(
        self, fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any], done: Done
    ) -> None:
        if self.closed:
            raise NetnsEnterError("the netns worker is closed")
        self._q.put((fn, args, kwargs, done))

    def close(self) -> None:
        """Finish what was submitted, then end the thread (and close its fd)."""
        if not self.closed:
            self.closed = True
            self._q.put(None)


_workers: dict[int, NetnsWorker] = {}


def serve_netns(fd: int) -> NetnsWorker:
    """Start (or return) the worker `run_in_netns(fd, ...)` uses from now on for this fd.
    Raises NetnsEnterError if `fd` is not a netns we may enter."""
    w = _workers.get(fd)
    if w is None or w.closed:
        w = _workers[fd] = NetnsWorker(fd)
    return w


def stop_serving(fd: int) -> None:
    """Stop the worker of `fd` (before the fd is closed: its number may be reused)."""
    w = _workers.pop(fd, None)
    if w is not None:
        w.close()


async def run_in_netns(ref: NetnsRef, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """Async `in_netns`: the event loop keeps running while the netns thread works (the
    fd's `NetnsWorker` if `serve_netns` started one, else a fresh thread).

    `fn` should be quick (create a socket, bind, set options); if the awaiting task is
    cancelled, the thread still finishes and its result is dropped, so do not return
    resources that need closing from a function whose caller may be cancelled.
    """
    loop = asyncio.get_running_loop()
    fut: asyncio.Future[T] = loop.create_future()

    def settle(result: T | None, error: BaseException | None) -> None:
        if fut.done():
            return
        if error is not None:
            fut.set_exception(error)
        else:
            fut.set_result(result)  # type: ignore[arg-type]

    def done(result: T | None, error: BaseException | None) -> None:
        # RuntimeError: the loop closed meanwhile; nobody is waiting any more.
        with contextlib.suppress(RuntimeError):
            loop.call_soon_threadsafe(settle, result, error)

    worker = _workers.get(ref) if isinstance(ref, int) else None
    if worker is not None and not worker.closed:
        worker.submit(fn, args, kwargs, done)
    else:
        _start_in_netns(ref, fn, args, kwargs, done)
    return await fut


def nsenter_argv(ref: NetnsRef, argv: Sequence[str]) -> tuple[list[str], tuple[int, ...]]:
    """argv (and the fds to pass down) that runs `argv` inside the netns `ref`."""
    pass_fds: tuple[int, ...] = (ref,) if isinstance(ref, int) else ()
    return ["nsenter", f"--net={netns_path(ref)}", "--", *argv], pass_fds


def ns_popen(ref: NetnsRef, argv: Sequence[str], **popen_kwargs: Any) -> subprocess.Popen[Any]:
    """Start a real process inside the netns `ref` (via nsenter); returns the Popen."""
    full, pass_fds = nsenter_argv(ref, argv)
    if pass_fds:
        popen_kwargs["pass_fds"] = tuple(popen_kwargs.get("pass_fds", ())) + pass_fds
    return subprocess.Popen(full, **popen_kwargs)


def ns_run(
    ref: NetnsRef,
    argv: Sequence[str],
    *,
    input: str | None = None,
    timeout: float = 30.0,
    check: bool = True,
    error: type[CommandError] = CommandError,
) -> subprocess.CompletedProcess[str]:
    """Run `argv` inside the netns `ref`, capture text output, and (if `check`) raise `error`
    with the command's stderr when it exits non-zero."""
    full, pass_fds = nsenter_argv(ref, argv)
    try:
        proc = subprocess.run(
            full,
            input=input,
            capture_output=True,
            text=True,
            timeout=timeout,
            pass_fds=pass_fds,
            check=False,
        )
    except FileNotFoundError as exc:
        raise error(
            f"cannot run `{full[0]}`: not installed (nsenter is in util-linux)",
            argv=list(argv),
            returncode=-1,
            stderr="",
        ) from exc
    except subprocess.TimeoutExpired as exc:
        raise error(
            f"`{' '.join(argv)}` in netns {netns_path(ref)} timed out after {timeout}s",
            argv=list(argv),
            returncode=-1,
            stderr="",
        ) from exc
    if check and proc.returncode != 0:
        stderr = proc.stderr.strip()
        raise error(
            f"`{' '.join(argv)}` in netns {netns_path(ref)} failed "
            f"(exit {proc.returncode}): {stderr or 'no error output'}",
            argv=list(argv),
            returncode=proc.returncode,
            stderr=stderr,
        )
    return proc
