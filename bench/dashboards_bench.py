"""Dashboard benchmark: server time of each dashboard page over 1,000,000 usage rows.

    .venv/bin/python bench/dashboards_bench.py [--rows 1000000] [--days 90] [--runs 5]
                                               [--today-rows 0] [--rollups] [--keep-db DIR]

Starts a throwaway PostgreSQL (the test set-up's helper), migrates, seeds a demo tenancy
(4 teams, 12 users with keys, 3 virtual accounts, the price catalog), writes the rows with
`generate_usage` (COPY) over `--days` days, ANALYZEs, then times every page through the
Django test client as a finance user (everything in scope) and as a team admin: one warm-up,
then `--runs` timed runs each; prints median and p95 (nearest rank). `--today-rows N` adds N
rows between midnight UTC and now (a busy gateway by evening). `--regions` splits the same
rows across two data regions (databases `tollgate_eu` and `tollgate_us` on the server, half
the teams in each), so the pages read both and merge. With `--rollups` the daily
rollups of past days are computed first, then one scheduled run (`usage.rollups_refresh`)
rolls today's settled hours, as beat would; both are timed. Not a test: numbers only.
"""

import argparse
import contextlib
import datetime as dt
import math
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from scripts.run_tests import postgres  # noqa: E402

PAGES = [
    "/dashboards/",
    "/dashboards/cost/",
    "/dashboards/cost/?group=tag:feature",
    "/dashboards/cost/?group=user",
    "/dashboards/latency/",
    "/dashboards/errors/",
    "/dashboards/tags/?key=customer_id",
    "/dashboards/tags/?key=customer_id&value=cust-0001",
    "/dashboards/?tag=feature%3Dsearch",
]


def p95(samples: list[float]) -> float:
    ordered = sorted(samples)
    return ordered[max(0, math.ceil(0.95 * len(ordered)) - 1)]


def seed_tenancy() -> dict:
    from apps.accounts.constants import Role
    from apps.billing.services import model_prices_import
    from tests import factories

    model_prices_import()
    teams = [factories.make_team(f"Team {i}", slug=f"team-{i}") for i in range(4)]
    users = {}
    for i in range(12):
        user = factories.make_user(f"user{i}", team=teams[i % 4])
        factories.make_key(user=user)
        users[user.username] = user
    for i in range(3):
        factories.make_virtual_account(teams[i], name=f"bot-{i}")
    users["finance"] = factories.make_user("fin", team=teams[0], role=Role.FINANCE)
    users["team_admin"] = factories.make_user("ta", team=teams[1], role=Role.TEAM_ADMIN)
    return users


def existing_users() -> dict:
    from django.contrib.auth import get_user_model

    by_name = {u.username: u for u in get_user_model().objects.filter(username__in=["fin", "ta"])}
    return {"finance": by_name["fin"], "team_admin": by_name["ta"]}


def time_pages(client, label: str, runs: int, ranges: list[str]) -> None:
    print(f"\n{label}: server time per page, {runs} runs after a warm-up (ms)")
    print(f"{'page':<58} {'median':>8} {'p95':>8} {'queries':>8}")
    from django.db import connection, reset_queries

    for suffix in ranges:
        for page in PAGES:
            url = page + (("&" if "?" in page else "?") + suffix if suffix else "")
            client.get(url)
            samples = []
            for _ in range(runs):
                reset_queries()
                started = time.perf_counter()
                response = client.get(url)
                samples.append((time.perf_counter() - started) * 1000)
                assert response.status_code == 200, (url, response.status_code)
            queries = len(connection.queries)
            print(f"{url:<58} {statistics.median(samples):8.0f} {p95(samples):8.0f} {queries:8d}")


def load_today(rows: int) -> None:
    """`rows` more rows between midnight UTC and now: generated over the last 24 hours, then
    moved into today's hours so far, keeping their order and mix."""
    from django.core.management import call_command
    from django.db import connection

    started = time.perf_counter()
    with connection.cursor() as cursor:
        cursor.execute("SELECT coalesce(max(id), 0) FROM proxy_usagerecord")
        (last_id,) = cursor.fetchone()
    call_command("generate_usage", rows=rows, days=1, seed=2)
    with connection.cursor() as cursor:
        cursor.execute(
            "UPDATE proxy_usagerecord SET created_at = date_trunc('day', now() AT TIME ZONE 'UTC')"
            " AT TIME ZONE 'UTC' + (created_at - (now() - interval '1 day'))"
            " * (extract(epoch FROM now() - (date_trunc('day', now() AT TIME ZONE 'UTC')"
            " AT TIME ZONE 'UTC')) / 86400.0) WHERE id > %s",
            [last_id],
        )
        cursor.execute("ANALYZE proxy_usagerecord")
    print(f"loaded {rows:,} rows into today so far in {time.perf_counter() - started:.1f} s")


