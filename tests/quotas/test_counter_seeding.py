"""Monthly counters are seeded from the ledger when a tier cap or rule starts applying.

Reported: a subject moved onto a capped tier mid-month started its counter at 0, and after
Standard -> Professional -> Standard the counter read 199,988 while the ledger held 220,327
tokens this month, so calls kept being admitted; /api/quotas/status did not list tier caps.
"""

import uuid
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
from asgiref.sync import async_to_sync

from apps.accounts.constants import Role
from apps.billing.constants import SubjectType
from apps.billing.models import Tier
from apps.billing.quota_rules import tier_quota_rules
from apps.billing.services import subscription_change, tier_save, tiers_seed_demo
from apps.billing.subjects import BillingSubject
from apps.quotas.counters import CounterCheck, CounterSeed
from apps.quotas.engine import QuotaEngine, get_quota_engine
from apps.quotas.rules import QuotaConfig, counter_key, merge_rules, parse_config, window_bounds_ts
from apps.quotas.services import quota_config_apply, quota_counters_seed
from gateway_portal.celery import app as celery_app
from tests import factories
from tests.billing.helpers import add_usage, usage_row


@pytest.fixture
def committed(django_capture_on_commit_callbacks):
    """`with committed(): ...` runs the on-commit callbacks of the block, and the Celery task
    they enqueue, as the block ends (what a real commit and worker do)."""
    eager = celery_app.conf.task_always_eager
    celery_app.conf.task_always_eager = True
    try:
        yield lambda: django_capture_on_commit_callbacks(execute=True)
    finally:
        celery_app.conf.task_always_eager = eager


@pytest.fixture
def capped_team(db):
    # Counters outlive a test in Redis: a team (so a tier rule id) unique to the test.
    tiers_seed_demo()
    slug = f"seed-{uuid.uuid4().hex[:10]}"
    return factories.make_team(slug, slug=slug)


def ledger(team, tokens: int, *, model: str = "gpt-4o", cost: str = "0.01") -> None:
    add_usage(
        [
            usage_row(
                team_id=team.pk,
                created_at=datetime.now(UTC) - timedelta(seconds=30),
                model=model,
                input_tokens=tokens,
                output_tokens=0,
                cost_usd=Decimal(cost),
            )
        ]
    )


def counter(rule_id: str, subject: str) -> int:
    start, _ = window_bounds_ts("month", datetime.now(UTC).timestamp())
    key = counter_key(rule_id, subject, None, start)
    return async_to_sync(get_quota_engine().store.read)([key])[0]


def tier_engine() -> QuotaEngine:
    return QuotaEngine(merge_rules(QuotaConfig(), tier_quota_rules()), get_quota_engine().store)


def call(engine: QuotaEngine, team, tokens: int):
    """One call of `tokens` input tokens through the engine, settled as made."""

    async def go():
        admission = await engine.check(
            subject_ids={f"team:{team.slug}"},
            model="gpt-4o",
            tags={},
            request_tokens_estimate=tokens,
            max_output_tokens=0,
        )
        if admission.allowed:
            await engine.settle(admission, input_tokens=tokens, output_tokens=0)
        return admission

    return async_to_sync(go)()


@pytest.mark.django_db
@pytest.mark.embedded
def test_assignment_mid_month_seeds_the_counter(committed, capped_team):
    ledger(capped_team, 150_000)
    subject = BillingSubject(type=SubjectType.TEAM, team=capped_team)
    with committed():
        subscription_change(subject=subject, tier=Tier.objects.get(name="Standard"))
    rule_id = f"tier-team-{capped_team.slug}"
    assert counter(rule_id, f"team:{capped_team.slug}") == 150_000
    # Set, not added: seeding again changes nothing.
    assert quota_counters_seed(rule_ids=[rule_id]) == 1
    assert counter(rule_id, f"team:{capped_team.slug}") == 150_000
    assert call(tier_engine(), capped_team, 60_000).status == 429


@pytest.mark.django_db
@pytest.mark.embedded
def test_standard_professional_standard_keeps_the_month(committed, capped_team):
    subject = BillingSubject(type=SubjectType.TEAM, team=capped_team)
    standard = Tier.objects.get(name="Standard")
    professional = Tier.objects.get(name="Professional")
    now = datetime.now(UTC)
    with committed():
        subscription_change(subject=subject, tier=standard, at=now - timedelta(minutes=3))
    engine = tier_engine()
    for tokens in (100_000, 99_988):
        assert call(engine, capped_team, tokens).allowed
        ledger(capped_team, tokens)  # what the usage writer records for the call
    rule_id = f"tier-team-{capped_team.slug}"
    assert counter(rule_id, f"team:{capped_team.slug}") == 199_988

    with committed():
        subscription_change(subject=subject, tier=professional, at=now - timedelta(minutes=2))
    ledger(capped_team, 20_339)  # no cap on Professional: only the ledger sees it
    with committed():
        subscription_change(subject=subject, tier=standard)
    assert counter(rule_id, f"team:{capped_team.slug}") == 220_327
    refused = call(tier_engine(), capped_team, 10)
    assert refused.status == 429
    assert refused.broken[0]["rule"] == rule_id and refused.broken[0]["used"] == 220_327


@pytest.mark.django_db
@pytest.mark.embedded
def test_tier_models_change_reseeds(committed, capped_team):
    ledger(capped_team, 1000, model="gpt-4o")
    ledger(capped_team, 300, model="claude")
    subject = BillingSubject(type=SubjectType.TEAM, team=capped_team)
    standard = Tier.objects.get(name="Standard")
    with committed():
        subscription_change(subject=subject, tier=standard)
    rule_id = f"tier-team-{capped_team.slug}"
    assert counter(rule_id, f"team:{capped_team.slug}") == 1300
    with committed():
        tier_save(tier=standard, included_models=["claude"])
    assert counter(rule_id, f"team:{capped_team.slug}") == 300


