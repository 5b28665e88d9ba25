"""Key changes reaching every gateway worker, and last-used times written in batches.

Publishing side (portal, sync): after a key is revoked, rotated or edited, the service calls
`publish_invalidation` from `transaction.on_commit`; it publishes `{"key_hash": ...}` (or
`{"team_id": ...}` when team-wide settings change) on settings.KEY_EVENTS_CHANNEL. In the
same Redis pipeline, just before, it writes the keys' new state to the key mirror (see
`key_mirror`), so a worker started while the database is down cannot admit a revoked key.

Listening side (each gateway worker, async): `listen_forever` subscribes to the channel and
drops the named entries from the worker's `key_cache`. Whenever it (re)subscribes it clears
the whole cache, because events published while it was away are lost; the cache TTL bounds
staleness in the meantime. Without Redis (embedded mode) portal and gateway share one
process, so the cache is invalidated directly.
"""

import asyncio
import contextlib
import logging
import time
from datetime import UTC, datetime

import orjson
import redis
import redis.asyncio as aioredis
from asgiref.sync import sync_to_async
from django.conf import settings
from django.db import DatabaseError, connection
from django.db.models import Q

from apps.accounts.models import ApiKey

from . import key_mirror
from .auth import KeyCache, key_cache, key_info_dumps, key_info_from_row, last_used
from .outage_log import OutageLog

logger = logging.getLogger(__name__)

# A PING on the subscription every few seconds; no reply for this long means the link is
# dead (a half-open TCP connection raises nothing by itself).
_PING_EVERY = 5.0
_DEAD_AFTER = 15.0
_MAX_BACKOFF = 5.0

_sync_client: redis.Redis | None = None


def _client() -> redis.Redis:
    global _sync_client
    if _sync_client is None:
        _sync_client = redis.Redis.from_url(
            settings.REDIS_URL, socket_connect_timeout=2, socket_timeout=2
        )
    return _sync_client


def apply_event(event: dict, cache: KeyCache = key_cache) -> None:
    if "key_hash" in event:
        cache.invalidate(str(event["key_hash"]))
    elif "team_id" in event:
        cache.invalidate_team(int(event["team_id"]))
    else:
        cache.invalidate()


def _mirror_records(key_hashes: list[str], team_id: int | None) -> dict[str, bytes | None]:
    """The changed keys' state as committed, for the key mirror (None: the key is gone)."""
    records: dict[str, bytes | None] = dict.fromkeys(key_hashes)
    rows = ApiKey.objects.select_related("team", "user", "virtual_account")
    condition = Q(key_hash__in=key_hashes)
    if team_id is not None:
        condition |= Q(team_id=team_id)
    try:
        for row in rows.filter(condition):
            records[row.key_hash] = key_info_dumps(key_info_from_row(row))
    except DatabaseError:
        # Just after the commit, so unlikely; drop the named keys from the mirror instead.
        # A team's other keys keep their old state there until a worker re-reads them.
        logger.warning("could not read the changed keys; removing them from the key mirror")
        return dict.fromkeys(key_hashes)
    return records


def publish_invalidation(*, key_hashes: list[str] = (), team_id: int | None = None) -> None:
    """Tell every worker to forget these keys (sync; call it from `transaction.on_commit`)."""
    events: list[dict] = [{"key_hash": h} for h in key_hashes]
    if team_id is not None:
        events.append({"team_id": team_id})
    # This process may serve /v1 too (embedded mode, or one uvicorn for both): apply at once.
    for event in events:
        apply_event(event)
    if not settings.REDIS_URL or not events:
        return
    records = _mirror_records(list(key_hashes), team_id)
    try:
        with _client().pipeline(transaction=False) as pipe:
            key_mirror.queue_portal_writes(pipe, records)
            for event in events:
                pipe.publish(settings.KEY_EVENTS_CHANNEL, orjson.dumps(event))
            pipe.execute()
    except redis.RedisError:
        # The change is committed; workers still re-read the key within KEY_CACHE_TTL, and
        # mirror what they read (a worker's first read after the change rewrites the entry).
        logger.exception("could not publish key invalidation; workers rely on the cache TTL")


listener_log = OutageLog(
    "key-events listener", logger=logger, consequence="reconnecting; cached keys are re-read"
)
last_used_log = OutageLog(
    "last-used flush", logger=logger, consequence="keeping the times for the next flush"
)


async def listen_forever(
    *, url: str | None = None, channel: str | None = None, cache: KeyCache = key_cache
) -> None:
    """Run in each gateway worker for its lifetime; reconnects with backoff."""
    url = url or settings.REDIS_URL
    channel = channel or settings.KEY_EVENTS_CHANNEL
    backoff = 0.1
    while True:
        client = aioredis.Redis.from_url(url, socket_connect_timeout=2, socket_keepalive=True)
        pubsub = client.pubsub()
        try:
            await pubsub.subscribe(channel)
            last_seen = time.monotonic()
            last_ping = last_seen
            while True:
                message = await pubsub.get_message(timeout=1.0)
                now = time.monotonic()
                if message is not None:
                    last_seen = now
                    if message["type"] == "subscribe":
                        # Only now are we sure to see later events: forget everything read
                        # before, since events published in between are lost.
                        cache.invalidate()
                        backoff = 0.1
                        if listener_log.down:
                            listener_log.ok()
                        else:
                            logger.info("listening for key events on %s", channel)
                    elif message["type"] == "message":
                        try:
                            apply_event(orjson.loads(message["data"]), cache)
                        except (orjson.JSONDecodeError, TypeError, ValueError):
                            logger.warning("ignoring a malformed key event")
                if now - last_seen > _DEAD_AFTER:
                    raise redis.ConnectionError("no reply on the key-events subscription")
                if now - last_ping > _PING_EVERY:
                    await pubsub.ping()
                    last_ping = now
        except asyncio.CancelledError:
            raise
        except (redis.RedisError, OSError) as exc:
            listener_log.failed(exc)
            # Events may be missed from now on: do not trust entries read before.
            cache.invalidate()
        finally:
            with contextlib.suppress(Exception):
                await pubsub.aclose()
                await client.aclose()
        await asyncio.sleep(backoff)
        backoff = min(backoff * 2, _MAX_BACKOFF)


def _write_last_used(pending: dict[int, float]) -> None:
    try:
        for key_id, ts in pending.items():
            moment = datetime.fromtimestamp(ts, tz=UTC)
            # The condition keeps a slower worker from moving the time backwards.
            ApiKey.objects.filter(
                Q(last_used_at__isnull=True) | Q(last_used_at__lt=moment), id=key_id
            ).update(last_used_at=moment)
    except DatabaseError:
        # Outside Django's request cycle nobody else resets a broken connection.
        connection.close()
        raise


async def flush_last_used() -> int:
    """Write the buffered last-used times, one UPDATE per key, in a worker thread."""
    pending = last_used.drain()
    if not pending:
        return 0
    try:
        await sync_to_async(_write_last_used)(pending)
    except DatabaseError as exc:
        last_used_log.failed(exc)
        last_used.restore(pending)
        return 0
    last_used_log.ok()
    return len(pending)


async def flush_last_used_forever(interval: float | None = None) -> None:
    interval = interval if interval is not None else settings.LAST_USED_FLUSH_SECONDS
    while True:
        await asyncio.sleep(interval)
        try:
            await flush_last_used()
        except Exception as exc:  # never let the flusher die; the next round retries
            last_used_log.failed(exc)
