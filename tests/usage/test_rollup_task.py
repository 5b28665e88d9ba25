"""The one beat rollup, run by a real Celery worker on the test database: billing's tables
and this month's statements, and the dashboards' rollups of the last complete days (today is
left to the raw rows there), all from the same raw rows in one run."""

import datetime as dt
from decimal import Decimal

import pytest
from django.conf import settings
from django.utils import timezone

from apps.billing.models import UsageRollupDaily, UsageRollupMonthly
from apps.dashboards.models import LatencyHistogramDaily, UsageCubeDaily
from apps.usage.tasks import rollups_refresh
from tests.conftest import task_result
from tests.dashboards.conftest import usage

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.services]


def test_the_beat_schedule_has_one_rollup_task():
    rollups = [name for name in settings.CELERY_BEAT_SCHEDULE if "rollup" in name]
    assert rollups == ["usage.rollups_refresh"]


def test_worker_refreshes_every_rollup_from_the_same_rows(celery_worker_process, team, user):
    now = timezone.now().replace(hour=12)
    today = now.astimezone(dt.UTC).date()
    for back, latency in ((0, 10.0), (1, 100.0), (2, 200.0), (2, 300.0), (5, 400.0)):
        usage(
            created_at=now - dt.timedelta(days=back),
            team_id=team.pk,
            user_id=user.pk,
            latency_ms=latency,
            cost_usd=Decimal("0.25"),
        )

    result = rollups_refresh.delay(3)
    body = task_result(result, celery_worker_process)

    assert body["dashboard_days"] == [(today - dt.timedelta(days=3)).isoformat(), today.isoformat()]
    assert f"{today:%Y-%m}" in body["months"]
    by_day = {row.day: row.requests for row in UsageCubeDaily.objects.all()}
    # Days 1 and 2 back: rolled up; today and 5 days back: outside the window.
    assert by_day == {
        (now - dt.timedelta(days=1)).astimezone(dt.UTC).date(): 1,
        (now - dt.timedelta(days=2)).astimezone(dt.UTC).date(): 2,
    }
    assert sum(UsageCubeDaily.objects.values_list("cost_usd", flat=True)) == Decimal("0.75")
    per_team = LatencyHistogramDaily.objects.filter(all_teams=False)
    assert sorted(per_team.values_list("requests", flat=True)) == [1, 2]
    # Billing rolled up every day of this month, today included, from the same rows.
    month_rows = [
        (now - dt.timedelta(days=back)).astimezone(dt.UTC).date()
        for back in (0, 1, 2, 2, 5)
        if (now - dt.timedelta(days=back)).astimezone(dt.UTC).date().month == today.month
    ]
    billed = UsageRollupDaily.objects.filter(day__gte=today.replace(day=1))
    assert sum(billed.values_list("requests", flat=True)) == len(month_rows)
    monthly = UsageRollupMonthly.objects.filter(month=today.replace(day=1))
    assert sum(monthly.values_list("requests", flat=True)) == len(month_rows)
