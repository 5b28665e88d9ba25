"""Durable buffers between the proxy (which `put`s one event per request) and the writer.

- `RedisStreamBuffer`: XADD to a stream read by a consumer group, so several gateway
  processes each run a writer and every row is written once (XACK after the DB commit,
  XAUTOCLAIM for messages left pending by a dead consumer).
- `MemoryBuffer`: the embedded mode's in-process queue.
- `SpoolFile`: JSON lines, fsync'd, used when Redis is unreachable (and by the memory
  buffer at shutdown when the database is down). The writer replays spool files.

`put` returning means the event is durable (in Redis or fsync'd on disk), which is why the
proxy awaits it before finishing the response.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import fcntl
import itertools
import logging
import os
import socket
import threading
import time
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from django.conf import settings
from redis.asyncio import Redis
from redis.exceptions import RedisError, ResponseError

from apps.usage.event import UsageEvent
from gateway_portal.redis import PerLoop, blocking_pool_client

logger = logging.getLogger(__name__)

DEFAULT_STREAM = "tollgate:usage"
CONSUMER_GROUP = "usage-writers"
# Field name of the JSON payload inside a stream entry.
PAYLOAD_FIELD = b"e"
# Errors that mean "the buffer's store is unreachable right now", as opposed to a bug.
BUFFER_ERRORS: tuple[type[BaseException], ...] = (RedisError, OSError, asyncio.TimeoutError)


def usage_settings() -> dict[str, Any]:
    var_dir = Path(getattr(settings, "VAR_DIR", Path(settings.BASE_DIR) / "var"))
    return {
        "stream": getattr(settings, "USAGE_STREAM", DEFAULT_STREAM),
        "spool_dir": Path(getattr(settings, "USAGE_SPOOL_DIR", var_dir / "spool")),
        "batch_size": int(getattr(settings, "USAGE_BATCH_SIZE", 500)),
        "flush_interval": float(getattr(settings, "USAGE_FLUSH_INTERVAL", 1.0)),
        "claim_idle_ms": int(getattr(settings, "USAGE_CLAIM_IDLE_MS", 30_000)),
    }


@dataclass(slots=True)
class Batch:
    """Events handed to the writer, plus the handles the buffer needs to ack them."""

    events: list[UsageEvent] = field(default_factory=list)
    handles: list[Any] = field(default_factory=list)
    # Entries that are not events at all, with the reason and entry id: the writer dead-letters
    # them, and they are acked with the batch (their handles are in `handles`).
    unreadable: list[tuple[str, str, str]] = field(default_factory=list)  # payload, why, id

    def __len__(self) -> int:
        return len(self.events) + len(self.unreadable)


class UsageBuffer(Protocol):
    """What the proxy and the writer need from a buffer."""

    spool: SpoolFile

    async def put(self, event: UsageEvent) -> None:
        """Return only once the event is durable."""

    async def fetch(self, count: int) -> Batch:
        """Up to `count` events not yet written; they stay owned by this process until acked."""

    async def ack(self, batch: Batch) -> None:
        """The batch is committed to the database: forget it."""

    async def release(self, batch: Batch) -> None:
        """The batch was not written: make it fetchable again."""

    async def close(self) -> None: ...


# --- Spool files --------------------------------------------------------------------------


def _fsync_dir(directory: Path) -> None:
    # A new or renamed file is durable only once its directory entry is.
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class SpoolFile:
    """Append-only JSON lines on local disk, one active file per process.

    The active file is `usage-<pid>-<n>.part` and holds an exclusive flock for as long as
    this process appends to it; sealing renames it to `.jsonl`, which the writer replays and
    deletes only after its rows are committed. A `.part` whose lock can be taken belongs to
    a dead process (the kernel drops flocks even on SIGKILL), so any replayer may seal it.
    """

    def __init__(self, directory: Path | str, *, max_bytes: int = 8 * 1024 * 1024) -> None:
        self.directory = Path(directory)
        self.max_bytes = max_bytes
        self._lock = threading.Lock()
        self._fd: int | None = None
        self._path: Path | None = None
        self._size = 0
        self._opened_at = 0.0
        self._seq = itertools.count(time.time_ns() // 1_000_000)

    # Appending (gateway side) ------------------------------------------------------------

    def append(self, events: Iterable[UsageEvent]) -> None:
        """Blocking: write and fsync. Call it through `asyncio.to_thread` from async code."""
        data = b"".join(event.to_json() + b"\n" for event in events)
        if not data:
            return
        with self._lock:
            fd = self._fd
            if fd is None or self._size >= self.max_bytes:
                self._seal_locked()
                fd = self._open_locked()
            try:
                view = memoryview(data)
                while view:
                    written = os.write(fd, view)
                    view = view[written:]
                os.fsync(fd)
            except OSError:
                # A torn line must not be followed by good ones in the same file (both
                # would be unreadable), so abandon this file and start a fresh one.
                self._seal_locked()
                raise
            self._size += len(data)

    def _open_locked(self) -> int:
        self.directory.mkdir(parents=True, exist_ok=True)
        stem = f"usage-{os.getpid()}-{next(self._seq)}"
        tmp = self.directory / f".{stem}.tmp"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND, 0o600)
        # Lock before the name becomes visible, so no replayer can mistake it for orphaned.
        fcntl.flock(fd, fcntl.LOCK_EX)
        path = self.directory / f"{stem}.part"
        os.rename(tmp, path)
        _fsync_dir(self.directory)
        self._fd, self._path, self._size = fd, path, 0
        self._opened_at = time.monotonic()
        return fd

    def _seal_locked(self) -> None:
        if self._fd is None or self._path is None:
            return
        fd, path = self._fd, self._path
        self._fd, self._path = None, None
        try:
            if self._size:
                os.rename(path, path.with_suffix(".jsonl"))
            else:
                path.unlink(missing_ok=True)
            _fsync_dir(self.directory)
        finally:
            os.close(fd)

    def seal(self, *, min_age: float = 0.0) -> None:
        """Hand the active file over to replay, if it has rows and is at least `min_age` old."""
        with self._lock:
            if (
                self._fd is not None
                and self._size
                and time.monotonic() - self._opened_at >= min_age
            ):
                self._seal_locked()

    def close(self) -> None:
        with self._lock:
            self._seal_locked()

    # Replaying (writer side) --------------------------------------------------------------

    def sealed_files(self) -> list[Path]:
        """Files ready to replay, oldest first; adopts `.part` files of dead processes."""
        if not self.directory.is_dir():
            return []
        with self._lock:
            own = self._path
        for part in self.directory.glob("usage-*.part"):
            if part != own:
                self._adopt_orphan(part)
        # By name, not mtime: another replayer may delete a file while we list them.
        return sorted(self.directory.glob("usage-*.jsonl"))

    def _adopt_orphan(self, part: Path) -> None:
        try:
            fd = os.open(part, os.O_RDONLY)
        except FileNotFoundError:
            return
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as exc:
                if exc.errno in (errno.EAGAIN, errno.EACCES):
                    return  # its writer is alive
                raise
            # Another replayer may have sealed it between our open and our lock.
            with contextlib.suppress(FileNotFoundError):
                if os.stat(part).st_ino == os.fstat(fd).st_ino:
                    os.rename(part, part.with_suffix(".jsonl"))
                    _fsync_dir(self.directory)
        finally:
            os.close(fd)

    def read(self, path: Path) -> Batch:
        """Complete lines only: a line cut short by a crash was never acknowledged to anyone.

        A complete line that is not an event comes back in `unreadable`, for the writer to
        dead-letter (shown and replayable like any refused row) before the file goes.
        """
        batch = Batch()
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            return batch
        for number, line in enumerate(data.split(b"\n")[:-1], start=1):
            if not line.strip():
                continue
            try:
                batch.events.append(UsageEvent.from_json(line))
            except ValueError as exc:
                text = line.decode("utf-8", "replace")
                batch.unreadable.append((text, f"unreadable event: {exc}", f"{path.name}:{number}"))
        return batch

    def remove(self, path: Path) -> None:
        path.unlink(missing_ok=True)
        _fsync_dir(self.directory)


# --- In-process buffer -----------------------------------------------------------------------


class MemoryBuffer:
    """The embedded mode's queue; a plain lock makes it safe from threads and event loops."""

    def __init__(self, spool_dir: Path | str | None = None) -> None:
        self.spool = SpoolFile(spool_dir or usage_settings()["spool_dir"])
        self._lock = threading.Lock()
        self._queue: deque[UsageEvent] = deque()

    def __len__(self) -> int:
        return len(self._queue)

    def put_nowait(self, event: UsageEvent) -> None:
        with self._lock:
            self._queue.append(event)

    async def put(self, event: UsageEvent) -> None:
        self.put_nowait(event)

    async def fetch(self, count: int) -> Batch:
        with self._lock:
            events = [self._queue.popleft() for _ in range(min(count, len(self._queue)))]
        return Batch(events=events)

    async def ack(self, batch: Batch) -> None:
        return None

    async def release(self, batch: Batch) -> None:
        with self._lock:
            self._queue.extendleft(reversed(batch.events))

    async def spill(self) -> int:
        """Move everything queued to the spool (shutdown with the database down)."""
        with self._lock:
            events = list(self._queue)
            self._queue.clear()
        if events:
            try:
                await asyncio.to_thread(self.spool.append, events)
                await asyncio.to_thread(self.spool.close)
            except OSError:
                with self._lock:
                    self._queue.extendleft(reversed(events))
                raise
        return len(events)

    async def close(self) -> None:
        await asyncio.to_thread(self.spool.close)


