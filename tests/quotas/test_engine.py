"""QuotaEngine: every matching rule checked, broken rules named, headers, settle, outages."""

import socket
from datetime import UTC, datetime
from decimal import Decimal
from types import SimpleNamespace

import pytest

from apps.quotas.counters import AsyncRedisCounterStore, MemoryCounterStore
from apps.quotas.engine import QuotaEngine, subject_ids_for
from apps.quotas.rules import parse_config

# 2025-03-04 10:20:30 UTC: 13 h 39 min 30 s before the daily reset.
NOW = datetime(2025, 3, 4, 10, 20, 30, tzinfo=UTC).timestamp()
FRONTEND = frozenset({"team:frontend", "user:alice", "user:alice@example.com"})


def config(rules: str, head: str = ""):
    return parse_config(f"name: t\ntype: gateway-rate-limiting-config\n{head}rules:\n{rules}")


@pytest.fixture
def make_engine(store, key_prefix):
    def make(rules: str, head: str = "") -> QuotaEngine:
        # Rule ids are prefixed so Redis counters of different tests never meet.
        text = rules.replace("- id: ", f"- id: {key_prefix.replace(':', '-')}")
        return QuotaEngine(config(text, head), store, clock=lambda: NOW)

    return make


def rid(engine: QuotaEngine, short: str) -> str:
    return next(rule.id for rule in engine.config.rules if rule.id.endswith(short))


async def check(
    engine, subjects=FRONTEND, model="gpt-4o", tags=None, tokens=10, max_out=None, cost=None
):
    return await engine.check(
        subject_ids=subjects,
        model=model,
        tags=tags or {},
        request_tokens_estimate=tokens,
        max_output_tokens=max_out,
        cost_estimate_usd=cost,
    )


TWO_RULES = """\
  - id: team-day
    when: {subjects: ["team:frontend"]}
    limit_to: 3
    unit: requests_per_day
  - id: alice-minute
    when: {subjects: ["user:alice"]}
    limit_to: 2
    unit: requests_per_minute
"""


async def test_every_matching_rule_counts_and_the_broken_one_is_named(make_engine):
    engine = make_engine(TWO_RULES)
    assert (await check(engine)).allowed
    assert (await check(engine)).allowed
    refused = await check(engine)
    assert not refused.allowed
    assert (refused.status, refused.code) == (429, "quota_exceeded")
    [broken] = refused.broken
    assert broken == {
        "rule": rid(engine, "alice-minute"),
        "subject": "user:alice",
        "unit": "requests_per_minute",
        "limit": 2,
        "used": 2,
        "requested": 1,
        "reset": "2025-03-04T10:21:00Z",
    }
    assert rid(engine, "alice-minute") in refused.message
    assert refused.error_extra() == {"broken_rules": refused.broken}
    assert refused.headers["retry-after"] == "30"
    # A refusal changes no counter: another team member still has the team's third request.
    bob = frozenset({"team:frontend", "user:bob"})
    assert (await check(engine, subjects=bob)).allowed
    refused = await check(engine, subjects=bob)
    assert [b["rule"] for b in refused.broken] == [rid(engine, "team-day")]


async def test_all_broken_rules_are_listed(make_engine):
    engine = make_engine(TWO_RULES.replace("limit_to: 3", "limit_to: 2"))
    await check(engine)
    await check(engine)
    refused = await check(engine)
    assert [b["rule"] for b in refused.broken] == [
        rid(engine, "team-day"),
        rid(engine, "alice-minute"),
    ]
    # retry-after waits for the broken rule that resets last (the daily one).
    assert refused.headers["retry-after"] == str(13 * 3600 + 39 * 60 + 30)
    assert refused.headers["RateLimit"].startswith(f'"{rid(engine, "team-day")}";r=0;')