def time_refresh() -> None:
    """One scheduled run as beat makes it: today's settled hours (all of them, the first
    time), then the next run, which has nothing new to roll."""
    from apps.usage.rollups import usage_rollups_refresh

    for label in ("first run of the day (every settled hour)", "next run (incremental)"):
        started = time.perf_counter()
        run = usage_rollups_refresh(recent_days=2)
        elapsed = time.perf_counter() - started
        print(f"usage.rollups_refresh, {label}: {elapsed:.1f} s, {len(run.hours)} hours, "
              f"{len(run.days)} days, {run.requests:,} rows rolled")  # fmt: skip


def consumed(response) -> bytes:
    """The whole body, streamed or not (a streamed one is only computed as it is read)."""
    assert response.status_code == 200, response.status_code
    if response.streaming:
        return b"".join(response.streaming_content)
    return response.content


def time_billing(finance, runs: int, days: int) -> None:
    """Month-to-date surfaces (live: rollups plus the raw rows after them), and one run of the
    scheduled rollup task over the current month and the last two complete days."""
    from django.test import Client

    from apps.accounts.models import Team
    from apps.billing.constants import SubjectType
    from apps.billing.models import Subscription, Tier
    from apps.billing.selectors.plans import tier_change_preview
    from apps.billing.services import subscription_change, tiers_seed_demo
    from apps.billing.subjects import BillingSubject
    from apps.usage.rollups import usage_rollups_refresh

    tiers_seed_demo()
    professional = Tier.objects.get(name="Professional")
    standard = Tier.objects.get(name="Standard")
    start = dt.datetime.now(dt.UTC).replace(day=1, hour=0, minute=0, second=0, microsecond=0)
    if not Subscription.objects.exists():
        for team in Team.objects.all():
            subject = BillingSubject(type=SubjectType.TEAM, team=team)
            subscription_change(subject=subject, tier=professional, at=start)
    client = Client()
    client.force_login(finance)
    subject = BillingSubject(type=SubjectType.TEAM, team=Team.objects.order_by("pk").first())
    sums = {"granularity": "day", "metrics": "requests,tokens,cost,error_rate"}
    today = dt.datetime.now(dt.UTC).date()
    long_range = {"start": str(today - dt.timedelta(days=days - 1)), "end": str(today)}
    print(f"\nbilling (finance): server time, {runs} runs after a warm-up (ms)")
    cases = [
        ("/billing/ (this month's statements)", lambda: client.get("/billing/")),
        ("/billing/insights/", lambda: client.get("/billing/insights/")),
        (
            "tier-change preview (selector)",
            lambda: tier_change_preview(subject=subject, tier=standard),
        ),
        # The usage API and the chargeback: the same query layer as the pages.
        (
            "/api/usage/ (team x model by day, month to date)",
            lambda: consumed(client.get("/api/usage/", {**sums, "group_by": "team,model"})),
        ),
        (
            f"/api/usage/ (by day and tag.customer_id, {days} days)",
            lambda: consumed(
                client.get("/api/usage/", {**sums, **long_range, "group_by": "tag.customer_id"})
            ),
        ),
        (
            "/api/usage/chargeback.csv (this month, team x customer)",
            lambda: consumed(
                client.get(
                    "/api/usage/chargeback.csv",
                    {"month": start.strftime("%Y-%m"), "group_by": "team,tag.customer_id"},
                )
            ),
        ),
    ]
    for label, call in cases:
        call()
        samples = []
        for _ in range(runs):
            started = time.perf_counter()
            call()
            samples.append((time.perf_counter() - started) * 1000)
        print(f"{label:<58} {statistics.median(samples):8.0f} {p95(samples):8.0f}")
    started = time.perf_counter()
    usage_rollups_refresh(recent_days=2)
    print(
        f"one scheduled rollup run (usage.rollups_refresh): {time.perf_counter() - started:.1f} s"
    )


