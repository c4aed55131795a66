"""Kubernetes' CrashLoopBackOff, pure.

After a container exits, the kubelet restarts it with an exponential back-off: 10 s, 20 s,
40 s, ... capped at 300 s, and the back-off is reset once a container has run for 10 minutes
without a problem (Kubernetes docs, "Container restart policy"). The same back-off retries
a pod sandbox that could not be created.

`BackoffPolicy.from_env()` reads `KETCH_KUBELET_BACKOFF_BASE`, `KETCH_KUBELET_BACKOFF_CAP` and
`KETCH_KUBELET_BACKOFF_RESET` (seconds), so tests and demos can restart within a second.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, field

ENV_BASE = "KETCH_KUBELET_BACKOFF_BASE"
ENV_CAP = "KETCH_KUBELET_BACKOFF_CAP"
ENV_RESET = "KETCH_KUBELET_BACKOFF_RESET"


class BackoffConfigError(ValueError):
    """A back-off setting (from the environment) is not a usable number of seconds."""


@dataclass(frozen=True)
class BackoffPolicy:
    base: float = 10.0
    cap: float = 300.0
    reset_after: float = 600.0

    def __post_init__(self) -> None:
        for name, value in (("base", self.base), ("cap", self.cap), ("reset", self.reset_after)):
            if not math.isfinite(value) or value <= 0:
                raise BackoffConfigError(
                    f"back-off {name} must be a positive number of seconds, got {value!r}"
                )
        if self.cap < self.base:
            raise BackoffConfigError(
                f"back-off cap ({self.cap}s) must not be below its base ({self.base}s)"
            )

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> BackoffPolicy:
        env = os.environ if env is None else env
        default = cls()
        values: dict[str, float] = {}
        for var, key, fallback in (
            (ENV_BASE, "base", default.base),
            (ENV_CAP, "cap", default.cap),
            (ENV_RESET, "reset_after", default.reset_after),
        ):
            text = env.get(var)
            if text is None or text.strip() == "":
                values[key] = fallback
                continue
            try:
                values[key] = float(text)
            except ValueError:
                raise BackoffConfigError(
                    f"{var}={text!r} is not a number of seconds (e.g. {var}=0.2)"
                ) from None
        if (env.get(ENV_BASE) or "").strip() and not (env.get(ENV_CAP) or "").strip():
            # A base given alone (tests, demos) scales the cap with it: 30 x base, as 300/10.
            values["cap"] = values["base"] * (default.cap / default.base)
        return cls(**values)

    def delay(self, streak: int) -> float:
        """The wait before restart number `streak` (1-based) of an unbroken crash streak."""
        if streak <= 0:
            return 0.0
        # 2**(streak-1) overflows float for huge streaks; the cap is reached long before.
        exponent = min(streak - 1, 64)
        return min(self.cap, self.base * 2.0**exponent)


@dataclass
class CrashLoop:
    """The back-off state of one container (or one pod sandbox)."""

    policy: BackoffPolicy
    streak: int = field(default=0)

    def on_exit(self, ran_for: float) -> float:
        """A run of `ran_for` seconds ended; returns how long to wait before the next start.
        A run of at least `reset_after` seconds starts a new streak (back to `base`)."""
        if ran_for >= self.policy.reset_after:
            self.streak = 0
        self.streak += 1
        return self.policy.delay(self.streak)

    def reset(self) -> None:
        self.streak = 0
