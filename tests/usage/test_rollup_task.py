"""The one beat rollup, run by a real Celery worker on the test database: the one set of
daily tables for every complete day that is not final yet (today is left to the raw rows),
and this month's statements, all from the same raw rows in one run; a second run has
nothing left to do."""

import datetime as dt
from collections import Counter
from decimal import Decimal

import pytest
from django.conf import settings
from django.utils import timezone

from apps.usage.models import LatencyHistogramDaily, UsageCubeDaily
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

    def day(back: int) -> dt.date:
        return (now - dt.timedelta(days=back)).astimezone(dt.UTC).date()

    rolled = set(body["days"])
    assert today.isoformat() not in rolled
    assert {day(1).isoformat(), day(2).isoformat()} <= rolled
    assert f"{today:%Y-%m}" in body["months"]
    by_day: Counter = Counter()
    for row in UsageCubeDaily.objects.all():
        by_day[row.day] += row.requests
    # Every rolled day holds its raw rows; today stays raw.
    assert by_day == Counter(day(back) for back in (1, 2, 2, 5) if day(back).isoformat() in rolled)
    assert sum(UsageCubeDaily.objects.values_list("cost_usd", flat=True)) == Decimal("0.25") * sum(
        by_day.values()
    )
    per_team = LatencyHistogramDaily.objects.filter(all_teams=False)
    assert sorted(per_team.values_list("requests", flat=True)) == sorted(by_day.values())

    # Incremental: the days just rolled with usage are final, so the next run rolls none of
    # them but yesterday (when it ended less than the settle margin ago); days without usage
    # have no rollup rows to prove it, and re-rolling them costs an empty range scan.
    again = task_result(rollups_refresh.delay(3), celery_worker_process)
    with_usage = {day(back).isoformat() for back in (2, 5)}
    assert not set(again["days"]) & with_usage
    # An hour may have settled between the two runs; no other is rolled again.
    assert len(again["hours"]) <= 1
