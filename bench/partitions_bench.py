"""Partitions benchmark: the usage table at 10,000,000 rows, before and after migration 0004.

    .venv/bin/python bench/partitions_bench.py [--rows 10000000] [--days 90] [--runs 5]
        [--insert-seconds 30] [--writer-seconds 60] [--rate 6000] [--keep-db DIR]

Starts a throwaway PostgreSQL and Redis (the test set-up's helpers). With the usage app at
migration 0003 (one plain table) it seeds the dashboards benchmark's tenancy, writes 1/10 of
the rows with `generate_usage` (COPY, the dashboards benchmark's distribution over `--days`
days) and copies them nine times in SQL (new request ids, times moved by up to ±30 min), so
the 10M rows have the 1M benchmark's shape ten times as dense. Then, in order:

1. on the plain table: the insert rate of the writer's insert path (`insert_events`, 1,000
   rows a batch, back to back, `--insert-seconds`), the full writer (a producer process
   XADDs `--rate` events/s to a Redis stream for `--writer-seconds`, one `UsageWriter`
   drains it, as `bench/writer_bench.py` does), and a DELETE of the oldest whole month
   (timed, then rolled back);
2. migration 0004 (the copy into monthly partitions), timed;
3. the billing and dashboard rollups of every day, as the beat task would;
4. on the partitioned table: the same two insert measures; then the insert path again,
   interleaved in `--ab-rounds` rounds of `--ab-seconds` so machine load falls on every
   side alike, into a plain copy of the 10M rows (0003's indexes), into this month's
   partition, and into the fullest month's partition (as at a month's end); the dashboards
   pages and the billing surfaces (the dashboards benchmark's `time_pages` and
   `time_billing`: median and p95 of `--runs` runs after a warm-up); and the retention's
   drop of that oldest month (the rollup check, then DETACH + DROP), timed.

Rows the insert measures add are deleted again, so every read sees the same 10M rows.
`--keep-db DIR` keeps the database and resumes from the last stage done. Not a test:
numbers only.
"""

import argparse
import asyncio
import contextlib
import datetime as dt
import multiprocessing
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from scripts.run_tests import postgres, redis  # noqa: E402

COPIES = 9