@pytest.mark.django_db
@pytest.mark.embedded
def test_yaml_apply_seeds_monthly_token_and_cost_rules(committed, capped_team):
    ledger(capped_team, 5000, model="gpt-4o", cost="0.25")
    ledger(capped_team, 7000, model="claude", cost="0.50")
    suffix = uuid.uuid4().hex[:8]
    text = (
        "name: seed-test\ntype: gateway-rate-limiting-config\nrules:\n"
        f"  - id: gpt-month-{suffix}\n"
        f"    when: {{subjects: ['team:{capped_team.slug}'], models: [gpt-4o]}}\n"
        "    limit_to: 100000\n    unit: tokens_per_month\n"
        f"  - id: budget-{suffix}\n    when: {{subjects: ['team:{capped_team.slug}']}}\n"
        "    limit_to: 10\n    unit: cost_usd_per_month\n"
        f"  - id: daily-{suffix}\n    when: {{subjects: ['team:{capped_team.slug}']}}\n"
        "    limit_to: 100000\n    unit: tokens_per_day\n"
    )
    with committed():
        quota_config_apply(yaml_text=text)
    subject = f"team:{capped_team.slug}"
    assert counter(f"gpt-month-{suffix}", subject) == 5000
    assert counter(f"budget-{suffix}", subject) == 750_000  # micro-dollars
    assert counter(f"daily-{suffix}", subject) == 0  # only monthly counters are seeded
    # Only the limit changes: what the rule counts is the same, no re-seed.
    call(QuotaEngine(parse_config(text), get_quota_engine().store), capped_team, 5)
    assert counter(f"gpt-month-{suffix}", subject) == 5005
    raised = text.replace(
        "limit_to: 100000\n    unit: tokens_per_month",
        "limit_to: 200000\n    unit: tokens_per_month",
    )
    assert raised != text
    with committed():
        quota_config_apply(yaml_text=raised)
    assert counter(f"gpt-month-{suffix}", subject) == 5005


@pytest.mark.django_db
@pytest.mark.embedded
def test_status_and_page_list_tier_caps(client, committed, capped_team):
    ledger(capped_team, 150_000)
    with committed():
        subscription_change(
            subject=BillingSubject(type=SubjectType.TEAM, team=capped_team),
            tier=Tier.objects.get(name="Standard"),
        )
    developer = factories.make_user(f"dev-{capped_team.slug}", team=capped_team)
    _, secret = factories.make_key(user=developer)
    body = client.get("/api/quotas/status", HTTP_AUTHORIZATION=f"Bearer {secret}").json()
    cap = next(r for r in body["rules"] if r["rule"] == f"tier-team-{capped_team.slug}")
    assert (cap["subject"], cap["unit"]) == (f"team:{capped_team.slug}", "tokens_per_month")
    assert (cap["limit"], cap["used"], cap["remaining"]) == (200_000, 150_000, 50_000)

    admin = factories.make_user(f"admin-{capped_team.slug}", team=capped_team, role=Role.ADMIN)
    client.force_login(admin)
    page = client.get("/quotas/").content.decode()
    assert f"tier-team-{capped_team.slug}" in page and "generated from tier:Standard" in page
    assert f"{capped_team.slug}: 150,000 / 200,000 tokens this month" in page


@pytest.mark.django_db
@pytest.mark.embedded
def test_customer_caps_only_listed_to_that_customer(client, committed):
    tiers_seed_demo()
    customer = f"cust-{uuid.uuid4().hex[:8]}"
    with committed():
        subscription_change(
            subject=BillingSubject(type=SubjectType.CUSTOMER, customer_id=customer),
            tier=Tier.objects.get(name="Standard"),
        )
    team = factories.make_team()
    _, secret = factories.make_key(user=factories.make_user(team=team))
    auth = {"HTTP_AUTHORIZATION": f"Bearer {secret}"}
    rules = [r["rule"] for r in client.get("/api/quotas/status", **auth).json()["rules"]]
    assert not any(rule.startswith("tier-customer-") for rule in rules)
    tagged = client.get(f"/api/quotas/status?tag=customer_id={customer}", **auth).json()
    assert [r["rule"] for r in tagged["rules"]] == [f"tier-customer-{customer}"]


async def test_seed_keeps_live_reservations(store, key_prefix):
    key = f"{key_prefix}tokens"
    check = CounterCheck(key, 10_000, 100, 3600, True)
    admitted = await store.admit([check])
    await store.seed([CounterSeed(key, 1000, 3600)])
    assert await store.read([key]) == [1100]  # the call in flight still holds its 100
    await store.seed([CounterSeed(key, 1000, 3600)])
    assert await store.read([key]) == [1100]
    await store.settle(admitted.reservation, [40])
    assert await store.read([key]) == [1040]


async def test_seed_raises_but_never_lowers_unless_replacing(store, key_prefix):
    key = f"{key_prefix}tokens"
    check = CounterCheck(key, 10_000, 500, 3600, True)
    admitted = await store.admit([check])
    # Settled, but its row is not written yet: the ledger says 300, the counter knows 500.
    await store.settle(admitted.reservation, [500])
    await store.seed([CounterSeed(key, 300, 3600)])
    assert await store.read([key]) == [500]
    await store.seed([CounterSeed(key, 800, 3600)])
    assert await store.read([key]) == [800]
    # The rule now counts something else: its old value means nothing.
    await store.seed([CounterSeed(key, 300, 3600, replace=True)])
    assert await store.read([key]) == [300]
