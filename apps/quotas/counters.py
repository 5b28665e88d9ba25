"""Quota counters: all-or-none admission in one round trip, reservations settled later.

Design (Redis and in-process stores share it):

- A counter is an integer key per (rule, subject, per value, window). Its value is the
  settled usage plus every live reservation on it.
- Request counters are incremented by 1 at admission and never touched again.
- Token and cost counters are incremented by the worst case at admission (a reservation);
  each reservation is also a member `<reservation id>:<amount>` of a sorted set beside the
  counter, scored by its expiry time (ms, Redis server clock). `settle` removes the member
  and applies `actual - reserved`. If the member is gone (expired), the reservation was
  already given back, so settle adds `actual` in full: usage is never lost, only the
  protection against overspend lapses for calls that outlive the reservation timeout.
- A reservation whose request died is released by the next admission that touches the
  counter: the script first drops members whose expiry passed and subtracts their amounts.
  Nothing needs a sweeper process, and a counter nobody uses again simply expires.
- Admission checks every counter first and changes them only if all fit (all or none), and
  returns each counter's usage so the caller can name every broken rule.
- `seed` raises a counter to usage known from elsewhere (the ledger's month to date when a
  rule or tier starts applying mid-month), keeping the live reservations on top. It never
  adds, so seeding twice is harmless, and never lowers: usage settled but not yet written
  by the usage writer is in the counter only. The proxy settles a request before handing
  its row to the buffer, so a request's reservation and its ledger row never coexist and
  nothing is counted twice.

This module has no Django dependency so worker subprocesses and benchmarks can use it bare:
its Redis client comes from `gateway_portal.redis`, given the URL, so no settings are read.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, NamedTuple, Protocol

from redis.asyncio import Redis
from redis.exceptions import RedisError

from gateway_portal.redis import PerLoop, blocking_pool_client

logger = logging.getLogger(__name__)

DEFAULT_RESERVATION_TTL = 600.0
# Errors that mean "the store is unreachable", as opposed to a bug in the script.
STORE_ERRORS: tuple[type[BaseException], ...] = (RedisError, OSError, asyncio.TimeoutError)


class CounterStoreUnavailable(Exception):
    """The counter store cannot be reached; the engine applies `on_store_failure`."""


class CounterCheck(NamedTuple):
    # A NamedTuple, not a dataclass: one is built per matching rule on every request, and a
    # frozen dataclass costs several times more to construct.
    key: str
    limit: int
    amount: int
    ttl: int  # seconds the counter must live: to the end of its window, plus some grace
    reserve: bool = False  # token and cost counters: held as a reservation until settle


@dataclass(frozen=True, slots=True)
class Reservation:
    id: str
    checks: tuple[CounterCheck, ...]  # only the reserved ones, in admission order


class CounterSeed(NamedTuple):
    key: str
    value: int  # settled usage; live reservations on the counter are kept on top
    ttl: int  # seconds, as CounterCheck.ttl
    replace: bool = False  # set exactly (the rule counts something new), not only raise


@dataclass(frozen=True, slots=True)
class AdmitResult:
    allowed: bool
    # Per check, in order: usage after this admission if allowed, usage before it if not.
    used: tuple[int, ...]
    reservation: Reservation | None = None


class CounterStore(Protocol):
    async def admit(self, checks: list[CounterCheck]) -> AdmitResult: ...

    async def settle(self, reservation: Reservation, actual: list[int]) -> None:
        """Replace each reserved amount by `actual[i]` (aligned with reservation.checks)."""

    async def read(self, keys: list[str]) -> list[int]:
        """Current values (settled usage plus live reservations), 0 for missing keys."""

    async def seed(self, seeds: list[CounterSeed]) -> None:
        """Raise each counter to `value` plus its live (unexpired) reservations (never lower)."""


_ids = itertools.count(1)
_ID_PREFIX = f"{os.getpid():x}.{os.urandom(4).hex()}"


def new_reservation_id() -> str:
    # Unique across processes (pid + random) without the cost of a uuid per request.
    return f"{_ID_PREFIX}.{next(_ids):x}"


def _zset_key(key: str) -> str:
    return key + "|r"


# KEYS: per check, the counter and its reservation set.
# ARGV: reservation id, reservation ttl (ms), then per check: limit, amount, ttl (s), reserve.
# Returns {allowed (0/1), used per check...}.
ADMIT_LUA = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local rid = ARGV[1]
local res_ttl = tonumber(ARGV[2])
local n = #KEYS / 2
local used = {}
local ok = 1
for i = 1, n do
  local key, zkey = KEYS[2 * i - 1], KEYS[2 * i]
  local base = 2 + (i - 1) * 4
  local limit, amount = tonumber(ARGV[base + 1]), tonumber(ARGV[base + 2])
  if ARGV[base + 4] == '1' then
    local expired = redis.call('ZRANGEBYSCORE', zkey, '-inf', now)
    if #expired > 0 then
      local freed = 0
      for _, member in ipairs(expired) do
        freed = freed + tonumber(string.match(member, ':(%d+)$'))
      end
      redis.call('ZREMRANGEBYSCORE', zkey, '-inf', now)
      if redis.call('DECRBY', key, freed) < 0 then
        redis.call('SET', key, 0, 'KEEPTTL')
      end
    end
  end
  local current = tonumber(redis.call('GET', key) or '0')
  used[i] = current
  if current + amount > limit then ok = 0 end
end
if ok == 1 then
  for i = 1, n do
    local key, zkey = KEYS[2 * i - 1], KEYS[2 * i]
    local base = 2 + (i - 1) * 4
    local amount, ttl = tonumber(ARGV[base + 2]), tonumber(ARGV[base + 3])
    used[i] = redis.call('INCRBY', key, amount)
    redis.call('EXPIRE', key, ttl)
    if ARGV[base + 4] == '1' then
      redis.call('ZADD', zkey, now + res_ttl, rid .. ':' .. amount)
      redis.call('EXPIRE', zkey, math.max(ttl, math.ceil(res_ttl / 1000) + 60))
    end
  end
end
table.insert(used, 1, ok)
return used
"""

