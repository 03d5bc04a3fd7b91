"""ConnectivityMonitor: breaker transitions driven by a fake clock (no sleeps)."""

from __future__ import annotations

import pytest

from edge_node.cloud.connectivity import ConnectivityMonitor
from router.policy import BreakerSettings


class FakeClock:
    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


def monitor(rng: float = 0.5, **kw: int) -> tuple[ConnectivityMonitor, FakeClock]:
    base = {"failure_threshold": 3, "open_ms": 1000, "open_max_ms": 5000, "probe_interval_ms": 500}
    base.update(kw)
    clock = FakeClock()
    return ConnectivityMonitor(BreakerSettings(**base), clock=clock, rng=lambda: rng), clock


def test_starts_online_and_degrades_before_opening() -> None:
    """Failures below the threshold degrade; the threshold-th failure takes it offline."""
    m, _ = monitor()
    states = [m.state]
    m.record_failure()
    m.record_failure()
    assert m.allow_request()
    states.append(m.state)
    m.record_failure()
    states.append(m.state)
    assert states == ["online", "degraded", "offline"] and not m.allow_request()
    assert m.snapshot().openings == 1


def test_success_resets_failures() -> None:
    """A success between failures restarts the consecutive count."""
    m, _ = monitor()
    m.record_failure()
    m.record_failure()
    m.record_success()
    assert m.state == "online"
    m.record_failure()
    m.record_failure()
    assert m.breaker == "closed"


def test_half_open_lets_exactly_one_probe_through() -> None:
    """After open_ms the breaker is half-open: one caller is allowed, others refused."""
    m, clock = monitor()
    for _ in range(3):
        m.record_failure()
    clock.t += 0.99
    assert not m.allow_request()
    clock.t += 0.02
    assert (m.state, m.breaker) == ("degraded", "half_open")
    assert m.allow_request()
    assert not m.allow_request()
    m.record_success()
    assert (m.state, m.allow_request()) == ("online", True)


def test_open_time_doubles_per_reopening_and_is_capped() -> None:
    """Each failed probe reopens for twice as long, up to open_max_ms."""
    m, clock = monitor()
    for _ in range(3):
        m.record_failure()
    durations = []
    for _ in range(5):
        snap = m.snapshot()
        assert snap.open_until is not None and snap.opened_at is not None
        durations.append(round(snap.open_until - snap.opened_at, 6))
        clock.t = snap.open_until
        assert m.allow_request()
        m.record_failure()
    assert durations == [1.0, 2.0, 4.0, 5.0, 5.0]


def test_success_resets_the_doubling() -> None:
    """After a successful probe, the next opening uses open_ms again."""
    m, clock = monitor()
    for _ in range(3):
        m.record_failure()
    clock.t += 1.0
    m.allow_request()
    m.record_failure()  # reopened for 2 s
    clock.t += 2.0
    m.allow_request()
    m.record_success()
    for _ in range(3):
        m.record_failure()
    snap = m.snapshot()
    assert snap.open_until is not None and snap.opened_at is not None
    assert snap.open_until - snap.opened_at == pytest.approx(1.0)


@pytest.mark.parametrize(("rng", "expected"), [(0.0, 0.9), (1.0, 1.1)])
def test_jitter_bounds(rng: float, expected: float) -> None:
    """Jitter moves the open time within +-10 %."""
    m, _ = monitor(rng=rng)
    for _ in range(3):
        m.record_failure()
    snap = m.snapshot()
    assert snap.open_until is not None
    assert snap.open_until - 100.0 == pytest.approx(expected)


def test_retry_after_is_a_minimum_open_time_capped_at_max() -> None:
    """A cloud Retry-After lengthens the open time, but never beyond open_max_ms."""
    m, _ = monitor()
    m.record_failure()
    m.record_failure()
    m.record_failure(retry_after_s=3.0)
    assert (m.snapshot().open_until or 0) - 100.0 == pytest.approx(3.0)
    m2, _ = monitor()
    for _ in range(3):
        m2.record_failure(retry_after_s=3600)
    assert (m2.snapshot().open_until or 0) - 100.0 == pytest.approx(5.0)


def test_lost_probe_is_replaced_after_open_time() -> None:
    """A half-open probe whose outcome is never recorded does not block forever."""
    m, clock = monitor()
    for _ in range(3):
        m.record_failure()
    clock.t += 1.0
    assert m.allow_request()
    clock.t += 0.5
    assert not m.allow_request()
    clock.t += 0.6
    assert m.allow_request()


def test_probe_due_respects_half_open_and_interval() -> None:
    """probe_due is False while open, True once half-open with no probe, False in flight."""
    m, clock = monitor()
    assert not m.probe_due()
    for _ in range(3):
        m.record_failure()
    assert not m.probe_due()
    clock.t += 1.0
    assert m.probe_due()
    assert m.allow_request()
    assert not m.probe_due()


def test_snapshot_dict_fields() -> None:
    """snapshot().to_dict() exposes the documented fields."""
    m, _ = monitor()
    m.record_failure()
    d = m.snapshot().to_dict()
    assert d == {
        "state": "degraded",
        "breaker": "closed",
        "consecutive_failures": 1,
        "openings": 0,
        "opened_at": None,
        "open_until": None,
        "failure_ratio": 1.0,
        "credentials": "accepted",
        "credentials_rejected_since": None,
    }


def test_refused_credentials_are_reachable_and_stay_rejected_until_accepted() -> None:
    """A 401 closes the breaker but marks the credentials rejected since its first time; a
    health probe leaves them rejected, an accepted call clears them."""
    m, clock = monitor()
    m.record_failure()
    m.record_credentials_rejected()
    clock.t += 5
    m.record_credentials_rejected()
    snap = m.snapshot()
    assert (snap.state, snap.credentials, snap.credentials_rejected_since) == (
        "online",
        "rejected",
        100.0,
    )
    m.record_success(proves_credentials=False)
    assert m.credentials_rejected
    m.record_success()
    assert not m.credentials_rejected and m.snapshot().credentials_rejected_since is None
