"""Deployment health shared between worker processes through Redis, off the request path.

* every HEALTH_SYNC_SECONDS the board's background task writes this worker's snapshot (EWMAs,
  in-flight counts, the recent window's counts and latency histogram) to Redis under a
  per-worker key with a TTL, and reads every other worker's snapshot and the breaker hash
  back in the same two round trips (`SharedState.exchange`);
* a breaker trip (or a close after a successful trial) is also written at once by a
  fire-and-forget task (`SharedState.publish_breaker`), so other workers stop sending
  traffic within one sync period.

The breaker hash and the snapshots outlive a worker (HEALTH_STATE_TTL_SECONDS), so a
restarted worker starts from the fleet's state instead of from nothing.

Snapshots and breaker records are JSON read by every other worker, which during a rolling
deploy may run the previous release: their key names are the wire format, kept as they are.
Readers use `.get()` on them for the same reason.
"""

import asyncio
import bisect
import contextlib
import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import NamedTuple, TypedDict, cast

import orjson
from django.conf import settings
from redis.asyncio import Redis

from gateway_portal.redis import PerLoop, async_client

from .breaker import CLOSED, OPEN, DeploymentHealth

logger = logging.getLogger(__name__)

# Upper bounds (ms) of the latency histogram shared between workers for p50/p95.
LATENCY_BUCKETS_MS = (
    5, 10, 20, 35, 50, 75, 100, 150, 200, 300, 500, 750,
    1000, 1500, 2000, 3000, 5000, 10000, 30000, 60000, float("inf"),
)  # fmt: skip


class DeploymentSnapshot(TypedDict):
    """One deployment in a worker's snapshot."""

    ewma: float | None  # latency EWMA, ms
    ttft: float | None  # time-to-first-token EWMA, ms
    w: float  # confidence of both EWMAs
    busy: int  # requests in flight
    req: int  # attempts in the recent window
    err: int  # failed attempts in it
    hist: list[int]  # successful latencies per LATENCY_BUCKETS_MS bucket


class WorkerSnapshot(TypedDict):
    ts: float  # wall time it was taken
    worker: str
    deployments: dict[str, DeploymentSnapshot]  # by deployment id, as a string (JSON keys)


class BreakerRecord(TypedDict):
    state: str
    until: float  # open until (wall time)
    at: float  # tripped at: the newer trip wins when workers disagree
    reason: str


class FleetState(NamedTuple):
    """What Redis holds of the other workers."""

    snapshots: dict[str, WorkerSnapshot]  # by worker id
    breakers: dict[int, BreakerRecord]  # by deployment id


@dataclass(slots=True)
class EwmaSum:
    """Workers' EWMAs summed weighted by their confidence, for one fleet-wide average."""

    latency: float = 0.0
    latency_weight: float = 0.0
    ttft: float = 0.0
    ttft_weight: float = 0.0

    def add(self, item: DeploymentSnapshot) -> None:
        weight = float(item.get("w") or 0.0)
        if not weight:
            return
        if (ewma := item.get("ewma")) is not None:
            self.latency += ewma * weight
            self.latency_weight += weight
        if (ttft := item.get("ttft")) is not None:
            self.ttft += ttft * weight
            self.ttft_weight += weight

    @property
    def latency_ms(self) -> float | None:
        return self.latency / self.latency_weight if self.latency_weight else None

    @property
    def ttft_ms(self) -> float | None:
        return self.ttft / self.ttft_weight if self.ttft_weight else None

    @property
    def weight(self) -> float:
        return max(self.latency_weight, self.ttft_weight)


@dataclass(slots=True)
class _Remote:
    """Other workers' figures for one deployment, summed while merging."""

    ewmas: EwmaSum = field(default_factory=EwmaSum)
    in_flight: int = 0


def breaker_record(health: DeploymentHealth) -> BreakerRecord:
    return {
        "state": health.state,
        "until": health.open_until,
        "at": health.tripped_at,
        "reason": health.reason,
    }


def open_breakers(deployments: Iterable[DeploymentHealth]) -> dict[int, BreakerRecord]:
    """This worker's breakers that are not closed, by deployment id."""
    return {health.id: breaker_record(health) for health in deployments if health.state != CLOSED}


def worker_snapshot(
    worker_id: str, deployments: Iterable[DeploymentHealth], now: float, window: float
) -> WorkerSnapshot:
    """This worker's state as plain data: written to Redis, merged by readers."""
    horizon = now - window
    result: dict[str, DeploymentSnapshot] = {}
    for health in deployments:
        histogram = [0] * len(LATENCY_BUCKETS_MS)
        requests = errors = 0
        for at, latency_ms, ok in health.samples:
            if at < horizon:
                continue
            requests += 1
            if not ok:
                errors += 1
            elif latency_ms is not None:
                histogram[bisect.bisect_left(LATENCY_BUCKETS_MS, latency_ms)] += 1
        result[str(health.id)] = {
            "ewma": health.ewma_ms,
            "ttft": health.ttft_ms,
            "w": health.weight,
            "busy": health.in_flight,
            "req": requests,
            "err": errors,
            "hist": histogram,
        }
    return {"ts": now, "worker": worker_id, "deployments": result}