# KEYS: per reserved check, the counter and its reservation set.
# ARGV: reservation id, then per check: reserved amount, actual amount, ttl (s).
SETTLE_LUA = """
local rid = ARGV[1]
for i = 1, #KEYS / 2 do
  local key, zkey = KEYS[2 * i - 1], KEYS[2 * i]
  local base = 1 + (i - 1) * 3
  local reserved, actual = tonumber(ARGV[base + 1]), tonumber(ARGV[base + 2])
  local delta = actual
  if redis.call('ZREM', zkey, rid .. ':' .. reserved) == 1 then
    delta = actual - reserved
  end
  if delta ~= 0 then
    if redis.call('INCRBY', key, delta) < 0 then
      redis.call('SET', key, 0, 'KEEPTTL')
    end
    -- The window may have ended and the counter expired: never leave a key without TTL.
    redis.call('EXPIRE', key, tonumber(ARGV[base + 3]), 'NX')
  end
end
return 1
"""


# KEYS: per seed, the counter and its reservation set. ARGV: per seed, value, ttl (s) and
# replace (1: set exactly, 0: only raise).
SEED_LUA = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
for i = 1, #KEYS / 2 do
  local key, zkey = KEYS[2 * i - 1], KEYS[2 * i]
  local value, ttl = tonumber(ARGV[3 * i - 2]), tonumber(ARGV[3 * i - 1])
  local replace = ARGV[3 * i] == '1'
  -- Expired reservations were given back already (or will be): drop them, count the rest.
  redis.call('ZREMRANGEBYSCORE', zkey, '-inf', now)
  local held = 0
  for _, member in ipairs(redis.call('ZRANGE', zkey, 0, -1)) do
    held = held + tonumber(string.match(member, ':(%d+)$'))
  end
  -- Never lower: usage settled but not yet written to the ledger is in the counter only.
  local seeded = value + held
  if not replace then
    seeded = math.max(tonumber(redis.call('GET', key) or '0'), seeded)
  end
  redis.call('SET', key, seeded, 'EX', ttl)