# --- Redis stream buffer ---------------------------------------------------------------------


class RedisStreamBuffer:
    """A Redis stream with one consumer group shared by every writer process.

    The stream is never trimmed by length: entries are deleted one by one after they are
    acked, so an unwritten row can never be evicted.
    """

    def __init__(
        self,
        redis_url: str,
        stream: str = DEFAULT_STREAM,
        spool_dir: Path | str | None = None,
        *,
        group: str = CONSUMER_GROUP,
        consumer: str | None = None,
        claim_idle_ms: int | None = None,
        socket_timeout: float = 1.0,
        connect_timeout: float = 0.5,
        retry_after: float = 1.0,
        max_connections: int = 64,
    ) -> None:
        conf = usage_settings()
        self.redis_url = redis_url
        self.stream = stream
        self.group = group
        self.consumer = consumer or f"{socket.gethostname()}-{os.getpid()}"
        self.claim_idle_ms = conf["claim_idle_ms"] if claim_idle_ms is None else claim_idle_ms
        self.spool = SpoolFile(spool_dir or conf["spool_dir"])
        self.socket_timeout = socket_timeout
        self.connect_timeout = connect_timeout
        self.max_connections = max_connections
        # After a failure, puts go straight to the spool for this long instead of each one
        # paying the connect timeout while Redis is down.
        self.retry_after = retry_after
        self._down_until = 0.0
        self._redis_down = False
        self._clients: PerLoop[Redis] = PerLoop(self._connect)
        self._group_ready = False
        self._claim_cursor = "0-0"
        # Puts waiting for the next pipelined XADD, per event loop.
        self._pending: dict[int, list[tuple[bytes, asyncio.Future]]] = {}

    def _connect(self) -> Redis:
        # Blocking pool: under a burst of concurrent puts a request waits a moment for a
        # connection instead of failing. No retry: the spool is the retry, and a request
        # must not wait through several attempts.
        return blocking_pool_client(
            url=self.redis_url,
            max_connections=self.max_connections,
            pool_timeout=self.socket_timeout,
            socket_timeout=self.socket_timeout,
            connect_timeout=self.connect_timeout,
        )

    def _client(self) -> Redis:
        return self._clients.get()

    async def put(self, event: UsageEvent) -> None:
        # Shielded so a client disconnect cancelling the request cannot lose the row halfway.
        await asyncio.shield(self._put(event))

    async def _put(self, event: UsageEvent) -> None:
        if time.monotonic() >= self._down_until:
            try:
                await self._xadd_coalesced(event.to_json())
            except Exception as exc:  # whatever went wrong, the spool keeps the row
                self._mark_down(exc)
            else:
                if self._redis_down:
                    self._redis_down = False
                    logger.warning("usage buffer: Redis reachable again, stream %s", self.stream)
                return
        # An XADD that timed out may still have landed; the spool copy is then a duplicate
        # that the idempotent insert ignores.
        await asyncio.to_thread(self.spool.append, [event])

    async def _xadd_coalesced(self, payload: bytes) -> None:
        """XADD, sharing one pipelined round trip with the puts of the same loop iteration.

        Under concurrency many requests finish together; one pipeline of N XADDs costs far
        less CPU and Redis time than N separate commands. Each caller still returns only
        after its own entry is acknowledged by Redis.
        """
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        pending = self._pending.get(id(loop))
        if pending is None:
            pending = self._pending[id(loop)] = []
            loop.call_soon(lambda: loop.create_task(self._flush_pending(loop)))
        pending.append((payload, future))
        await future

    async def _flush_pending(self, loop: asyncio.AbstractEventLoop) -> None:
        batch = self._pending.pop(id(loop), [])
        if not batch:
            return
        try:
            if len(batch) == 1:
                await self._client().xadd(self.stream, {PAYLOAD_FIELD: batch[0][0]})
            else:
                pipe = self._client().pipeline(transaction=False)
                for payload, _ in batch:
                    pipe.xadd(self.stream, {PAYLOAD_FIELD: payload})
                await pipe.execute()
        except BaseException as exc:  # every waiter falls back to the spool
            for _, future in batch:
                if not future.done():
                    future.set_exception(
                        exc if isinstance(exc, Exception) else ConnectionError(repr(exc))
                    )
            if not isinstance(exc, Exception):
                raise
            return
        for _, future in batch:
            if not future.done():
                future.set_result(None)

    def _mark_down(self, exc: BaseException) -> None:
        self._down_until = time.monotonic() + self.retry_after
        if not self._redis_down:
            self._redis_down = True
            logger.error(
                "usage buffer: Redis unavailable (%r); spooling to %s", exc, self.spool.directory
            )

    async def _ensure_group(self, client: Redis) -> None:
        if self._group_ready:
            return
        try:
            await client.xgroup_create(self.stream, self.group, id="0", mkstream=True)
        except ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise
        self._group_ready = True

    async def fetch(self, count: int) -> Batch:
        client = self._client()
        await self._ensure_group(client)
        try:
            # 1. Ours from an earlier failed attempt, 2. a dead consumer's, 3. new ones.
            entries = await self._read(client, "0", count)
            if len(entries) < count:
                claimed = await client.xautoclaim(
                    self.stream,
                    self.group,
                    self.consumer,
                    min_idle_time=self.claim_idle_ms,
                    start_id=self._claim_cursor,
                    count=count - len(entries),
                )
                self._claim_cursor = claimed[0].decode() if claimed[0] else "0-0"
                entries.extend(claimed[1])
            if len(entries) < count:
                entries.extend(await self._read(client, ">", count - len(entries)))
        except ResponseError as exc:
            if "NOGROUP" in str(exc):
                self._group_ready = False  # the stream was deleted; recreate next time
            raise
        return await self._decode(client, entries)

    async def _read(self, client: Redis, start: str, count: int) -> list[tuple[bytes, Any]]:
        reply = await client.xreadgroup(
            self.group, self.consumer, {self.stream: start}, count=count
        )
        if not reply:
            return []
        # RESP2 returns [[stream, entries]], RESP3 {stream: [entries]}.
        if isinstance(reply, dict):
            return list(next(iter(reply.values()))[0]) if reply else []
        return list(reply[0][1])

    async def _decode(self, client: Redis, entries: list[tuple[bytes, Any]]) -> Batch:
        batch = Batch()
        drop: list[bytes] = []
        for entry_id, entry_fields in entries:
            payload = (entry_fields or {}).get(PAYLOAD_FIELD)
            if payload is None:
                drop.append(entry_id)  # deleted after we read it: nothing to write
                continue
            try:
                event = UsageEvent.from_json(payload)
            except (ValueError, TypeError, KeyError) as exc:
                logger.error("usage buffer: unreadable entry %s, to be dead-lettered", entry_id)
                text = (
                    payload.decode("utf-8", "replace")
                    if isinstance(payload, bytes)
                    else str(payload)
                )
                entry = entry_id.decode() if isinstance(entry_id, bytes) else str(entry_id)
                batch.unreadable.append((text, f"unreadable event: {exc}", entry))
                batch.handles.append(entry_id)
                continue
            batch.events.append(event)
            batch.handles.append(entry_id)
        if drop:
            await self._ack_ids(client, drop)
        return batch

    async def _ack_ids(self, client: Redis, ids: list[Any]) -> None:
        async with client.pipeline(transaction=True) as pipe:
            pipe.xack(self.stream, self.group, *ids)
            # Deleting acked entries keeps the stream bounded without MAXLEN trimming.
            pipe.xdel(self.stream, *ids)
            await pipe.execute()

    async def ack(self, batch: Batch) -> None:
        if batch.handles:
            await self._ack_ids(self._client(), batch.handles)

    async def release(self, batch: Batch) -> None:
        # Unacked entries stay in this consumer's pending list and are fetched again first.
        return None

    async def pending_count(self) -> int:
        info = await self._client().xpending(self.stream, self.group)
        return int(info["pending"])

    async def close(self) -> None:
        client = self._clients.pop()
        if client is not None:
            with contextlib.suppress(*BUFFER_ERRORS):
                await client.aclose()
        await asyncio.to_thread(self.spool.close)


# --- Process-wide buffer -------------------------------------------------------------------

_buffer: UsageBuffer | None = None
_buffer_lock = threading.Lock()


def build_usage_buffer() -> UsageBuffer:
    conf = usage_settings()
    redis_url = getattr(settings, "REDIS_URL", "")
    if redis_url:
        return RedisStreamBuffer(redis_url, stream=conf["stream"], spool_dir=conf["spool_dir"])
    return MemoryBuffer(spool_dir=conf["spool_dir"])


def get_usage_buffer() -> UsageBuffer:
    """The process's buffer: a Redis stream when REDIS_URL is set, else in-process."""
    global _buffer
    with _buffer_lock:
        if _buffer is None:
            _buffer = build_usage_buffer()
        return _buffer


def reset_usage_buffer() -> None:
    """Forget the process-wide buffer (tests that change settings)."""
    global _buffer
    with _buffer_lock:
        _buffer = None
