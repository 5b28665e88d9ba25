"""The usage writer: drains the buffer and the spool into UsageRecord in batches.

One writer runs in each gateway process (started by the ASGI lifespan) and, optionally,
standalone (`manage.py usage_writer`). Inserts are idempotent on `request_id`, so a batch
replayed after a crash, a reclaim or a spool replay never counts twice. A batch is acked
only after its transaction commits.

Two kinds of failure are told apart, because they need opposite handling:
- the database is down (OperationalError, InterfaceError, ...): the whole batch stays in
  the buffer and is retried with backoff; nothing is dead-lettered;
- the database is up but refuses a row (DataError, IntegrityError): the batch is bisected
  until the refused rows are alone, those go to the dead-letter table
  (`UsageDeadLetter`), and every other row is written. One bad row never blocks another.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
import time
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
from django.conf import settings
from django.db import (
    DatabaseError,
    DataError,
    IntegrityError,
    close_old_connections,
    connections,
)
from django.utils import timezone
from prometheus_client import Counter

from apps.usage.buffer import (
    BUFFER_ERRORS,
    MemoryBuffer,
    SpoolFile,
    UsageBuffer,
    get_usage_buffer,
    usage_settings,
)
from apps.usage.event import UsageEvent
from apps.usage.models import UsageLateDay, UsageLateHour, UsageRecord
from apps.usage.regions import (
    in_region,
    is_multi_region,
    ledger_atomic,
    ledger_connection,
    region_names,
    region_or_default,
)
from gateway_portal.data_regions import REGION_NAME

logger = logging.getLogger(__name__)

# The database is up and answered, but refused these rows.
ROW_ERRORS: tuple[type[DatabaseError], ...] = (DataError, IntegrityError)

DEAD_LETTERED = Counter(
    "tollgate_usage_dead_lettered",
    "Usage rows the database refused, moved to the dead-letter table (shown at /usage/dead-letters/).",
)


@dataclass(frozen=True, slots=True)
class WriteResult:
    inserted: int = 0
    dead_lettered: int = 0

    def __add__(self, other: WriteResult) -> WriteResult:
        return WriteResult(self.inserted + other.inserted, self.dead_lettered + other.dead_lettered)


@dataclass(slots=True)
class RegionalResult:
    """What a batch split by region came to: written, and held back per region (its
    database was unreachable, or the region is not configured here)."""

    written: WriteResult
    held: dict[str, list[UsageEvent]]


def by_region(events: Iterable[UsageEvent]) -> dict[str, list[UsageEvent]]:
    groups: dict[str, list[UsageEvent]] = {}
    for event in events:
        groups.setdefault(region_or_default(event.region), []).append(event)
    return groups


def insert_events_by_region(events: list[UsageEvent]) -> RegionalResult:
    """Blocking: each region's events into its own database, one region not holding back
    another. With a single region an outage raises, as `insert_events_isolating` does (the
    whole batch then stays in the buffer); with several, when some region took its rows, an
    unreachable region's events come back in `held` for the caller to keep safe. A region
    this install does not know is held too: writing its rows anywhere else would move a
    tenant's data out of its region.

    Held events are never raised for with several regions: a batch of one unreachable region
    would otherwise sit at the head of the in-process queue and hold back the others.
    """
    groups = by_region(events)
    written = WriteResult()
    held: dict[str, list[UsageEvent]] = {}
    known = set(region_names())
    for region, group in groups.items():
        if region not in known:
            logger.error(
                "usage writer: %d rows of region '%s', which is not in DATA_REGIONS, held "
                "in the spool until it is",
                len(group),
                region,
            )
            held[region] = group
            continue
        try:
            with in_region(region):
                written += insert_events_isolating(group)
        except DatabaseError as exc:
            _close_broken(region)
            if not is_multi_region():
                raise
            logger.error("usage writer: region %s unreachable, rows held back: %r", region, exc)
            held[region] = group
    return RegionalResult(written, held)


def _close_broken(region: str) -> None:
    with contextlib.suppress(Exception), in_region(region):
        ledger_connection().close()


def insert_events(events: list[UsageEvent]) -> int:
    """Blocking: insert the events not yet in the table, in one transaction; rows inserted.

    Raises on any database error; `insert_events_isolating` is what the writer calls.
    """
    return _insert_rows([(event, event.to_row()) for event in events])


Pair = tuple[UsageEvent, dict[str, Any]]


def _insert_rows(pairs: list[Pair]) -> int:
    # Duplicates inside one batch (a spooled copy of a streamed event) collapse here.
    rows = {row["request_id"]: row for _, row in pairs}
    if not rows:
        return 0
    with ledger_atomic():
        if ledger_connection().vendor == "postgresql":
            inserted = _copy_rows(list(rows.values()))
        else:
            inserted = _bulk_create_rows(rows)
        mark_late_days(rows.values())
    return inserted


def mark_late_days(rows: Iterable[dict[str, Any]]) -> None:
    """Mark past days that got rows now, in the rows' transaction (see `UsageLateDay`), and
    today's hours that got rows older than the settle margin, so possibly missed by a
    rollup run already (`UsageLateHour`).

    Nearly every batch holds rows of the last seconds only and costs nothing here.
    """
    now = timezone.now()
    today = now.astimezone(dt.UTC).date()
    # A rollup run reads the rows created before it less the settle margin: a row older
    # than that may have been missed by one (`apps.usage.coverage.covered_hours`).
    settled = now - dt.timedelta(seconds=settings.BILLING_EXPORT_SETTLE_SECONDS)
    days: set[dt.date] = set()
    hours: set[dt.datetime] = set()
    for row in rows:
        created = row["created_at"].astimezone(dt.UTC)
        if created.date() < today:
            days.add(created.date())
        elif created < settled:
            hours.add(created.replace(minute=0, second=0, microsecond=0))
    for model, field, periods in ((UsageLateDay, "day", days), (UsageLateHour, "hour", hours)):
        if periods:
            model.objects.bulk_create(
                [model(**{field: period}, marked_at=now) for period in sorted(periods)],
                update_conflicts=True,
                unique_fields=[field],
                update_fields=["marked_at"],
            )


# COPY into a per-session temporary table, then one INSERT ... ON CONFLICT DO NOTHING: about
# five times the rows per second of the ORM's bulk_create (bench/writer_bench.py). Columns
# come from the model, so a new UsageRecord field cannot be forgotten here.
_COLUMNS = [field.column for field in UsageRecord._meta.concrete_fields if not field.primary_key]
_STAGE = "usage_incoming"
# Identifiers only, all from the model's own metadata: no value is ever formatted into SQL.
_NAMES = ", ".join(_COLUMNS)
_TABLE = UsageRecord._meta.db_table
_CREATE_STAGE = (
    f"CREATE TEMPORARY TABLE IF NOT EXISTS {_STAGE} ON COMMIT DELETE ROWS AS "  # noqa: S608
    f"SELECT {_NAMES} FROM {_TABLE} WITH NO DATA"
)
_COPY = f"COPY {_STAGE} ({_NAMES}) FROM STDIN"
# The conflict target is the table's unique key, (request_id, created_at): on the monthly
# partitions (migration 0004) a unique key must hold the partition key. A copy of an event
# carries the created_at the proxy captured (`UsageEvent`), so a replay still collides.
_MERGE = (
    f"INSERT INTO {_TABLE} ({_NAMES}) "  # noqa: S608
    f"SELECT {_NAMES} FROM {_STAGE} ON CONFLICT (request_id, created_at) DO NOTHING"
)
_JSON_COLUMNS = frozenset(
    field.column
    for field in UsageRecord._meta.concrete_fields
    if field.get_internal_type() == "JSONField"
)


def _copy_rows(rows: list[dict[str, Any]]) -> int:
    from psycopg.types.json import Jsonb

    now = timezone.now()
    connection = ledger_connection()
    with ledger_atomic(), connection.cursor() as cursor, connection.wrap_database_errors:
        cursor.execute(_CREATE_STAGE)
        raw = cursor.cursor  # the psycopg cursor: Django's wrapper has no COPY
        with raw.copy(_COPY) as copy:
            for row in rows:
                copy.write_row(
                    [
                        now
                        if column == "inserted_at"
                        else (
                            Jsonb(row[column], dumps=_json_text)
                            if column in _JSON_COLUMNS and row[column] is not None
                            else row[column]
                        )
                        for column in _COLUMNS
                    ]
                )
        cursor.execute(_MERGE)
        # Rows another writer committed meanwhile are skipped, not counted.
        return max(cursor.rowcount, 0)


def _json_text(value: Any) -> str:
    return orjson.dumps(value, default=str).decode()


def _bulk_create_rows(rows: dict[str, dict[str, Any]]) -> int:
    with ledger_atomic():
        existing = set(
            UsageRecord.objects.filter(request_id__in=list(rows)).values_list(
                "request_id", flat=True
            )
        )
        new = [UsageRecord(**row) for rid, row in rows.items() if rid not in existing]
        # SQLite's INSERT OR IGNORE (Django's ignore_conflicts there) would also skip rows
        # failing a CHECK and lose them silently; ON CONFLICT on the one column skips only
        # duplicates another writer committed meanwhile (the "update" keeps request_id).
        UsageRecord.objects.bulk_create(
            new,
            update_conflicts=True,
            unique_fields=["request_id"],
            update_fields=["request_id"],
        )
    return len(new)


def insert_events_isolating(events: list[UsageEvent]) -> WriteResult:
    """Blocking: insert `events`, dead-lettering only the rows the database refuses.

    A refused batch is split in halves until each refused row is alone, so n rows with k
    bad ones cost about k·log2(n) extra transactions and the good rows all go in. Errors that
    mean the database is unavailable propagate unchanged (the batch is then retried whole).
    """
    pairs: list[Pair] = []
    result = WriteResult()
    for event in events:
        try:
            pairs.append((event, event.to_row()))
        except Exception as exc:  # a value no row can hold: only this event is affected
            result += _dead_letter(event, exc)
    return result + _insert_bisecting(pairs)


def _insert_bisecting(pairs: list[Pair]) -> WriteResult:
    if not pairs:
        return WriteResult()
    try:
        return WriteResult(inserted=_insert_rows(pairs))
    except ROW_ERRORS as exc:
        if len(pairs) == 1:
            return _dead_letter(pairs[0][0], exc)
    middle = len(pairs) // 2
    return _insert_bisecting(pairs[:middle]) + _insert_bisecting(pairs[middle:])


def _dead_letter(event: UsageEvent, exc: BaseException) -> WriteResult:
    from .services import usage_dead_letter_record

    try:
        payload = event.to_json().decode()
    except (TypeError, ValueError, orjson.JSONEncodeError):
        # A lone surrogate orjson refuses: keep what can be kept, escaped.
        payload = repr(event)
    usage_dead_letter_record(
        request_id=str(event.request_id),
        payload=payload,
        error=f"{exc.__class__.__name__}: {exc}",
    )
    DEAD_LETTERED.inc()
    return WriteResult(dead_lettered=1)


def _dead_letter_unreadable(entries: list[tuple[str, str, str]]) -> None:
    """Blocking: keep buffer entries that are not events, as (payload, reason, entry id).

    Keyed on the event's request id when it has one, else on the buffer's entry id, so a
    batch redelivered after an outage updates the same dead letter instead of adding one.
    """
    from .services import usage_dead_letter_record

    known = set(region_names())
    for payload, reason, entry_id in entries:
        try:
            readable = orjson.loads(payload)
            request_id = str(readable.get("request_id") or "")
            region = str(readable.get("region") or "")
        except (orjson.JSONDecodeError, AttributeError):
            request_id = region = ""
        # Kept in its own region's database when it says which (it may hold its tags).
        with in_region(region if region in known else region_or_default("")):
            usage_dead_letter_record(
                request_id=request_id or f"unreadable_{entry_id}", payload=payload, error=reason
            )
        DEAD_LETTERED.inc()


def _held_regions(directory: Path) -> list[str]:
    if not directory.is_dir():
        return []
    return sorted(path.name for path in directory.iterdir() if path.is_dir())


# Below the spool directory: a folder per region whose rows wait for its database.
HELD_FOLDER = "held"


def held_rows_by_region() -> dict[str, int]:
    """Blocking: rows held back per region in this install's spool (metrics, readiness)."""
    return held_row_counts(Path(settings.USAGE_SPOOL_DIR) / HELD_FOLDER)


