"""Fixed query counts for the billing list pages and exports, whatever the number of rows.

Each test measures a page with a few subjects and again with three times as many, against
the same constant (zulip's `assert_database_query_count` style): a per-row query (a missing
`select_related`, a label looked up per subject) would make the second count grow.
"""

import datetime as dt
from decimal import Decimal

import pytest
import time_machine

from apps.billing.constants import SubjectType
from apps.billing.models import Statement, Tier
from apps.billing.services import subscription_change
from apps.billing.subjects import BillingSubject
from apps.usage.models import TagUsageDaily, UsageCubeDaily
from tests import factories
from tests.billing.helpers import add_usage, usage_row

pytestmark = [pytest.mark.django_db, pytest.mark.embedded]

OCT = dt.date(2026, 10, 1)
NOW = dt.datetime(2026, 10, 11, 6, 0, tzinfo=dt.UTC)

# Session, user, portal identity, the page's own reads (see each test) and, on portal pages,
# the layout's context processor (the user's memberships, for the navigation).
STATEMENTS_PAGE_QUERIES = 6
CHARGEBACK_QUERIES = 6
# Insights: per month read (this month twice: by customer and by feature; three tier-fit
# months), the covered days (late days left out in the same query), the rollup rows and the
# raw rest; for this month also today's rolled hours (late hours left out alike).
INSIGHTS_PAGE_QUERIES = 25


@pytest.fixture
def tier(db):
    return Tier.objects.create(
        name="Standard",
        monthly_token_allowance=200_000,
        monthly_price=Decimal("49.00"),
        hard_cap=True,
    )


def _teams(start: int, count: int):
    return [
        factories.make_team(f"Subject {i}", slug=f"subject-{i}")
        for i in range(start, start + count)
    ]


def _statements(tier, teams):
    for team in teams:
        Statement.objects.create(
            subject_type=SubjectType.TEAM,
            subject_key=f"team:{team.pk}",
            subject_label=f"team {team.slug}",
            month=OCT,
            tier=tier,
            allowance_tokens=200_000,
            used_tokens=1000,
            overage_tokens=0,
            base_amount=Decimal("49.00"),
            overage_amount=Decimal("0.00"),
            amount=Decimal("49.00"),
            computed_at=NOW,
        )


def _usage(teams):
    add_usage(
        [
            usage_row(
                team_id=team.pk,
                model=model,
                created_at=dt.datetime(2026, 10, 5, tzinfo=dt.UTC),
                tags={"customer_id": f"cust-{team.pk}"},
            )
            for team in teams
            for model in ("gpt-4o", "gpt-4o-mini")
        ]
    )


def _insights_data(tier, teams):
    for team in teams:
        subject_change_at = dt.datetime(2026, 6, 1, tzinfo=dt.UTC)
        subscription_change(
            subject=BillingSubject(type=SubjectType.TEAM, team=team),
            tier=tier,
            at=subject_change_at,
        )
        subscription_change(
            subject=BillingSubject(type=SubjectType.CUSTOMER, customer_id=f"cust-{team.pk}"),
            tier=tier,
            at=subject_change_at,
        )
        va = factories.make_virtual_account(team, name=f"bot-{team.pk}")
        common = {
            "team_id": team.pk,
            "virtual_account_id": va.pk,
            "input_tokens": 1000,
            "output_tokens": 100,
            "cost_usd": Decimal("0.01"),
            "computed_at": NOW,
        }
        tags = {"customer_id": f"cust-{team.pk}", "feature": "chat"}
        for model in ("gpt-4o", "gpt-4o-mini"):
            for day in (dt.date(2026, 10, 2), dt.date(2026, 9, 1)):
                UsageCubeDaily.objects.create(day=day, model=model, **common)
                for key, value in tags.items():
                    TagUsageDaily.objects.create(
                        day=day, model=model, tag_key=key, tag_value=value, **common
                    )


def _consume(response):
    assert response.status_code == 200
    if response.streaming:
        return b"".join(response.streaming_content)
    return response.content


def test_statements_page(client, tier, django_assert_num_queries):
    finance = factories.make_user("fin", team=factories.make_team("Fin"), role="finance")
    client.force_login(finance)
    for start, count in ((0, 2), (2, 4)):
        _statements(tier, _teams(start, count))
        # session, user, identity, statement months, statements with their tier, layout
        with django_assert_num_queries(STATEMENTS_PAGE_QUERIES):
            body = _consume(client.get("/billing/", {"month": "2026-10"}))
        assert body.count(b"<td>Standard</td>") == start + count


def test_chargeback_csv(client, django_assert_num_queries):
    finance = factories.make_user("fin", team=factories.make_team("Fin"), role="finance")
    client.force_login(finance)
    for start, count in ((0, 2), (2, 4)):
        _usage(_teams(start, count))
        # session, user, identity, the month's covered days less its late days (none here:
        # no rollup has run), the raw rows grouped, team labels
        with django_assert_num_queries(CHARGEBACK_QUERIES):
            body = _consume(
                client.get("/api/usage/chargeback.csv", {"month": "2026-10", "group_by": "team"})
            )
        assert body.count(b"\n") == 1 + (start + count) + 1  # header, teams, total


def test_insights_page(client, tier, django_assert_num_queries):
    admin = factories.make_user("boss", team=factories.make_team("Ops"), role="admin")
    client.force_login(admin)
    for start, count in ((0, 2), (2, 4)):
        _insights_data(tier, _teams(start, count))
        # session, user, identity, this month's daily rollups and raw rows not rolled up yet
        # (per customer, then per feature), subscriptions, per tier-fit month its daily
        # rollups and raw rows, team and virtual account labels, active tiers, prices,
        # gateway model modes, layout: none of it per subject
        with time_machine.travel(NOW, tick=False), django_assert_num_queries(INSIGHTS_PAGE_QUERIES):
            body = _consume(client.get("/billing/insights/"))
        assert body.count(b"virtual account bot-") == start + count
