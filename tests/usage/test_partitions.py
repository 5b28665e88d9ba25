"""The raw usage table by month: partitions, idempotent writes across them, retention.

On the test set-up's PostgreSQL the table is partitioned by migration 0004; most tests run
inside the test's transaction, so the partitions they create or drop vanish with it
(PostgreSQL DDL is transactional). The embedded tests check SQLite's one table.
"""

import asyncio
import datetime as dt
import math
from decimal import Decimal

import pytest
from django.core.exceptions import ImproperlyConfigured
from django.core.management import call_command
from django.db import connection
from django.db.migrations.executor import MigrationExecutor
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from apps.usage.buffer import MemoryBuffer
from apps.usage.grouping import month_start, next_month
from apps.usage.models import UsageCubeDaily, UsageLateDay, UsageRecord
from apps.usage.month_to_date import UsageSubject, month_to_date
from apps.usage.partitions import (
    DEFAULT_PARTITION,
    TABLE,
    partition_name,
    usage_partitions,
    usage_partitions_ensure,
)
from apps.usage.retention import raw_cutoff, usage_bodies_prune, usage_raw_prune
from apps.usage.rollups import usage_rollup_month, usage_rollups_refresh
from apps.usage.tasks import partitions_maintain, retention_prune
from apps.usage.writer import drain_all_sync, insert_events
from tests.usage.helpers import make_event

TODAY = timezone.now().astimezone(dt.UTC).date()
THIS_MONTH = month_start(TODAY)
# A month well past the default raw retention (400 days), and the one after it.
OLD_MONTH = month_start(TODAY - dt.timedelta(days=520))


def _at(day: dt.date, hour: int = 12) -> dt.datetime:
    return dt.datetime.combine(day, dt.time(hour), tzinfo=dt.UTC)


def _months_after(month: dt.date, count: int) -> dt.date:
    for _ in range(count):
        month = next_month(month)
    return month


def _partition_of(request_ids) -> dict[str, str]:
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT request_id, tableoid::regclass::text FROM proxy_usagerecord "
            "WHERE request_id = ANY(%s)",
            [list(request_ids)],
        )
        return dict(cursor.fetchall())


def _table_exists(name: str) -> bool:
    with connection.cursor() as cursor:
        cursor.execute("SELECT to_regclass(%s) IS NOT NULL", [name])
        return cursor.fetchone()[0]


def _roll_up(month: dt.date) -> None:
    """What the scheduled run does for a month: the daily rollups and statements, late-day
    marks (the writer's, for rows of past days) cleared."""
    usage_rollup_month(month=month)
    UsageLateDay.objects.filter(day__gte=month, day__lt=next_month(month)).delete()


def _old_month_rows(count: int = 6, **fields) -> list:
    """`count` rows over the old month's days (history, so not through the writer, which
    would mark the days late); the month's partition is then split out of DEFAULT as the
    maintenance task does."""
    events = [
        make_event(created_at=_at(OLD_MONTH + dt.timedelta(days=i % 20), 8 + i % 10), **fields)
        for i in range(count)
    ]
    UsageRecord.objects.bulk_create([event.to_record() for event in events])
    usage_partitions_ensure(months_ahead=0)
    return events


@pytest.fixture
def pg():
    if connection.vendor != "postgresql":
        pytest.skip("PostgreSQL partitions")


@pytest.fixture
def sqlite():
    if connection.vendor != "sqlite":
        pytest.skip("SQLite (embedded mode) only")


# --- The table and its partitions --------------------------------------------------------


@pytest.mark.django_db
def test_table_is_partitioned_by_month_with_months_ahead_and_a_default(pg):
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT p.partstrat, a.attname FROM pg_partitioned_table p "
            "JOIN pg_attribute a ON a.attrelid = p.partrelid AND a.attnum = p.partattrs[0] "
            "WHERE p.partrelid = %s::regclass",
            [TABLE],
        )
        assert cursor.fetchall() == [("r", "created_at")]
        cursor.execute(
            "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
            "WHERE i.inhparent = %s::regclass",
            [TABLE],
        )
        children = {name for (name,) in cursor.fetchall()}
    ahead = {partition_name(_months_after(THIS_MONTH, n)) for n in range(4)}
    assert ahead | {DEFAULT_PARTITION} <= children
    listed = usage_partitions()
    assert [p.name for p in listed][-1] == DEFAULT_PARTITION
    by_name = {p.name: p for p in listed}
    assert by_name[partition_name(THIS_MONTH)].start == THIS_MONTH
    assert by_name[partition_name(THIS_MONTH)].end == next_month(THIS_MONTH)


