"""Monthly partitions of the raw usage table on PostgreSQL: list, create ahead, drop.

Migration 0004 partitions `UsageRecord` by UTC month of `created_at`, with a DEFAULT
partition that takes any row no month partition holds, so the writer never fails for a
missing month. The beat task `usage.partitions_maintain` keeps this month and the next
`USAGE_PARTITIONS_AHEAD_MONTHS` created ahead; a row that still reaches the DEFAULT partition
(a clock months ahead, a replayed dead letter older than the first partition) is moved into
its own month's partition by the next run, which creates it. Rows in DEFAULT for months
older than the raw retention stay there: their days were rolled up without them and are
never re-rolled (`apps.usage.retention`), and `manage.py usage_partitions` shows them.

Dropping a partition is `apps.usage.retention`'s decision; this module only does the DDL.
Every statement here is metadata work or moves a handful of DEFAULT rows, under a short
`lock_timeout`: a DDL statement waiting behind a long dashboard query would otherwise make
every later query on the table queue behind it. A run that cannot get its lock fails
(OperationalError) and the task retries; nothing is half done, each step is a transaction.

SQLite (embedded mode) has no partitions: one plain table, pruned by date.
"""

from __future__ import annotations

import datetime as dt
import logging
import re
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from .grouping import day_bounds, month_start, next_month, utc_midnight, utc_today
from .models import UsageRecord
from .regions import ledger_atomic, ledger_db

logger = logging.getLogger(__name__)

TABLE = UsageRecord._meta.db_table
DEFAULT_PARTITION = f"{TABLE}_default"
# Column list from the model (identifiers only, never a value): moving rows names them all.
_COLUMNS = ", ".join(field.column for field in UsageRecord._meta.concrete_fields)
_BOUNDS = re.compile(r"FROM \('([^']+)'\) TO \('([^']+)'\)")

# Long enough for the writer's batch transactions to finish, short enough that DDL waiting
# behind a slow report does not stall the writer and every page behind it.
LOCK_TIMEOUT = "3s"
# One maintenance run at a time (an overlapping beat run, `usage_partitions --ensure` while
# the task runs): the second one skips instead of queueing DDL behind the first.
_MAINTENANCE_LOCK_KEY = 0x7573_6167_6570  # "usagep"


@dataclass(frozen=True)
class UsagePartition:
    """One partition: `start`/`end` are UTC days ([start, end)), None for DEFAULT.

    `rows` is PostgreSQL's estimate (None before the first ANALYZE) unless counted exactly.
    """

    name: str
    start: dt.date | None
    end: dt.date | None
    rows: int | None
    bytes: int

    @property
    def is_default(self) -> bool:
        return self.start is None


def partition_name(month: dt.date) -> str:
    return f"{TABLE}_p{month:%Y_%m}"


def is_partitioned() -> bool:
    """Whether the usage table is a partitioned table (PostgreSQL after migration 0004)."""
    if ledger_db.vendor != "postgresql":
        return False
    with ledger_db.cursor() as cursor:
        cursor.execute(
            "SELECT EXISTS (SELECT 1 FROM pg_partitioned_table WHERE partrelid = to_regclass(%s))",
            [TABLE],
        )
        return bool(cursor.fetchone()[0])


def _utc_literal(day: dt.date) -> str:
    # With its zone, so the session's TimeZone cannot shift a bound; from a date we computed.
    return utc_midnight(day).isoformat()


def _bound(text: str) -> dt.date:
    moment = dt.datetime.fromisoformat(text)
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=dt.UTC)
    return moment.astimezone(dt.UTC).date()


def usage_partitions(*, exact: bool = False) -> list[UsagePartition]:
    """The partitions, oldest first, DEFAULT last; `exact` counts rows (a scan of each)."""
    if not is_partitioned():
        return []
    with ledger_db.cursor() as cursor:
        cursor.execute(
            "SELECT c.relname, pg_get_expr(c.relpartbound, c.oid), c.reltuples::bigint, "
            "pg_total_relation_size(c.oid) FROM pg_inherits i "
            "JOIN pg_class c ON c.oid = i.inhrelid WHERE i.inhparent = to_regclass(%s)",
            [TABLE],
        )
        found = cursor.fetchall()
        partitions = []
        for name, bound, estimate, size in found:
            match = _BOUNDS.search(bound)
            start, end = (_bound(match[1]), _bound(match[2])) if match else (None, None)
            rows = estimate if estimate >= 0 else None
            if exact:
                # Identifier from the catalogue, quoted.
                cursor.execute(f"SELECT count(*) FROM ONLY {ledger_db.ops.quote_name(name)}")  # noqa: S608
                rows = cursor.fetchone()[0]
            partitions.append(UsagePartition(name, start, end, rows, size))
    return sorted(partitions, key=lambda p: (p.start is None, p.start or dt.date.min))


