"""Routing strategies: the router alone (seeded, no I/O) and end to end through the gateway
against simulator deployments whose knobs change at run time (POST /_sim/knobs)."""

import concurrent.futures
import random
import time
from collections import Counter

import httpx
import pytest

from apps.proxy.catalog import ModelEntry
from apps.proxy.health import HealthBoard
from apps.proxy.providers.base import DeploymentInfo
from apps.proxy.router import order
from apps.proxy.services import model_catalog_apply
from apps.usage.models import UsageRecord
from tests import factories
from tests.proxy.conftest import start_gateway, stop_gateway

MESSAGES = [{"role": "user", "content": "Route me."}]


def deployment(index: int, *, weight: int = 1) -> DeploymentInfo:
    return DeploymentInfo(
        id=index,
        name=f"d{index}",
        model_name="m",
        provider="simulator",
        upstream_model=f"u{index}",
        base_url="http://127.0.0.1:9/v1",
        priority=index,
        weight=weight,
    )


def entry(strategy: str, *deployments: DeploymentInfo) -> ModelEntry:
    return ModelEntry("m", "chat", strategy, tuple(deployments), 0)


def first_choices(model, board, runs, *, seed=7, stream=False) -> Counter:
    generator = random.Random(seed)
    now = time.time()
    return Counter(
        order(model, stream=stream, health=board, generator=generator, now=now)[0].name
        for _ in range(runs)
    )


# --- the router alone --------------------------------------------------------------------


@pytest.mark.embedded
def test_weighted_90_10_over_1000_requests_lands_within_3_points():
    model = entry("weighted", deployment(1, weight=90), deployment(2, weight=10))
    counts = first_choices(model, HealthBoard(), 1000)
    assert abs(counts["d1"] / 1000 - 0.90) <= 0.03
    assert counts["d1"] + counts["d2"] == 1000


@pytest.mark.embedded
def test_weighted_keeps_the_others_as_failovers():
    model = entry("weighted", deployment(1, weight=0), deployment(2, weight=5), deployment(3))
    ranked = order(model, stream=False, health=HealthBoard(), generator=random.Random(1), now=0)
    assert {d.name for d in ranked} == {"d1", "d2", "d3"}
    assert ranked[0].name != "d1"  # weight 0: never first


@pytest.mark.embedded
def test_latency_prefers_the_lowest_ewma_and_explores_a_little(settings):
    settings.ROUTING_EXPLORATION_SHARE = 0.05
    board = HealthBoard()
    board.get(1).observe(200.0, None, 0.3)
    board.get(2).observe(20.0, None, 0.3)
    model = entry("latency", deployment(1), deployment(2))
    counts = first_choices(model, board, 1000)
    assert counts["d2"] >= 950  # 5% explore, half of which lands on d2 anyway
    assert counts["d1"] > 0  # a slow one is still looked at now and then


@pytest.mark.embedded
def test_latency_uses_time_to_first_token_for_streams(settings):
    settings.ROUTING_EXPLORATION_SHARE = 0.0
    board = HealthBoard()
    board.get(1).observe(50.0, 900.0, 0.3)  # quick whole answers, slow first token
    board.get(2).observe(300.0, 100.0, 0.3)
    model = entry("latency", deployment(1), deployment(2))
    assert first_choices(model, board, 10)["d1"] == 10
    assert first_choices(model, board, 10, stream=True)["d2"] == 10


@pytest.mark.embedded
def test_an_unmeasured_deployment_is_tried_first(settings):
    settings.ROUTING_EXPLORATION_SHARE = 0.0
    board = HealthBoard()
    board.get(1).observe(20.0, None, 0.3)
    model = entry("latency", deployment(1), deployment(2))
    assert first_choices(model, board, 5)["d2"] == 5


@pytest.mark.embedded
def test_latency_blends_other_workers_measurements(settings):
    settings.ROUTING_EXPLORATION_SHARE = 0.0
    board = HealthBoard()
    board.get(1).observe(100.0, None, 0.3)
    board.get(2).observe(90.0, None, 0.3)
    # Other workers saw deployment 2 slow many times.
    board.merge(
        {"w2": {"ts": time.time(), "deployments": {"2": {"ewma": 900.0, "w": 3.0, "busy": 0}}}},
        {},
        time.time(),
    )
    model = entry("latency", deployment(1), deployment(2))
    assert first_choices(model, board, 5)["d1"] == 5


