"""Where a push's rebuild spends its time: the stages of a full `MeshBuild` +
`SnapshotHolder.rebuild` timed one by one, then the incremental rebuild a push does (from the
watch events of one policy change) and cProfile's top functions of it, on the store
`bench/xds_push.py` fills.

    uv run --frozen python bench/xds_build_profile.py [--pods 10000 --services 1000
        --policies 1000] [--top 25]

In-process, single-threaded (the plane runs the same rebuild in a worker thread, where a
cProfile of the plane process would not see it).
"""

from __future__ import annotations

import argparse
import cProfile
import io
import pstats
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import xds_push  # the same synthetic objects


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--pods", type=int, default=10000)
    ap.add_argument("--services", type=int, default=1000)
    ap.add_argument("--policies", type=int, default=1000)
    ap.add_argument("--top", type=int, default=25)
    args = ap.parse_args()

    from ketch.control.build import TRANSLATED_KINDS, MeshBuild
    from ketch.control.push import SnapshotHolder, StoreChange
    from ketch.control.translate.snapshot import translate_all
    from ketch.store.sqlite import SqliteStore
    from ketch.xds.convert import snapshot

    tmp = Path(tempfile.mkdtemp(prefix="kxp-"))
    try:
        store = SqliteStore(tmp / "ketch.db")
        store.apply(xds_push.make_objects(args.pods, args.services, args.policies, 10))
        build = MeshBuild()
        holder = SnapshotHolder(lambda: build(store), build.update)
        holder.rebuild()  # the initial snapshot: the next rebuild is a push's
        store.apply([xds_push.policy(0, args.services, 1)])

        stages: list[tuple[str, float]] = []
        t = time.perf_counter()
        items = store.list().items
        stages.append(("store.list() (SQLite read + JSON parse)", time.perf_counter() - t))
        t = time.perf_counter()
        objects = [m for m in items if m.get("kind") in TRANSLATED_KINDS]
        mesh = translate_all(objects)
        stages.append(("translate_all", time.perf_counter() - t))
        t = time.perf_counter()
        snapshot(mesh.authorizations.values())
        stages.append(("encode Authorization (convert.snapshot)", time.perf_counter() - t))
        t = time.perf_counter()
        snapshot([*mesh.workloads.values(), *mesh.services.values()])
        stages.append(("encode Address (convert.snapshot)", time.perf_counter() - t))
        t = time.perf_counter()
        holder.rebuild()
        stages.append(("whole SnapshotHolder.rebuild() (all of the above + diff)", t))
        stages[-1] = (stages[-1][0], time.perf_counter() - t)

        # the push's path since the incremental work: the watch events of one change
        def change(n: int) -> list[StoreChange]:
            since = store.revision()
            store.apply([xds_push.policy(0, args.services, n)])
            return [StoreChange(store.revision(), store.events(since))]

        for n in (3, 4, 5):  # warm
            holder.rebuild(change(n))
        times = []
        for n in range(6, 26):
            events = change(n)
            t = time.perf_counter()
            holder.rebuild(events)
            times.append(time.perf_counter() - t)
        times.sort()
        stages.append(
            ("incremental `rebuild(changes)` of one policy change (median of 20)", times[10])
        )

        print(f"## Rebuild stages ({args.pods} pods, {args.services} services, "
              f"{args.policies} policies)\n")  # fmt: skip
        print("| stage | ms |\n|---|---|")
        for name, secs in stages:
            print(f"| {name} | {secs * 1000:.0f} |")

        events = change(2)
        prof = cProfile.Profile()
        prof.enable()
        holder.rebuild(events)
        prof.disable()
        out = io.StringIO()
        pstats.Stats(prof, stream=out).sort_stats("tottime").print_stats(args.top)
        print("\n## cProfile of one incremental rebuild, by own time\n\n```")
        print(out.getvalue().strip())
        print("```")
        out = io.StringIO()
        pstats.Stats(prof, stream=out).sort_stats("cumulative").print_stats(args.top)
        print("\n## ... by cumulative time\n\n```")
        print(out.getvalue().strip())
        print("```")
        store.close()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
