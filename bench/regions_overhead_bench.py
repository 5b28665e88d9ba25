"""What reading two data regions adds to each dashboard page, measured side by side.

    .venv/bin/python bench/regions_overhead_bench.py --one DIR1 --two DIR2 [--runs 7]

DIR1 and DIR2 are databases kept by `bench/dashboards_bench.py`: the same rows in one
database (`--keep-db DIR1 --rollups`) and split across two region databases
(`--keep-db DIR2 --regions --rollups`). Load them with those commands first.

One child process serves each database (Django test client, DEBUG off, as in production).
Every page is asked of both in turn, `--runs` times after a warm-up, so that the VM's
drift falls on both alike; the table gives each side's median and the overhead. Not a
test: numbers only.
"""

import argparse
import datetime as dt
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.dashboards_bench import PAGES  # noqa: E402


def serve(directory: str, regions: bool) -> None:
    """Child: answer "role url" lines with the page's server time in ms."""
    from scripts.run_tests import postgres

    with postgres(Path(directory)) as database_url:
        os.environ.update(DATABASE_URL=database_url, DEBUG="false")
        os.environ.setdefault("SECRET_KEY", "bench-only-" + "x" * 50)
        if regions:
            base = database_url.rsplit("/", 1)[0]
            os.environ.update(
                DATA_REGIONS=f"eu={base}/tollgate_eu,us={base}/tollgate_us",
                DATA_REGION_DEFAULT="us",
            )
        os.environ.setdefault("DJANGO_SETTINGS_MODULE", "gateway_portal.settings")
        import django

        django.setup()
        from django.conf import settings
        from django.test import Client

        from bench.dashboards_bench import existing_users

        settings.ALLOWED_HOSTS = ["*"]
        clients = {}
        for role, user in existing_users().items():
            clients[role] = Client()
            clients[role].force_login(user)
        print("ready", flush=True)
        for line in sys.stdin:
            role, url = line.split()
            started = time.perf_counter()
            response = clients[role].get(url)
            elapsed = (time.perf_counter() - started) * 1000
            assert response.status_code == 200, (url, response.status_code)
            print(json.dumps(elapsed), flush=True)


def ask(child: subprocess.Popen, role: str, url: str) -> float:
    assert child.stdin and child.stdout
    child.stdin.write(f"{role} {url}\n")
    child.stdin.flush()
    return float(json.loads(child.stdout.readline()))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--one", required=True, help="the rows in one database (DIR1)")
    parser.add_argument("--two", required=True, help="the same rows in two regions (DIR2)")
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--days", type=int, default=90)
    args = parser.parse_args()

    def start(directory: str, regions: bool) -> subprocess.Popen:
        child = subprocess.Popen(
            [sys.executable, __file__, "--child", directory, *(["--regions"] if regions else [])],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert child.stdout and child.stdout.readline().strip() == "ready"
        return child

    one, two = start(args.one, False), start(args.two, True)
    try:
        today = dt.datetime.now(dt.UTC).date()
        ranges = ["", f"start={today - dt.timedelta(days=args.days - 1)}&end={today}"]
        for role in ("finance", "team_admin"):
            print(f"\n{role}: median server time of {args.runs} alternating runs (ms)")
            print(f"{'page':<70} {'one':>7} {'two':>7} {'overhead':>9}")
            sums = [0.0, 0.0]
            for suffix in ranges:
                for page in PAGES:
                    url = page + (("&" if "?" in page else "?") + suffix if suffix else "")
                    ask(one, role, url), ask(two, role, url)
                    a, b = [], []
                    for _ in range(args.runs):
                        a.append(ask(one, role, url))
                        b.append(ask(two, role, url))
                    ma, mb = statistics.median(a), statistics.median(b)
                    sums[0] += ma
                    sums[1] += mb
                    print(f"{url:<70} {ma:7.0f} {mb:7.0f} {(mb / ma - 1) * 100:+8.0f}%")
            print(
                f"{'sum':<70} {sums[0]:7.0f} {sums[1]:7.0f} {(sums[1] / sums[0] - 1) * 100:+8.0f}%"
            )
    finally:
        for child in (one, two):
            assert child.stdin
            child.stdin.close()
            child.wait(timeout=60)


if __name__ == "__main__":
    if sys.argv[1:2] == ["--child"]:
        serve(sys.argv[2], "--regions" in sys.argv)
    else:
        main()
