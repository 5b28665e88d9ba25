"""Live health of deployments: latency EWMAs, requests in flight and circuit breakers.

The router reads this board on every request, so the request path only touches process
memory: no Redis round trip. Sharing across worker processes happens off the request path:

* every HEALTH_SYNC_SECONDS a background task writes this worker's snapshot (EWMAs, in-flight
  counts, the recent window's counts and latency histogram) to Redis under a per-worker key
  with a TTL, and reads every other worker's snapshot and the breaker hash back in the same
  two round trips;
* a breaker trip (or a close after a successful trial) is also written at once by a
  fire-and-forget task, so other workers stop sending traffic within one sync period.

The breaker hash and the snapshots outlive a worker (HEALTH_STATE_TTL_SECONDS), so a
restarted worker starts from the fleet's state instead of from nothing. In embedded mode
(no REDIS_URL) the board is in-process only.

Breaker: HEALTH_BREAKER_FAILURES failures within HEALTH_BREAKER_WINDOW_SECONDS open it for
HEALTH_BREAKER_COOLDOWN_SECONDS; then it is half-open and lets one trial request through per
worker; success closes it, failure opens it again. An upstream 429 with `retry-after` opens it
for that long (capped). Each worker runs its own half-open trial: with N workers up to N trial
requests reach a recovering deployment, which buys not having a Redis lock on the request path.
"""

import asyncio
import bisect
import contextlib
import logging
import time
import uuid
from collections import deque
from dataclasses import dataclass
from typing import Any, Protocol

import orjson
from django.conf import settings

from .providers.base import DeploymentInfo

logger = logging.getLogger(__name__)

CLOSED, HALF_OPEN, OPEN = "closed", "half_open", "open"
STATE_VALUES = {CLOSED: 0, HALF_OPEN: 1, OPEN: 2}
# Upper bounds (ms) of the latency histogram shared between workers for p50/p95.
LATENCY_BUCKETS_MS = (
    5, 10, 20, 35, 50, 75, 100, 150, 200, 300, 500, 750,
    1000, 1500, 2000, 3000, 5000, 10000, 30000, 60000, float("inf"),
)  # fmt: skip
# Samples kept per deployment for the recent window (bounded memory under any load).
MAX_WINDOW_SAMPLES = 4096


class _Attempting(Protocol):
    """What health needs of a call (apps.proxy.calls.Call) to account for its attempt."""

    health_pending: DeploymentInfo | None
    stream: bool


def _retry_after_seconds(value: str | None) -> float | None:
    if not value:
        return None
    try:
        seconds = float(value)
    except ValueError:
        return None  # an HTTP date: rare from LLM APIs; the failure still counts
    return seconds if seconds > 0 else None


class DeploymentHealth:
    """One deployment's state in this worker, plus what the last sync learnt from others."""

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
        # (wall time, latency ms or None, ok): the recent window for the portal and metrics.
        self.samples: deque[tuple[float, float | None, bool]] = deque(maxlen=MAX_WINDOW_SAMPLES)

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

    def close(self) -> None:
        self.state = CLOSED
        self.failures.clear()
        self.reason = ""

    def record(self, now: float, latency_ms: float | None, ok: bool) -> None:
        self.samples.append((now, latency_ms, ok))


@dataclass(slots=True)
class DeploymentStats:
    """Merged recent figures of one deployment across every worker (portal, metrics)."""

    deployment_id: int
    requests: int = 0
    errors: int = 0
    in_flight: int = 0
    p50_ms: float | None = None
    p95_ms: float | None = None
    ewma_ms: float | None = None
    ttft_ms: float | None = None
    state: str = CLOSED
    open_until: float = 0.0
    reason: str = ""
    window_seconds: float = 60.0

    @property
    def rate_per_second(self) -> float:
        return self.requests / self.window_seconds if self.window_seconds else 0.0

    @property
    def error_rate(self) -> float:
        return self.errors / self.requests if self.requests else 0.0


def _percentile(histogram: list[int], q: float) -> float | None:
    total = sum(histogram)
    if not total:
        return None
    rank = q * total
    seen = 0
    for index, count in enumerate(histogram):
        seen += count
        if seen >= rank:
            bound = LATENCY_BUCKETS_MS[index]
            return LATENCY_BUCKETS_MS[index - 1] if bound == float("inf") else float(bound)
    return None


