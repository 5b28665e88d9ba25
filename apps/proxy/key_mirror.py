"""Verified keys mirrored to Redis, so a worker started while the database is down admits them.

A worker's key cache lives in its memory: one (re)started during a database outage knows no
key and would refuse them all. So every verified key is also kept in Redis, as
`tollgate:key:<sha256 of the secret>` -> the JSON of its KeyInfo (`auth.key_info_dumps`; no
secret in it), expiring after settings.KEY_MIRROR_TTL. `auth.authenticate` reads it only when
the database cannot be reached, and still refuses what KeyInfo.refusal() refuses.

Writers:
- a gateway worker, after it read the key from the database: a background task, at most
  once per key per KEY_CACHE_TTL in that worker (`remember`);
- the portal, when a key changes (`key_events.publish_invalidation`, in the pipeline that
  publishes the invalidation): it writes the key's state after the change, revoked or
  deactivated included, so the mirror refuses such a key as the database would.

A worker's read may have begun before a revocation committed and land after the portal wrote
the revoked state. So the portal also sets a guard key for GUARD_SECONDS, during which
worker writes for that key are dropped (one Lua script, atomic in Redis), and a worker drops
a write whose database read began more than WRITE_DEADLINE seconds ago: a stale write can
never land after the guard has gone.

Unknown keys are not mirrored. While the database is down an unknown key gets a 503 (retry
later) rather than a 401: a key created just before the outage is unknown to the mirror, and
a 401 would tell its client that the key is wrong. Embedded mode (no Redis) has no mirror.
"""

import asyncio
import logging
import time
from typing import cast

from django.conf import settings
from redis.asyncio import Redis
from redis.client import Pipeline

from apps.quotas.counters import AsyncRedisCounterStore
from apps.quotas.engine import get_quota_engine

from .outage_log import STORE_ERRORS, OutageLog

logger = logging.getLogger(__name__)

ENTRY_PREFIX = "tollgate:key:"
GUARD_SECONDS = 30
WRITE_DEADLINE = 5.0
_MAX_REMEMBERED = 100_000

# KEYS[1] the entry, KEYS[2] its guard; ARGV[1] the record, ARGV[2] its TTL in seconds.
_WRITE_UNLESS_GUARDED = """
if redis.call('EXISTS', KEYS[2]) == 1 then return 0 end
redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[2])
return 1
"""

mirror_log = OutageLog(
    "key mirror (Redis)", logger=logger, consequence="keys cannot be read from or written to it"
)
_written: dict[str, float] = {}  # key hash -> monotonic time of this worker's last write
_tasks: set[asyncio.Task[None]] = set()


def entry_key(key_hash: str) -> str:
    return f"{ENTRY_PREFIX}{key_hash}"


def guard_key(key_hash: str) -> str:
    return f"{ENTRY_PREFIX}{key_hash}:guard"


def redis_client() -> Redis | None:
    """The proxy's async Redis client for its few small reads and writes besides the counters
    (this mirror, the catalog snapshot): the quota counters' pool, not one more. None without
    Redis (embedded mode)."""
    if not settings.REDIS_URL:
        return None
    store = get_quota_engine().store
    return store.client() if isinstance(store, AsyncRedisCounterStore) else None


async def read(key_hash: str) -> bytes | None:
    """The mirrored record of a key; None if it has none or Redis cannot be reached."""
    client = redis_client()
    if client is None:
        return None
    try:
        # bytes: the client is built without decode_responses; its stubs cover both modes.
        record = cast(bytes | None, await client.get(entry_key(key_hash)))
    except STORE_ERRORS as exc:
        mirror_log.failed(exc)
        return None
    mirror_log.ok()
    return record


def enabled() -> bool:
    """Whether there is a mirror (Redis configured): without one, nothing is serialised."""
    return redis_client() is not None


def remember(key_hash: str, record: bytes, read_started: float) -> None:
    """Mirror a key just read from the database, off the request path.

    `read_started` is the time.monotonic() at which that database read began.
    """
    if redis_client() is None:
        return
    now = time.monotonic()
    if now - _written.get(key_hash, -float("inf")) < settings.KEY_CACHE_TTL:
        return  # concurrent misses on one key read it together: one write is enough
    if len(_written) >= _MAX_REMEMBERED:
        _written.clear()  # at worst a few extra writes
    _written[key_hash] = now
    task = asyncio.get_running_loop().create_task(_write(key_hash, record, read_started))
    _tasks.add(task)  # the loop keeps only weak references to tasks
    task.add_done_callback(_tasks.discard)


async def _write(key_hash: str, record: bytes, read_started: float) -> None:
    if time.monotonic() - read_started > WRITE_DEADLINE:
        return  # might land after a portal guard expired (see the module docstring)
    client = redis_client()
    if client is None:
        return
    try:
        await client.eval(
            _WRITE_UNLESS_GUARDED,
            2,
            entry_key(key_hash),
            guard_key(key_hash),
            record,
            settings.KEY_MIRROR_TTL,
        )
    except STORE_ERRORS as exc:
        _written.pop(key_hash, None)  # try again on the next database read
        mirror_log.failed(exc)
        return
    mirror_log.ok()


def queue_portal_writes(pipe: Pipeline, records: dict[str, bytes | None]) -> None:
    """Add the state of changed keys to the portal's sync Redis pipeline (None: no such key).

    Queued before the invalidation is published, so a worker that re-reads the key from the
    mirror after hearing of the change finds the new state.
    """
    for key_hash, record in records.items():
        if record is None:
            pipe.delete(entry_key(key_hash))
        else:
            pipe.set(entry_key(key_hash), record, ex=settings.KEY_MIRROR_TTL)
        pipe.set(guard_key(key_hash), b"1", ex=GUARD_SECONDS)
