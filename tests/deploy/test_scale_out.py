"""Scale-out: two gateway instances (the Procfile's `web` line, two workers each) behind
HAProxy (the Procfile's `lb` line, deploy/haproxy.cfg, round robin), sharing the test
PostgreSQL and Redis, with a standalone simulator as their upstream.

Shown: quota admission is exact across instances; a revocation reaches both within a
second; a breaker tripped on one instance routes the other; `/metrics` of both instances sums
to the ledger; replacing an instance (drained at the balancer, SIGTERM, a new one) fails no
call; a SIGKILLed instance loses no answered request. About 2.5 minutes on 2 cores.
"""

import asyncio
import os
import signal
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from apps.accounts.services import api_key_revoke
from apps.quotas.services import quota_config_apply
from apps.usage.models import UsageRecord
from tests import factories
from tests.deploy.conftest import (
    Balancer,
    haproxy_or_skip,
    kill_instance,
    spawn_instance,
    start_balancer,
    start_simulator_process,
    stop_process,
    wait_healthy,
)
from tests.proxy.conftest import (
    SIMULATOR_MODEL_KNOBS,
    GatewayServer,
    purge_usage_rows,
    stop_gateway,
)
from tests.proxy.helpers import declare_model

pytestmark = [pytest.mark.slow, pytest.mark.services, pytest.mark.django_db(transaction=True)]

INSTANCE_ENV = {
    # Keys stay cached for 5 minutes: a refusal within a second can only be the pub/sub event.
    "KEY_CACHE_TTL": "300",
    "HEALTH_BREAKER_FAILURES": "2",
    "HEALTH_BREAKER_COOLDOWN_SECONDS": "60",
    "HEALTH_SYNC_SECONDS": "0.2",
    # A dead instance's unacknowledged usage entries are reclaimed after 1 s, not 30.
    "USAGE_CLAIM_IDLE_MS": "1000",
    "DRAIN_SECONDS": "10",
}
MESSAGES = [{"role": "user", "content": "hello"}]
UPSTREAM_KNOBS = {
    **SIMULATOR_MODEL_KNOBS,
    "so-paced": {"latency_ms": 150, "ttft_ms": 50, "tokens_per_second": 300, "output_tokens": 30},
}


@dataclass
class Cluster:
    balancer: Balancer
    a: GatewayServer
    b: GatewayServer
    upstream: str

    @property
    def lb(self) -> str:
        return self.balancer.url

    def declare(self, secret: str, models: dict[str, tuple[str, ...]]) -> None:
        """Models by name, each served by simulator deployments in order; waits until both
        instances serve them (one catalog load brings them all)."""
        for name, upstreams in models.items():
            declare_model(name, f"{self.upstream}/v1", *upstreams)
        for server in (self.a, self.b):
            server.wait_for_model(secret, list(models)[-1])


@pytest.fixture(scope="module")
def cluster(django_db_setup, django_db_blocker) -> Iterator[Cluster]:
    haproxy_or_skip()  # before anything starts
    upstream, simulator = start_simulator_process(UPSTREAM_KNOBS)
    # Started together, then waited for: each instance takes seconds to import and warm up.
    a, b = spawn_instance(INSTANCE_ENV), spawn_instance(INSTANCE_ENV)
    wait_healthy(a)
    wait_healthy(b)
    balancer = start_balancer([a.url.removeprefix("http://"), b.url.removeprefix("http://")])
    running = Cluster(balancer=balancer, a=a, b=b, upstream=upstream)
    yield running
    stop_process(balancer.process)
    for server in (running.a, running.b):
        stop_gateway(server)
    stop_process(simulator)
    with django_db_blocker.unblock():
        purge_usage_rows()


# --- helpers --------------------------------------------------------------------------------


def metric_samples(url: str, name: str) -> list:
    text = httpx.get(f"{url}/metrics", headers={"Connection": "close"}, timeout=10).text
    return [
        sample
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == name
    ]


def requests_by_model_status(url: str, model_prefix: str) -> Counter:
    counted: Counter = Counter()
    for sample in metric_samples(url, "tollgate_requests_total"):
        if sample.labels["model"].startswith(model_prefix):
            counted[(sample.labels["model"], int(sample.labels["status"]))] += int(sample.value)
    return counted


def breaker_state(url: str, model: str, deployment: str) -> float | None:
    for sample in metric_samples(url, "tollgate_deployment_breaker_state"):
        if sample.labels == {"model": model, "deployment": deployment}:
            return sample.value
    return None


