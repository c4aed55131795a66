"""A manual clock for code that takes `now` and `sleep` (e.g. `CertificateManager`).

Time moves only when the test says so (`advance`, `advance_to_next_wakeup`), so assertions
about "still valid", "renewed before expiry" or "expired" do not depend on how fast the
machine is. Sleepers wake in deadline order when time reaches their deadline; a test waits
for the code under test to go to sleep (`sleeping()`) instead of sleeping itself.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta


class FakeClock:
    def __init__(self, start: datetime | None = None) -> None:
        # Whole seconds: X.509 validity has one-second resolution.
        self._now = (start or datetime.now(UTC)).replace(microsecond=0)
        self._sleepers: list[tuple[datetime, asyncio.Future[None]]] = []
        self._slept = asyncio.Event()

    def now(self) -> datetime:
        return self._now

    async def sleep(self, seconds: float) -> None:
        if seconds <= 0:
            await asyncio.sleep(0)
            return
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        entry = (self._now + timedelta(seconds=seconds), fut)
        self._sleepers.append(entry)
        self._slept.set()
        try:
            await fut
        finally:
            if entry in self._sleepers:
                self._sleepers.remove(entry)

    @property
    def sleepers(self) -> int:
        return len(self._sleepers)

    async def sleeping(self, count: int = 1, within: float = 10.0) -> None:
        """Return once at least `count` tasks are asleep on this clock; fail if that does
        not happen within `within` real seconds (the code under test is busy or stuck)."""
        try:
            async with asyncio.timeout(within):
                while len(self._sleepers) < count:
                    self._slept.clear()
                    await self._slept.wait()
        except TimeoutError:
            raise AssertionError(
                f"expected {count} sleeper(s) on the fake clock within {within}s, "
                f"have {len(self._sleepers)}"
            ) from None

    def advance(self, delta: timedelta) -> None:
        """Move time forward; wake every sleeper whose deadline is reached."""
        if delta < timedelta(0):
            raise ValueError("time only moves forward")
        self._now += delta
        for entry in sorted(self._sleepers, key=lambda e: e[0]):
            deadline, fut = entry
            if deadline <= self._now:
                self._sleepers.remove(entry)
                if not fut.done():
                    fut.set_result(None)

    async def advance_to_next_wakeup(self) -> timedelta:
        """Wait for a sleeper, then move time exactly to the earliest deadline."""
        await self.sleeping()
        deadline = min(d for d, _ in self._sleepers)
        delta = max(deadline - self._now, timedelta(0))
        self.advance(delta)
        return delta
