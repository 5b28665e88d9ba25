"""The SQLite fallbacks (embedded mode): Python grouping, percentiles and exact sums."""

import datetime as dt
from decimal import Decimal

import pytest
from django.db.models import Sum

from apps.usage.models import TagUsageDaily, UsageCubeDaily, UsageRecord
from apps.usage.rollups import usage_rollup_month

pytestmark = [pytest.mark.django_db, pytest.mark.embedded]


def test_rollup_and_usage_api(client, finance_user, billing_usage):
    usage_rollup_month(month=dt.date(2026, 10, 1))
    rolled = UsageCubeDaily.objects.aggregate(c=Sum("requests"))["c"]
    assert rolled == UsageRecord.objects.count() == 15
    acme = TagUsageDaily.objects.filter(tag_key="customer_id", tag_value="acme")
    assert sum(r.cost_usd for r in acme) == Decimal("0.06")

    client.force_login(finance_user)
    params = {"start": "2026-10-01", "end": "2026-10-31", "group_by": "team,tag.feature"}
    rows = client.get("/api/usage/", params).json()["data"]
    frontend = next(r for r in rows if r["team"] == "frontend")
    assert frontend["tag.feature"] == "chat" and frontend["requests"] == 10
    assert frontend["latency_p50_ms"] == pytest.approx(55.0)
    assert frontend["latency_p90_ms"] == pytest.approx(91.0)
    params = {"start": "2026-10-01", "end": "2026-10-31", "tag.customer_id": "globex"}
    assert client.get("/api/usage/", params).json()["data"][0]["cost_usd"] == "2.500000"