def held_row_counts(directory: Path) -> dict[str, int]:
    """Blocking: rows held back per region in the held spool `directory`."""
    counts: dict[str, int] = {}
    for region in _held_regions(directory):
        lines = 0
        for path in (directory / region).iterdir():
            if path.suffix in (".jsonl", ".part"):
                with path.open("rb") as handle:
                    lines += sum(1 for _ in handle)
        if lines:
            counts[region] = lines
    return counts


class UsageWriter:
    """Batches from `buffer` (and its spool) into the database, off the request path."""

    def __init__(
        self,
        buffer: UsageBuffer | None = None,
        *,
        batch_size: int | None = None,
        flush_interval: float | None = None,
        max_backoff: float = 30.0,
    ) -> None:
        conf = usage_settings()
        self.buffer = buffer if buffer is not None else get_usage_buffer()
        self.batch_size = batch_size or conf["batch_size"]
        self.flush_interval = conf["flush_interval"] if flush_interval is None else flush_interval
        self.max_backoff = max_backoff
        self._executor: ThreadPoolExecutor | None = None
        self._lock = asyncio.Lock()
        self._task: asyncio.Task[None] | None = None
        self._stopping: asyncio.Event | None = None
        self._db_down = False
        self._buffer_down = False
        # A region's rows its database could not take (see `insert_events_by_region`).
        self._held_dir = self.buffer.spool.directory / HELD_FOLDER
        self._held: dict[str, SpoolFile] = {}
        self._held_retry: dict[str, tuple[float, float]] = {}  # region: (retry at, delay)

    # Lifecycle ---------------------------------------------------------------------------

    async def start(self) -> None:
        if self._task is not None and not self._task.done():
            return
        self._stopping = asyncio.Event()
        self._task = asyncio.create_task(self._run(), name="usage-writer")

    async def stop(self, grace_seconds: float = 10.0) -> None:
        """Stop the loop and write everything pending; with the database down, keep it safe."""
        if self._stopping is not None:
            self._stopping.set()
        if self._task is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        deadline = time.monotonic() + grace_seconds
        delay = 0.1
        while True:
            try:
                await self.drain_all()
                break
            except DatabaseError as exc:
                self._note_db_error(exc)
                if time.monotonic() + delay > deadline:
                    logger.error("usage writer: stopping with rows still pending (database down)")
                    break
                await asyncio.sleep(delay)
                delay = min(delay * 2, 2.0)
        if isinstance(self.buffer, MemoryBuffer) and len(self.buffer):
            # Memory dies with the process; the spool is replayed by the next writer.
            spilled = await self.buffer.spill()
            logger.warning("usage writer: %d pending rows spooled for later", spilled)
        await self.close()

    async def close(self) -> None:
        await self.buffer.close()
        executor, self._executor = self._executor, None
        if executor is not None:
            loop = asyncio.get_running_loop()
            with contextlib.suppress(Exception):
                await loop.run_in_executor(executor, connections.close_all)
            executor.shutdown(wait=False)

    # Draining ----------------------------------------------------------------------------

    async def drain_all(self) -> int:
        """Until the buffer and the spool are empty (or only others' recent pending remain)."""
        total = 0
        while True:
            fetched, inserted = await self._drain(seal_age=0.0)
            total += inserted
            if fetched == 0:
                return total

    async def _drain(self, *, seal_age: float) -> tuple[int, int]:
        async with self._lock:
            fetched = inserted = 0
            batch = None
            try:
                batch = await self.buffer.fetch(self.batch_size)
            except BUFFER_ERRORS as exc:
                self._note_buffer_error(exc)
            else:
                self._note_buffer_ok()
            if batch:
                fetched += len(batch)
                try:
                    if batch.unreadable:
                        await self._run_sync(_dead_letter_unreadable, batch.unreadable)
                    inserted += await self._insert(batch.events)
                except Exception:
                    # Not written: the buffer keeps the batch (memory batches go back to
                    # the queue), whatever failed.
                    await self.buffer.release(batch)
                    raise
                try:
                    await self.buffer.ack(batch)
                except BUFFER_ERRORS as exc:
                    # Committed but not acked: redelivered later and ignored by the insert.
                    self._note_buffer_error(exc)
            spool_fetched, spool_inserted = await self._replay_spool(seal_age)
            held_fetched, held_inserted = await self._replay_held()
            spool_fetched += held_fetched
            spool_inserted += held_inserted
            if fetched or spool_fetched:
                self._note_db_ok()  # only a write that went through proves the database is back
            return fetched + spool_fetched, inserted + spool_inserted

    async def _replay_spool(self, seal_age: float) -> tuple[int, int]:
        spool = self.buffer.spool
        await asyncio.to_thread(spool.seal, min_age=seal_age)
        fetched = inserted = 0
        for path in await asyncio.to_thread(spool.sealed_files):
            batch = await asyncio.to_thread(spool.read, path)
            if batch.unreadable:
                await self._run_sync(_dead_letter_unreadable, batch.unreadable)
            events = batch.events
            for start in range(0, len(events), self.batch_size):
                inserted += await self._insert(events[start : start + self.batch_size])
            # Deleted only after every chunk committed; a crash before this re-inserts
            # nothing new because the insert skips known request ids.
            await asyncio.to_thread(spool.remove, path)
            fetched += len(events) or 1  # an empty file still counts as work done
            if fetched >= self.batch_size:
                break
        return fetched, inserted

    async def _run_sync(self, function: Any, *args: Any) -> Any:
        if self._executor is None:
            # One thread keeps one database connection instead of one per pooled thread.
            self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="usage-writer")
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, function, *args)

    @staticmethod
    def _insert_sync(events: list[UsageEvent]) -> RegionalResult:
        # Drops a connection broken by an earlier outage so this attempt reconnects.
        close_old_connections()
        return insert_events_by_region(events)

    async def _insert(self, events: list[UsageEvent]) -> int:
        """Rows inserted; refused rows are dead-lettered, a database outage raises (with
        several regions, an unreachable region's rows are held in its spool instead)."""
        if is_multi_region():
            events = await self._park_backed_off(events)
            if not events:
                return 0
        result: RegionalResult = await self._run_sync(self._insert_sync, events)
        for region, held in result.held.items():
            await asyncio.to_thread(self._held_spool(region).append, held)
            self._back_off(region)
        return result.written.inserted

    async def _park_backed_off(self, events: list[UsageEvent]) -> list[UsageEvent]:
        """The events to insert now: those of a region inside its backoff go straight to its
        held spool, so a region that is down (or hangs) costs the others no connect attempt
        per batch."""
        now = time.monotonic()
        waiting = {r for r, (retry_at, _) in self._held_retry.items() if now < retry_at}
        if not waiting:
            return events
        groups = by_region(events)
        for region in waiting & set(groups):
            await asyncio.to_thread(self._held_spool(region).append, groups.pop(region))
        return [event for group in groups.values() for event in group]

    def _back_off(self, region: str) -> None:
        _, delay = self._held_retry.get(region, (0.0, 0.0))
        delay = min(max(delay * 2, self.flush_interval), self.max_backoff)
        self._held_retry[region] = (time.monotonic() + delay, delay)

    # Rows held back by region ------------------------------------------------------------

    def _held_spool(self, region: str) -> SpoolFile:
        # The name came with the event: never let it reach outside the held directory.
        folder = region if REGION_NAME.match(region) else "_unnamed"
        spool = self._held.get(folder)
        if spool is None:
            spool = self._held[folder] = SpoolFile(self._held_dir / folder)
        return spool

    async def _replay_held(self) -> tuple[int, int]:
        """Retry each region's held rows, the region alone; one still down waits its backoff
        and holds back no other."""
        fetched = inserted = 0
        directories = await asyncio.to_thread(_held_regions, self._held_dir)
        now = time.monotonic()
        for region in directories:
            retry_at, _ = self._held_retry.get(region, (0.0, 0.0))
            if now < retry_at:
                continue
            spool = self._held_spool(region)
            await asyncio.to_thread(spool.seal, min_age=0.0)
            for path in await asyncio.to_thread(spool.sealed_files):
                batch = await asyncio.to_thread(spool.read, path)
                result: RegionalResult = await self._run_sync(self._insert_sync, batch.events)
                inserted += result.written.inserted
                if result.held:
                    # Still unreachable: the file stays; its written rows are skipped next
                    # time (the insert ignores known request ids).
                    self._back_off(region)
                    break
                if batch.unreadable:
                    # Lines that are no event, dead-lettered as the main spool's are; if that
                    # fails the file stays (its written rows are skipped next time).
                    try:
                        await self._run_sync(_dead_letter_unreadable, batch.unreadable)
                    except DatabaseError:
                        self._back_off(region)
                        break
                await asyncio.to_thread(spool.remove, path)
                fetched += len(batch.events) or 1
                self._held_retry.pop(region, None)
        return fetched, inserted

    # Background loop -----------------------------------------------------------------------

    async def _run(self) -> None:
        if self._stopping is None:
            return
        delay = self.flush_interval
        while not self._stopping.is_set():
            try:
                # Drain full batches back to back; a short one means we caught up.
                while not self._stopping.is_set():
                    fetched, _ = await self._drain(seal_age=self.flush_interval)
                    if fetched < self.batch_size:
                        break
                delay = self.flush_interval
            except DatabaseError as exc:
                self._note_db_error(exc)
                delay = min(max(delay, self.flush_interval) * 2, self.max_backoff)
            except Exception:
                logger.exception("usage writer: unexpected error; retrying")
                delay = min(max(delay, self.flush_interval) * 2, self.max_backoff)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), delay)

    # Outage logging: once when it starts, once when it ends ----------------------------------

    def _note_db_error(self, exc: BaseException) -> None:
        if not self._db_down:
            self._db_down = True
            logger.error(
                "usage writer: database unavailable (not a row problem), rows kept pending: %r",
                exc,
            )

    def _note_db_ok(self) -> None:
        if self._db_down:
            self._db_down = False
            logger.warning("usage writer: database reachable again, catching up")

    def _note_buffer_error(self, exc: BaseException) -> None:
        if not self._buffer_down:
            self._buffer_down = True
            logger.error("usage writer: buffer unavailable, replaying spool only: %r", exc)

    def _note_buffer_ok(self) -> None:
        if self._buffer_down:
            self._buffer_down = False
            logger.warning("usage writer: buffer reachable again")


def drain_all_sync(buffer: UsageBuffer | None = None, **writer_options: Any) -> int:
    """Write everything pending now, from sync code (management commands, tests)."""

    async def run() -> int:
        writer = UsageWriter(buffer, **writer_options)
        try:
            return await writer.drain_all()
        finally:
            await writer.close()

    return asyncio.run(run())
