"""Choices for the filter bar: tag keys, models and teams the caller may pick."""

from __future__ import annotations

from apps.accounts.models import TagDefinition, Team
from apps.accounts.selectors import tag_keys_recent
from apps.usage.grouping import rollup_tag_keys
from apps.usage.models import UsageCubeDaily, UsageRecord
from apps.usage.scope import UsageScope

from ..filters import DashboardFilters
from .rows import filtered, last_rollup_day, raw_usage, rolled_up_days, uncovered_ranges


def tag_keys_in_use(*, scope: UsageScope) -> list[str]:
    """Keys for the tag pickers: rollup keys, glossary keys and keys in recent usage."""
    keys = set(rollup_tag_keys()) | set(TagDefinition.objects.values_list("key", flat=True))
    if not scope.is_empty:
        keys |= tag_keys_recent(usage=scope.filter(UsageRecord.objects.all()))
    return sorted(keys)


def model_names(*, scope: UsageScope, filters: DashboardFilters) -> list[str]:
    """Models with usage in range and scope, for the model filter."""
    unfiltered = DashboardFilters(start=filters.start, end=filters.end)
    last = last_rollup_day(unfiltered)
    covered = rolled_up_days(UsageCubeDaily, unfiltered.start, last)
    names: set[str] = set()
    if covered:
        cube = UsageCubeDaily.objects.order_by().filter(day__gte=unfiltered.start, day__lt=last)
        cube = filtered(cube, scope=scope, filters=unfiltered, tags_field=None)
        names.update(cube.values_list("model", flat=True).distinct())
    ranges = uncovered_ranges(unfiltered, covered)
    if ranges:
        raw = raw_usage(scope=scope, filters=unfiltered, ranges=ranges)
        names.update(raw.values_list("model", flat=True).distinct())
    return sorted(names)


def teams_for_filter(*, scope: UsageScope) -> list[tuple[int, str]]:
    teams = Team.objects.order_by("name")
    if not scope.everything:
        teams = teams.filter(pk__in=sorted(scope.team_ids)) if scope.team_ids else teams.none()
    return list(teams.values_list("pk", "name"))
