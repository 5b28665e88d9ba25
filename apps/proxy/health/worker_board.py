"""This worker's health board: every deployment's breaker, told each attempt's outcome.

The call pipeline reports attempts here (`attempt_started`, then one of `attempt_succeeded`,
`attempt_answered`, `attempt_failed`, `attempt_released`) and the router reads
`board.deployments`; both only touch process memory. Sharing with other workers runs in a
background task (`start`) and in fire-and-forget writes of breaker changes, never on the
request path (see `shared_state`). In embedded mode (no REDIS_URL) the board is in-process
only.
"""

import asyncio
import contextlib
import logging
import time
import uuid
from typing import Protocol

from django.conf import settings

from ..providers.base import DeploymentInfo
from .breaker import CLOSED, HALF_OPEN, BreakerPolicy, DeploymentHealth, Trip, retry_after_seconds
from .report import DeploymentStats, merge_stats
from .shared_state import (
    BreakerRecord,
    SharedState,
    WorkerSnapshot,
    merge_remote,
    open_breakers,
    worker_snapshot,
)

logger = logging.getLogger(__name__)


class _Attempting(Protocol):
    """What health needs of a call (apps.proxy.calls.Call) to account for its attempt."""

    health_pending: DeploymentInfo | None
    stream: bool


def _policy() -> BreakerPolicy:
    # Read at each failure, not once: tests and the admin may change the settings.
    return BreakerPolicy(
        failures=settings.HEALTH_BREAKER_FAILURES,
        window_seconds=settings.HEALTH_BREAKER_WINDOW_SECONDS,
        cooldown_seconds=settings.HEALTH_BREAKER_COOLDOWN_SECONDS,
        max_retry_after=settings.HEALTH_BREAKER_MAX_RETRY_AFTER,
    )


