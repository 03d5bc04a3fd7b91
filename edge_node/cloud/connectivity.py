"""Connectivity monitor: a circuit breaker in front of one cloud endpoint (pure logic).

Breaker states and the connectivity they report (`router.decision.Connectivity`):

- closed, no failure since the last success -> "online"
- closed with 1..threshold-1 consecutive failures -> "degraded"
- open (calls refused until `open_until`) -> "offline"
- half_open (the open time elapsed; one probe call allowed) -> "degraded"

`failure_threshold` consecutive failures open the breaker, and so does a failure ratio of
at least `failure_ratio` among the outcomes of the last `window_ms` once the window holds
`min_calls` outcomes (a flaky link that fails every other call opens it too, although the
consecutive count keeps resetting). It opens for `open_ms`, doubling with
each reopening without a success in between (capped at `open_max_ms`), jittered by
+-10 %, and never shorter than the largest `Retry-After` reported since the last success
(itself capped at `open_max_ms`, so a bogus header cannot take the node offline for long).
A probe failure in half_open reopens it; a success anywhere closes it.

Credentials are tracked apart from the breaker: a call the cloud refused with 401/403
(`record_credentials_rejected`) reached the cloud, so it counts as a success for the
breaker, and marks the node's credentials `rejected` (in the snapshot, `/v1/status` and
`edgeroute_cloud_credentials_rejected`) until a call is accepted again (`record_success`;
a health probe, which needs no token, proves nothing about them).

Time comes from the injected `clock` (monotonic seconds); nothing here sleeps. Safe to use
from any number of tasks of one event loop (no awaits inside); not thread-safe.
"""

from __future__ import annotations

import random
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

from router.decision import Connectivity
from router.policy import BreakerSettings

BreakerState = Literal["closed", "open", "half_open"]
_JITTER = 0.1


@dataclass(frozen=True, slots=True)
class ConnectivitySnapshot:
    """The monitor's state for `/v1/status` (times on the monitor's clock)."""

    state: Connectivity
    breaker: BreakerState
    consecutive_failures: int
    openings: int
    opened_at: float | None
    open_until: float | None
    failure_ratio: float = 0.0
    credentials: Literal["accepted", "rejected"] = "accepted"
    credentials_rejected_since: float | None = None

    def to_dict(self, clock_offset_s: float = 0.0) -> dict[str, object]:
        """JSON-ready form; `clock_offset_s` is added to each time (pass UNIX time minus
        the monitor's clock to report UNIX seconds, as `/v1/status` does)."""

        def at(t: float | None) -> float | None:
            return None if t is None else round(t + clock_offset_s, 3)

        return {
            "state": self.state,
            "breaker": self.breaker,
            "consecutive_failures": self.consecutive_failures,
            "openings": self.openings,
            "opened_at": at(self.opened_at),
            "open_until": at(self.open_until),
            "failure_ratio": round(self.failure_ratio, 4),
            "credentials": self.credentials,
            "credentials_rejected_since": at(self.credentials_rejected_since),
        }


