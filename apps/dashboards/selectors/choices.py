"""Choices for the filter bar: tag keys, models and teams the caller may pick."""

from __future__ import annotations

from apps.accounts.models import TagDefinition, Team
from apps.accounts.selectors import tag_keys_recent
from apps.usage.grouping import rollup_tag_keys
from apps.usage.models import UsageRecord
from apps.usage.query import usage_totals
from apps.usage.region_reads import read_each_region
from apps.usage.scope import UsageScope

from ..filters import DashboardFilters
from .rows import usage_filter


def tag_keys_in_use(*, scope: UsageScope) -> list[str]:
    """Keys for the tag pickers: rollup keys, glossary keys and keys in recent usage."""
    keys = set(rollup_tag_keys()) | set(TagDefinition.objects.values_list("key", flat=True))
    if not scope.is_empty:
        for found in read_each_region(
            scope.readable_regions(),
            lambda: tag_keys_recent(usage=scope.filter(UsageRecord.objects.all())),
        ):
            keys |= found
    return sorted(keys)


def model_names(*, scope: UsageScope, filters: DashboardFilters) -> list[str]:
    """Models with usage in range and scope, for the model filter."""
    unfiltered = usage_filter(DashboardFilters(start=filters.start, end=filters.end))
    found = usage_totals(scope=scope, where=unfiltered, group_by=("model",))
    return sorted({str(totals.group[0]) for totals in found})


def teams_for_filter(*, scope: UsageScope) -> list[tuple[int, str]]:
    teams = Team.objects.order_by("name")
    if not scope.everything:
        teams = teams.filter(pk__in=sorted(scope.team_ids)) if scope.team_ids else teams.none()
    return list(teams.values_list("pk", "name"))