def region_databases(database_url: str) -> str:
    """Two region databases on the bench's server, as DATA_REGIONS (kept with --keep-db)."""
    import psycopg

    base = database_url.rsplit("/", 1)[0]
    with psycopg.connect(database_url, autocommit=True) as conn:
        found = {row[0] for row in conn.execute("SELECT datname FROM pg_database")}
        for name in ("tollgate_eu", "tollgate_us"):
            if name not in found:
                conn.execute(f"CREATE DATABASE {name}")
    return f"eu={base}/tollgate_eu,us={base}/tollgate_us"


def for_each_region(statement: str) -> None:
    from apps.usage.regions import in_region, ledger_db, region_names

    for region in region_names():
        with in_region(region), ledger_db.cursor() as cursor:
            cursor.execute(statement)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--days", type=int, default=90)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--rollups", action="store_true", help="compute daily rollups first")
    parser.add_argument("--today-rows", type=int, default=0, help="extra rows in today so far")
    parser.add_argument(
        "--billing",
        action="store_true",
        help="also time the live statements, insights, a tier-change preview and one rollup run",
    )
    parser.add_argument(
        "--keep-db", metavar="DIR", help="keep the database in DIR and reuse it when loaded"
    )
    parser.add_argument(
        "--regions", action="store_true", help="two data regions, half the teams in each"
    )
    args = parser.parse_args()

    with contextlib.ExitStack() as stack:
        if args.keep_db:
            tmp = args.keep_db
            os.makedirs(tmp, exist_ok=True)
        else:
            tmp = stack.enter_context(tempfile.TemporaryDirectory(prefix="tollgate-bench-"))
        os.chmod(tmp, 0o755)
        with postgres(Path(tmp)) as database_url:
            os.environ.update(DATABASE_URL=database_url, DEBUG="true")
            if args.regions:
                os.environ.update(DATA_REGIONS=region_databases(database_url))
                os.environ.update(DATA_REGION_DEFAULT="us")
            os.environ.setdefault("DJANGO_SETTINGS_MODULE", "gateway_portal.settings")
            import django

            django.setup()
            from django.conf import settings
            from django.core.management import call_command
            from django.test import Client

            settings.ALLOWED_HOSTS = ["*"]
            call_command("migrate", verbosity=0)
            from apps.usage.models import UsageRecord

            if UsageRecord.objects.exists():
                users = existing_users()
                print(f"reusing {UsageRecord.objects.count():,} rows in {tmp}")
            else:
                users = seed_tenancy()
                if args.regions:
                    from apps.accounts.models import Team

                    Team.objects.filter(slug__in=["team-0", "team-1"]).update(data_region="eu")
                started = time.perf_counter()
                call_command("generate_usage", rows=args.rows, days=args.days, seed=1)
                for_each_region("ANALYZE proxy_usagerecord")
                print(f"loaded {args.rows:,} rows over {args.days} days in "
                      f"{time.perf_counter() - started:.1f} s")  # fmt: skip
                if args.today_rows:
                    load_today(args.today_rows)
            if args.rollups:
                from apps.usage.regions import in_region, region_names
                from apps.usage.rollup_tables import rollup_days

                started = time.perf_counter()
                today = dt.datetime.now(dt.UTC).date()
                for region in region_names():
                    with in_region(region):
                        rollup_days(start=today - dt.timedelta(days=args.days + 1), end=today)
                print(f"daily rollups computed in {time.perf_counter() - started:.1f} s")
                for region in region_names():
                    with in_region(region):
                        time_refresh()
                for table in (
                    "dashboards_tagusagedaily",
                    "dashboards_usagecubedaily",
                    "dashboards_latencyhistogramdaily",
                ):
                    for_each_region(f"ANALYZE {table}")

            if args.billing:
                time_billing(users["finance"], args.runs, args.days)

            today = dt.datetime.now(dt.UTC).date()
            ranges = ["", f"start={today - dt.timedelta(days=args.days - 1)}&end={today}"]
            for role in ("finance", "team_admin"):
                client = Client()
                client.force_login(users[role])
                time_pages(client, f"{role} (default 30 days, then {args.days} days)",
                           args.runs, ranges)  # fmt: skip


if __name__ == "__main__":
    main()