async def test_headers_name_the_tightest_rule(make_engine):
    engine = make_engine(
        TWO_RULES
        + """\
  - id: tokens-hour
    when: {subjects: ["team:frontend"]}
    limit_to: 10000
    unit: tokens_per_hour
"""
    )
    admitted = await check(engine, tokens=100, max_out=900)
    headers = admitted.headers
    assert headers["x-ratelimit-limit-requests"] == "2"
    assert headers["x-ratelimit-remaining-requests"] == "1"
    assert headers["x-ratelimit-reset-requests"] == "30s"
    assert headers["x-ratelimit-limit-tokens"] == "10000"
    assert headers["x-ratelimit-remaining-tokens"] == "9000"
    assert headers["x-ratelimit-reset-tokens"] == "39m30s"
    assert headers["RateLimit-Policy"] == f'"{rid(engine, "alice-minute")}";q=2;w=60'
    assert headers["RateLimit"] == f'"{rid(engine, "alice-minute")}";r=1;t=30'
    assert "retry-after" not in headers


async def test_no_matching_rule_is_free(make_engine):
    engine = make_engine(TWO_RULES)
    admission = await check(engine, subjects=frozenset({"team:backend"}))
    assert admission.allowed
    assert admission.headers == {}
    assert admission.reservation is None


async def test_models_metadata_and_per_counters(make_engine):
    engine = make_engine(
        """\
  - id: prod-4o
    when:
      models: ["gpt-4o"]
      metadata: {environment: production}
    per: metadata.customer_id
    limit_to: 1
    unit: requests_per_day
"""
    )
    prod = {"environment": "production"}
    assert (await check(engine, tags={**prod, "customer_id": "c1"})).allowed
    assert not (await check(engine, tags={**prod, "customer_id": "c1"})).allowed
    refused_per = (await check(engine, tags={**prod, "customer_id": "c1"})).broken[0]["per"]
    assert refused_per == {"customer_id": "c1"}
    assert (await check(engine, tags={**prod, "customer_id": "c2"})).allowed
    # Requests without the tag share one counter instead of escaping the rule.
    assert (await check(engine, tags=prod)).allowed
    assert not (await check(engine, tags=prod)).allowed
    assert (await check(engine, tags={"environment": "staging"})).allowed
    assert (await check(engine, model="gpt-4o-mini", tags={**prod, "customer_id": "c1"})).allowed


async def test_several_subjects_of_one_rule_count_separately(make_engine):
    engine = make_engine(
        """\
  - id: each
    when: {subjects: ["team:frontend", "team:backend"]}
    limit_to: 1
    unit: requests_per_day
"""
    )
    assert (await check(engine, subjects=frozenset({"team:frontend"}))).allowed
    assert (await check(engine, subjects=frozenset({"team:backend"}))).allowed
    assert not (await check(engine, subjects=frozenset({"team:backend"}))).allowed


async def test_token_reservation_and_settle(make_engine, store):
    engine = make_engine(
        """\
  - id: tokens
    limit_to: 1000
    unit: tokens_per_minute
  - id: out
    limit_to: 5000
    unit: output_tokens_per_day
"""
    )
    first = await check(engine, tokens=100, max_out=400)
    second = await check(engine, tokens=100, max_out=400)
    assert first.allowed and second.allowed
    third = await check(engine, tokens=100, max_out=400)
    assert not third.allowed
    assert third.broken[0]["used"] == 1000
    assert third.broken[0]["requested"] == 500
    await engine.settle(first, input_tokens=60, output_tokens=40)
    assert first.reservation is None
    await engine.settle(first, input_tokens=60, output_tokens=40)  # a second settle is a no-op
    keys = [check.key for check in second.reservation.checks]
    assert await store.read(keys) == [600, 400 + 40]
    assert (await check(engine, tokens=100, max_out=300)).allowed


async def test_default_max_output_tokens_is_reserved(make_engine):
    engine = make_engine("  - id: tokens\n    limit_to: 5000\n    unit: tokens_per_minute\n")
    engine.default_max_output_tokens = 4096
    admitted = await check(engine, tokens=100)
    assert admitted.reservation.checks[0].amount == 4196
    assert not (await check(engine, tokens=1000)).allowed


