"""Key changes reaching every gateway worker, and last-used times written in batches.

Publishing side (portal, CLI, admin; sync): after a key is revoked, rotated or edited, the
service (or the admin's save_model, for rows it saves itself) calls `publish_invalidation`
from `transaction.on_commit`. It names the keys by hash (or the team, when team-wide
settings change) and drops them from this process's cache at once. With Redis it then
publishes `{"key_hash": ...}` / `{"team_id": ...}` on settings.KEY_EVENTS_CHANNEL; in the
same pipeline, just before, it writes the keys' new state to the key mirror (see
`key_mirror`), so a worker started while the database is down cannot admit a revoked key.
Without Redis (embedded mode) it appends one row to the key change log (`accounts.KeyChange`)
instead, since the CLI or a second worker is another process.

Listening side (each gateway worker, async), with Redis: `listen_forever` subscribes to the
channel and drops the named entries from the worker's `key_cache`. Whenever it (re)subscribes
it clears the whole cache, because events published while it was away are lost; the cache
TTL bounds staleness in the meantime. Without Redis: `poll_changes_forever` reads the log rows
past the last id it saw every KEY_CHANGE_POLL_SECONDS (one primary-key range query) and
applies them the same way. The log is durable, so a poll that fails is simply caught up by
the next one. Only one of the two runs in a worker, so pub/sub and the log never both
deliver an event; a change made in the gateway process itself (the portal) is applied at
once and again when its log row is polled, which costs one extra re-read of the key.
"""

import asyncio
import contextlib
import logging
import time
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
import redis
from asgiref.sync import sync_to_async
from django.conf import settings
from django.db import DatabaseError, connection, transaction
from django.db.models import Max, Q
from django.utils import timezone

from apps.accounts.models import ApiKey, KeyChange
from gateway_portal.redis import async_client, sync_client

from . import key_mirror
from .auth import KeyCache, key_cache, key_info_dumps, key_info_from_row, last_used
from .outage_log import OutageLog

logger = logging.getLogger(__name__)

# A PING on the subscription every few seconds; no reply for this long means the link is
# dead (a half-open TCP connection raises nothing by itself).
_PING_EVERY = 5.0
_DEAD_AFTER = 15.0
_MAX_BACKOFF = 5.0

# Seconds rows stay in the key change log (embedded mode). A worker that could not read the
# log for half as long clears its whole cache, since rows it never saw may be gone.
CHANGE_LOG_KEPT_FOR = 3600.0
# A change-log id skipped over by a poll is looked for again this long: on PostgreSQL ids are
# taken at insert and become visible at commit, so a lower id can appear after a higher one.
_HOLE_WAIT = 10.0
_MAX_HOLES = 1000

_sync_client: redis.Redis | None = None


def _client() -> redis.Redis:
    global _sync_client
    if _sync_client is None:
        _sync_client = sync_client(socket_timeout=2, connect_timeout=2)
    return _sync_client


def apply_event(event: dict[str, Any], cache: KeyCache = key_cache) -> None:
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


def publish_invalidation(*, key_hashes: Sequence[str] = (), team_id: int | None = None) -> None:
    """Tell every worker to forget these keys (sync; call it from `transaction.on_commit`)."""
    events: list[dict[str, Any]] = [{"key_hash": h} for h in key_hashes]
    if team_id is not None:
        events.append({"team_id": team_id})
    # This process may serve /v1 too (embedded mode, or one uvicorn for both): apply at once.
    for event in events:
        apply_event(event)
    if not events:
        return
    if not settings.REDIS_URL:
        _change_log_append(list(key_hashes), team_id)
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


