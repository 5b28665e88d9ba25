import datetime as dt
from decimal import Decimal

import pytest

from apps.accounts.constants import Role
from tests import factories
from tests.billing.helpers import add_usage, usage_row

DAY = dt.datetime(2026, 10, 5, 12, 0, tzinfo=dt.UTC)
LONG_AGO = dt.datetime(2026, 10, 6, tzinfo=dt.UTC)


@pytest.fixture
def billing_usage(team, other_team, user):
    """Two teams' usage on 2026-10-05/06 with customer and feature tags."""
    rows = []
    for i in range(10):
        rows.append(
            usage_row(
                team_id=team.pk,
                user_id=user.pk,
                created_at=DAY + dt.timedelta(hours=i),
                model="gpt-4o" if i % 2 else "gpt-4o-mini",
                status_code=500 if i == 9 else 200,
                input_tokens=100,
                output_tokens=10,
                cost_usd=Decimal("0.0100000000"),
                latency_ms=float(10 * (i + 1)),
                tags={"customer_id": "acme" if i < 6 else '=HYPERLINK("x")', "feature": "chat"},
            )
        )
    for i in range(5):
        rows.append(
            usage_row(
                team_id=other_team.pk,
                created_at=DAY + dt.timedelta(days=1, hours=i),
                model="claude",
                input_tokens=1000,
                output_tokens=100,
                cost_usd=Decimal("0.5000000000"),
                tags={"customer_id": "globex", "feature": "search"},
            )
        )
    add_usage(rows, inserted_at=LONG_AGO)
    return rows


@pytest.fixture
def finance_user(other_team):
    return factories.make_user("fiona", team=other_team, role=Role.FINANCE)


@pytest.fixture
def admin_user(other_team):
    return factories.make_user("adam", team=other_team, role=Role.ADMIN)


@pytest.fixture
def team_admin(team):
    return factories.make_user("tara", team=team, role=Role.TEAM_ADMIN)