def _add_ewmas(acc: list, item: dict) -> None:
    """Add a worker's snapshot EWMAs into `acc`, weighted by their confidence:
    acc[0:2] the latency sum and weight, acc[2:4] the time to first token's."""
    weight = float(item.get("w") or 0.0)
    if not weight:
        return
    if item.get("ewma") is not None:
        acc[0] += item["ewma"] * weight
        acc[1] += weight
    if item.get("ttft") is not None:
        acc[2] += item["ttft"] * weight
        acc[3] += weight


class HealthBoard:
    """Every deployment's health in this worker; one instance per process (`board`)."""

    def __init__(self) -> None:
        self.deployments: dict[int, DeploymentHealth] = {}
        self.worker_id = uuid.uuid4().hex[:12]
        # Other workers' last snapshots, by worker id (kept for the portal and metrics).
        self.remote: dict[str, dict] = {}
        self.remote_breakers: dict[int, dict] = {}
        self._task: asyncio.Task | None = None
        self._pending: set[asyncio.Task] = set()
        self._client: Any = None
        self._client_loop: asyncio.AbstractEventLoop | None = None

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
            self._publish(health)

    def attempt_answered(self, call: _Attempting) -> None:
        """The deployment answered (a 4xx caused by the request): alive, but no latency."""
        health = self._finish(call)
        if health is None:
            return
        health.record(time.time(), None, True)
        if health.state != CLOSED:
            health.close()
            self._publish(health)

    def attempt_failed(
        self, call: _Attempting, kind: str, *, status: int = 0, retry_after: str | None = None
    ) -> None:
        health = self._finish(call)
        if health is None:
            return
        now = time.time()
        health.record(now, None, False)
        reason = f"{kind} {status}" if status else kind
        cooled = _retry_after_seconds(retry_after) if status == 429 else None
        if cooled is not None:
            health.trip(now, min(cooled, settings.HEALTH_BREAKER_MAX_RETRY_AFTER), reason)
            self._publish(health)
            return
        if health.state == HALF_OPEN:
            health.trip(now, settings.HEALTH_BREAKER_COOLDOWN_SECONDS, f"trial failed: {reason}")
            self._publish(health)
            return
        if health.state == OPEN:
            return  # a last-resort attempt on a cooled deployment: it stays cooled
        failures = health.failures
        failures.append(now)
        horizon = now - settings.HEALTH_BREAKER_WINDOW_SECONDS
        while failures and failures[0] < horizon:
            failures.popleft()
        if len(failures) >= settings.HEALTH_BREAKER_FAILURES:
            health.trip(now, settings.HEALTH_BREAKER_COOLDOWN_SECONDS, reason)
            logger.warning("deployment %s cooled down after %s", health.id, reason)
            self._publish(health)

    # --- sharing through Redis -------------------------------------------------------------

    def _redis(self):
        import redis.asyncio as aioredis

        loop = asyncio.get_running_loop()
        if self._client is None or self._client_loop is not loop:
            self._client = aioredis.Redis.from_url(
                settings.REDIS_URL, socket_timeout=1.0, socket_connect_timeout=1.0
            )
            self._client_loop = loop
        return self._client

    def _key(self, *parts: str) -> str:
        return ":".join((settings.HEALTH_REDIS_PREFIX, *parts))

    def _publish(self, health: DeploymentHealth) -> None:
        """Write a breaker change to Redis now, without making the request wait for it."""
        if not settings.REDIS_URL:
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return
        task = loop.create_task(self._write_breaker(health.id, self._breaker_record(health)))
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)

    @staticmethod
    def _breaker_record(health: DeploymentHealth) -> dict:
        return {
            "state": health.state,
            "until": health.open_until,
            "at": health.tripped_at,
            "reason": health.reason,
        }

    async def _write_breaker(self, deployment_id: int, record: dict) -> None:
        try:
            client = self._redis()
            key = self._key("breakers")
            async with client.pipeline(transaction=False) as pipe:
                pipe.hset(key, str(deployment_id), orjson.dumps(record))
                pipe.expire(key, int(settings.HEALTH_STATE_TTL_SECONDS))
                await pipe.execute()
        except Exception as exc:  # the next sync carries the state anyway
            logger.warning("could not publish breaker state: %s", exc)

    def snapshot(self, now: float) -> dict:
        """This worker's state as plain data: written to Redis, merged by readers."""
        horizon = now - settings.HEALTH_STATS_WINDOW_SECONDS
        deployments = {}
        for deployment_id, health in self.deployments.items():
            histogram = [0] * len(LATENCY_BUCKETS_MS)
            requests = errors = 0
            for at, latency, ok in health.samples:
                if at < horizon:
                    continue
                requests += 1
                if not ok:
                    errors += 1
                elif latency is not None:
                    histogram[bisect.bisect_left(LATENCY_BUCKETS_MS, latency)] += 1
            deployments[str(deployment_id)] = {
                "ewma": health.ewma_ms,
                "ttft": health.ttft_ms,
                "w": health.weight,
                "busy": health.in_flight,
                "req": requests,
                "err": errors,
                "hist": histogram,
            }
        return {"ts": now, "worker": self.worker_id, "deployments": deployments}

    def _breakers(self) -> dict[int, dict]:
        return {
            health.id: self._breaker_record(health)
            for health in self.deployments.values()
            if health.state != CLOSED
        }

    def merge(self, snapshots: dict[str, dict], breakers: dict[int, dict], now: float) -> None:
        """Fold other workers' snapshots and the shared breaker hash into the local board."""
        self.remote = snapshots
        self.remote_breakers = breakers
        sums: dict[int, list[float]] = {}
        for snapshot in snapshots.values():
            for key, item in snapshot.get("deployments", {}).items():
                acc = sums.setdefault(int(key), [0.0, 0.0, 0.0, 0.0, 0.0, 0])
                _add_ewmas(acc, item)
                # Only live workers' requests are in flight now.
                if now - snapshot.get("ts", 0) < 3 * settings.HEALTH_SYNC_SECONDS:
                    acc[5] += int(item.get("busy") or 0)
        for deployment_id, acc in sums.items():
            health = self.get(deployment_id)
            health.remote_ewma_ms = acc[0] / acc[1] if acc[1] else None
            health.remote_ttft_ms = acc[2] / acc[3] if acc[3] else None
            health.remote_weight = max(acc[1], acc[3])
            health.remote_in_flight = int(acc[5])
        for deployment_id, record in breakers.items():
            health = self.get(deployment_id)
            tripped_at = float(record.get("at") or 0.0)
            if record.get("state") == OPEN and tripped_at > health.tripped_at:
                # A newer trip somewhere else: adopt it.
                health.state = OPEN
                health.open_until = float(record.get("until") or 0.0)
                health.tripped_at = tripped_at
                health.reason = str(record.get("reason") or "")
                health.failures.clear()
            elif (
                record.get("state") == CLOSED
                and health.state != CLOSED
                and tripped_at >= health.tripped_at
            ):
                # Another worker's trial succeeded after the trip we know of.
                health.close()

    async def sync_once(self) -> None:
        client = self._redis()
        now = time.time()
        ttl = int(settings.HEALTH_STATE_TTL_SECONDS)
        workers_key = self._key("workers")
        async with client.pipeline(transaction=False) as pipe:
            pipe.set(self._key("w", self.worker_id), orjson.dumps(self.snapshot(now)), ex=ttl)
            pipe.zadd(workers_key, {self.worker_id: now})
            pipe.zremrangebyscore(workers_key, "-inf", now - ttl)
            pipe.expire(workers_key, ttl)
            pipe.zrange(workers_key, 0, -1)
            pipe.hgetall(self._key("breakers"))
            *_, worker_ids, raw_breakers = await pipe.execute()
        others = [w.decode() for w in worker_ids if w.decode() != self.worker_id]
        snapshots: dict[str, dict] = {}
        if others:
            values = await client.mget([self._key("w", w) for w in others])
            for worker, value in zip(others, values, strict=True):
                if value:
                    snapshots[worker] = orjson.loads(value)
        breakers = {int(k): orjson.loads(v) for k, v in raw_breakers.items()}
        self.merge(snapshots, breakers, now)

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
        if self._client is not None:
            with contextlib.suppress(Exception):
                await self._client.aclose()
            self._client = None

    # --- reading the fleet's figures (portal page, /metrics) ---------------------------------

    async def fleet_stats(self) -> dict[int, DeploymentStats]:
        """Merged recent stats per deployment id; from Redis when configured (every worker,
        including this one, as of its last sync), else from this process."""
        now = time.time()
        if settings.REDIS_URL:
            client = self._redis()
            worker_ids = await client.zrange(self._key("workers"), 0, -1)
            keys = [self._key("w", w.decode()) for w in worker_ids]
            values = await client.mget(keys) if keys else []
            # This worker's own figures are read live rather than as of its last sync.
            snapshots = [self.snapshot(now)]
            for value in values:
                if value and (snapshot := orjson.loads(value)).get("worker") != self.worker_id:
                    snapshots.append(snapshot)
            raw = await client.hgetall(self._key("breakers"))
            breakers = {int(k): orjson.loads(v) for k, v in raw.items()}
            for deployment_id, record in self._breakers().items():
                if record["at"] >= float(breakers.get(deployment_id, {}).get("at") or 0.0):
                    breakers[deployment_id] = record
        else:
            snapshots = [self.snapshot(now)]
            breakers = self._breakers()
        return merge_stats(snapshots, breakers, now)