@pytest.mark.django_db
def test_rows_of_each_month_land_in_that_months_partition(pg):
    months = [THIS_MONTH, next_month(THIS_MONTH), _months_after(THIS_MONTH, 2)]
    events = [make_event(created_at=_at(month + dt.timedelta(days=3))) for month in months]
    assert insert_events(events) == 3
    assert _partition_of(e.request_id for e in events) == {
        event.request_id: partition_name(month) for event, month in zip(events, months, strict=True)
    }


@pytest.mark.django_db
def test_default_partition_catches_a_far_future_row_and_maintenance_moves_it_out(pg):
    far = _months_after(THIS_MONTH, 40)
    event = make_event(created_at=_at(far + dt.timedelta(days=9)))
    # No partition for that month: the writer still writes the row.
    assert insert_events([event]) == 1
    assert _partition_of([event.request_id]) == {event.request_id: DEFAULT_PARTITION}

    assert partitions_maintain() == {"created": [partition_name(far)]}
    assert _partition_of([event.request_id]) == {event.request_id: partition_name(far)}
    assert UsageRecord.objects.filter(request_id=event.request_id).count() == 1
    # Idempotent: nothing left to create.
    assert partitions_maintain() == {"created": []}


@pytest.mark.django_db
def test_same_request_twice_is_one_row_in_any_month(pg):
    last_month = month_start(THIS_MONTH - dt.timedelta(days=1))
    events = [make_event(), make_event(created_at=_at(last_month + dt.timedelta(days=5)))]
    assert insert_events(events) == 2
    # A copy back from JSON (buffer, spool, dead letter) carries the same created_at.
    copies = [type(e).from_json(e.to_json()) for e in events]
    assert insert_events([*copies, *events]) == 0
    assert UsageRecord.objects.filter(request_id__in=[e.request_id for e in events]).count() == 2


@pytest.mark.django_db(transaction=True)
def test_a_spooled_copy_replayed_after_the_row_was_written_adds_nothing(tmp_path):
    event = make_event(created_at=_at(THIS_MONTH, 1))
    other = make_event()
    buffer = MemoryBuffer(spool_dir=tmp_path)
    buffer.put_nowait(event)
    assert drain_all_sync(buffer) == 1
    # The same event spooled too (the writer died before its ack), and a new one with it.
    spooling = MemoryBuffer(spool_dir=tmp_path)
    spooling.put_nowait(event)
    spooling.put_nowait(other)
    assert asyncio.run(spooling.spill()) == 2
    assert drain_all_sync(MemoryBuffer(spool_dir=tmp_path)) == 1
    assert not list(tmp_path.glob("usage-*"))
    assert UsageRecord.objects.filter(request_id=event.request_id).count() == 1
    assert UsageRecord.objects.filter(request_id=other.request_id).count() == 1


# --- Retention of raw rows -----------------------------------------------------------------


@pytest.mark.django_db
def test_prune_drops_a_rolled_up_old_month_and_its_rollups_still_answer(pg, settings, team):
    settings.USAGE_RAW_RETENTION_DAYS = 400
    events = _old_month_rows(team_id=team.pk)
    recent = make_event(team_id=team.pk)
    insert_events([recent])
    _roll_up(OLD_MONTH)
    before = month_to_date(subject=UsageSubject(team_id=team.pk), month=OLD_MONTH)
    assert before.requests == len(events)
    old = partition_name(OLD_MONTH)
    assert _table_exists(old)

    dry = usage_raw_prune(dry_run=True)
    assert old in dry.dropped and _table_exists(old)

    result = retention_prune()
    assert old in result["dropped"] and result["refused"] == {}
    assert not _table_exists(old)
    assert not UsageRecord.objects.filter(request_id__in=[e.request_id for e in events]).exists()
    assert UsageRecord.objects.filter(request_id=recent.request_id).exists()
    # The rollups stay, and the month still reads the same from them.
    assert month_to_date(subject=UsageSubject(team_id=team.pk), month=OLD_MONTH) == before
    assert UsageCubeDaily.objects.filter(day__gte=OLD_MONTH, day__lt=next_month(OLD_MONTH))


@pytest.mark.django_db
def test_prune_refuses_a_month_whose_rollups_are_missing_or_short(pg, settings, caplog):
    settings.USAGE_RAW_RETENTION_DAYS = 400
    events = _old_month_rows()
    old = partition_name(OLD_MONTH)

    result = usage_raw_prune()
    assert old not in result.dropped
    assert result.refused[old] == sorted({e.created_at.date() for e in events})
    assert _table_exists(old) and UsageRecord.objects.filter(created_at__lt=_at(TODAY)).count()
    assert "rollups miss" in caplog.text

    # Rolled up, then one more row lands on a rolled-up day: that day is short by one.
    _roll_up(OLD_MONTH)
    late = make_event(created_at=events[0].created_at + dt.timedelta(minutes=1))
    UsageRecord.objects.bulk_create([late.to_record()])
    result = usage_raw_prune()
    assert result.refused[old] == [events[0].created_at.date()]
    assert UsageRecord.objects.filter(created_at__lt=_at(TODAY)).count() == len(events) + 1

    _roll_up(OLD_MONTH)
    assert old in usage_raw_prune().dropped


