"""ConnectivityMonitor failure-ratio window: opens on a flaky link, needs a minimum volume,
forgets outcomes older than the window (fake clock, no sleeps)."""

from __future__ import annotations

from edge_node.cloud.connectivity import ConnectivityMonitor
from router.policy import BreakerSettings


class FakeClock:
    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


def monitor(**kw: object) -> tuple[ConnectivityMonitor, FakeClock]:
    base: dict[str, object] = {
        "failure_threshold": 5,
        "open_ms": 1000,
        "open_max_ms": 5000,
        "failure_ratio": 0.5,
        "window_ms": 10_000,
        "min_calls": 6,
    }
    base.update(kw)
    clock = FakeClock()
    return ConnectivityMonitor(BreakerSettings(**base), clock=clock, rng=lambda: 0.5), clock  # type: ignore[arg-type]


def test_alternating_failures_open_on_ratio() -> None:
    """Fail/succeed alternately never reaches 5 consecutive failures but opens at 50 %."""
    m, clock = monitor()
    for _ in range(2):
        m.record_failure()
        m.record_success()
        clock.t += 0.1
    assert m.breaker == "closed"  # 4 calls < min_calls
    m.record_failure()
    assert m.breaker == "closed"  # 3/5 but still below min volume
    m.record_success()
    m.record_failure()  # 4 of 7 failed, volume reached
    assert m.breaker == "open" and m.state == "offline"


def test_ratio_below_threshold_stays_closed() -> None:
    """One failure in three calls (33 %) over a large volume keeps the breaker closed."""
    m, clock = monitor()
    for _ in range(10):
        m.record_failure()
        m.record_success()
        m.record_success()
        clock.t += 0.1
    assert m.breaker == "closed"
    assert abs(m.snapshot().failure_ratio - 1 / 3) < 0.01


def test_old_outcomes_leave_the_window() -> None:
    """Failures older than window_ms no longer count toward the ratio."""
    m, clock = monitor(min_calls=4)
    for _ in range(3):
        m.record_failure()
        m.record_success()
    clock.t += 20.0  # the whole window is stale
    m.record_success()
    m.record_success()
    m.record_success()
    m.record_failure()  # 1 of 4 in the window
    assert m.breaker == "closed"


def test_ratio_off_when_null() -> None:
    """failure_ratio: null leaves only the consecutive-failure rule."""
    m, _ = monitor(failure_ratio=None)
    for _ in range(20):
        m.record_failure()
        m.record_success()
    assert m.breaker == "closed"


def test_window_cleared_on_close() -> None:
    """After opening on the ratio and a successful probe, old failures do not reopen it."""
    m, clock = monitor(min_calls=4)
    for _ in range(2):
        m.record_failure()
        m.record_success()
    m.record_failure()
    assert m.breaker == "open"
    clock.t += 2.0
    assert m.allow_request()  # half-open probe
    m.record_success()
    m.record_failure()
    assert m.breaker == "closed"
