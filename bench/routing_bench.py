"""Router cost: what routing adds per request with four deployments behind one model.

    .venv/bin/python bench/routing_bench.py [--deployments 4] [--iterations 20000]

Times, in-process and per request, `deployments_to_try` for each strategy (health state
warmed, one deployment cooled) plus the health accounting around the attempt (started +
succeeded) and the metrics observation of the finished request. Prints p50/p95/p99 in µs.
Not a test: numbers only. The proxy benchmark (bench/proxy_bench.py) measures the whole path.
"""

import argparse
import os
import random
import sys
import time
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "gateway_portal.settings")
os.environ.setdefault("DEBUG", "true")
os.environ["REDIS_URL"] = ""  # the router never talks to Redis; keep publishing off

import django

django.setup()

from apps.proxy import metrics, router  # noqa: E402
from apps.proxy.catalog import ModelEntry  # noqa: E402
from apps.proxy.health import board  # noqa: E402
from apps.proxy.providers.base import DeploymentInfo  # noqa: E402
from apps.usage.event import UsageEvent  # noqa: E402


class BenchCall:
    def __init__(self) -> None:
        self.health_pending = None
        self.stream = False


def percentiles(values: list[float]) -> str:
    values.sort()
    pick = lambda q: values[min(int(q * len(values)), len(values) - 1)]  # noqa: E731
    return f"p50 {pick(0.5):6.2f} µs  p95 {pick(0.95):6.2f} µs  p99 {pick(0.99):6.2f} µs"


def timed(fn, iterations: int) -> list[float]:
    out = []
    clock = time.perf_counter_ns
    for _ in range(iterations):
        start = clock()
        fn()
        out.append((clock() - start) / 1000)
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--deployments", type=int, default=4)
    parser.add_argument("--iterations", type=int, default=20000)
    args = parser.parse_args()
    deployments = tuple(
        DeploymentInfo(
            id=9000 + i,
            name=f"bench-{i}",
            model_name="bench",
            provider="openai",
            upstream_model="x",
            base_url="http://127.0.0.1:9/v1",
            priority=i,
            weight=10 * (i + 1),
        )
        for i in range(args.deployments)
    )
    generator = random.Random(1)
    for d in deployments:
        for _ in range(20):
            board.get(d.id).observe(generator.uniform(20, 400), generator.uniform(5, 100), 0.3)
        board.get(d.id).in_flight = generator.randrange(5)
    board.get(deployments[-1].id).trip(time.time(), 3600, "bench")
    body = {"model": "bench", "messages": [{"role": "user", "content": "hi"}]}
    print(f"{args.deployments} deployments, {args.iterations} iterations, one cooled")
    for strategy in ("priority", "weighted", "latency", "least_busy"):
        model = ModelEntry("bench", "chat", strategy, deployments, 0)
        results = timed(lambda m=model: router.deployments_to_try(m, body), args.iterations)
        print(f"  router {strategy:<11} {percentiles(results)}")

    def account() -> None:
        call = BenchCall()
        board.attempt_started(call, deployments[0])
        board.attempt_succeeded(call, 123.0)

    print(f"  health accounting  {percentiles(timed(account, args.iterations))}")
    event = UsageEvent(
        request_id="req_bench",
        created_at=datetime.now(UTC),
        api_key_id=1,
        key_lineage_id=None,
        user_id=1,
        team_id=1,
        virtual_account_id=None,
        end_user="",
        model="bench",
        deployment="bench-0",
        provider="openai",
        request_type="chat",
        is_stream=False,
        status_code=200,
        error_type="",
        input_tokens=12,
        output_tokens=34,
        cached_tokens=0,
        tokens_estimated=False,
        cost_usd=Decimal("0.0001"),
        latency_ms=150.0,
        ttft_ms=None,
        upstream_latency_ms=140.0,
        overhead_ms=10.0,
        attempts=1,
        client_disconnected=False,
        tags={"feature": "bench"},
        request_body=None,
        response_body=None,
    )
    results = timed(lambda: metrics.observe_usage(event, team="bench"), args.iterations)
    print(f"  metrics observe    {percentiles(results)}")


if __name__ == "__main__":
    main()
