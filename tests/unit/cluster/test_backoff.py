"""CrashLoopBackOff: 10 s doubling to 300 s, reset after 10 minutes of running."""

from __future__ import annotations

import pytest

from ketch.cluster.backoff import BackoffConfigError, BackoffPolicy, CrashLoop


@pytest.mark.parametrize(
    ("streak", "delay"),
    [(0, 0.0), (1, 10.0), (2, 20.0), (3, 40.0), (4, 80.0), (5, 160.0), (6, 300.0), (500, 300.0)],
)
def test_kubernetes_delays(streak: int, delay: float) -> None:
    assert BackoffPolicy().delay(streak) == delay


def test_crash_loop_doubles_and_resets_after_a_long_run() -> None:
    loop = CrashLoop(BackoffPolicy())
    assert [loop.on_exit(1.0) for _ in range(7)] == [10, 20, 40, 80, 160, 300, 300]
    assert loop.on_exit(599.0) == 300  # not quite 10 minutes
    assert loop.on_exit(600.0) == 10  # ran 10 minutes: a new streak
    assert loop.on_exit(0.0) == 20
    loop.reset()
    assert loop.on_exit(0.0) == 10


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({}, BackoffPolicy(10.0, 300.0, 600.0)),
        ({"KETCH_KUBELET_BACKOFF_BASE": "0.2"}, BackoffPolicy(0.2, 6.0, 600.0)),
        (
            {"KETCH_KUBELET_BACKOFF_BASE": "0.1", "KETCH_KUBELET_BACKOFF_CAP": "0.5"},
            BackoffPolicy(0.1, 0.5, 600.0),
        ),
        ({"KETCH_KUBELET_BACKOFF_RESET": "5"}, BackoffPolicy(10.0, 300.0, 5.0)),
        ({"KETCH_KUBELET_BACKOFF_BASE": " "}, BackoffPolicy()),
    ],
)
def test_from_env(env: dict[str, str], expected: BackoffPolicy) -> None:
    assert BackoffPolicy.from_env(env) == expected


@pytest.mark.parametrize(
    ("env", "message"),
    [
        (
            {"KETCH_KUBELET_BACKOFF_BASE": "fast"},
            "KETCH_KUBELET_BACKOFF_BASE='fast' is not a number",
        ),
        ({"KETCH_KUBELET_BACKOFF_BASE": "-1"}, "base must be a positive number"),
        ({"KETCH_KUBELET_BACKOFF_BASE": "nan"}, "base must be a positive number"),
        (
            {"KETCH_KUBELET_BACKOFF_BASE": "10", "KETCH_KUBELET_BACKOFF_CAP": "1"},
            "cap .* must not be below its base",
        ),
    ],
)
def test_bad_env_is_a_clear_error(env: dict[str, str], message: str) -> None:
    with pytest.raises(BackoffConfigError, match=message):
        BackoffPolicy.from_env(env)
