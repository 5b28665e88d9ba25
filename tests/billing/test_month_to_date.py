"""Month to date is live: statements, the tier-change preview and insights without a rollup.

Reported: a team on Standard showed "Used 0" on the preview and no statement until someone
ran `manage.py rollup`. Every surface here reads `apps.usage.month_to_date`: the complete
days already rolled up plus the raw rows after them, each day counted once. Figures are read
from what is rendered (HTML cells, CSV cells, API JSON), thousands separators ignored.
"""

import csv
import datetime as dt
import io
from decimal import Decimal
from html.parser import HTMLParser

import pytest
import time_machine

from apps.billing.constants import SubjectType
from apps.billing.models import Statement, Tier
from apps.billing.services import subscription_change, tiers_seed_demo
from apps.billing.subjects import BillingSubject
from apps.usage.month_to_date import UsageSubject, month_to_date
from apps.usage.rollups import usage_rollup_month
from tests.billing.helpers import add_usage, usage_row

pytestmark = [pytest.mark.django_db, pytest.mark.embedded]

OCT = dt.date(2026, 10, 1)
NOW = dt.datetime(2026, 10, 20, 12, 0, tzinfo=dt.UTC)
# (created_at, input, output, cost): 538,192 tokens and 3.50 USD this month.
ROWS = [
    (dt.datetime(2026, 10, 3, 10, 0, tzinfo=dt.UTC), 200_000, 100_000, "1.00"),
    # The last second of a day: counted once whether the day is rolled up or not.
    (dt.datetime(2026, 10, 10, 23, 59, 59, tzinfo=dt.UTC), 150_000, 50_000, "2.00"),
    (dt.datetime(2026, 10, 20, 8, 0, tzinfo=dt.UTC), 30_000, 8_192, "0.50"),
]
USED = 538_192


class _Cells(HTMLParser):
    """Text of every table row's cells, in order."""

    def __init__(self) -> None:
        super().__init__()
        self.rows: list[list[str]] = []
        self._cell: list[str] | None = None

    def handle_starttag(self, tag, attrs):
        if tag == "tr":
            self.rows.append([])
        elif tag in ("td", "th"):
            self._cell = []

    def handle_endtag(self, tag):
        if tag in ("td", "th") and self._cell is not None and self.rows:
            self.rows[-1].append("".join(self._cell).strip())
            self._cell = None

    def handle_data(self, data):
        if self._cell is not None:
            self._cell.append(data)


def row_of(html: bytes, first_cell: str) -> list[str]:
    parser = _Cells()
    parser.feed(html.decode())
    return next(row for row in parser.rows if row and row[0] == first_cell)


def number(text: str) -> Decimal:
    return Decimal(text.replace(",", "").replace("$", "").replace("USD", "").strip())


@pytest.fixture
def now():
    with time_machine.travel(NOW, tick=False):
        yield NOW


@pytest.fixture
def standard_team(now, team):
    tiers_seed_demo()
    subject = BillingSubject(type=SubjectType.TEAM, team=team)
    subscription_change(
        subject=subject,
        tier=Tier.objects.get(name="Standard"),
        at=dt.datetime(2026, 10, 1, tzinfo=dt.UTC),
    )
    add_usage(
        [
            usage_row(
                team_id=team.pk,
                created_at=at,
                model="gpt-4o",
                input_tokens=inp,
                output_tokens=out,
                cost_usd=Decimal(cost),
            )
            for at, inp, out, cost in ROWS
        ]
    )
    return subject


def test_statement_page_and_csv_without_a_rollup(client, finance_user, standard_team):
    assert not Statement.objects.exists()  # no rollup has ever run
    client.force_login(finance_user)
    page = client.get("/billing/")
    assert page.status_code == 200
    cells = row_of(page.content, "team frontend")
    assert cells[1] == "Standard"
    assert [number(c) for c in cells[2:5]] == [200_000, USED, USED - 200_000]
    # Hard-capped: no overage charge; held all month: the full base price.
    assert [number(c) for c in cells[5:8]] == [Decimal("49.00"), 0, Decimal("49.00")]

    response = client.get("/billing/statements.csv")
    rows = list(csv.DictReader(io.StringIO(b"".join(response.streaming_content).decode())))
    assert [(r["month"], r["subject"], number(r["used_tokens"])) for r in rows] == [
        ("2026-10", "team frontend", USED)
    ]


def test_preview_shows_the_month_so_far(client, admin_user, standard_team, team):
    professional = Tier.objects.get(name="Professional")
    client.force_login(admin_user)
    form = {"subject_type": "team", "team": team.pk, "tier": professional.pk}
    page = client.post("/billing/subscriptions/", {**form, "action": "preview"})
    assert page.status_code == 200
    now_row, after_row = row_of(page.content, "Now"), row_of(page.content, "After")
    assert now_row[1] == "Standard" and number(now_row[3]) == USED
    assert number(now_row[4]) == 200_000 - USED  # over the cap already
    assert after_row[1] == "Professional"
    assert (number(after_row[3]), number(after_row[4])) == (USED, 1_000_000 - USED)


