"""UTC periods (days, months, runs of consecutive days or hours) and the rollup tag keys:
the calendar every usage reader and rollup shares. It imports nothing from billing, so
either side can be imported first.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable

from django.conf import settings
from django.utils import timezone


def rollup_tag_keys() -> list[str]:
    """Tag keys kept as rollup dimensions; the customer tag is always one of them."""
    keys = [*settings.BILLING_ROLLUP_TAG_KEYS, settings.BILLING_CUSTOMER_TAG_KEY]
    return list(dict.fromkeys(str(key) for key in keys if key))


def month_start(day: dt.date) -> dt.date:
    return day.replace(day=1)


def next_month(month: dt.date) -> dt.date:
    return (month.replace(day=28) + dt.timedelta(days=4)).replace(day=1)


def utc_today() -> dt.date:
    return timezone.now().astimezone(dt.UTC).date()


def utc_midnight(day: dt.date) -> dt.datetime:
    """`day` 00:00 UTC, an aware datetime."""
    return dt.datetime.combine(day, dt.time.min, tzinfo=dt.UTC)


def day_bounds(start: dt.date, end: dt.date) -> tuple[dt.datetime, dt.datetime]:
    """[start 00:00 UTC, end 00:00 UTC) for a half-open range of days."""
    return utc_midnight(start), utc_midnight(end)


def consecutive_runs(starts: Iterable, step: dt.timedelta) -> list[tuple]:
    """Period starts (days or hours, `step` apart) as sorted half-open runs of consecutive
    periods, [first, last + step)."""
    runs: list[tuple] = []
    for start in sorted(starts):
        if runs and runs[-1][1] == start:
            runs[-1] = (runs[-1][0], start + step)
        else:
            runs.append((start, start + step))
    return runs


def day_runs(days: Iterable[dt.date]) -> list[tuple[dt.date, dt.date]]:
    """Days as sorted half-open runs of consecutive days, [first, last + 1)."""
    return consecutive_runs(days, dt.timedelta(days=1))