def chat(url: str, secret: str, model: str) -> httpx.Response:
    # A new connection each time, so successive calls spread over the instance's workers.
    return httpx.post(
        f"{url}/v1/chat/completions",
        json={"model": model, "messages": MESSAGES},
        headers={"Authorization": f"Bearer {secret}", "Connection": "close"},
        timeout=30,
    )


def models_status(url: str, secret: str) -> int:
    return httpx.get(
        f"{url}/v1/models",
        headers={"Authorization": f"Bearer {secret}", "Connection": "close"},
        timeout=10,
    ).status_code


def wait_for_rows(request_ids: list[str], timeout: float = 20.0) -> list[UsageRecord]:
    deadline = time.monotonic() + timeout
    while True:
        rows = list(UsageRecord.objects.filter(request_id__in=request_ids))
        if {row.request_id for row in rows} >= set(request_ids):
            return rows
        if time.monotonic() > deadline:
            missing = set(request_ids) - {row.request_id for row in rows}
            raise AssertionError(f"{len(missing)} of {len(request_ids)} usage rows missing")
        time.sleep(0.1)


def clear_of_the_hour_boundary() -> None:
    """Hourly windows are fixed on the UTC clock: 200 requests must not straddle two."""
    now = datetime.now(UTC)
    if now.minute == 59 and now.second >= 50:
        time.sleep(61 - now.second)


@dataclass
class Outcome:
    status: int | None  # None: no HTTP answer at all (refused, reset)
    request_id: str
    complete: bool  # the whole answer arrived: a JSON completion, or a stream up to [DONE]
    stream: bool
    error: str = ""  # the client's exception, when there was no complete answer


async def call_once(client: httpx.AsyncClient, secret: str, model: str, stream: bool) -> Outcome:
    body = {"model": model, "messages": MESSAGES, "stream": stream}
    try:
        async with client.stream(
            "POST",
            "/v1/chat/completions",
            json=body,
            headers={"Authorization": f"Bearer {secret}"},
        ) as response:
            data = b"".join([chunk async for chunk in response.aiter_bytes()])
    except httpx.HTTPError as exc:
        return Outcome(None, "", False, stream, error=repr(exc))
    complete = response.status_code == 200 and (
        b"data: [DONE]" in data if stream else b'"choices"' in data
    )
    return Outcome(response.status_code, response.headers.get("x-request-id", ""), complete, stream)


async def burst(url: str, secret: str, model: str, count: int) -> list[Outcome]:
    """`count` requests at once, each on its own connection."""
    limits = httpx.Limits(max_connections=count, max_keepalive_connections=0)
    async with httpx.AsyncClient(base_url=url, limits=limits, timeout=60) as client:
        return await asyncio.gather(
            *(call_once(client, secret, model, stream=False) for _ in range(count))
        )


class Load(threading.Thread):
    """Clients calling through the balancer until stopped, half of the calls streamed; each
    client keeps its connection alive, as SDK clients do."""

    def __init__(self, url: str, secret: str, model: str, clients: int = 6) -> None:
        super().__init__(daemon=True)
        self.url, self.secret, self.model, self.clients = url, secret, model, clients
        self.outcomes: list[tuple[float, Outcome]] = []
        self._halt = threading.Event()

    def run(self) -> None:
        asyncio.run(self._main())

    async def _main(self) -> None:
        await asyncio.gather(*(self._client(index) for index in range(self.clients)))

    async def _client(self, index: int) -> None:
        async with httpx.AsyncClient(base_url=self.url, timeout=30) as client:
            calls = 0
            while not self._halt.is_set():
                outcome = await call_once(client, self.secret, self.model, (index + calls) % 2 == 0)
                self.outcomes.append((time.monotonic(), outcome))
                calls += 1

    def stop(self) -> list[tuple[float, Outcome]]:
        self._halt.set()
        self.join(60)
        return self.outcomes


def supervisor_lines(*logs: str | GatewayServer) -> list[str]:
    """What the instances' uvicorn supervisors said about their workers (a worker it found
    hung and killed cuts the calls it was serving)."""
    texts = [log if isinstance(log, str) else log.log() for log in logs]
    words = ("died", "Stopping", "Started parent", "Waiting for", "Terminated", "ERROR")
    return [line for text in texts for line in text.splitlines() if any(w in line for w in words)]


# --- the tests ------------------------------------------------------------------------------