end
return 1
"""


class AsyncRedisCounterStore:
    """Counters in Redis; one EVALSHA per admission and one per settle."""

    def __init__(
        self,
        redis_url: str,
        *,
        reservation_ttl: float = DEFAULT_RESERVATION_TTL,
        socket_timeout: float = 0.5,
        connect_timeout: float = 0.5,
        retry_after: float = 1.0,
        max_connections: int = 64,
        pool_timeout: float = 2.0,
    ) -> None:
        self.redis_url = redis_url
        self.pool_timeout = pool_timeout
        self.reservation_ttl_ms = int(reservation_ttl * 1000)
        self.socket_timeout = socket_timeout
        self.connect_timeout = connect_timeout
        self.max_connections = max_connections
        # After a failure, checks fail fast for this long instead of each request paying the
        # connect timeout while Redis is down.
        self.retry_after = retry_after
        self._down_until = 0.0
        self._down = False
        # Per loop: (client, admit script, settle script, seed script).
        self._clients: PerLoop[tuple[Redis, Any, Any, Any]] = PerLoop(self._connect)

    def _connect(self) -> tuple[Redis, Any, Any, Any]:
        client = blocking_pool_client(
            url=self.redis_url,
            max_connections=self.max_connections,
            # Waiting for a free connection under a burst is not an outage: give it longer
            # than a socket read before it counts as "store unavailable".
            pool_timeout=self.pool_timeout,
            socket_timeout=self.socket_timeout,
            connect_timeout=self.connect_timeout,
        )
        return (
            client,
            client.register_script(ADMIT_LUA),
            client.register_script(SETTLE_LUA),
            client.register_script(SEED_LUA),
        )

    def client(self) -> Redis:
        """The running loop's client, for other small hot-path reads and writes to share its
        pool (the proxy's key mirror) instead of opening one more."""
        return self._clients.get()[0]

    def _check_up(self) -> None:
        if time.monotonic() < self._down_until:
            raise CounterStoreUnavailable("counter store marked down after a recent failure")

    def _failed(self, exc: BaseException) -> CounterStoreUnavailable:
        self._down_until = time.monotonic() + self.retry_after
        if not self._down:
            self._down = True
            logger.error("quota counters: Redis unavailable (%r)", exc)
        return CounterStoreUnavailable(str(exc) or exc.__class__.__name__)

    def _recovered(self) -> None:
        if self._down:
            self._down = False
            logger.warning("quota counters: Redis reachable again")

    async def admit(self, checks: list[CounterCheck]) -> AdmitResult:
        if not checks:
            return AdmitResult(True, ())
        self._check_up()
        _, admit_script, _, _ = self._clients.get()
        reservation_id = new_reservation_id()
        keys: list[str] = []
        args: list[object] = [reservation_id, self.reservation_ttl_ms]
        for check in checks:
            keys += (check.key, _zset_key(check.key))
            args += (check.limit, check.amount, max(1, check.ttl), 1 if check.reserve else 0)
        try:
            reply = await admit_script(keys=keys, args=args)
        except STORE_ERRORS as exc:
            raise self._failed(exc) from exc
        self._recovered()
        allowed = reply[0] == 1
        reserved = tuple(check for check in checks if check.reserve)
        reservation = Reservation(reservation_id, reserved) if allowed and reserved else None
        return AdmitResult(allowed, tuple(int(v) for v in reply[1:]), reservation)

    async def settle(self, reservation: Reservation, actual: list[int]) -> None:
        _, _, settle_script, _ = self._clients.get()
        keys: list[str] = []
        args: list[object] = [reservation.id]
        for check, amount in zip(reservation.checks, actual, strict=True):
            keys += (check.key, _zset_key(check.key))
            args += (check.amount, max(0, int(amount)), max(1, check.ttl))
        try:
            await settle_script(keys=keys, args=args)
        except STORE_ERRORS as exc:
            raise self._failed(exc) from exc

    async def read(self, keys: list[str]) -> list[int]:
        if not keys:
            return []
        client, _, _, _ = self._clients.get()
        try:
            values = await client.mget(keys)
        except STORE_ERRORS as exc:
            raise self._failed(exc) from exc
        return [int(v) if v is not None else 0 for v in values]

    async def seed(self, seeds: list[CounterSeed]) -> None:
        if not seeds:
            return
        _, _, _, seed_script = self._clients.get()
        keys: list[str] = []
        args: list[object] = []
        for seed in seeds:
            keys += (seed.key, _zset_key(seed.key))
            args += (max(0, int(seed.value)), max(1, seed.ttl), 1 if seed.replace else 0)
        try:
            await seed_script(keys=keys, args=args)
        except STORE_ERRORS as exc:
            raise self._failed(exc) from exc

    async def aclose(self) -> None:
        entry = self._clients.pop()
        if entry is not None:
            await entry[0].aclose()


class MemoryCounterStore:
    """The embedded mode's counters, in this process, with the Redis store's semantics.

    Admission and settle never await while changing counters, so they are atomic on one
    event loop; the lock covers callers on other threads (sync views, several loops).
    """

    def __init__(
        self,
        *,
        reservation_ttl: float = DEFAULT_RESERVATION_TTL,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.reservation_ttl = reservation_ttl
        self._clock = clock
        self._values: dict[str, list[Any]] = {}  # key -> [value, expires_at]
        self._reservations: dict[str, dict[str, tuple[int, float]]] = {}
        self._lock = threading.Lock()
        self._next_sweep = 0.0

    def _value(self, key: str, now: float) -> int:
        entry = self._values.get(key)
        if entry is None:
            return 0
        if entry[1] <= now:
            del self._values[key]
            self._reservations.pop(key, None)
            return 0
        value: int = entry[0]
        return value

    def _add(self, key: str, delta: int, now: float, ttl: int, *, keep_ttl: bool) -> int:
        entry = self._values.get(key)
        if entry is None or entry[1] <= now:
            entry = self._values[key] = [0, now + ttl]
        elif not keep_ttl:
            entry[1] = now + ttl
        value: int = max(0, entry[0] + delta)
        entry[0] = value
        return value

    def _purge_expired(self, key: str, now: float) -> None:
        held = self._reservations.get(key)
        if not held:
            return
        # Every reservation gets the same timeout, so insertion order is expiry order: stop
        # at the first live one instead of scanning all in flight.
        expired = []
        for rid, (_, expires) in held.items():
            if expires > now:
                break
            expired.append(rid)
        freed = sum(held.pop(rid)[0] for rid in expired)
        if freed and key in self._values:
            self._values[key][0] = max(0, self._values[key][0] - freed)

    def _sweep(self, now: float) -> None:
        # Bounded memory: forget counters whose window (and grace) has passed.
        self._next_sweep = now + 60
        for key in [k for k, (_, expires) in self._values.items() if expires <= now]:
            del self._values[key]
        for key in [k for k in self._reservations if k not in self._values]:
            del self._reservations[key]

    async def admit(self, checks: list[CounterCheck]) -> AdmitResult:
        if not checks:
            return AdmitResult(True, ())
        reservation_id = new_reservation_id()
        with self._lock:
            now = self._clock()
            if now >= self._next_sweep:
                self._sweep(now)
            used = []
            allowed = True
            for check in checks:
                if check.reserve:
                    self._purge_expired(check.key, now)
                current = self._value(check.key, now)
                used.append(current)
                if current + check.amount > check.limit:
                    allowed = False
            if not allowed:
                return AdmitResult(False, tuple(used))
            expires = now + self.reservation_ttl
            for index, check in enumerate(checks):
                used[index] = self._add(check.key, check.amount, now, check.ttl, keep_ttl=False)
                if check.reserve:
                    held = self._reservations.setdefault(check.key, {})
                    held[reservation_id] = (check.amount, expires)
        reserved = tuple(check for check in checks if check.reserve)
        reservation = Reservation(reservation_id, reserved) if reserved else None
        return AdmitResult(True, tuple(used), reservation)

    async def settle(self, reservation: Reservation, actual: list[int]) -> None:
        with self._lock:
            now = self._clock()
            for check, amount in zip(reservation.checks, actual, strict=True):
                held = self._reservations.get(check.key, {})
                delta = max(0, int(amount))
                if held.pop(reservation.id, None) is not None:
                    delta -= check.amount
                if delta:
                    self._add(check.key, delta, now, check.ttl, keep_ttl=True)

    async def read(self, keys: list[str]) -> list[int]:
        with self._lock:
            now = self._clock()
            return [self._value(key, now) for key in keys]

    async def seed(self, seeds: list[CounterSeed]) -> None:
        with self._lock:
            now = self._clock()
            for seed in seeds:
                held = self._reservations.get(seed.key, {})
                live = sum(amount for amount, expires in held.values() if expires > now)
                for rid in [rid for rid, (_, expires) in held.items() if expires <= now]:
                    del held[rid]
                current = self._values.get(seed.key)
                counted = current[0] if current is not None and current[1] > now else 0
                seeded = max(0, int(seed.value)) + live
                if not seed.replace:
                    seeded = max(counted, seeded)
                self._values[seed.key] = [seeded, now + seed.ttl]