async def test_cost_budget_reserves_the_priced_worst_case(make_engine):
    engine = make_engine("  - id: budget\n    limit_to: 0.01\n    unit: cost_usd_per_day\n")
    first = await check(engine, cost=Decimal("0.006"))
    assert first.allowed
    refused = await check(engine, cost=Decimal("0.006"))
    assert refused.broken[0]["limit"] == 0.01
    assert refused.broken[0]["used"] == 0.006
    await engine.settle(first, input_tokens=10, output_tokens=10, cost_usd=Decimal("0.0011"))
    last = await check(engine, cost=Decimal("0.006"))
    assert last.allowed
    await engine.settle(last, input_tokens=10, output_tokens=10, cost_usd=Decimal("0.0089"))
    # A spent budget refuses even requests priced at nothing.
    assert not (await check(engine, cost=None)).allowed


async def test_config_swap_takes_effect_for_the_next_check(make_engine):
    engine = make_engine(TWO_RULES)
    engine.load(
        config(
            '  - id: none\n    when: {subjects: ["team:other"]}\n    limit_to: 1\n    unit: requests_per_day\n'
        ),
        version=7,
    )
    assert engine.version == 7
    for _ in range(5):
        assert (await check(engine)).allowed


def test_subject_ids_for_a_key():
    key = SimpleNamespace(
        team_slug="frontend",
        username="alice",
        user_email="Alice@Example.com",
        virtual_account_name="",
    )
    assert subject_ids_for(key) == {"team:frontend", "user:alice", "user:alice@example.com"}
    bot = SimpleNamespace(
        team_slug="frontend", username="", user_email="", virtual_account_name="countdown-bot"
    )
    assert subject_ids_for(bot) == {"team:frontend", "virtualaccount:countdown-bot"}


# --- counter store outages ---------------------------------------------------------------


def unreachable_store() -> AsyncRedisCounterStore:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    # Nothing listens on the port any more: every connection is refused at once.
    return AsyncRedisCounterStore(f"redis://127.0.0.1:{port}/0", connect_timeout=0.2)


RULE = "  - id: r\n    limit_to: 1\n    unit: requests_per_day\n"


@pytest.mark.embedded
async def test_store_down_fails_open_by_default(caplog):
    engine = QuotaEngine(config(RULE), unreachable_store())
    for _ in range(3):
        admission = await check(engine)
        assert admission.allowed
        assert admission.degraded
    assert engine.store_failures["open"] == 3
    assert "quota counter store unavailable" in caplog.text


@pytest.mark.embedded
async def test_store_down_fails_closed_when_configured():
    engine = QuotaEngine(config(RULE, head="on_store_failure: closed\n"), unreachable_store())
    admission = await check(engine)
    assert not admission.allowed
    assert (admission.status, admission.code) == (503, "quota_store_unavailable")
    assert "unreachable" in admission.message
    assert admission.headers["retry-after"] == "1"
    assert engine.store_failures["closed"] == 1


@pytest.mark.embedded
async def test_settle_survives_an_outage(caplog):
    engine = QuotaEngine(
        config("  - id: t\n    limit_to: 10000\n    unit: tokens_per_day\n"), MemoryCounterStore()
    )
    admission = await check(engine)
    engine.store = unreachable_store()
    await engine.settle(admission, input_tokens=1, output_tokens=1)
    assert "quota settle failed" in caplog.text


async def test_engine_counter_keys_are_the_rules_counter_keys(make_engine):
    engine = make_engine(
        """\
  - id: per
    when: {subjects: ["team:frontend"]}
    per: metadata.customer_id
    limit_to: 10
    unit: tokens_per_month
  - id: all
    limit_to: 10
    unit: requests_per_minute
"""
    )
    admission = await check(engine, tags={"customer_id": "a|b"}, tokens=1, max_out=1)
    per_rule, all_rule = engine.config.rules
    month_start = int(datetime(2025, 3, 1, tzinfo=UTC).timestamp())
    minute_start = int(datetime(2025, 3, 4, 10, 20, tzinfo=UTC).timestamp())
    assert [c.key for c in admission.reservation.checks] == [
        per_rule.counter_key("team:frontend", "a|b", month_start)
    ]
    # Tokens are 8/10 left, requests 9/10: the IETF fields name the tokens rule.
    assert admission.headers["RateLimit-Policy"] == f'"{per_rule.id}";q=10;w={31 * 86400}'
    assert await engine.store.read([all_rule.counter_key("*", None, minute_start)]) == [1]
