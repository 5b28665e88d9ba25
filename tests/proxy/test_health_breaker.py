"""Circuit breakers, the time-to-first-token timeout, and health shared between processes."""

import json
import os
import time

import httpx
import pytest

from apps.proxy.health import CLOSED, HALF_OPEN, OPEN, HealthBoard, merge_stats
from apps.proxy.providers.base import DeploymentInfo
from apps.proxy.services import model_catalog_apply
from apps.usage.models import UsageRecord
from tests import factories
from tests.proxy.conftest import start_gateway, stop_gateway

MESSAGES = [{"role": "user", "content": "Are you there?"}]


class FakeCall:
    def __init__(self, stream: bool = False) -> None:
        self.health_pending = None
        self.stream = stream


def dep(index: int = 1, timeout: float = 10.0) -> DeploymentInfo:
    return DeploymentInfo(
        id=index,
        name=f"d{index}",
        model_name="m",
        provider="simulator",
        upstream_model="u",
        base_url="http://127.0.0.1:9/v1",
        timeout_seconds=timeout,
    )


@pytest.fixture
def breaker_settings(settings):
    settings.REDIS_URL = ""  # unit tests: no background publishing
    settings.HEALTH_BREAKER_FAILURES = 3
    settings.HEALTH_BREAKER_WINDOW_SECONDS = 10
    settings.HEALTH_BREAKER_COOLDOWN_SECONDS = 0.2
    return settings


def fail(board: HealthBoard, deployment: DeploymentInfo, **kwargs) -> None:
    call = FakeCall()
    board.attempt_started(call, deployment)
    board.attempt_failed(call, kwargs.pop("kind", "status"), **kwargs)


def succeed(board: HealthBoard, deployment: DeploymentInfo, latency: float = 10.0) -> None:
    call = FakeCall()
    board.attempt_started(call, deployment)
    board.attempt_succeeded(call, latency)


# --- the breaker alone ---------------------------------------------------------------------


@pytest.mark.embedded
def test_k_failures_open_the_breaker_then_one_trial_closes_it(breaker_settings):
    board, d = HealthBoard(), dep()
    fail(board, d, status=500)
    fail(board, d, status=500)
    assert board.get(1).available(time.time())
    fail(board, d, status=500)
    health = board.get(1)
    assert health.state == OPEN and not health.available(time.time())
    time.sleep(0.25)
    assert health.available(time.time()) and health.state == HALF_OPEN
    trial = FakeCall()
    board.attempt_started(trial, d)
    # One trial at a time: the others skip it while it runs.
    assert not health.available(time.time())
    board.attempt_succeeded(trial, 12.0)
    assert health.state == CLOSED and health.available(time.time())
    assert health.in_flight == 0


@pytest.mark.embedded
def test_a_failed_trial_cools_it_again(breaker_settings):
    board, d = HealthBoard(), dep()
    for _ in range(3):
        fail(board, d, kind="connection")
    time.sleep(0.25)
    assert board.get(1).available(time.time())
    fail(board, d, kind="timeout")
    assert board.get(1).state == OPEN
    assert "trial failed" in board.get(1).reason


@pytest.mark.embedded
def test_old_failures_fall_out_of_the_window(breaker_settings):
    breaker_settings.HEALTH_BREAKER_WINDOW_SECONDS = 0.1
    board, d = HealthBoard(), dep()
    fail(board, d, status=502)
    fail(board, d, status=502)
    time.sleep(0.15)
    fail(board, d, status=502)
    assert board.get(1).state == CLOSED


@pytest.mark.embedded
def test_429_with_retry_after_cools_for_that_long(breaker_settings):
    board, d = HealthBoard(), dep()
    before = time.time()
    fail(board, d, status=429, retry_after="7")
    health = board.get(1)
    assert health.state == OPEN
    assert 6.5 <= health.open_until - before <= 7.5


@pytest.mark.embedded
def test_a_released_attempt_frees_the_trial_slot_and_in_flight(breaker_settings):
    board, d = HealthBoard(), dep()
    for _ in range(3):
        fail(board, d, status=500)
    time.sleep(0.25)
    call = FakeCall()
    board.get(1).available(time.time())
    board.attempt_started(call, d)
    assert board.get(1).in_flight == 1
    board.attempt_released(call)
    board.attempt_released(call)  # idempotent
    assert board.get(1).in_flight == 0
    assert board.get(1).available(time.time())


@pytest.mark.embedded
def test_snapshots_merge_into_fleet_stats(breaker_settings):
    board, d = HealthBoard(), dep()
    for latency in (10, 20, 30, 400):
        succeed(board, d, latency)
    fail(board, d, status=500)
    now = time.time()
    mine = board.snapshot(now)
    other = json.loads(json.dumps(mine))
    stats = merge_stats(
        [mine, other], {1: {"state": OPEN, "until": now + 5, "at": now, "reason": "x"}}, now
    )[1]
    assert stats.requests == 10 and stats.errors == 2
    assert stats.p50_ms == 20 and stats.p95_ms == 500  # upper bounds of the buckets
    assert stats.state == OPEN and stats.error_rate == pytest.approx(0.2)


@pytest.mark.embedded
def test_a_newer_trip_from_another_worker_is_adopted_and_a_close_too(breaker_settings):
    board = HealthBoard()
    now = time.time()
    board.merge({}, {1: {"state": OPEN, "until": now + 30, "at": now, "reason": "w2"}}, now)
    assert board.get(1).state == OPEN and not board.get(1).available(now)
    board.merge({}, {1: {"state": CLOSED, "until": now + 30, "at": now, "reason": ""}}, now)
    assert board.get(1).state == CLOSED


