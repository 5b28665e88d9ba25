"""Issue 4's concurrency guarantee: N allowed out of 10·N concurrent requests, two workers.

One uvicorn server with `--workers 2` (two processes sharing the listening socket) against
the run's real Redis; 200 requests at up to 50 in flight must yield exactly 20 successes and
180 refusals that name the rule. Services mode only: embedded counters are per process.
"""

import asyncio
import time
import uuid
from collections import Counter
from pathlib import Path

import httpx
import pytest

from apps.quotas.services import quota_config_apply
from tests import factories
from tests.proxy.conftest import start_gateway, stop_gateway
from tests.proxy.helpers import declare_model

pytestmark = pytest.mark.django_db(transaction=True)

LIMIT = 20
REQUESTS = 10 * LIMIT
CONCURRENCY = 50


async def fire(url: str, secret: str, model: str) -> list[httpx.Response]:
    gate = asyncio.Semaphore(CONCURRENCY)
    limits = httpx.Limits(max_connections=CONCURRENCY, max_keepalive_connections=CONCURRENCY)
    async with httpx.AsyncClient(base_url=url, timeout=30, limits=limits) as client:

        async def one() -> httpx.Response:
            async with gate:
                return await client.post(
                    "/v1/chat/completions",
                    headers={"Authorization": f"Bearer {secret}"},
                    json={"model": model, "messages": [{"role": "user", "content": "hi"}]},
                )

        return await asyncio.gather(*(one() for _ in range(REQUESTS)))


def worker_pids(pid: int) -> list[str]:
    """The uvicorn supervisor's worker processes (Linux /proc; its multiprocessing resource
    tracker is a child too, so keep only the spawned workers)."""
    children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    return [
        child for child in children if b"spawn_main" in Path(f"/proc/{child}/cmdline").read_bytes()
    ]


def wait_for_a_fresh_minute(margin: float = 20.0) -> None:
    # The minute window is fixed on the UTC clock: a burst across its edge would be allowed
    # twice. Start early enough in a minute for the burst to finish inside it.
    second = time.time() % 60
    if second > 60 - margin:
        time.sleep(60 - second + 0.5)


def test_exactly_n_of_10n_concurrent_requests_pass_across_two_workers(team, user):
    rule_id = f"two-workers-{uuid.uuid4().hex[:12]}"
    _, secret = factories.make_key(user=user)
    server = start_gateway(workers=2)
    try:
        declare_model("two-workers-chat", server.simulator_url, "demo-chat")
        server.wait_for_model(secret, "two-workers-chat")
        quota_config_apply(
            yaml_text=f"""
name: two-workers
type: gateway-rate-limiting-config
rules:
  - id: {rule_id}
    when: {{subjects: ["team:{team.slug}"], models: ["two-workers-chat"]}}
    limit_to: {LIMIT}
    unit: requests_per_minute
"""
        )
        # Both workers reload every 0.2 s; the catalog too (wait_for_model saw one worker).
        time.sleep(1.5)
        assert len(worker_pids(server.process.pid)) == 2
        wait_for_a_fresh_minute()
        responses = asyncio.run(fire(server.url, secret, "two-workers-chat"))
    finally:
        stop_gateway(server)
    statuses = Counter(response.status_code for response in responses)
    assert statuses == {200: LIMIT, 429: REQUESTS - LIMIT}, (statuses, server.log()[-2000:])
    for response in responses:
        if response.status_code == 429:
            error = response.json()["error"]
            assert error["code"] == "quota_exceeded"
            assert rule_id in error["message"]
            assert [rule["rule"] for rule in error["broken_rules"]] == [rule_id]
