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
import multiprocessing
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


def produce(redis_url: str, stream: str, seconds: float, rate: int, bad_every: int) -> None:
    """XADD events at `rate` per second for `seconds`, in pipelines of 1/20 s."""
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "gateway_portal.settings")
    import django

    django.setup()
    import redis as redis_client

    from apps.usage.buffer import PAYLOAD_FIELD
    from apps.usage.event import UsageEvent

    client = redis_client.Redis.from_url(redis_url)
    sent = 0
    chunk = max(rate // 20, 1)
    started = time.monotonic()
    while time.monotonic() - started < seconds:
        tick = time.monotonic()
        pipe = client.pipeline(transaction=False)
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
        pipe.execute()
        time.sleep(max(0.0, 0.05 - (time.monotonic() - tick)))
    print(f"producer: {sent:,} events in {time.monotonic() - started:.0f} s", flush=True)


async def run(seconds: float, rate: int, bad_every: int) -> None:
    from redis.asyncio import Redis

    from apps.usage.buffer import RedisStreamBuffer
    from apps.usage.models import UsageDeadLetter, UsageRecord
    from apps.usage.writer import UsageWriter

    stream = "bench:usage"
    buffer = RedisStreamBuffer(os.environ["REDIS_URL"], stream=stream, spool_dir=tempfile.mkdtemp())
    writer = UsageWriter(buffer, batch_size=1000, flush_interval=0.05)
    producer = Redis.from_url(os.environ["REDIS_URL"])
    await writer.start()
    started = time.monotonic()

    # The producer is another process, as gateways are: the writer's loop only writes.
    feeder = multiprocessing.get_context("spawn").Process(
        target=produce, args=(os.environ["REDIS_URL"], stream, seconds, rate, bad_every)
    )
    feeder.start()

    async def report() -> None:
        last_rows, last_at = 0, time.monotonic()
        while time.monotonic() - started < seconds + 30:
            await asyncio.sleep(5)
            rows = await UsageRecord.objects.acount()
            now = time.monotonic()
            depth = await producer.xlen(stream)
            print(
                f"t={now - started:5.0f}s written={rows:>8,} "
                f"rate={(rows - last_rows) / (now - last_at):>7,.0f}/s "
                f"stream_depth={depth:>6,} rss={rss_mb():.0f}MB",
                flush=True,
            )
            last_rows, last_at = rows, now
            if now - started > seconds and depth == 0:
                return

    await report()
    feeder.join()
    await writer.stop()
    rows = await UsageRecord.objects.acount()
    dead = await UsageDeadLetter.objects.acount()
    elapsed = time.monotonic() - started
    print(f"total: {rows:,} written, {dead:,} dead-lettered in {elapsed:.0f} s")
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