@pytest.mark.embedded
def test_least_busy_picks_fewest_in_flight_and_rotates_ties():
    board = HealthBoard()
    board.get(1).in_flight = 3
    board.get(2).in_flight = 1
    board.get(3).in_flight = 1
    model = entry("least_busy", deployment(1), deployment(2), deployment(3))
    counts = first_choices(model, board, 100)
    assert counts["d1"] == 0
    assert counts["d2"] >= 30 and counts["d3"] >= 30


@pytest.mark.embedded
def test_cooled_deployments_go_last_whatever_the_strategy(settings):
    settings.ROUTING_EXPLORATION_SHARE = 0.0
    board = HealthBoard()
    board.get(2).observe(5.0, None, 0.3)
    board.get(2).trip(time.time(), 30, "test")
    for strategy in ("priority", "weighted", "latency", "least_busy"):
        model = entry(strategy, deployment(1), deployment(2), deployment(3))
        ranked = order(
            model, stream=False, health=board, generator=random.Random(3), now=time.time()
        )
        assert ranked[-1].name == "d2", strategy


# --- end to end ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def routed(django_db_setup, django_db_blocker):
    server = start_gateway(
        {
            "HEALTH_BREAKER_FAILURES": "3",
            "HEALTH_BREAKER_WINDOW_SECONDS": "10",
            "HEALTH_BREAKER_COOLDOWN_SECONDS": "3",
            "ROUTING_EXPLORATION_SHARE": "0.05",
        }
    )
    yield server
    stop_gateway(server)
    with django_db_blocker.unblock():
        UsageRecord.objects.all().delete()


def set_knobs(server, knobs: dict) -> None:
    response = httpx.post(f"{server.url}/simulator/_sim/knobs", json=knobs, timeout=5)
    assert response.status_code == 200, response.text


def declare(server, name: str, strategy: str, *deployments: tuple[str, int]) -> None:
    model_catalog_apply(
        spec={
            "models": [
                {
                    "name": name,
                    "routing_strategy": strategy,
                    "deployments": [
                        {
                            "name": upstream,
                            "provider": "simulator",
                            "upstream_model": upstream,
                            "base_url": server.simulator_url,
                            "priority": index,
                            "weight": weight,
                            "timeout_seconds": 10,
                        }
                        for index, (upstream, weight) in enumerate(deployments)
                    ],
                }
            ]
        }
    )


def ask(client: httpx.Client, model: str) -> str:
    response = client.post("/v1/chat/completions", json={"model": model, "messages": MESSAGES})
    assert response.status_code == 200, response.text
    return response.headers["x-request-id"]


def rows_for(request_ids: list[str], timeout: float = 15.0) -> list[UsageRecord]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        rows = {r.request_id: r for r in UsageRecord.objects.filter(request_id__in=request_ids)}
        if len(rows) == len(request_ids):
            return [rows[i] for i in request_ids]
        time.sleep(0.1)
    raise AssertionError(f"only {len(rows)} of {len(request_ids)} usage rows arrived")


@pytest.fixture
def client(routed, user):
    secret = factories.make_key(user=user)[1]
    with httpx.Client(
        base_url=routed.url, headers={"Authorization": f"Bearer {secret}"}, timeout=30
    ) as http:
        http.secret = secret
        yield http


