"""Usage writer benchmark: sustained rows/s into PostgreSQL, pending depth and RSS over time.

    .venv/bin/python bench/writer_bench.py [--seconds 60] [--rate 6000] [--bad-every 0]

Starts a throwaway PostgreSQL and Redis (the test set-up's helpers) and migrates. A producer
XADDs usage events to the Redis stream at `--rate` events/s (as gateways would), while one
`UsageWriter` drains the stream in batches into PostgreSQL, exactly as in a gateway process.
Every 5 s it prints rows written per second, the stream's depth (pending must not grow) and
the writer process's RSS (must stay flat). `--bad-every N` makes every Nth event one the
database refuses, to measure the cost of bisecting and dead-lettering. Not a test: numbers
only.
"""

import argparse
import asyncio
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from scripts.run_tests import postgres, redis  # noqa: E402


def rss_mb() -> float:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


async def run(seconds: float, rate: int, bad_every: int) -> None:
    from redis.asyncio import Redis

    from apps.usage.buffer import PAYLOAD_FIELD, RedisStreamBuffer
    from apps.usage.event import UsageEvent
    from apps.usage.models import UsageDeadLetter, UsageRecord
    from apps.usage.writer import UsageWriter

    stream = "bench:usage"
    buffer = RedisStreamBuffer(os.environ["REDIS_URL"], stream=stream, spool_dir=tempfile.mkdtemp())
    writer = UsageWriter(buffer, batch_size=1000, flush_interval=0.05)
    producer = Redis.from_url(os.environ["REDIS_URL"])
    await writer.start()
    sent = 0
    started = time.monotonic()

    async def produce() -> None:
        nonlocal sent
        chunk = max(rate // 20, 1)
        while time.monotonic() - started < seconds:
            tick = time.monotonic()
            async with producer.pipeline(transaction=False) as pipe:
                for _ in range(chunk):
                    sent += 1
                    event = UsageEvent(
                        model="bench-chat",
                        request_type="chat",
                        status_code=-1 if bad_every and sent % bad_every == 0 else 200,
                        team_id=1 + sent % 4,
                        user_id=1 + sent % 12,
                        input_tokens=120,
                        output_tokens=30,
                        latency_ms=80.0,
                        tags={"feature": "search", "customer_id": f"c{sent % 50}"},
                    )
                    pipe.xadd(stream, {PAYLOAD_FIELD: event.to_json()})
                await pipe.execute()
            await asyncio.sleep(max(0.0, 0.05 - (time.monotonic() - tick)))

    async def report() -> None:
        last_rows, last_at = 0, time.monotonic()
        while time.monotonic() - started < seconds + 30:
            await asyncio.sleep(5)
            rows = await UsageRecord.objects.acount()
            now = time.monotonic()
            depth = await producer.xlen(stream)
            print(
                f"t={now - started:5.0f}s sent={sent:>8,} written={rows:>8,} "
                f"rate={(rows - last_rows) / (now - last_at):>7,.0f}/s "
                f"stream_depth={depth:>6,} rss={rss_mb():.0f}MB",
                flush=True,
            )
            last_rows, last_at = rows, now
            if now - started > seconds and depth == 0:
                return

    await asyncio.gather(produce(), report())
    await writer.stop()
    rows = await UsageRecord.objects.acount()
    dead = await UsageDeadLetter.objects.acount()
    elapsed = time.monotonic() - started
    print(f"total: {sent:,} sent, {rows:,} written, {dead:,} dead-lettered in {elapsed:.0f} s")
    await producer.aclose()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=60)
    parser.add_argument("--rate", type=int, default=6000)
    parser.add_argument("--bad-every", type=int, default=0)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="tollgate-bench-") as tmp:
        workdir = Path(tmp)
        os.chmod(workdir, 0o755)
        with postgres(workdir) as database_url, redis(workdir) as (redis_url, _):
            os.environ.update(DEBUG="true", DATABASE_URL=database_url, REDIS_URL=redis_url)
            os.environ.setdefault("DJANGO_SETTINGS_MODULE", "gateway_portal.settings")
            import django
            from django.core.management import call_command

            django.setup()
            call_command("migrate", verbosity=0)
            asyncio.run(run(args.seconds, args.rate, args.bad_every))


if __name__ == "__main__":
    main()
