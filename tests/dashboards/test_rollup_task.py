"""The beat task, run by a real Celery worker on the test database: it rolls up the last
complete days and leaves today to the raw rows."""

import datetime as dt
from decimal import Decimal

import pytest
from django.utils import timezone

from apps.dashboards.models import LatencyHistogramDaily, UsageCubeDaily
from apps.dashboards.tasks import rollup_recent_days
from tests.conftest import task_result

from .conftest import usage

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.services]


def test_worker_rolls_up_the_last_complete_days(celery_worker_process, team, user):
    now = timezone.now()
    today = now.astimezone(dt.UTC).date()
    for back, latency in ((0, 10.0), (1, 100.0), (2, 200.0), (2, 300.0), (5, 400.0)):
        usage(
            created_at=now - dt.timedelta(days=back),
            team_id=team.pk,
            user_id=user.pk,
            latency_ms=latency,
            cost_usd=Decimal("0.25"),
        )

    result = rollup_recent_days.delay(3)
    span = task_result(result, celery_worker_process)

    assert span == [(today - dt.timedelta(days=3)).isoformat(), today.isoformat()]
    by_day = {row.day: row.requests for row in UsageCubeDaily.objects.all()}
    # Days 1 and 2 back: rolled up; today and 5 days back: outside the window.
    assert by_day == {
        (now - dt.timedelta(days=1)).astimezone(dt.UTC).date(): 1,
        (now - dt.timedelta(days=2)).astimezone(dt.UTC).date(): 2,
    }
    assert sum(UsageCubeDaily.objects.values_list("cost_usd", flat=True)) == Decimal("0.75")
    per_team = LatencyHistogramDaily.objects.filter(all_teams=False)
    assert sorted(per_team.values_list("requests", flat=True)) == [1, 2]
