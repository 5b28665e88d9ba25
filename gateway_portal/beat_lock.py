"""Exactly one Celery beat sends the schedule, however many are started.

Why a lock: every beat started (a second one by mistake, a rolling deploy that overlaps the
old and new beat, a standby kept for failover) would send every due task again. The tasks
are idempotent, so a duplicate is harmless once, but a standing second beat doubles every
rollup and e-mail run. So beats share a lease in Redis: `tollgate:beat-lock` holds the
random token of the beat that sends, with a TTL of `BEAT_LOCK_TTL_SECONDS`. The holder renews it on
every scheduler tick (ticks are capped at a third of the TTL); the others check on the same
cadence and stand by. When the holder dies its lease runs out and a standby takes over within
about 1.3 TTL; a holder that stops cleanly deletes its lease, so the takeover is one check
away. A standby that takes over runs entries that fell due while it stood by at once (the
dead beat may have missed them; the tasks are idempotent).

A holder that cannot reach Redis keeps sending only until its own lease would have run out
(counted from before its last successful renewal, so never longer than another beat could
think it free), then stands by. Without REDIS_URL (the embedded demo: one process runs beat)
there is no lock.

Wiring: `gateway_portal/celery.py` names `SingleBeatScheduler` as the beat scheduler.
"""

import logging
import time
import uuid

import redis
from celery.beat import PersistentScheduler
from django.conf import settings

from .redis import sync_client

logger = logging.getLogger("tollgate.beat")

LOCK_KEY = "tollgate:beat-lock"

# Take the lease when it is free, renew it when it is ours; 1 when held after the call.
_HOLD = """
local holder = redis.call('GET', KEYS[1])
if holder == ARGV[1] then
    redis.call('PEXPIRE', KEYS[1], ARGV[2])
    return 1
end
if not holder then
    redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
    return 1
end
return 0
"""
# Delete the lease only if it is still ours (it may have expired and been taken over).
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
    return redis.call('DEL', KEYS[1])
end
return 0
"""


class BeatLock:
    """A Redis lease with a random token; `hold()` takes or renews it."""

    def __init__(self, client: redis.Redis, *, key: str, ttl_seconds: float) -> None:
        self.client = client
        self.key = key
        self.ttl_seconds = ttl_seconds
        self.token = uuid.uuid4().hex
        self._hold = client.register_script(_HOLD)
        self._release = client.register_script(_RELEASE)
        self._valid_until = 0.0  # monotonic time our lease surely lasts until
        self._state = "starting"

    @property
    def check_seconds(self) -> float:
        """How often the holder renews and a standby looks: three tries within one TTL."""
        return self.ttl_seconds / 3

    def hold(self) -> bool:
        """True when this beat holds the lease (and may send) until the next check."""
        started = time.monotonic()
        try:
            held = bool(
                self._hold(keys=[self.key], args=[self.token, int(self.ttl_seconds * 1000)])
            )
        except redis.RedisError as exc:
            held = started < self._valid_until - self.check_seconds
            self._note("unreachable", f"Redis unreachable ({exc.__class__.__name__})")
            return held
        if held:
            self._valid_until = started + self.ttl_seconds
            self._note("held", "lease taken: this beat sends the schedule")
        else:
            self._valid_until = 0.0
            self._note("standby", "another beat holds the lease: standing by")
        return held

    def release(self) -> None:
        try:
            self._release(keys=[self.key], args=[self.token])
        except redis.RedisError:
            pass  # the lease runs out by itself
        self._valid_until = 0.0

    def _note(self, state: str, message: str) -> None:
        # One log line per change of state, not one per tick.
        if state != self._state:
            log = logger.warning if state == "unreachable" else logger.info
            log("beat lock %s: %s", self.key, message)
            self._state = state


def beat_lock_from_settings() -> BeatLock | None:
    if not settings.REDIS_URL:
        return None
    # One command per tick on a long-lived connection: PING it first when idle for 30 s.
    client = sync_client(socket_timeout=2, connect_timeout=2, health_check_interval=30)
    return BeatLock(client, key=LOCK_KEY, ttl_seconds=settings.BEAT_LOCK_TTL_SECONDS)


class SingleBeatScheduler(PersistentScheduler):
    """Celery's file-backed scheduler that sends only while it holds the beat lock."""

    def __init__(self, *args, **kwargs) -> None:
        self.beat_lock = beat_lock_from_settings()
        if self.beat_lock is None:
            logger.info("beat lock off (no REDIS_URL): run a single beat")
        super().__init__(*args, **kwargs)

    def tick(self, *args, **kwargs) -> float:
        if self.beat_lock is None:
            return super().tick(*args, **kwargs)
        if not self.beat_lock.hold():
            return self.beat_lock.check_seconds
        # Back soon enough to renew the lease before it runs out.
        return min(super().tick(*args, **kwargs), self.beat_lock.check_seconds)

    def close(self) -> None:
        try:
            super().close()
        finally:
            if self.beat_lock is not None:
                self.beat_lock.release()