# --- end to end -----------------------------------------------------------------------------


def declare(name: str, simulator_url: str, *upstreams: str, extra: dict | None = None) -> None:
    model_catalog_apply(
        spec={
            "models": [
                {
                    "name": name,
                    "deployments": [
                        {
                            "name": f"d{index}-{upstream}",
                            "provider": "simulator",
                            "upstream_model": upstream,
                            "base_url": simulator_url,
                            "priority": index,
                            "timeout_seconds": 10,
                            **((extra or {}).get(upstream, {})),
                        }
                        for index, upstream in enumerate(upstreams)
                    ],
                }
            ]
        }
    )


def row(request_id: str, timeout: float = 10.0) -> UsageRecord:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = UsageRecord.objects.filter(request_id=request_id).first()
        if found is not None:
            return found
        time.sleep(0.05)
    raise AssertionError(f"no usage row for {request_id}")


def chat(server, secret: str, model: str, **extra) -> httpx.Response:
    return httpx.post(
        f"{server.url}/v1/chat/completions",
        json={"model": model, "messages": MESSAGES, **extra},
        headers={"Authorization": f"Bearer {secret}"},
        timeout=30,
    )


@pytest.fixture(scope="module")
def breaker_gateway(django_db_setup, django_db_blocker):
    server = start_gateway(
        {
            "HEALTH_BREAKER_FAILURES": "2",
            "HEALTH_BREAKER_COOLDOWN_SECONDS": "60",
            "HEALTH_SYNC_SECONDS": "0.2",
        }
    )
    yield server
    stop_gateway(server)
    with django_db_blocker.unblock():
        UsageRecord.objects.all().delete()


@pytest.mark.django_db(transaction=True)
@pytest.mark.embedded
def test_ttft_timeout_retries_the_stream_elsewhere_and_the_client_gets_one_clean_stream(
    breaker_gateway, user
):
    secret = factories.make_key(user=user)[1]
    declare(
        "hb-ttft",
        breaker_gateway.simulator_url,
        "slow-chat",  # first token after 3 s
        "demo-chat",
        extra={"slow-chat": {"ttft_timeout_seconds": 0.5}},
    )
    breaker_gateway.wait_for_model(secret, "hb-ttft")
    started = time.monotonic()
    with httpx.stream(
        "POST",
        f"{breaker_gateway.url}/v1/chat/completions",
        json={"model": "hb-ttft", "messages": MESSAGES, "stream": True},
        headers={"Authorization": f"Bearer {secret}"},
        timeout=30,
    ) as response:
        assert response.status_code == 200
        request_id = response.headers["x-request-id"]
        lines = [line for line in response.iter_lines() if line]
    elapsed = time.monotonic() - started
    assert elapsed < 2.5, elapsed  # did not wait for the slow deployment's 3 s
    assert lines[-1] == "data: [DONE]" and lines.count("data: [DONE]") == 1
    chunks = [json.loads(line[6:]) for line in lines[:-1]]
    assert all(c["object"] == "chat.completion.chunk" for c in chunks)
    assert len({c["id"] for c in chunks}) == 1  # one upstream stream, not two spliced
    assert "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"])
    usage = row(request_id)
    assert (usage.status_code, usage.attempts, usage.deployment) == (200, 2, "d1-demo-chat")


@pytest.mark.django_db(transaction=True)
@pytest.mark.embedded
def test_breaker_opens_after_k_failures_in_one_process(breaker_gateway, user):
    secret = factories.make_key(user=user)[1]
    declare("hb-local", breaker_gateway.simulator_url, "always-500", "demo-chat")
    breaker_gateway.wait_for_model(secret, "hb-local")
    first = [chat(breaker_gateway, secret, "hb-local") for _ in range(2)]
    assert all(r.status_code == 200 for r in first)
    assert [row(r.headers["x-request-id"]).attempts for r in first] == [2, 2]
    after = [chat(breaker_gateway, secret, "hb-local") for _ in range(5)]
    rows = [row(r.headers["x-request-id"]) for r in after]
    assert [(r.attempts, r.deployment) for r in rows] == [(1, "d1-demo-chat")] * 5


@pytest.mark.django_db(transaction=True)
@pytest.mark.skipif(not os.environ.get("REDIS_URL"), reason="shared state needs Redis")
def test_breaker_state_is_seen_by_another_process_and_survives_restarts(breaker_gateway, user):
    secret = factories.make_key(user=user)[1]
    declare("hb-shared", breaker_gateway.simulator_url, "always-500", "demo-chat")
    breaker_gateway.wait_for_model(secret, "hb-shared")
    for _ in range(2):  # trips it in the first process
        assert chat(breaker_gateway, secret, "hb-shared").status_code == 200
    # A second gateway process (as a second worker, or one restarted) with the same Redis:
    # it never saw a failure itself, yet routes around the cooled deployment at once.
    second = start_gateway({"HEALTH_BREAKER_FAILURES": "2", "HEALTH_SYNC_SECONDS": "0.2"})
    try:
        second.wait_for_model(secret, "hb-shared")
        time.sleep(0.6)  # its first health sync
        responses = [chat(second, secret, "hb-shared") for _ in range(4)]
        rows = [row(r.headers["x-request-id"]) for r in responses]
        assert [(r.attempts, r.deployment) for r in rows] == [(1, "d1-demo-chat")] * 4
        data_ok = httpx.get(f"{second.url}/metrics", timeout=10)
        assert data_ok.status_code == 200
        assert (
            'tollgate_deployment_breaker_state{deployment="d0-always-500",model="hb-shared"} 2.0'
            in data_ok.text
        )
    finally:
        stop_gateway(second)
