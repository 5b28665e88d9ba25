"""Chargeback CSV benchmark: stream a chargeback over 1,000,000 usage rows.

    .venv/bin/python bench/chargeback_bench.py [--rows 1000000] [--group-by ...]

Starts a throwaway PostgreSQL (the test set-up's helper), migrates, COPYs the rows (October
2026, 5 teams, 4 models, customer/feature tags), then streams
`GET /api/usage/chargeback.csv?month=2026-10` through the Django test client as a finance
user, consuming the body chunk by chunk. Prints load time, time to first byte, total time,
output size, the Python heap peak during streaming (tracemalloc) and the process peak RSS
(resource.getrusage). Not a test: numbers only.
"""

import argparse
import os
import resource
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from scripts.run_tests import postgres  # noqa: E402


def rss_mb() -> float:
    # ru_maxrss is in KiB on Linux.
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--group-by", default="team,model,tag.customer_id,tag.feature")
    parser.add_argument("--granularity", default="day")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="tollgate-bench-") as tmp:
        os.chmod(tmp, 0o755)
        with postgres(Path(tmp)) as database_url:
            os.environ.update(DATABASE_URL=database_url, DEBUG="true")
            os.environ.setdefault("DJANGO_SETTINGS_MODULE", "gateway_portal.settings")
            import datetime as dt

            import django

            django.setup()
            from django.core.management import call_command
            from django.test import Client

            from apps.accounts.constants import Role
            from tests import factories
            from tests.billing.helpers import copy_usage

            call_command("migrate", verbosity=0)
            team = factories.make_team("Bench", slug="bench")
            finance = factories.make_user("bench-finance", team=team, role=Role.FINANCE)
            teams = [factories.make_team(slug=f"t{i}").pk for i in range(5)]
            started = time.perf_counter()
            start = dt.datetime(2026, 10, 1, tzinfo=dt.UTC)
            copy_usage(
                count=args.rows, start=start, span=dt.timedelta(days=31), team_ids=teams,
                seed=1, prefix="req_bench_",
            )  # fmt: skip
            from django.db import connection

            with connection.cursor() as cursor:
                cursor.execute("ANALYZE proxy_usagerecord")
            load = time.perf_counter() - started
            print(f"loaded {args.rows:,} rows in {load:.1f} s; peak RSS so far {rss_mb():.0f} MB")

            client = Client()
            client.force_login(finance)
            rss_before = rss_mb()
            tracemalloc.start()
            started = time.perf_counter()
            response = client.get(
                "/api/usage/chargeback.csv",
                {"month": "2026-10", "group_by": args.group_by, "granularity": args.granularity},
            )
            first = None
            size = lines = 0
            for chunk in response.streaming_content:
                if first is None:
                    first = time.perf_counter() - started
                size += len(chunk)
                lines += chunk.count(b"\n")
            total = time.perf_counter() - started
            _, heap_peak = tracemalloc.get_traced_memory()
            tracemalloc.stop()
            print(f"status {response.status_code}; {lines:,} CSV lines, {size / 1024:.0f} KiB")
            print(f"first byte {first:.2f} s, total {total:.2f} s")
            print(
                f"python heap peak while streaming {heap_peak / 2**20:.1f} MiB; process peak "
                f"RSS {rss_mb():.0f} MB (before request {rss_before:.0f} MB)"
            )


if __name__ == "__main__":
    main()