@pytest.mark.django_db
def test_a_late_row_for_a_pruned_day_never_re_rolls_it(pg, settings, team):
    settings.USAGE_RAW_RETENTION_DAYS = 400
    events = _old_month_rows(team_id=team.pk)
    _roll_up(OLD_MONTH)
    assert partition_name(OLD_MONTH) in usage_raw_prune().dropped
    day = events[0].created_at.date()
    kept = UsageCubeDaily.objects.filter(day=day).values_list("requests", flat=True)
    kept = sorted(kept)

    # A dead letter from that day replayed now: it lands in DEFAULT and marks the day late.
    assert insert_events([make_event(team_id=team.pk, created_at=events[0].created_at)]) == 1
    assert UsageLateDay.objects.filter(day=day).exists()
    usage_rollups_refresh(recent_days=2)
    assert sorted(UsageCubeDaily.objects.filter(day=day).values_list("requests", flat=True)) == (
        kept
    )
    assert not UsageLateDay.objects.filter(day=day).exists()
    # Past retention, so the maintenance task leaves it in DEFAULT rather than making the
    # dropped month's partition again.
    assert partitions_maintain() == {"created": []}


@pytest.mark.embedded
def test_raw_retention_below_two_months_is_refused(settings):
    settings.USAGE_RAW_RETENTION_DAYS = 30
    with pytest.raises(ImproperlyConfigured):
        usage_raw_prune()
    settings.USAGE_RAW_RETENTION_DAYS = 0
    assert raw_cutoff() is None


# --- Retention of logged bodies --------------------------------------------------------------


@pytest.mark.embedded
@pytest.mark.django_db
def test_body_retention_nulls_old_bodies_in_batches_and_keeps_newer(settings):
    settings.USAGE_BODY_RETENTION_DAYS = 30
    body = {"messages": [{"role": "user", "content": "hello"}]}
    answer = {"choices": [{"message": {"content": "hi"}}]}
    old = [
        make_event(created_at=_at(TODAY - dt.timedelta(days=days)), request_body=body,
                   response_body=answer)
        for days in (31, 33, 40, 45, 70)
    ]  # fmt: skip
    newer = [
        make_event(created_at=_at(TODAY - dt.timedelta(days=days)), request_body=body,
                   response_body=answer)
        for days in (0, 5, 29)
    ]  # fmt: skip
    bodiless = make_event(created_at=_at(TODAY - dt.timedelta(days=50)))
    insert_events([*old, *newer, bodiless])

    assert usage_bodies_prune(dry_run=True) == len(old)
    with CaptureQueriesContext(connection) as queries:
        assert usage_bodies_prune(batch_size=2) == len(old)
    updates = [q for q in queries.captured_queries if q["sql"].startswith("UPDATE")]
    # Bounded: at most two rows per UPDATE, so at least ceil(5 / 2) statements.
    assert len(updates) >= math.ceil(len(old) / 2)

    rows = {r.request_id: r for r in UsageRecord.objects.all()}
    for event in old:
        row = rows[event.request_id]
        assert row.request_body is None and row.response_body is None
        assert row.input_tokens == event.input_tokens  # the rest of the row stays
    for event in newer:
        assert rows[event.request_id].request_body == body
        assert rows[event.request_id].response_body == answer
    assert UsageRecord.objects.filter(request_body__isnull=True).count() == len(old) + 1
    assert usage_bodies_prune() == 0


# --- The migration from today's table --------------------------------------------------------