class ConnectivityMonitor:
    """Circuit breaker with exponential, jittered open times; see the module doc."""

    def __init__(
        self,
        settings: BreakerSettings,
        *,
        clock: Callable[[], float] = time.monotonic,
        rng: Callable[[], float] = random.random,
    ) -> None:
        self._settings = settings
        self._clock = clock
        self._rng = rng
        self._breaker: BreakerState = "closed"
        self._failures = 0
        self._reopenings = 0  # openings since the last success (drives the doubling)
        self._openings = 0  # openings since start (for status / metrics)
        self._opened_at: float | None = None
        self._open_until: float | None = None
        self._probe_started: float | None = None
        self._last_probe_at: float | None = None
        self._retry_after_s = 0.0
        self._window: deque[tuple[float, bool]] = deque()  # (time, ok) of recent calls
        self._window_failures = 0
        self._credentials_rejected_since: float | None = None

    def _note(self, now: float, ok: bool) -> None:
        """Add one call outcome to the ratio window and drop outcomes older than it."""
        self._window.append((now, ok))
        self._window_failures += not ok
        limit = now - self._settings.window_ms / 1000
        while self._window and self._window[0][0] < limit:
            _, old_ok = self._window.popleft()
            self._window_failures -= not old_ok

    def _ratio_tripped(self) -> bool:
        s = self._settings
        if s.failure_ratio is None or len(self._window) < s.min_calls:
            return False
        return self._window_failures >= s.failure_ratio * len(self._window)

    @property
    def failure_ratio(self) -> float:
        """Share of failed calls among those in the window (0.0 when it is empty)."""
        return self._window_failures / len(self._window) if self._window else 0.0

    @property
    def breaker(self) -> BreakerState:
        """closed | open | half_open (half_open once the open time has elapsed)."""
        self._advance(self._clock())
        return self._breaker

    @property
    def state(self) -> Connectivity:
        """online | degraded | offline, as the routing decision expects."""
        breaker = self.breaker
        if breaker == "open":
            return "offline"
        if breaker == "half_open" or self._failures > 0:
            return "degraded"
        return "online"

    def _advance(self, now: float) -> None:
        if self._breaker == "open" and self._open_until is not None and now >= self._open_until:
            self._breaker = "half_open"
            self._probe_started = None

    def allow_request(self) -> bool:
        """May a cloud call start now? Always in closed; never in open; in half_open only
        one caller (the probe) gets True until its outcome is recorded, or until a probe
        left unreported for longer than the open time is presumed lost."""
        now = self._clock()
        self._advance(now)
        if self._breaker == "closed":
            return True
        if self._breaker == "open":
            return False
        stale = self._probe_started is not None and (
            now - self._probe_started >= self._settings.open_ms / 1000
        )
        if self._probe_started is None or stale:
            self._probe_started = now
            self._last_probe_at = now
            return True
        return False

    def probe_due(self) -> bool:
        """True when a health probe should be sent now: the breaker is half_open with no
        probe in flight, and the last probe was at least `probe_interval_ms` ago."""
        now = self._clock()
        self._advance(now)
        if self._breaker != "half_open" or self._probe_started is not None:
            return False
        interval = self._settings.probe_interval_ms / 1000
        return self._last_probe_at is None or now - self._last_probe_at >= interval

    @property
    def credentials_rejected(self) -> bool:
        """True while the cloud's last word on the node's credentials was a refusal."""
        return self._credentials_rejected_since is not None

    def record_credentials_rejected(self) -> None:
        """A call reached the cloud and the cloud refused the node's credentials (401/403):
        the breaker counts it as a success (the link works); the credentials are marked
        rejected until a later call is accepted."""
        since = self._credentials_rejected_since
        self.record_success(proves_credentials=False)
        self._credentials_rejected_since = self._clock() if since is None else since

    def record_success(self, *, proves_credentials: bool = True) -> None:
        """A call reached the cloud and got an answer: close the breaker, reset counters
        (a probe that closes a half_open breaker also empties the ratio window). With
        `proves_credentials` (a call the cloud authenticated, not a health probe) the
        credentials are marked accepted again."""
        if proves_credentials:
            self._credentials_rejected_since = None
        if self._breaker != "closed":
            self._window.clear()
            self._window_failures = 0
        self._note(self._clock(), True)
        self._breaker = "closed"
        self._failures = 0
        self._reopenings = 0
        self._retry_after_s = 0.0
        self._opened_at = self._open_until = self._probe_started = None

    def record_failure(self, retry_after_s: float | None = None) -> None:
        """A call failed for a connectivity reason (unreachable, timeout, overload).
        Opens the breaker after `failure_threshold` consecutive failures, on a failure
        ratio over the window (see module doc), or at once when a half_open probe fails;
        `retry_after_s` sets a minimum open time."""
        now = self._clock()
        self._advance(now)
        self._failures += 1
        self._note(now, False)
        if retry_after_s is not None:
            self._retry_after_s = max(self._retry_after_s, retry_after_s)
        if self._breaker == "half_open" or (
            self._breaker == "closed"
            and (self._failures >= self._settings.failure_threshold or self._ratio_tripped())
        ):
            self._open(now)
        elif self._breaker == "open" and self._open_until is not None and retry_after_s:
            cap = self._settings.open_max_ms / 1000
            self._open_until = max(self._open_until, now + min(retry_after_s, cap))

    def _open(self, now: float) -> None:
        s = self._settings
        base = min(s.open_max_ms, s.open_ms * 2**self._reopenings) / 1000
        cap = s.open_max_ms / 1000
        jittered = min(cap, base * (1 - _JITTER + 2 * _JITTER * self._rng()))
        duration = max(jittered, min(self._retry_after_s, cap))
        self._breaker = "open"
        self._opened_at = now
        self._open_until = now + duration
        self._probe_started = None
        self._window.clear()
        self._window_failures = 0
        self._reopenings += 1
        self._openings += 1

    def snapshot(self) -> ConnectivitySnapshot:
        """A consistent copy of the current state."""
        return ConnectivitySnapshot(
            state=self.state,
            breaker=self._breaker,
            consecutive_failures=self._failures,
            openings=self._openings,
            opened_at=self._opened_at,
            open_until=self._open_until,
            failure_ratio=self.failure_ratio,
            credentials="rejected" if self.credentials_rejected else "accepted",
            credentials_rejected_since=self._credentials_rejected_since,
        )