def _change_log_append(key_hashes: list[str], team_id: int | None) -> None:
    """Embedded mode: the other processes' pollers learn of the change from this row."""
    cutoff = timezone.now() - timedelta(seconds=CHANGE_LOG_KEPT_FOR)
    try:
        with transaction.atomic():
            KeyChange.objects.create(key_hashes=key_hashes, team_id=team_id)
            # Pruned by the writer (key changes are rare) rather than by a beat task, because
            # embedded mode (`make run`) runs no Celery beat.
            KeyChange.objects.filter(created_at__lt=cutoff).delete()
    except DatabaseError:
        # The change is committed; other processes re-read the key within KEY_CACHE_TTL.
        logger.exception("could not write the key change log; workers rely on the cache TTL")


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
        # 5 s: redis-py's default, which this listener has always had (get_message and the
        # PINGs below bound the waits for events).
        client = async_client(url=url, socket_timeout=5, connect_timeout=2, keepalive=True)
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
                await pubsub.aclose()  # type: ignore[no-untyped-call]  # redis-py leaves PubSub.aclose unannotated
                await client.aclose()
        await asyncio.sleep(backoff)
        backoff = min(backoff * 2, _MAX_BACKOFF)


change_log_log = OutageLog(
    "key change log", logger=logger, consequence="changes apply once it can be read again"
)


def _latest_change_id() -> int:
    try:
        return KeyChange.objects.aggregate(top=Max("id"))["top"] or 0
    except DatabaseError:
        # Outside Django's request cycle nobody else resets a broken connection.
        connection.close()
        raise


def _changes_after(after: int, holes: list[int]) -> list[tuple[int, list[Any], int | None]]:
    condition = Q(id__gt=after)
    if holes:
        condition |= Q(id__in=holes)
    try:
        rows = KeyChange.objects.filter(condition).order_by("id")
        return list(rows.values_list("id", "key_hashes", "team_id"))
    except DatabaseError:
        connection.close()
        raise


class KeyChangePoller:
    """Applies the key change log to one worker's key cache (embedded mode, no Redis)."""

    def __init__(self, cache: KeyCache = key_cache) -> None:
        self.cache = cache
        self.last_seen: int | None = None
        self._holes: dict[int, float] = {}  # id skipped over -> monotonic time to give up
        self._last_read = time.monotonic()

    async def poll(self) -> int:
        """One round: the number of change rows applied. Raises DatabaseError when down."""
        now = time.monotonic()
        if self.last_seen is None:
            self.last_seen = await sync_to_async(_latest_change_id)()
            # Entries read before the starting point was known may predate changes before it.
            self.cache.invalidate()
            self._last_read = now
            logger.info("following the key change log from id %s", self.last_seen)
            return 0
        rows = await sync_to_async(_changes_after)(self.last_seen, list(self._holes))
        if now - self._last_read > CHANGE_LOG_KEPT_FOR / 2:
            # Unread for long enough that rows may have been pruned unseen.
            self.cache.invalidate()
        self._last_read = now
        for change_id, key_hashes, team_id in rows:
            for key_hash in key_hashes:
                apply_event({"key_hash": key_hash}, self.cache)
            if team_id is not None:
                apply_event({"team_id": team_id}, self.cache)
            self._holes.pop(change_id, None)
        new_ids = {row[0] for row in rows if row[0] > self.last_seen}
        if new_ids:
            top = max(new_ids)
            skipped = [i for i in range(self.last_seen + 1, top) if i not in new_ids]
            if len(self._holes) + len(skipped) > _MAX_HOLES:
                # Far more gaps than concurrent writers explain: stop tracking, trust nothing.
                self._holes.clear()
                self.cache.invalidate()
            else:
                self._holes.update(dict.fromkeys(skipped, now + _HOLE_WAIT))
            self.last_seen = top
        for change_id, give_up in list(self._holes.items()):
            if give_up < now:
                del self._holes[change_id]  # a rolled-back insert, not a late commit
        return len(rows)


async def poll_changes_forever(
    *, interval: float | None = None, cache: KeyCache = key_cache
) -> None:
    """Run in each embedded-mode gateway worker for its lifetime, instead of `listen_forever`."""
    interval = interval if interval is not None else settings.KEY_CHANGE_POLL_SECONDS
    poller = KeyChangePoller(cache)
    while True:
        try:
            await poller.poll()
        except Exception as exc:  # never let the poller die; the next round catches up
            change_log_log.failed(exc)
        else:
            change_log_log.ok()
        await asyncio.sleep(interval)


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