@pytest.mark.django_db
def test_migration_from_an_unpartitioned_table_keeps_every_row(pg):
    def indexes() -> set[tuple[str, str]]:
        with connection.cursor() as cursor:
            cursor.execute(
                "SELECT indexname, indexdef FROM pg_indexes WHERE tablename = %s", [TABLE]
            )
            return set(cursor.fetchall())

    partitioned_indexes = indexes()
    executor = MigrationExecutor(connection)
    executor.migrate([("usage", "0003_late_days")])
    assert not usage_partitions()
    months = [OLD_MONTH, month_start(TODAY - dt.timedelta(days=40)), THIS_MONTH]
    with connection.cursor() as cursor:
        # Today's table as 0003 left it: one row per month, written as the old writer did.
        for i, month in enumerate(months):
            cursor.execute(
                "INSERT INTO proxy_usagerecord (request_id, created_at, inserted_at, end_user, model, "
                "deployment, provider, request_type, is_stream, status_code, error_type, "
                "input_tokens, output_tokens, cached_tokens, tokens_estimated, cost_usd, "
                "latency_ms, attempts, client_disconnected, tags, request_body) VALUES "
                "(%s, %s, now(), '', 'm', '', '', 'chat', false, 200, '', %s, 1, 0, false, "
                '0.25, 10, 1, false, \'{"k": "v"}\', \'{"p": 1}\') '
                "ON CONFLICT (request_id) DO NOTHING",
                [f"req_old_{i}", _at(month + dt.timedelta(days=2)), 100 + i],
            )
        cursor.execute("SELECT id, request_id, created_at FROM proxy_usagerecord ORDER BY id")
        before = cursor.fetchall()

    executor = MigrationExecutor(connection)
    executor.loader.build_graph()
    executor.migrate(executor.loader.graph.leaf_nodes())

    assert indexes() == partitioned_indexes
    rows = list(UsageRecord.objects.order_by("id").values_list("id", "request_id", "created_at"))
    assert rows == before
    assert _partition_of(r[1] for r in before) == {
        f"req_old_{i}": partition_name(month) for i, month in enumerate(months)
    }
    old_row = UsageRecord.objects.get(request_id="req_old_0")
    assert (old_row.input_tokens, old_row.cost_usd, old_row.tags) == (
        100,
        Decimal("0.25"),
        {"k": "v"},
    )
    # New rows get new ids after the old ones.
    insert_events([make_event()])
    assert UsageRecord.objects.order_by("-id").first().id > before[-1][0]


# --- Embedded mode: one table, pruned by date ---------------------------------------------


@pytest.mark.embedded
@pytest.mark.django_db
def test_sqlite_keeps_one_table_with_a_unique_request_id(sqlite):
    with connection.cursor() as cursor:
        cursor.execute("SELECT sql FROM sqlite_master WHERE name = 'usage_request_id_once'")
        (sql,) = cursor.fetchone()
    assert "UNIQUE" in sql.upper() and "request_id" in sql
    assert usage_partitions() == []
    event = make_event()
    assert insert_events([event, event]) == 1
    assert insert_events([type(event).from_json(event.to_json())]) == 0


@pytest.mark.embedded
@pytest.mark.django_db
def test_sqlite_prunes_whole_old_months_by_date_in_bounded_deletes(sqlite, settings):
    settings.USAGE_RAW_RETENTION_DAYS = 400
    rolled = [make_event(created_at=_at(OLD_MONTH + dt.timedelta(days=i % 3))) for i in range(7)]
    unrolled_month = next_month(OLD_MONTH)
    unrolled = [make_event(created_at=_at(unrolled_month + dt.timedelta(days=1)))]
    # In the month holding the cutoff: older than 400 days, but its month is not over yet.
    cutoff = raw_cutoff()
    straddling = [make_event(created_at=_at(cutoff + dt.timedelta(days=2)))]
    recent = [make_event()]
    insert_events([*rolled, *unrolled, *straddling, *recent])
    _roll_up(OLD_MONTH)

    with CaptureQueriesContext(connection) as queries:
        result = usage_raw_prune(batch_size=3)
    deletes = [q for q in queries.captured_queries if q["sql"].startswith("DELETE")]
    assert len(deletes) >= math.ceil(len(rolled) / 3)
    assert result.rows == len(rolled)
    assert result.refused[TABLE] == [unrolled[0].created_at.date()]
    left = set(UsageRecord.objects.values_list("request_id", flat=True))
    assert left == {e.request_id for e in [*unrolled, *straddling, *recent]}
    # The rollups of the pruned days stay.
    assert sum(
        UsageCubeDaily.objects.filter(day__lt=next_month(OLD_MONTH)).values_list(
            "requests", flat=True
        )
    ) == len(rolled)


# --- The command -------------------------------------------------------------------------------


@pytest.mark.django_db
def test_usage_partitions_command_lists_ensures_and_dry_runs(pg, settings, capsys):
    settings.USAGE_RAW_RETENTION_DAYS = 400
    _old_month_rows(count=2)
    call_command("usage_partitions", "--exact")
    listing = capsys.readouterr().out
    line = next(row for row in listing.splitlines() if row.startswith(partition_name(OLD_MONTH)))
    assert line.split()[1:4] == [str(OLD_MONTH), str(next_month(OLD_MONTH)), "2"]
    assert DEFAULT_PARTITION in listing

    call_command("usage_partitions", "--prune", "--dry-run")
    report = capsys.readouterr().out
    assert f"refused {partition_name(OLD_MONTH)}: rollups miss 2 day(s)" in report
    assert _table_exists(partition_name(OLD_MONTH))
