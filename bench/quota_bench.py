"""Quota check benchmark: the real engine and Redis store, 20 rules, a few of them matching.

    .venv/bin/python bench/quota_bench.py [--iterations 5000] [--redis-url redis://...]

Without --redis-url (or REDIS_URL) it starts a throwaway redis-server on a free port. Runs
sequentially on one event loop (uvloop when installed), like one gateway worker handling one
request at a time, and prints p50/p95/p99 in milliseconds of:
  - redis PING (the bare round trip, for scale),
  - engine.check alone and engine.settle alone,
  - check + settle (what a request pays: two EVALSHA round trips),
  - check for a key only the one rule without subjects covers (1 counter instead of 5).
Not a test: numbers only.
"""

import argparse
import asyncio
import os
import shutil
import socket
import statistics
import subprocess
import sys
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from redis.asyncio import Redis  # noqa: E402

from apps.quotas.counters import AsyncRedisCounterStore  # noqa: E402
from apps.quotas.engine import QuotaEngine  # noqa: E402
from apps.quotas.rules import parse_config  # noqa: E402

SUBJECTS = frozenset({"team:frontend", "user:alice", "user:alice@example.com"})
TAGS = {"environment": "production", "customer_id": "acme"}


def config_yaml(run: str) -> str:
    """20 rules; 5 match the benchmark's request (requests, tokens, per-customer, budget)."""
    rules = [
        ("frontend-minute", "team:frontend", "", "", "requests_per_minute", "100000000"),
        ("alice-tokens", "user:alice", "", "", "tokens_per_day", "1000000000"),
        ("everyone-daily", "", "", "", "requests_per_day", "1000000000"),
        (
            "customer-month",
            "team:frontend",
            "",
            "per: metadata.customer_id",
            "tokens_per_month",
            "1000000000",
        ),
        ("frontend-budget", "team:frontend", "", "", "cost_usd_per_month", "1000000"),
    ]
    for n in range(10):  # other teams: not matching by subject
        rules.append((f"team-{n}", f"team:other-{n}", "", "", "requests_per_day", "1000"))
    for n in range(3):  # right team, other model
        rules.append(
            (f"model-{n}", "team:frontend", f"other-model-{n}", "", "tokens_per_hour", "1000")
        )
    for n in range(2):  # everyone, but only for staging traffic
        rules.append((f"staging-{n}", "", "", "", "requests_per_hour", "1000"))
    lines = ["name: bench", "type: gateway-rate-limiting-config", "rules:"]
    for rule_id, subject, model, per, unit, limit in rules:
        lines.append(f"  - id: {run}-{rule_id}")
        when = []
        if subject:
            when.append(f"subjects: ['{subject}']")
        if model:
            when.append(f"models: ['{model}']")
        if rule_id.startswith("staging"):
            when.append("metadata: {environment: staging}")
        if when:
            lines.append(f"    when: {{{', '.join(when)}}}")
        if per:
            lines.append(f"    {per}")
        lines += [f"    limit_to: {limit}", f"    unit: {unit}"]
    return "\n".join(lines) + "\n"


def percentiles(samples: list[float]) -> str:
    ordered = sorted(samples)
    cuts = statistics.quantiles(ordered, n=100)
    return f"p50 {cuts[49]:.3f} ms   p95 {cuts[94]:.3f} ms   p99 {cuts[98]:.3f} ms"


async def bench(redis_url: str, iterations: int) -> None:
    run = f"bench{uuid.uuid4().hex[:8]}"
    config = parse_config(config_yaml(run))
    store = AsyncRedisCounterStore(redis_url)
    engine = QuotaEngine(config, store)
    matched = engine.matching(SUBJECTS, "gpt-4o", TAGS)
    print(f"{len(config.rules)} rules, {len(matched)} matching: {[r.id for r, _ in matched]}")
    client = Redis.from_url(redis_url)
    clock = time.perf_counter

    async def check():
        return await engine.check(
            subject_ids=SUBJECTS,
            model="gpt-4o",
            tags=TAGS,
            request_tokens_estimate=120,
            max_output_tokens=256,
            cost_estimate_usd=0.004,
        )

    for _ in range(500):  # warm-up: connections, script cache, window cache
        admission = await check()
        await engine.settle(admission, input_tokens=120, output_tokens=80, cost_usd=0.002)
        await client.ping()
    ping, checks, settles, both, none = [], [], [], [], []
    for _ in range(iterations):
        start = clock()
        await client.ping()
        ping.append((clock() - start) * 1000)
        start = clock()
        admission = await check()
        middle = clock()
        await engine.settle(admission, input_tokens=120, output_tokens=80, cost_usd=0.002)
        end = clock()
        assert admission.allowed
        checks.append((middle - start) * 1000)
        settles.append((end - middle) * 1000)
        both.append((end - start) * 1000)
        start = clock()
        await engine.check(
            subject_ids=frozenset({"team:nobody"}),
            model="gpt-4o",
            tags={},
            request_tokens_estimate=1,
        )
        none.append((clock() - start) * 1000)
    print(f"iterations: {iterations}")
    print(f"redis PING            {percentiles(ping)}")
    print(f"check                 {percentiles(checks)}")
    print(f"settle                {percentiles(settles)}")
    print(f"check + settle        {percentiles(both)}")
    print(f"check, 1 rule matches {percentiles(none)}")
    await client.aclose()
    await store.aclose()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--iterations", type=int, default=5000)
    parser.add_argument("--redis-url", default=os.environ.get("REDIS_URL", ""))
    args = parser.parse_args()
    server = None
    url = args.redis_url
    if not url:
        binary = shutil.which("redis-server")
        if binary is None:
            sys.exit("no --redis-url and no redis-server binary")
        port = free_port()
        server = subprocess.Popen(
            [binary, "--port", str(port), "--save", "", "--appendonly", "no"],
            stdout=subprocess.DEVNULL,
        )
        url = f"redis://127.0.0.1:{port}/0"
        time.sleep(0.3)
    try:
        try:
            import uvloop

            runner = uvloop.run
        except ImportError:
            runner = asyncio.run
        runner(bench(url, args.iterations))
    finally:
        if server is not None:
            server.terminate()
            server.wait(5)


if __name__ == "__main__":
    main()