def merge_stats(
    snapshots: list[dict], breakers: dict[int, dict], now: float
) -> dict[int, DeploymentStats]:
    window = float(settings.HEALTH_STATS_WINDOW_SECONDS)
    live = 3 * settings.HEALTH_SYNC_SECONDS + 1
    stats: dict[int, DeploymentStats] = {}
    histograms: dict[int, list[int]] = {}
    ewmas: dict[int, list[float]] = {}
    for snapshot in snapshots:
        age = now - snapshot.get("ts", 0)
        for key, item in snapshot.get("deployments", {}).items():
            deployment_id = int(key)
            entry = stats.setdefault(
                deployment_id, DeploymentStats(deployment_id, window_seconds=window)
            )
            _add_ewmas(ewmas.setdefault(deployment_id, [0.0, 0.0, 0.0, 0.0]), item)
            if age > window:
                continue  # a long-gone worker: its EWMA still informs, its counts are stale
            entry.requests += int(item.get("req") or 0)
            entry.errors += int(item.get("err") or 0)
            if age < live:
                entry.in_flight += int(item.get("busy") or 0)
            hist = histograms.setdefault(deployment_id, [0] * len(LATENCY_BUCKETS_MS))
            for index, count in enumerate(item.get("hist") or ()):
                if index < len(hist):
                    hist[index] += int(count)
    for deployment_id, acc in ewmas.items():
        entry = stats[deployment_id]
        entry.ewma_ms = acc[0] / acc[1] if acc[1] else None
        entry.ttft_ms = acc[2] / acc[3] if acc[3] else None
    for deployment_id, hist in histograms.items():
        stats[deployment_id].p50_ms = _percentile(hist, 0.5)
        stats[deployment_id].p95_ms = _percentile(hist, 0.95)
    for deployment_id, record in breakers.items():
        entry = stats.setdefault(
            deployment_id, DeploymentStats(deployment_id, window_seconds=window)
        )
        until = float(record.get("until") or 0.0)
        if record.get("state") == OPEN and until > now:
            entry.state, entry.open_until = OPEN, until
        elif record.get("state") in (OPEN, HALF_OPEN):
            entry.state = HALF_OPEN
        entry.reason = str(record.get("reason") or "") if entry.state != CLOSED else ""
    return stats


