"""Reading container logs the kubelet writes: `<pod_dir>/<container>/<restart>.log`.

One file per run of a container, numbered by its restart count, so `--previous` is the
second newest file and `-f` moves on to the next file when the container restarts.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO


def log_files(container_dir: Path) -> list[tuple[int, Path]]:
    """(restart, path) of every `<n>.log` in `container_dir`, oldest first."""
    try:
        entries = list(container_dir.iterdir())
    except (FileNotFoundError, NotADirectoryError):
        return []
    files = []
    for p in entries:
        stem, dot, ext = p.name.partition(".")
        if dot and ext == "log" and stem.isdigit():
            files.append((int(stem), p))
    return sorted(files)


def pick(files: list[tuple[int, Path]], previous: bool) -> Path | None:
    """The current run's log, or with `previous` the one before it."""
    if previous:
        return files[-2][1] if len(files) >= 2 else None
    return files[-1][1] if files else None


def newer(files: list[tuple[int, Path]], current: Path) -> Path | None:
    """The log of the run after `current` (the container restarted), if any."""
    for _n, p in files:
        if p == current:
            break
    else:
        return files[-1][1] if files else None
    later = [p for n, p in files if n > _restart_of(current)]
    return later[0] if later else None


def _restart_of(path: Path) -> int:
    stem = path.name.partition(".")[0]
    return int(stem) if stem.isdigit() else -1


def copy_rest(f: BinaryIO, write: Callable[[bytes], None], chunk: int = 65536) -> int:
    n = 0
    while data := f.read(chunk):
        write(data)
        n += len(data)
    return n


def follow(
    container_dir: Path,
    start: Path,
    write: Callable[[bytes], None],
    keep_going: Callable[[], bool],
    poll: float = 0.25,
) -> None:
    """Write `start` from its beginning, then whatever is appended, moving on to the next
    run's file when the container restarts; return when `keep_going()` is false."""
    current = start
    f = open(current, "rb")  # noqa: SIM115 - swapped as the container restarts
    try:
        while True:
            copy_rest(f, write)
            nxt = newer(log_files(container_dir), current)
            if nxt is not None:
                copy_rest(f, write)  # what the old run wrote last
                f.close()
                current = nxt
                f = open(current, "rb")  # noqa: SIM115
                continue
            if not keep_going():
                copy_rest(f, write)
                return
            time.sleep(poll)
    finally:
        f.close()