def stamp(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


def sql(statement: str, params=None):
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute(statement, params)
        return cursor.fetchall() if cursor.description else cursor.rowcount


def usage_columns() -> list[str]:
    from apps.usage.models import UsageRecord

    return [f.column for f in UsageRecord._meta.concrete_fields if not f.primary_key]


def load(rows: int, days: int) -> None:
    """1/10 of `rows` by generate_usage, then nine shifted copies by INSERT ... SELECT."""
    from django.core.management import call_command

    from bench.dashboards_bench import seed_tenancy

    seed_tenancy()
    base = rows // (COPIES + 1)
    started = time.perf_counter()
    call_command("generate_usage", rows=base, days=days, seed=1)
    stamp(f"generate_usage: {base:,} rows in {time.perf_counter() - started:.0f} s")
    columns = usage_columns()
    names = ", ".join(columns)
    values = ", ".join(
        {
            "request_id": "request_id || '_' || %(k)s",
            # Within the hour around the original time, never in the future.
            "created_at": "LEAST(created_at + (random() - 0.5) * interval '1 hour', now())",
        }.get(column, column)
        for column in columns
    )
    for k in range(1, COPIES + 1):
        started = time.perf_counter()
        count = sql(
            f"INSERT INTO proxy_usagerecord ({names}) SELECT {values} "
            "FROM proxy_usagerecord WHERE request_id ~ '^gen_[0-9a-f]+$'",
            {"k": k},
        )
        stamp(f"copy {k}/{COPIES}: {count:,} rows in {time.perf_counter() - started:.0f} s")
    sql("VACUUM ANALYZE proxy_usagerecord")


def insert_rate(seconds: float, month: dt.date | None = None) -> float:
    """Rows/s of the writer's insert path, batches of 1,000 back to back; rows are of now,
    or of random times in `month`."""
    import random

    from apps.usage.grouping import day_bounds, next_month
    from apps.usage.writer import insert_events
    from tests.usage.helpers import make_event

    rng = random.Random(7)
    if month is not None:
        low, high = day_bounds(month, next_month(month))
        span = (high - low).total_seconds()
    written = 0
    started = time.perf_counter()
    while time.perf_counter() - started < seconds:
        batch = [
            make_event(
                team_id=1 + i % 4,
                user_id=1 + i % 12,
                **(
                    {}
                    if month is None
                    else {"created_at": low + dt.timedelta(seconds=rng.random() * span)}
                ),
            )
            for i in range(1000)
        ]
        written += insert_events(batch)
    return written / (time.perf_counter() - started)


PLAIN = "usage_plain_ab"


def build_plain_copy(rows: int) -> None:
    """A plain (unpartitioned) table beside the partitioned one, with `rows` rows and the
    indexes migration 0003 left: the "before" side of the interleaved insert comparison."""
    columns = ", ".join(usage_columns())
    started = time.perf_counter()
    sql(f"DROP TABLE IF EXISTS {PLAIN}")
    sql(f"CREATE TABLE {PLAIN} (LIKE proxy_usagerecord INCLUDING DEFAULTS INCLUDING CONSTRAINTS)")
    sql(f"ALTER TABLE {PLAIN} ALTER COLUMN id ADD GENERATED BY DEFAULT AS IDENTITY")
    k = 0
    while sql(f"SELECT count(*) FROM {PLAIN}")[0][0] < rows:
        values = columns.replace("request_id", f"request_id || '_ab{k}'", 1)
        sql(f"INSERT INTO {PLAIN} ({columns}) SELECT {values} FROM proxy_usagerecord "
            f"LIMIT {rows - sql(f'SELECT count(*) FROM {PLAIN}')[0][0]}")  # fmt: skip
        k += 1
    for statement in (
        "ADD PRIMARY KEY (id)",
        "ADD UNIQUE (request_id)",
    ):
        sql(f"ALTER TABLE {PLAIN} {statement}")
    for column in ("created_at", "inserted_at", "api_key_id", "key_lineage_id", "user_id",
                   "team_id", "virtual_account_id", "model"):  # fmt: skip
        sql(f"CREATE INDEX ON {PLAIN} ({column})")
    sql(f"CREATE INDEX ON {PLAIN} (model varchar_pattern_ops)")
    sql(f"CREATE INDEX ON {PLAIN} (request_id varchar_pattern_ops)")
    sql(f"CREATE INDEX ON {PLAIN} (team_id, created_at)")
    sql(f"CREATE INDEX ON {PLAIN} USING gin (tags jsonb_path_ops)")
    sql(f"VACUUM ANALYZE {PLAIN}")
    stamp(f"plain copy for the A/B: {rows:,} rows in {time.perf_counter() - started:.0f} s")


def insert_ab(args) -> None:
    """Writer insert rate, interleaved so machine load hits every side alike: the plain
    10M-row table, this month's partition (young: few rows), and the fullest month's
    partition (a month's rows, as at month end)."""
    import statistics

    from apps.usage import writer
    from apps.usage.models import UsageLateDay

    ((rows,),) = sql("SELECT count(*) FROM proxy_usagerecord")
    build_plain_copy(max(rows, args.rows))
    ((fullest, count),) = sql(
        "SELECT date_trunc('month', created_at AT TIME ZONE 'UTC')::date, count(*) "
        "FROM proxy_usagerecord GROUP BY 1 ORDER BY 2 DESC LIMIT 1"
    )
    since = dt.datetime.now(dt.UTC)
    merge = writer._MERGE
    plain_merge = merge.replace("INTO proxy_usagerecord", f"INTO {PLAIN}").replace(
        "(request_id, created_at)", "(request_id)"
    )
    sides = {
        f"plain table, {max(rows, args.rows):,} rows": (plain_merge, fullest),
        "partitioned, this month's partition": (merge, None),
        f"partitioned, {fullest:%Y-%m} partition ({count:,} rows)": (merge, fullest),
    }
    rates: dict[str, list[float]] = {name: [] for name in sides}
    for _ in range(args.ab_rounds):
        for name, (statement, month) in sides.items():
            writer._MERGE = statement
            rates[name].append(insert_rate(args.ab_seconds, month))
    writer._MERGE = merge
    for name, found in rates.items():
        stamp(f"A/B insert_events into {name}: median {statistics.median(found):,.0f} rows/s "
              f"({', '.join(f'{r:,.0f}' for r in found)})")  # fmt: skip
    sql(f"DROP TABLE {PLAIN}")
    sql("DELETE FROM proxy_usagerecord WHERE inserted_at >= %s AND request_id LIKE 'req\\_%%'",
        [since])  # fmt: skip
    # The A/B's rows of a past month marked its days late; the reads must see them rolled up.
    UsageLateDay.objects.filter(marked_at__gte=since).delete()
    sql("VACUUM ANALYZE proxy_usagerecord")


def produce(redis_url: str, stream: str, seconds: float, rate: int) -> None:
    from bench.writer_bench import produce as writer_bench_produce

    writer_bench_produce(redis_url, stream, seconds, rate, 0)


async def writer_rate(seconds: float, rate: int) -> tuple[float, int]:
    """(rows/s the writer wrote while the producer ran at `rate`, stream depth when the
    producer stopped): counted every 5 s once the first rows are in, as writer_bench does."""
    from redis.asyncio import Redis

    from apps.usage.buffer import RedisStreamBuffer
    from apps.usage.models import UsageRecord
    from apps.usage.writer import UsageWriter

    stream = f"bench:partitions:{time.monotonic_ns()}"
    buffer = RedisStreamBuffer(os.environ["REDIS_URL"], stream=stream, spool_dir=tempfile.mkdtemp())
    writer = UsageWriter(buffer, batch_size=1000, flush_interval=0.05)
    written = UsageRecord.objects.filter(
        created_at__gte=dt.datetime.now(dt.UTC), model="bench-chat"
    )
    await writer.start()
    feeder = multiprocessing.get_context("spawn").Process(
        target=produce, args=(os.environ["REDIS_URL"], stream, seconds, rate)
    )
    feeder.start()
    samples: list[tuple[float, int]] = []
    while feeder.is_alive():
        await asyncio.sleep(5)
        count = await written.acount()
        if count:
            samples.append((time.monotonic(), count))
    client = Redis.from_url(os.environ["REDIS_URL"])
    depth = await client.xlen(stream)
    feeder.join()
    await writer.stop()
    await client.delete(stream)
    await client.aclose()
    if len(samples) < 2:
        return 0.0, depth
    (t0, n0), (t1, n1) = samples[0], samples[-1]
    return (n1 - n0) / (t1 - t0), depth


def insert_measures(label: str, args) -> None:
    since = dt.datetime.now(dt.UTC)
    rate = insert_rate(args.insert_seconds)
    stamp(f"{label}: insert_events {rate:,.0f} rows/s (1,000-row batches)")
    pipeline, depth = asyncio.run(writer_rate(args.writer_seconds, args.rate))
    stamp(
        f"{label}: writer {pipeline:,.0f} rows/s with the producer at {args.rate:,}/s "
        f"for {args.writer_seconds:.0f} s (stream depth when it stopped {depth:,})"
    )
    # Back to the same 10M rows for what follows.
    removed = sql(
        "DELETE FROM proxy_usagerecord WHERE created_at >= %s AND request_id LIKE 'req\\_%%'",
        [since],
    )
    sql("VACUUM ANALYZE proxy_usagerecord")
    stamp(f"{label}: {removed:,} benchmark rows removed again")


def oldest_full_month() -> dt.date:
    from apps.usage.grouping import next_month

    ((first,),) = sql("SELECT min(created_at) FROM proxy_usagerecord")
    return next_month(first.astimezone(dt.UTC).date().replace(day=1))


def time_delete(month: dt.date) -> None:
    from django.db import transaction

    from apps.usage.grouping import day_bounds, next_month

    low, high = day_bounds(month, next_month(month))
    started = time.perf_counter()
    with contextlib.suppress(RuntimeError), transaction.atomic():
        deleted = sql(
            "DELETE FROM proxy_usagerecord WHERE created_at >= %s AND created_at < %s", [low, high]
        )
        elapsed = time.perf_counter() - started
        raise RuntimeError("roll back")
    stamp(f"plain table: DELETE of {month:%Y-%m} ({deleted:,} rows) took {elapsed:.1f} s "
          "(rolled back; the VACUUM it would need afterwards is not counted)")  # fmt: skip


def rollups(days: int) -> None:
    from apps.usage.grouping import month_start, next_month
    from apps.usage.rollups import usage_rollup_month

    today = dt.datetime.now(dt.UTC).date()
    started = time.perf_counter()
    month = month_start(today - dt.timedelta(days=days + 1))
    while month <= today:
        usage_rollup_month(month=month)
        month = next_month(month)
    stamp(f"daily rollups (every month, with statements) in {time.perf_counter() - started:.0f} s")
    for table in ("dashboards_tagusagedaily", "dashboards_usagecubedaily",
                  "dashboards_latencyhistogramdaily"):  # fmt: skip
        sql(f"ANALYZE {table}")


def time_prune(month: dt.date) -> None:
    from django.test import override_settings

    from apps.usage.grouping import next_month
    from apps.usage.partitions import partition_name
    from apps.usage.retention import unrolled_days, usage_raw_prune

    # The partial month before it goes first, untimed: one whole month is what is measured.
    with override_settings(USAGE_RAW_RETENTION_DAYS=62):
        usage_raw_prune(today=month + dt.timedelta(days=62))
    name = partition_name(month)
    ((rows,),) = sql(f"SELECT count(*) FROM ONLY {name}")
    started = time.perf_counter()
    missing = unrolled_days(month, next_month(month))
    check = time.perf_counter() - started
    stamp(f"retention check of {name} (per-day counts vs rollups): {check:.1f} s, "
          f"{len(missing)} day(s) missing")  # fmt: skip
    # The month's last day 62 days ago: the shortest retention that drops it.
    today = next_month(month) + dt.timedelta(days=62)
    with override_settings(USAGE_RAW_RETENTION_DAYS=62):
        started = time.perf_counter()
        result = usage_raw_prune(today=today)
        elapsed = time.perf_counter() - started
    stamp(f"partitioned: prune of {name} ({rows:,} rows): {elapsed:.1f} s in all, "
          f"{elapsed - check:.2f} s of it DETACH + DROP; dropped {result.dropped}")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=10_000_000)
    parser.add_argument("--days", type=int, default=90)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--insert-seconds", type=float, default=30)
    parser.add_argument("--writer-seconds", type=float, default=60)
    parser.add_argument("--rate", type=int, default=6000)
    parser.add_argument("--ab-rounds", type=int, default=3)
    parser.add_argument("--ab-seconds", type=float, default=10)
    parser.add_argument("--ab-only", action="store_true", help="stop after the insert A/B")
    parser.add_argument("--keep-db", metavar="DIR", help="keep the database in DIR and resume")
    args = parser.parse_args()

    with contextlib.ExitStack() as stack:
        if args.keep_db:
            tmp = args.keep_db
            os.makedirs(tmp, exist_ok=True)
        else:
            tmp = stack.enter_context(tempfile.TemporaryDirectory(prefix="tollgate-bench-"))
        os.chmod(tmp, 0o755)
        database_url = stack.enter_context(postgres(Path(tmp)))
        redis_url, _ = stack.enter_context(redis(Path(tmp)))
        os.environ.update(DATABASE_URL=database_url, REDIS_URL=redis_url, DEBUG="true")
        os.environ.setdefault("DJANGO_SETTINGS_MODULE", "gateway_portal.settings")
        import django

        django.setup()
        from django.conf import settings
        from django.core.management import call_command
        from django.test import Client

        from apps.usage.partitions import is_partitioned

        settings.ALLOWED_HOSTS = ["*"]
        if not sql("SELECT to_regclass('django_migrations')")[0][0]:
            call_command("migrate", verbosity=0)
            call_command("migrate", "usage", "0003", verbosity=0)
        partitioned = is_partitioned()
        ((rows,),) = sql("SELECT count(*) FROM proxy_usagerecord")
        if not partitioned and rows < args.rows * 0.99:
            started = time.perf_counter()
            load(args.rows, args.days)
            ((rows,),) = sql("SELECT count(*) FROM proxy_usagerecord")
            stamp(f"loaded {rows:,} rows in {time.perf_counter() - started:.0f} s")
        stamp(f"{rows:,} usage rows; partitioned: {partitioned}")
        month = oldest_full_month()

        if not partitioned:
            from apps.usage import writer

            # The plain table's unique key is request_id alone: write as the writer did then.
            merge = writer._MERGE
            writer._MERGE = merge.replace("(request_id, created_at)", "(request_id)")
            insert_measures("plain table", args)
            writer._MERGE = merge
            time_delete(month)
            started = time.perf_counter()
            call_command("migrate", "usage", verbosity=0)
            stamp(f"migration 0004 at {rows:,} rows: {time.perf_counter() - started:.0f} s")
            sql("VACUUM ANALYZE proxy_usagerecord")
        call_command("migrate", verbosity=0)

        from apps.usage.models import UsageCubeDaily

        if not UsageCubeDaily.objects.exists():
            rollups(args.days)
        if not args.ab_only:
            insert_measures("partitioned", args)
        insert_ab(args)
        if args.ab_only:
            return

        from bench.dashboards_bench import existing_users, time_billing, time_pages

        users = existing_users()
        time_billing(users["finance"], args.runs)
        today = dt.datetime.now(dt.UTC).date()
        ranges = ["", f"start={today - dt.timedelta(days=args.days - 1)}&end={today}"]
        for role in ("finance", "team_admin"):
            client = Client()
            client.force_login(users[role])
            time_pages(client, f"{role} (default 30 days, then {args.days} days)", args.runs,
                       ranges)  # fmt: skip
        time_prune(month)


if __name__ == "__main__":
    main()