def ttft_timeout(deployment: DeploymentInfo) -> float | None:
    """Seconds a stream may take to its first event before it is abandoned (None: no limit)."""
    value = deployment.extra.get("ttft_timeout_seconds") or settings.ROUTING_TTFT_TIMEOUT_SECONDS
    try:
        seconds = float(value)
    except (TypeError, ValueError):
        return None
    return seconds if seconds > 0 else None


board = HealthBoard()


def overview(models, stats: dict[int, DeploymentStats]) -> list[dict]:
    """Per model, its deployments' recent figures as plain data (portal page, JSON)."""
    result = []
    for model in models:
        total = sum(stats[d.id].requests for d in model.deployments if d.id in stats)
        rows = []
        for deployment in model.deployments:
            item = stats.get(deployment.id) or DeploymentStats(
                deployment.id, window_seconds=float(settings.HEALTH_STATS_WINDOW_SECONDS)
            )
            rows.append(
                {
                    "id": deployment.id,
                    "name": deployment.name,
                    "provider": deployment.provider,
                    "upstream_model": deployment.upstream_model,
                    "priority": deployment.priority,
                    "weight": deployment.weight,
                    "rate_per_second": round(item.rate_per_second, 3),
                    "requests": item.requests,
                    "p50_ms": item.p50_ms,
                    "p95_ms": item.p95_ms,
                    "ewma_ms": round(item.ewma_ms, 1) if item.ewma_ms is not None else None,
                    "ttft_ewma_ms": round(item.ttft_ms, 1) if item.ttft_ms is not None else None,
                    "error_rate": round(item.error_rate, 4),
                    "in_flight": item.in_flight,
                    "state": item.state,
                    "open_until": item.open_until or None,
                    "reason": item.reason,
                    "share": round(item.requests / total, 4) if total else 0.0,
                }
            )
        result.append({"name": model.name, "strategy": model.routing_strategy, "deployments": rows})
    return result