def test_quota_admits_exactly_the_limit_across_instances(cluster, team, user):
    secret = factories.make_key(user=user)[1]
    cluster.declare(secret, {"so-quota": ("demo-chat",), "so-warm": ("demo-chat",)})
    rule = f"so-burst-{time.monotonic_ns()}"
    quota_config_apply(
        yaml_text=f"""
name: scale-out
type: gateway-rate-limiting-config
rules:
  - id: {rule}
    when: {{subjects: ["team:{team.slug}"], models: ["so-quota"]}}
    limit_to: 20
    unit: requests_per_hour
  - id: {rule}-warm-up
    when: {{subjects: ["team:{team.slug}"], models: ["so-warm"]}}
    limit_to: 1000000
    unit: requests_per_hour
"""
    )
    time.sleep(1.0)  # every worker of both instances reloads quota configs every 0.2 s
    # Each worker opens its Redis connections for counters on demand. Opened by a burst of
    # 50 at once on this loaded 2-core machine, some take longer than the counter store's
    # 0.5 s connect timeout and the rule fails open (`on_store_failure: open`): 33 to 137
    # of 200 were admitted in our runs. So a first burst, on a rule that cannot refuse,
    # opens the pools; the measured burst then shows what the shared counter decides.
    asyncio.run(burst(cluster.lb, secret, "so-warm", 200))
    logs_before = [len(server.log()) for server in (cluster.a, cluster.b)]
    clear_of_the_hour_boundary()

    outcomes = asyncio.run(burst(cluster.lb, secret, "so-quota", 200))

    fail_open = [
        line
        for server, start in zip((cluster.a, cluster.b), logs_before, strict=True)
        for line in server.log()[start:].splitlines()
        if "failing open" in line
    ]
    assert not fail_open, fail_open[:3]  # every admission was the shared counter's decision
    assert Counter(o.status for o in outcomes) == {200: 20, 429: 180}
    assert all(o.complete for o in outcomes if o.status == 200)
    rows = wait_for_rows([o.request_id for o in outcomes])
    assert Counter(row.status_code for row in rows) == {200: 20, 429: 180}
    refused = [row for row in rows if row.status_code == 429]
    assert {row.error_type for row in refused} == {"quota_exceeded"}
    assert {r["rule"] for row in refused for r in row.response_body["broken_rules"]} == {rule}
    # Round robin: both instances (each summing its two workers) took part.
    served = [
        sum(requests_by_model_status(server.url, "so-quota").values())
        for server in (cluster.a, cluster.b)
    ]
    assert sum(served) == 200 and min(served) > 0, served


def test_revocation_takes_effect_on_both_instances_within_a_second(cluster, user):
    key, secret = factories.make_key(user=user)
    targets = [cluster.lb, cluster.a.url, cluster.b.url]
    for _ in range(4):  # new connections: warm the key into every worker's cache
        assert [models_status(url, secret) for url in targets] == [200, 200, 200]

    api_key_revoke(key=key, actor=user)
    revoked = time.monotonic()
    time.sleep(1.0)

    # From a second after the revocation on, every worker behind every address refuses it.
    for _ in range(4):
        for url in targets:
            response = chat(url, secret, "any-model")
            assert response.status_code == 401, (url, time.monotonic() - revoked)
            assert response.json()["error"]["code"] == "api_key_revoked"


def test_a_breaker_tripped_on_one_instance_routes_the_other(cluster, user):
    secret = factories.make_key(user=user)[1]
    cluster.declare(secret, {"so-breaker": ("always-500", "demo-chat")})
    # Only instance A sees the failures (failover still answers 200 each time).
    for _ in range(10):
        assert chat(cluster.a.url, secret, "so-breaker").status_code == 200
        if breaker_state(cluster.a.url, "so-breaker", "d0-always-500") == 2:
            break
    else:
        raise AssertionError("the breaker never opened on instance A")
    time.sleep(0.6)  # a few health syncs (HEALTH_SYNC_SECONDS=0.2)

    responses = [chat(cluster.b.url, secret, "so-breaker") for _ in range(6)]

    assert [r.status_code for r in responses] == [200] * 6
    rows = wait_for_rows([r.headers["x-request-id"] for r in responses])
    # B never tried the failing deployment: it adopted A's open breaker.
    assert {(row.attempts, row.deployment) for row in rows} == {(1, "d1-demo-chat")}
    assert breaker_state(cluster.b.url, "so-breaker", "d0-always-500") == 2


