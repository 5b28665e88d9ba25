"""One deployment's circuit breaker and latency averages, as one worker holds them.

Plain state and arithmetic: no I/O, no settings, no clock (callers pass `now` and the
policy). The router reads it on every request, so that costs attribute lookups only.

HEALTH_BREAKER_FAILURES failures within HEALTH_BREAKER_WINDOW_SECONDS open the breaker for
HEALTH_BREAKER_COOLDOWN_SECONDS; then it is half-open and lets one trial request through per
worker; success closes it, failure opens it again. An upstream 429 with `retry-after` opens it
for that long (capped). Each worker runs its own half-open trial: with N workers up to N trial
requests reach a recovering deployment, which buys not having a Redis lock on the request path.
"""

import enum
from collections import deque
from dataclasses import dataclass
from typing import NamedTuple

CLOSED, HALF_OPEN, OPEN = "closed", "half_open", "open"
STATE_VALUES = {CLOSED: 0, HALF_OPEN: 1, OPEN: 2}
# Samples kept per deployment for the recent window (bounded memory under any load).
MAX_WINDOW_SAMPLES = 4096


class Sample(NamedTuple):
    """One finished attempt, kept for the recent window (portal page, metrics)."""

    at: float  # wall time
    latency_ms: float | None  # None: a failure, or an answer that says nothing of latency
    ok: bool


@dataclass(frozen=True, slots=True)
class BreakerPolicy:
    """The HEALTH_BREAKER_* settings, passed in so this module reads no settings."""

    failures: int
    window_seconds: float
    cooldown_seconds: float
    max_retry_after: float


class Trip(enum.Enum):
    """Why a failure opened the breaker."""

    RETRY_AFTER = "retry_after"  # a 429 said how long to stay away
    TRIAL = "trial"  # the half-open trial failed
    FAILURES = "failures"  # enough failures within the window


def retry_after_seconds(value: str | None) -> float | None:
    if not value:
        return None
    try:
        seconds = float(value)
    except ValueError:
        return None  # an HTTP date: rare from LLM APIs; the failure still counts
    return seconds if seconds > 0 else None


class DeploymentHealth:
    """One deployment's state in this worker, plus what the last sync learnt from others."""

    # Slots: the router touches these on every request, for every deployment of the model.
    __slots__ = (
        "ewma_ms",
        "failures",
        "id",
        "in_flight",
        "open_until",
        "reason",
        "remote_ewma_ms",
        "remote_in_flight",
        "remote_ttft_ms",
        "remote_weight",
        "samples",
        "state",
        "trial_until",
        "tripped_at",
        "ttft_ms",
        "weight",
    )

    def __init__(self, deployment_id: int) -> None:
        self.id = deployment_id
        self.ewma_ms: float | None = None
        self.ttft_ms: float | None = None
        self.weight = 0.0  # confidence of the local EWMAs, bounded by 1/alpha
        self.remote_ewma_ms: float | None = None
        self.remote_ttft_ms: float | None = None
        self.remote_weight = 0.0
        self.remote_in_flight = 0
        self.in_flight = 0
        self.failures: deque[float] = deque()
        self.state = CLOSED
        self.open_until = 0.0
        self.tripped_at = 0.0
        self.trial_until = 0.0
        self.reason = ""
        self.samples: deque[Sample] = deque(maxlen=MAX_WINDOW_SAMPLES)

    # --- routing reads -------------------------------------------------------------------

    def available(self, now: float) -> bool:
        """May the router send a request here now? Moves open -> half-open when cooled."""
        if self.state == CLOSED:
            return True
        if self.state == OPEN:
            if now < self.open_until:
                return False
            self.state = HALF_OPEN
            self.trial_until = 0.0
        return now >= self.trial_until  # half-open: no trial running (or it timed out)

    def latency_ms(self, stream: bool) -> float:
        """Blended local and fleet EWMA; 0 when never measured, so it gets tried first."""
        local = (self.ttft_ms if stream else self.ewma_ms) or (
            self.ewma_ms if stream else self.ttft_ms
        )
        remote = (self.remote_ttft_ms if stream else self.remote_ewma_ms) or (
            self.remote_ewma_ms if stream else self.remote_ttft_ms
        )
        if local is None:
            return remote or 0.0
        if remote is None or not self.remote_weight:
            return local
        total = self.weight + self.remote_weight
        return (local * self.weight + remote * self.remote_weight) / total

    def busy(self) -> int:
        return self.in_flight + self.remote_in_flight

    # --- outcomes --------------------------------------------------------------------------

    def observe(self, latency_ms: float | None, ttft_ms: float | None, alpha: float) -> None:
        if latency_ms is not None:
            self.ewma_ms = (
                latency_ms
                if self.ewma_ms is None
                else alpha * latency_ms + (1 - alpha) * self.ewma_ms
            )
        if ttft_ms is not None:
            self.ttft_ms = (
                ttft_ms if self.ttft_ms is None else alpha * ttft_ms + (1 - alpha) * self.ttft_ms
            )
        self.weight = self.weight * (1 - alpha) + 1.0

    def trip(self, now: float, seconds: float, reason: str) -> None:
        self.state = OPEN
        self.open_until = now + seconds
        self.tripped_at = now
        self.reason = reason
        self.failures.clear()

    def adopt_trip(self, open_until: float, tripped_at: float, reason: str) -> None:
        """Take on a trip another worker made (its times, not recomputed from now)."""
        self.state = OPEN
        self.open_until = open_until
        self.tripped_at = tripped_at
        self.reason = reason
        self.failures.clear()

    def close(self) -> None:
        self.state = CLOSED
        self.failures.clear()
        self.reason = ""

    def record(self, now: float, latency_ms: float | None, ok: bool) -> None:
        self.samples.append(Sample(now, latency_ms, ok))

    def fail(
        self, now: float, reason: str, *, retry_after: float | None, policy: BreakerPolicy
    ) -> Trip | None:
        """Count a failed attempt (already recorded); what opened the breaker, if it did."""
        if retry_after is not None:
            self.trip(now, min(retry_after, policy.max_retry_after), reason)
            return Trip.RETRY_AFTER
        if self.state == HALF_OPEN:
            self.trip(now, policy.cooldown_seconds, f"trial failed: {reason}")
            return Trip.TRIAL
        if self.state == OPEN:
            return None  # a last-resort attempt on a cooled deployment: it stays cooled
        failures = self.failures
        failures.append(now)
        horizon = now - policy.window_seconds
        while failures and failures[0] < horizon:
            failures.popleft()
        if len(failures) >= policy.failures:
            self.trip(now, policy.cooldown_seconds, reason)
            return Trip.FAILURES
        return None
