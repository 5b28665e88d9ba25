"""The dashboard filters: plain values that every selector takes, with the caller's scope.

Both are resolved once per request (filters by `forms.FilterForm`, the scope by
`apps.usage.scope.usage_scope_for`) so selectors, charts and CSV exports see the same rows.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from apps.usage.query import dimension_tag_key
from apps.usage.tags import tag_key_problem

# Ranges up to this many days are bucketed by hour, longer ones by day.
HOURLY_MAX_DAYS = 2
DEFAULT_DAYS = 30
MAX_DAYS = 400
# Breakdown dimensions that are columns; `tag:<key>` adds any tag key.
COLUMN_DIMENSIONS = ("team", "virtual_account", "user", "model", "provider", "error_type")


@dataclass(frozen=True)
class DashboardFilters:
    """Whole UTC days `start`..`end` (inclusive) plus optional team, model, tag and data
    region filters (no region: every region the caller reads, merged)."""

    start: dt.date
    end: dt.date
    team_id: int | None = None
    model: str = ""
    tags: tuple[tuple[str, str], ...] = ()
    region: str = ""

    @property
    def bounds(self) -> tuple[dt.datetime, dt.datetime]:
        """[start 00:00 UTC, day after end 00:00 UTC)."""
        return (
            dt.datetime.combine(self.start, dt.time.min, tzinfo=dt.UTC),
            dt.datetime.combine(self.end + dt.timedelta(days=1), dt.time.min, tzinfo=dt.UTC),
        )

    @property
    def days(self) -> int:
        return (self.end - self.start).days + 1

    @property
    def granularity(self) -> str:
        return "hour" if self.days <= HOURLY_MAX_DAYS else "day"

    def with_tag(self, key: str, value: str) -> DashboardFilters:
        return DashboardFilters(
            start=self.start,
            end=self.end,
            team_id=self.team_id,
            model=self.model,
            tags=(*self.tags, (key, value)),
            region=self.region,
        )


def default_filters(*, today: dt.date) -> DashboardFilters:
    return DashboardFilters(start=today - dt.timedelta(days=DEFAULT_DAYS - 1), end=today)


def is_valid_dimension(dimension: str) -> bool:
    key = dimension_tag_key(dimension)
    if key is not None:
        return tag_key_problem(key) is None
    return dimension in COLUMN_DIMENSIONS
