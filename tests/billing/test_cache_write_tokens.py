"""Prompt-cache writes, the fourth token class, reach the usage API (JSON, CSV, raw rows) and
the chargeback CSV as the ledger has them: from raw rows, and from the rollups once the day
is rolled up."""

import csv
import datetime as dt
import io
from decimal import Decimal

import pytest
from django.db.models import Sum

from apps.usage.models import TagUsageDaily, UsageCubeDaily, UsageRecord
from apps.usage.rollups import usage_rollup_day
from tests.billing.conftest import DAY, LONG_AGO
from tests.billing.helpers import add_usage, usage_row

pytestmark = [pytest.mark.embedded, pytest.mark.django_db]

RANGE = {"start": "2026-10-01", "end": "2026-10-31"}
TOKEN_COLUMNS = ("input_tokens", "cached_tokens", "cache_write_tokens")


@pytest.fixture
def cache_usage(team, other_team, user):
    """Both teams' usage of 2026-10-05: prompts read from and written to the cache (both
    counted in input_tokens), plain prompts, and a failed request."""
    rows = []
    for index, (team_row, customer, input_tokens, cached, written, status) in enumerate(
        [
            (team, "acme", 1000, 200, 300, 200),
            (team, "acme", 2000, 0, 1500, 200),
            (team, "globex", 500, 100, 0, 200),
            (team, "globex", 800, 0, 0, 200),
            (other_team, "acme", 3000, 1000, 517, 200),
            (other_team, "initech", 100, 0, 50, 200),
            (other_team, "initech", 0, 0, 0, 500),
        ]
    ):
        rows.append(
            usage_row(
                team_id=team_row.pk,
                user_id=user.pk if team_row == team else None,
                created_at=DAY + dt.timedelta(minutes=10 * index),
                model="claude-sonnet-4-5",
                provider="anthropic",
                status_code=status,
                input_tokens=input_tokens,
                cached_tokens=cached,
                cache_write_tokens=written,
                output_tokens=10,
                cost_usd=Decimal("0.0012345678"),
                tags={"customer_id": customer},
            )
        )
    add_usage(rows, inserted_at=LONG_AGO)
    return rows


def _ledger(group: str | None) -> dict[object, dict[str, int]]:
    """The usage rows' token sums per `group` column (`None` for all rows)."""
    rows = UsageRecord.objects.all()
    sums = {name: Sum(name) for name in TOKEN_COLUMNS}
    if group is None:
        return {None: rows.aggregate(**sums)}
    return {row.pop(group): row for row in rows.values(group).annotate(**sums).order_by()}


def _table(response) -> list[dict[str, str]]:
    assert response.status_code == 200, response.content
    text = b"".join(response.streaming_content).decode()
    return list(csv.DictReader(io.StringIO(text)))


def _check_json_and_csv(client, team, other_team) -> None:
    ledger = _ledger("team_id")
    body = client.get("/api/usage/", {**RANGE, "group_by": "team", "metrics": "tokens"}).json()
    assert {row["team_id"]: {c: row[c] for c in TOKEN_COLUMNS} for row in body["data"]} == ledger
    # The numbers themselves, so that an empty column would not pass: 300 + 1500 written by
    # frontend, 517 + 50 by backend.
    assert ledger[team.pk]["cache_write_tokens"] == 1800
    assert ledger[other_team.pk]["cache_write_tokens"] == 567

    table = _table(
        client.get(
            "/api/usage/", {**RANGE, "group_by": "team", "metrics": "tokens", "format": "csv"}
        )
    )
    assert {int(row["team_id"]): {c: int(row[c]) for c in TOKEN_COLUMNS} for row in table} == (
        ledger
    )

    chargeback = _table(
        client.get("/api/usage/chargeback.csv", {"month": "2026-10", "group_by": "team"})
    )
    *groups, total = chargeback
    assert {int(row["team_id"]): {c: int(row[c]) for c in TOKEN_COLUMNS} for row in groups} == (
        ledger
    )
    assert total["team"] == "TOTAL"
    assert {c: int(total[c]) for c in TOKEN_COLUMNS} == _ledger(None)[None]
    assert int(total["cache_write_tokens"]) == 2367


def test_usage_api_and_chargeback_carry_cache_writes(
    client, finance_user, cache_usage, team, other_team
):
    client.force_login(finance_user)
    _check_json_and_csv(client, team, other_team)
    # Per customer (a rollup tag key) too.
    ledger = {
        customer: sum(
            row.cache_write_tokens for row in cache_usage if row.tags["customer_id"] == customer
        )
        for customer in ("acme", "globex", "initech")
    }
    chargeback = _table(
        client.get("/api/usage/chargeback.csv", {"month": "2026-10", "group_by": "tag.customer_id"})
    )
    assert {r["tag.customer_id"]: int(r["cache_write_tokens"]) for r in chargeback[:-1]} == ledger


def test_raw_rows_carry_cache_writes(client, finance_user, cache_usage):
    client.force_login(finance_user)
    body = client.get("/api/usage/", {**RANGE, "mode": "rows"}).json()
    written = {row["request_id"]: row["cache_write_tokens"] for row in body["data"]}
    assert written == dict(UsageRecord.objects.values_list("request_id", "cache_write_tokens"))
    table = _table(client.get("/api/usage/", {**RANGE, "mode": "rows", "format": "csv"}))
    assert sum(int(row["cache_write_tokens"]) for row in table) == 2367


def test_rolled_up_days_carry_cache_writes(client, finance_user, cache_usage, team, other_team):
    client.force_login(finance_user)
    usage_rollup_day(day=DAY.date())
    ledger = _ledger(None)[None]
    cube = UsageCubeDaily.objects.aggregate(n=Sum("cache_write_tokens"))["n"]
    customers = TagUsageDaily.objects.filter(tag_key="customer_id")
    assert cube == customers.aggregate(n=Sum("cache_write_tokens"))["n"]
    assert cube == ledger["cache_write_tokens"]
    # The rollups alone answer for a rolled-up day: with the raw rows gone (as past raw
    # retention) the figures are the same.
    team_ledger = _ledger("team_id")
    _check_json_and_csv(client, team, other_team)
    UsageRecord.objects.all().delete()
    body = client.get("/api/usage/", {**RANGE, "group_by": "team", "metrics": "tokens"}).json()
    assert {r["team_id"]: {c: r[c] for c in TOKEN_COLUMNS} for r in body["data"]} == team_ledger
    chargeback = _table(
        client.get("/api/usage/chargeback.csv", {"month": "2026-10", "group_by": "tag.customer_id"})
    )
    assert chargeback[-1]["cache_write_tokens"] == "2367"
    assert {r["tag.customer_id"]: r["cache_write_tokens"] for r in chargeback[:-1]} == {
        "acme": "2317",
        "globex": "0",
        "initech": "50",
    }