def test_metrics_of_both_instances_sum_to_the_ledger(cluster, user):
    secret = factories.make_key(user=user)[1]
    cluster.declare(secret, {"so-mx-chat": ("demo-chat",), "so-mx-bad": ("always-500",)})
    request_ids = []
    for index in range(30):
        model = "so-mx-bad" if index % 6 == 5 else "so-mx-chat"
        response = httpx.post(
            f"{cluster.lb}/v1/chat/completions",
            json={"model": model, "messages": MESSAGES, "stream": index % 3 == 0},
            headers={"Authorization": f"Bearer {secret}", "Connection": "close"},
            timeout=30,
        )
        request_ids.append(response.headers["x-request-id"])
    rows = wait_for_rows(request_ids)
    ledger = Counter((row.model, row.status_code) for row in rows)
    assert ledger[("so-mx-bad", 502)] == 5 and ledger[("so-mx-chat", 200)] == 25

    per_instance = []
    for server in (cluster.a, cluster.b):
        # Each scrape is answered by either worker; every one must give the instance's total.
        scrapes = [requests_by_model_status(server.url, "so-mx-") for _ in range(6)]
        assert all(scrape == scrapes[0] for scrape in scrapes), scrapes
        per_instance.append(scrapes[0])
    assert per_instance[0] + per_instance[1] == ledger
    assert all(sum(counts.values()) > 0 for counts in per_instance)
    tokens = sum(
        s.value
        for server in (cluster.a, cluster.b)
        for s in metric_samples(server.url, "tollgate_output_tokens_total")
        if s.labels["model"] == "so-mx-chat"
    )
    assert tokens == sum(row.output_tokens for row in rows if row.model == "so-mx-chat")


def test_a_rolling_restart_behind_the_balancer_fails_no_call(cluster, user):
    secret = factories.make_key(user=user)[1]
    cluster.declare(secret, {"so-roll": ("demo-chat",)})
    load = Load(cluster.lb, secret, "so-roll")
    load.start()
    time.sleep(1.5)
    # Replace instance B as a deploy does (README "Production"): take it out of the balancer
    # and let its requests finish, SIGTERM it, start the new one, put it back.
    cluster.balancer.command("set server gateways/web2 state drain")
    deadline = time.monotonic() + 10
    while cluster.balancer.sessions("web2") > 0:
        assert time.monotonic() < deadline, "web2 never drained"
        time.sleep(0.05)
    os.kill(cluster.b.process.pid, signal.SIGTERM)
    assert cluster.b.process.wait(30) == 0
    old_b_log = cluster.b.log()
    port = int(cluster.b.url.rsplit(":", 1)[1])  # the address the balancer knows
    cluster.b = spawn_instance(INSTANCE_ENV, port=port)
    wait_healthy(cluster.b)
    cluster.balancer.command("set server gateways/web2 state ready")
    rejoined = time.monotonic()
    time.sleep(3.0)  # HAProxy's checks see it up (rise 2, every 1 s), then it takes traffic
    outcomes = load.stop()

    failed = [o for _, o in outcomes if not o.complete]
    assert not failed, (
        f"{len(failed)} of {len(outcomes)} calls failed: {failed[:3]}\n"
        f"instances' supervisor lines: {supervisor_lines(old_b_log, cluster.a, cluster.b)}"
    )
    rows = wait_for_rows([o.request_id for _, o in outcomes])
    assert len(rows) == len(outcomes)
    # The new instance B took its share after rejoining.
    assert sum(requests_by_model_status(cluster.b.url, "so-roll").values()) > 0
    assert any(at > rejoined for at, _ in outcomes)


def test_a_sigkilled_instance_loses_no_answered_request(cluster, user):
    secret = factories.make_key(user=user)[1]
    # Answers take ~150 ms, so requests are in flight on B when it dies.
    cluster.declare(secret, {"so-kill": ("so-paced",)})
    load = Load(cluster.lb, secret, "so-kill")
    load.start()
    time.sleep(1.5)
    killed = time.monotonic()
    kill_instance(cluster.b)  # supervisor and both workers, with rows still in Redis
    time.sleep(3.0)
    outcomes = load.stop()

    answered = [o for _, o in outcomes if o.complete]
    after_kill = [o for at, o in outcomes if at > killed + 1.0 and o.complete]
    assert answered and after_kill  # the balancer kept serving through instance A
    # Instance A's writers reclaim what B's had read but not written (USAGE_CLAIM_IDLE_MS).
    rows = wait_for_rows([o.request_id for o in answered])
    per_request = Counter(row.request_id for row in rows)
    assert set(per_request) == {o.request_id for o in answered}
    assert set(per_request.values()) == {1}  # exactly one row each, none twice