@pytest.mark.django_db(transaction=True)
def test_latency_routing_moves_off_a_failing_deployment_and_comes_back(routed, client):
    set_knobs(routed, {"rt-fast": {"latency_ms": 20}, "rt-slow": {"latency_ms": 200}})
    declare(routed, "rt-latency", "latency", ("rt-fast", 1), ("rt-slow", 1))
    routed.wait_for_model(client.secret, "rt-latency")
    for _ in range(10):  # warm-up: both get measured
        ask(client, "rt-latency")
    steady = [ask(client, "rt-latency") for _ in range(60)]
    fast_share = sum(r.deployment == "rt-fast" for r in rows_for(steady)) / len(steady)
    assert fast_share >= 0.9, fast_share

    # The fast one starts failing: every client request still succeeds (failover), and once
    # the breaker is open, traffic goes straight to the slow one.
    set_knobs(routed, {"rt-fast": {"error_rate": 1.0, "error_status": 500}})
    flipped = time.monotonic()
    failing: list[tuple[float, str]] = []
    while time.monotonic() - flipped < 5:
        failing.append((time.monotonic() - flipped, ask(client, "rt-latency")))
    rows = rows_for([rid for _, rid in failing])
    assert all(r.status_code == 200 for r in rows)
    late = [row for (at, _), row in zip(failing, rows, strict=True) if at >= 2.0]
    moved = sum(r.deployment == "rt-slow" and r.attempts == 1 for r in late)
    assert late and moved / len(late) >= 0.8, [(r.deployment, r.attempts) for r in late]

    # It recovers: after the cooldown a trial request closes the breaker and traffic returns.
    set_knobs(routed, {"rt-fast": {"latency_ms": 20}})
    recovered = time.monotonic()
    back: list[str] = []
    while time.monotonic() - recovered < 3 + 6:
        back.append(ask(client, "rt-latency"))
        if len(back) >= 15:
            tail = rows_for(back[-10:])
            if sum(r.deployment == "rt-fast" for r in tail) >= 8:
                break
    else:
        raise AssertionError("traffic never returned to the recovered deployment")


@pytest.mark.django_db(transaction=True)
def test_weighted_split_end_to_end(routed, client):
    declare(routed, "rt-weighted", "weighted", ("demo-chat", 90), ("sim-chat", 10))
    routed.wait_for_model(client.secret, "rt-weighted")
    ids = [ask(client, "rt-weighted") for _ in range(200)]
    counts = Counter(r.deployment for r in rows_for(ids))
    assert 0.80 <= counts["demo-chat"] / 200 <= 0.97, counts


@pytest.mark.django_db(transaction=True)
def test_least_busy_spreads_concurrent_requests(routed, client):
    set_knobs(routed, {"rt-busy-a": {"latency_ms": 300}, "rt-busy-b": {"latency_ms": 300}})
    declare(routed, "rt-busy", "least_busy", ("rt-busy-a", 1), ("rt-busy-b", 1))
    routed.wait_for_model(client.secret, "rt-busy")
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        ids = list(pool.map(lambda _: ask(client, "rt-busy"), range(24)))
    counts = Counter(r.deployment for r in rows_for(ids))
    assert min(counts["rt-busy-a"], counts["rt-busy-b"]) >= 6, counts


# --- the portal page ------------------------------------------------------------------------


@pytest.mark.django_db(transaction=True)
@pytest.mark.embedded
def test_deployments_page_is_for_admins_and_finance(team):
    from django.test import Client

    from apps.accounts.constants import Role

    admin = factories.make_user("root-admin", team=team, role=Role.ADMIN)
    finance = factories.make_user("fin", team=team, role=Role.FINANCE)
    developer = factories.make_user("dev", team=team, role=Role.DEVELOPER)
    model_catalog_apply(
        spec={
            "models": [
                {
                    "name": "page-model",
                    "routing_strategy": "latency",
                    "deployments": [
                        {
                            "name": "page-dep",
                            "provider": "simulator",
                            "upstream_model": "demo-chat",
                            "base_url": "http://127.0.0.1:9/v1",
                        }
                    ],
                }
            ]
        }
    )
    from apps.proxy.catalog import catalog

    catalog.load_sync(force=True)
    for user, allowed in ((admin, True), (finance, True), (developer, False)):
        browser = Client()
        browser.force_login(user)
        page = browser.get("/deployments/")
        data = browser.get("/deployments/data/")
        if allowed:
            assert page.status_code == 200 and b"/deployments/data/" in page.content
            assert data.status_code == 200
            model = next(m for m in data.json()["models"] if m["name"] == "page-model")
            assert model["strategy"] == "latency"
            row = model["deployments"][0]
            assert row["name"] == "page-dep" and row["state"] == "closed"
            assert {"rate_per_second", "p50_ms", "p95_ms", "error_rate", "share"} <= set(row)
        else:
            assert page.status_code == 403 and data.status_code == 403
    assert Client().get("/deployments/data/").status_code == 401