def test_insights_without_a_rollup(client, finance_user, standard_team, team):
    client.force_login(finance_user)
    body = client.get("/api/usage/insights").json()
    spend = next(s for s in body["spend"] if s["subject_key"] == f"team:{team.pk}")
    assert (spend["tokens"], spend["spend_usd"]) == (USED, "3.50")
    assert body["spend_total_usd"] == "3.50"
    fit = next(f for f in body["tier_fit"] if f["subject_key"] == f"team:{team.pk}")
    assert fit["cap"]["used_tokens"] == USED and fit["cap"]["reached"] is True
    page = client.get("/billing/insights/")
    assert "Spent 0.00 USD" not in page.content.decode()
    cells = row_of(page.content, "team frontend")
    assert (number(cells[2]), number(cells[3])) == (USED, Decimal("3.50"))


def test_tier_fit_reads_past_months_never_rolled_up(client, finance_user, now, team):
    # ~2M tokens in September, no rollup ever: the fit must not recommend Standard.
    tiers_seed_demo()
    subscription_change(
        subject=BillingSubject(type=SubjectType.TEAM, team=team),
        tier=Tier.objects.get(name="Professional"),
        at=dt.datetime(2026, 6, 1, tzinfo=dt.UTC),
    )
    add_usage(
        [
            usage_row(
                team_id=team.pk,
                created_at=dt.datetime(2026, 9, day, tzinfo=dt.UTC),
                input_tokens=100_000,
                output_tokens=0,
            )
            for day in range(1, 21)
        ]
    )
    client.force_login(finance_user)
    body = client.get("/api/usage/insights").json()
    fit = next(f for f in body["tier_fit"] if f["subject_key"] == f"team:{team.pk}")
    assert fit["tokens_by_month"] == [0, 0, 2_000_000]
    assert fit["recommended_tier"] == "Professional"


def test_rolled_up_days_and_raw_rest_count_once(client, finance_user, standard_team, team):
    # The rollup runs now: the 3rd and the 10th are complete, today is still open.
    usage_rollup_month(month=OCT)
    stored = Statement.objects.get(subject_key=standard_team.key, month=OCT)
    assert stored.used_tokens == USED
    # A call after the run: only in the raw rows.
    add_usage([usage_row(team_id=team.pk, created_at=NOW, input_tokens=1000, output_tokens=0)])
    totals = month_to_date(subject=UsageSubject(team_id=team.pk), month=OCT)
    assert (totals.tokens, totals.requests) == (USED + 1000, 4)
    assert totals.cost_usd == Decimal("3.50") + Decimal("0.0012345678")
    client.force_login(finance_user)
    cells = row_of(client.get("/billing/").content, "team frontend")
    assert number(cells[3]) == USED + 1000  # live, not the stored statement
    # A day rolled up while still open is read raw: the rollup of today changes nothing.
    with time_machine.travel(NOW + dt.timedelta(minutes=5), tick=False):
        usage_rollup_month(month=OCT)
        assert month_to_date(subject=UsageSubject(team_id=team.pk), month=OCT) == totals


def test_models_and_customer_tags(standard_team, team):
    add_usage(
        [
            usage_row(
                created_at=dt.datetime(2026, 10, 4, tzinfo=dt.UTC),
                model="claude",
                input_tokens=7,
                output_tokens=0,
                tags={"customer_id": "acme"},
            )
        ]
    )
    usage_rollup_month(month=OCT)
    acme = UsageSubject(tags=(("customer_id", "acme"),))
    assert month_to_date(subject=acme, month=OCT).tokens == 7
    gpt = month_to_date(subject=UsageSubject(team_id=team.pk), month=OCT, models=["gpt-4o"])
    assert gpt.tokens == USED
    # A key is not kept apart by the rollup: read raw for the whole month, same answer.
    assert month_to_date(subject=UsageSubject(api_key_id=123), month=OCT).tokens == 0


def test_a_fresh_demo_shows_this_months_statements(client):
    """`make run` seeds the demo: its teams are on a tier, so /billing/ is not empty."""
    from django.contrib.auth import get_user_model
    from django.core.management import call_command

    from apps.accounts.models import Team
    from apps.usage.models import UsageRecord

    call_command("seed_demo", force=True, stdout=io.StringIO())
    client.force_login(get_user_model().objects.get(username="finance"))
    html = client.get("/billing/").content
    month = dt.datetime.now(dt.UTC).replace(day=1, hour=0, minute=0, second=0, microsecond=0)
    for slug in ("frontend", "saas"):
        team = Team.objects.get(slug=slug)
        rows = UsageRecord.objects.filter(team_id=team.pk, created_at__gte=month)
        used = sum(row.input_tokens + row.output_tokens for row in rows)
        cells = row_of(html, f"team {slug}")
        assert cells[1] == "Professional"
        assert number(cells[3]) == used