@contextmanager
def _maintenance() -> Iterator[bool]:
    """A transaction holding the maintenance lock, with a short lock_timeout; yields False
    (and does nothing) when another run holds the lock."""
    with ledger_atomic(), ledger_db.cursor() as cursor:
        cursor.execute(f"SET LOCAL lock_timeout = '{LOCK_TIMEOUT}'")
        cursor.execute("SELECT pg_try_advisory_xact_lock(%s)", [_MAINTENANCE_LOCK_KEY])
        yield bool(cursor.fetchone()[0])


def _months_in_default(cursor) -> list[dt.date]:
    # The DEFAULT partition holds strays only, so reading it whole is cheap.
    cursor.execute(
        f"SELECT DISTINCT date_trunc('month', created_at AT TIME ZONE 'UTC')::date "  # noqa: S608
        f"FROM {DEFAULT_PARTITION}"
    )
    return sorted(month for (month,) in cursor.fetchall())


def _create_month(cursor, month: dt.date) -> None:
    """Create `month`'s partition, moving its rows out of DEFAULT in the same transaction.

    Writers are held off the table meanwhile (SHARE ROW EXCLUSIVE: reads go on), so no row
    of the month can reach DEFAULT between the move and the ATTACH.
    """
    name = partition_name(month)
    low, high = day_bounds(month, next_month(month))
    cursor.execute(f"LOCK TABLE {TABLE} IN SHARE ROW EXCLUSIVE MODE")
    cursor.execute(f"CREATE TABLE {name} (LIKE {TABLE} INCLUDING DEFAULTS INCLUDING CONSTRAINTS)")
    cursor.execute(
        f"INSERT INTO {name} ({_COLUMNS}) SELECT {_COLUMNS} FROM {DEFAULT_PARTITION} "  # noqa: S608
        "WHERE created_at >= %s AND created_at < %s",
        [low, high],
    )
    moved = cursor.rowcount
    cursor.execute(
        f"DELETE FROM {DEFAULT_PARTITION} WHERE created_at >= %s AND created_at < %s",  # noqa: S608
        [low, high],
    )
    # Builds the parent's indexes on the new table: it is empty or holds the moved strays.
    cursor.execute(
        f"ALTER TABLE {TABLE} ATTACH PARTITION {name} FOR VALUES FROM "
        f"('{_utc_literal(month)}') TO ('{_utc_literal(next_month(month))}')"
    )
    if moved:
        logger.warning("usage partitions: %s created, %d rows moved out of DEFAULT", name, moved)
    else:
        logger.info("usage partitions: %s created", name)


def usage_partitions_ensure(
    *, months_ahead: int, keep_from: dt.date | None = None, today: dt.date | None = None
) -> list[str]:
    """Create the partitions of this month and the next `months_ahead` months, and of every
    month with rows in DEFAULT from `keep_from`'s month on (older ones are past retention);
    returns the names created. Idempotent; a no-op without partitioning."""
    if not is_partitioned():
        return []
    today = today or utc_today()
    wanted = []
    month = month_start(today)
    for _ in range(months_ahead + 1):
        wanted.append(month)
        month = next_month(month)
    created = []
    with _maintenance() as locked, ledger_db.cursor() as cursor:
        if not locked:
            logger.info("usage partitions: another maintenance run is active; skipped")
            return []
        existing = {p.start for p in usage_partitions() if not p.is_default}
        first_kept = month_start(keep_from) if keep_from else dt.date.min
        strays = [m for m in _months_in_default(cursor) if m >= first_kept]
        for month in sorted(set(wanted) | set(strays)):
            if month not in existing:
                _create_month(cursor, month)
                created.append(partition_name(month))
    return created


@contextmanager
def partition_frozen(partition: UsagePartition) -> Iterator[Callable[[], None]]:
    """A transaction in which no row can be added to or changed in `partition` (reads go
    on): retention checks its rollups inside it, then calls the `drop` it yields, so no late
    row slips in between the check and the drop."""
    if partition.is_default:
        raise ValueError("the DEFAULT partition is never dropped")
    with _maintenance() as locked, ledger_db.cursor() as cursor:
        if not locked:
            raise PartitionBusyError("another maintenance run is active")
        name = ledger_db.ops.quote_name(partition.name)
        cursor.execute(f"LOCK TABLE {name} IN SHARE MODE")

        def drop() -> None:
            """DETACH, then DROP: metadata only, however many rows the partition holds."""
            cursor.execute(f"ALTER TABLE {TABLE} DETACH PARTITION {name}")
            cursor.execute(f"DROP TABLE {name}")
            logger.warning(
                "usage partitions: dropped %s (%s to %s, about %s rows)",
                partition.name,
                partition.start,
                partition.end,
                partition.rows,
            )

        yield drop


class PartitionBusyError(Exception):
    """Another maintenance run holds the lock; try again later."""
