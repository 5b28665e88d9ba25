"""The one place Redis clients come from.

Every Redis client of the project is built by a function here (a source scan in
tests/gateway_portal/test_one_redis_owner.py keeps it so), so a change of driver options,
TLS or pool policy has one home. Each caller still names the options it needs: a quota check
gives up after half a second, a publish from the portal waits two, the beat lock checks idle
connections. Nothing is unified behind a caller's back: timeouts are required arguments, and
an option a caller does not name keeps redis-py's default, as when it built its own client.

Lifetimes stay with the callers (a process-wide client, one per event loop, one per
subscription). Clients are built on first use, never at import: a forked process (Celery's
prefork pool) does not inherit a parent's connections, and redis-py's sync pools reset
themselves after a fork anyway (they compare the pid).

Without a `url` the client is for settings.REDIS_URL. Django settings are read only then: the
quota counters and the usage buffer pass their URL and stay usable bare, in worker
subprocesses and benchmarks.
"""

import asyncio
from collections.abc import Callable
from typing import Generic, TypeVar

import redis
import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

T = TypeVar("T")


def _url(url: str | None) -> str:
    if url is not None:
        return url
    from django.conf import settings  # only when asked for: see the module docstring

    return settings.REDIS_URL


def sync_client(
    *,
    url: str | None = None,
    socket_timeout: float | None,
    connect_timeout: float,
    health_check_interval: int | None = None,
) -> redis.Redis:
    """A sync client over redis-py's default pool (thread-safe, reset after a fork).

    `health_check_interval`: PING a connection idle for that many seconds before using it,
    for callers that hold one for long stretches between commands (None: the driver's
    default, no check).
    """
    options = _options(socket_timeout, connect_timeout, health_check_interval=health_check_interval)
    return redis.Redis.from_url(_url(url), **options)


def async_client(
    *,
    url: str | None = None,
    socket_timeout: float | None,
    connect_timeout: float,
    keepalive: bool | None = None,
) -> aioredis.Redis:
    """An asyncio client over the default pool; it belongs to the loop that first uses it.

    `socket_timeout=None` waits for replies as long as it takes. `keepalive`: TCP keepalive
    on or off (None: the driver's default, on in redis-py 8).
    """
    options = _options(socket_timeout, connect_timeout, socket_keepalive=keepalive)
    return aioredis.Redis.from_url(_url(url), **options)


def _options(socket_timeout: float | None, connect_timeout: float, **optional: object) -> dict:
    # Options a caller leaves as None are not passed: the driver's own defaults then apply,
    # exactly as when each module built its client itself.
    options = {k: v for k, v in optional.items() if v is not None}
    return {
        "socket_timeout": socket_timeout,
        "socket_connect_timeout": connect_timeout,
        **options,
    }


def blocking_pool_client(
    *,
    url: str | None = None,
    max_connections: int,
    pool_timeout: float,
    socket_timeout: float,
    connect_timeout: float,
) -> aioredis.Redis:
    """An asyncio client over a blocking pool, with no retry (the hot path's stores).

    Under a burst a caller waits up to `pool_timeout` for a free connection instead of
    failing (the default pool raises when full). Commands are never retried: every caller
    has its own fallback (the usage spool, `on_store_failure`), and a retried admission that
    had landed would count twice.
    """
    pool = aioredis.BlockingConnectionPool.from_url(
        _url(url),
        max_connections=max_connections,
        timeout=pool_timeout,
        socket_timeout=socket_timeout,
        socket_connect_timeout=connect_timeout,
        retry=Retry(NoBackoff(), 0),
    )
    return aioredis.Redis.from_pool(pool)


class PerLoop(Generic[T]):
    """One value (an asyncio client and what hangs on it) per running event loop.

    redis.asyncio connections belong to the loop that opened them; tests, management
    commands and async views under WSGI run several loops in one process, so each loop gets
    its own, made by `factory` on first use. Entries of closed loops are dropped when a new
    one is made.
    """

    def __init__(self, factory: Callable[[], T]) -> None:
        self._factory = factory
        self._entries: dict[int, tuple[asyncio.AbstractEventLoop, T]] = {}

    def get(self) -> T:
        loop = asyncio.get_running_loop()
        entry = self._entries.get(id(loop))
        if entry is not None and entry[0] is loop:
            return entry[1]
        value = self._factory()
        self._entries = {k: v for k, v in self._entries.items() if not v[0].is_closed()}
        self._entries[id(loop)] = (loop, value)
        return value

    def pop(self) -> T | None:
        """Forget the running loop's value and return it (for the caller to close)."""
        entry = self._entries.pop(id(asyncio.get_running_loop()), None)
        return entry[1] if entry is not None else None