class HealthBoard:
    """Every deployment's health in this worker; one instance per process (`board`)."""

    def __init__(self) -> None:
        self.deployments: dict[int, DeploymentHealth] = {}
        self.worker_id = uuid.uuid4().hex[:12]
        # Other workers' last snapshots, by worker id (kept for the portal and metrics).
        self.remote: dict[str, WorkerSnapshot] = {}
        self.remote_breakers: dict[int, BreakerRecord] = {}
        self.shared = SharedState()
        self._task: asyncio.Task[None] | None = None

    def get(self, deployment_id: int) -> DeploymentHealth:
        health = self.deployments.get(deployment_id)
        if health is None:
            health = self.deployments[deployment_id] = DeploymentHealth(deployment_id)
        return health

    def reset(self) -> None:
        """Forget everything (tests)."""
        self.deployments.clear()
        self.remote.clear()
        self.remote_breakers.clear()

    # --- the call's attempt --------------------------------------------------------------

    def attempt_started(self, call: _Attempting, deployment: DeploymentInfo) -> None:
        self.attempt_released(call)
        health = self.get(deployment.id)
        health.in_flight += 1
        if health.state == HALF_OPEN:
            # This request is the trial; others skip the deployment until it reports back
            # (or its timeout passes, should the outcome never arrive).
            health.trial_until = time.time() + deployment.timeout_seconds
        call.health_pending = deployment

    def _finish(self, call: _Attempting) -> DeploymentHealth | None:
        deployment = call.health_pending
        if deployment is None:
            return None
        call.health_pending = None
        health = self.get(deployment.id)
        health.in_flight = max(0, health.in_flight - 1)
        return health

    def attempt_released(self, call: _Attempting) -> None:
        """The attempt ended without saying anything about the deployment's health."""
        health = self._finish(call)
        if health is not None and health.state == HALF_OPEN:
            health.trial_until = 0.0  # let another request be the trial

    def attempt_succeeded(
        self, call: _Attempting, latency_ms: float | None, ttft_ms: float | None = None
    ) -> None:
        health = self._finish(call)
        if health is None:
            return
        now = time.time()
        alpha = settings.ROUTING_EWMA_ALPHA
        if call.stream:
            health.observe(None, ttft_ms, alpha)
        else:
            health.observe(latency_ms, None, alpha)
        health.record(now, ttft_ms if call.stream and ttft_ms is not None else latency_ms, True)
        if health.state != CLOSED:
            health.close()
            self.shared.publish_breaker(health)

    def attempt_answered(self, call: _Attempting) -> None:
        """The deployment answered (a 4xx caused by the request): alive, but no latency."""
        health = self._finish(call)
        if health is None:
            return
        health.record(time.time(), None, True)
        if health.state != CLOSED:
            health.close()
            self.shared.publish_breaker(health)

    def attempt_failed(
        self, call: _Attempting, kind: str, *, status: int = 0, retry_after: str | None = None
    ) -> None:
        health = self._finish(call)
        if health is None:
            return
        now = time.time()
        health.record(now, None, False)
        reason = f"{kind} {status}" if status else kind
        cooled = retry_after_seconds(retry_after) if status == 429 else None
        trip = health.fail(now, reason, retry_after=cooled, policy=_policy())
        if trip is None:
            return
        if trip is Trip.FAILURES:
            logger.warning("deployment %s cooled down after %s", health.id, reason)
        self.shared.publish_breaker(health)

    # --- sharing with other workers ----------------------------------------------------------

    def snapshot(self, now: float) -> WorkerSnapshot:
        """This worker's state as plain data: written to Redis, merged by readers."""
        return worker_snapshot(
            self.worker_id,
            self.deployments.values(),
            now,
            settings.HEALTH_STATS_WINDOW_SECONDS,
        )

    def merge(
        self, snapshots: dict[str, WorkerSnapshot], breakers: dict[int, BreakerRecord], now: float
    ) -> None:
        """Fold other workers' snapshots and the shared breaker hash into the local board."""
        self.remote = snapshots
        self.remote_breakers = breakers
        # Only live workers' requests are in flight now.
        live = 3 * settings.HEALTH_SYNC_SECONDS
        merge_remote(self.get, snapshots, breakers, now, live_seconds=live)

    async def sync_once(self) -> None:
        now = time.time()
        fleet = await self.shared.exchange(self.worker_id, self.snapshot(now), now)
        self.merge(fleet.snapshots, fleet.breakers, now)

    async def _sync_forever(self) -> None:
        while True:
            try:
                await self.sync_once()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # routing goes on with local state
                logger.warning("health sync failed: %s", exc)
            await asyncio.sleep(settings.HEALTH_SYNC_SECONDS)

    def start(self) -> None:
        if settings.REDIS_URL and self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._sync_forever())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        await self.shared.aclose()

    # --- reading the fleet's figures (portal page, /metrics) ---------------------------------

    async def fleet_stats(self) -> dict[int, DeploymentStats]:
        """Merged recent stats per deployment id; from Redis when configured (every worker,
        including this one, as of its last sync), else from this process."""
        now = time.time()
        if settings.REDIS_URL:
            fleet = await self.shared.read(self.worker_id)
            # This worker's own figures are read live rather than as of its last sync.
            snapshots = [self.snapshot(now), *fleet.snapshots.values()]
            breakers = fleet.breakers
            for deployment_id, record in open_breakers(self.deployments.values()).items():
                held = breakers.get(deployment_id)
                held_at = held.get("at") if held is not None else None
                if record["at"] >= float(held_at or 0.0):
                    breakers[deployment_id] = record
        else:
            snapshots = [self.snapshot(now)]
            breakers = open_breakers(self.deployments.values())
        return merge_stats(snapshots, breakers, now)


def ttft_timeout(deployment: DeploymentInfo) -> float | None:
    """Seconds a stream may take to its first event before it is abandoned (None: no limit)."""
    value = deployment.extra.get("ttft_timeout_seconds") or settings.ROUTING_TTFT_TIMEOUT_SECONDS
    try:
        seconds = float(value)
    except (TypeError, ValueError):
        return None
    return seconds if seconds > 0 else None


board = HealthBoard()