def merge_remote(
    get: Callable[[int], DeploymentHealth],
    snapshots: dict[str, WorkerSnapshot],
    breakers: dict[int, BreakerRecord],
    now: float,
    *,
    live_seconds: float,
) -> None:
    """Fold other workers' snapshots and the shared breaker hash into this worker's state.

    `get` returns (creating it if need be) this worker's DeploymentHealth of an id; a worker
    whose snapshot is older than `live_seconds` has no requests in flight any more.
    """
    sums: dict[int, _Remote] = {}
    for snapshot in snapshots.values():
        live = now - snapshot.get("ts", 0) < live_seconds
        for key, item in snapshot.get("deployments", {}).items():
            remote = sums.setdefault(int(key), _Remote())
            remote.ewmas.add(item)
            if live:
                remote.in_flight += int(item.get("busy") or 0)
    for deployment_id, remote in sums.items():
        health = get(deployment_id)
        health.remote_ewma_ms = remote.ewmas.latency_ms
        health.remote_ttft_ms = remote.ewmas.ttft_ms
        health.remote_weight = remote.ewmas.weight
        health.remote_in_flight = remote.in_flight
    for deployment_id, record in breakers.items():
        health = get(deployment_id)
        tripped_at = float(record.get("at") or 0.0)
        if record.get("state") == OPEN and tripped_at > health.tripped_at:
            # A newer trip somewhere else: adopt it.
            health.adopt_trip(
                float(record.get("until") or 0.0), tripped_at, str(record.get("reason") or "")
            )
        elif (
            record.get("state") == CLOSED
            and health.state != CLOSED
            and tripped_at >= health.tripped_at
        ):
            # Another worker's trial succeeded after the trip we know of.
            health.close()


class SharedState:
    """One worker's reads and writes of the fleet's health in Redis (keys under
    HEALTH_REDIS_PREFIX). `exchange` and `read` raise when Redis fails; the board logs it
    and routes on local state."""

    def __init__(self) -> None:
        self._pending: set[asyncio.Task[None]] = set()  # the loop keeps only weak references
        # Short timeouts: a sync that cannot reach Redis is skipped, the next one retries.
        self._clients: PerLoop[Redis] = PerLoop(
            lambda: async_client(socket_timeout=1.0, connect_timeout=1.0)
        )

    def _redis(self) -> Redis:
        return self._clients.get()

    def _key(self, *parts: str) -> str:
        return ":".join((settings.HEALTH_REDIS_PREFIX, *parts))

    def publish_breaker(self, health: DeploymentHealth) -> None:
        """Write a breaker change to Redis now, without making the request wait for it."""
        if not settings.REDIS_URL:
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return
        task = loop.create_task(self._write_breaker(health.id, breaker_record(health)))
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)

    async def _write_breaker(self, deployment_id: int, record: BreakerRecord) -> None:
        try:
            client = self._redis()
            key = self._key("breakers")
            async with client.pipeline(transaction=False) as pipe:
                pipe.hset(key, str(deployment_id), orjson.dumps(record))
                pipe.expire(key, int(settings.HEALTH_STATE_TTL_SECONDS))
                await pipe.execute()
        except Exception as exc:  # the next sync carries the state anyway
            logger.warning("could not publish breaker state: %s", exc)

    async def exchange(self, worker_id: str, snapshot: WorkerSnapshot, now: float) -> FleetState:
        """Write this worker's snapshot; read the other workers' and the breaker hash."""
        client = self._redis()
        ttl = int(settings.HEALTH_STATE_TTL_SECONDS)
        workers_key = self._key("workers")
        async with client.pipeline(transaction=False) as pipe:
            pipe.set(self._key("w", worker_id), orjson.dumps(snapshot), ex=ttl)
            pipe.zadd(workers_key, {worker_id: now})
            pipe.zremrangebyscore(workers_key, "-inf", now - ttl)
            pipe.expire(workers_key, ttl)
            pipe.zrange(workers_key, 0, -1)
            pipe.hgetall(self._key("breakers"))
            *_, worker_ids, raw_breakers = await pipe.execute()
        others = [w.decode() for w in worker_ids if w.decode() != worker_id]
        snapshots: dict[str, WorkerSnapshot] = {}
        if others:
            values = await client.mget([self._key("w", w) for w in others])
            for worker, value in zip(others, values, strict=True):
                if value:
                    snapshots[worker] = orjson.loads(value)
        breakers = {int(k): orjson.loads(v) for k, v in raw_breakers.items()}
        return FleetState(snapshots, breakers)

    async def read(self, worker_id: str) -> FleetState:
        """The other workers' snapshots and the breaker hash, writing nothing."""
        client = self._redis()
        # The client returns bytes (no decode_responses); its stubs cover both modes.
        worker_ids = cast(list[bytes], await client.zrange(self._key("workers"), 0, -1))
        keys = [self._key("w", w.decode()) for w in worker_ids]
        values = await client.mget(keys) if keys else []
        snapshots: dict[str, WorkerSnapshot] = {}
        for worker, value in zip(worker_ids, values, strict=True):
            if value and (snapshot := orjson.loads(value)).get("worker") != worker_id:
                snapshots[worker.decode()] = snapshot
        raw = await client.hgetall(self._key("breakers"))
        breakers = {int(k): orjson.loads(v) for k, v in raw.items()}
        return FleetState(snapshots, breakers)

    async def aclose(self) -> None:
        client = self._clients.pop()
        if client is not None:
            with contextlib.suppress(Exception):  # shutting down: a dead link is no news
                await client.aclose()
