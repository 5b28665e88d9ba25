"""Moving a team's usage history from other regions' databases into its region's.

`manage.py usage move-region --team T --to eu` sets the team's region first (new rows go
there at once), then moves its old rows region by region, in chunks: each chunk is inserted
into the target (idempotent on the request id, as every usage insert) and only then deleted
from its source. Interrupted anywhere, a re-run finds the rows still left in the sources and
moves those; a row is never in neither database, and never counted in both for long: the
chunk in both for a moment is deleted from the source right after the target committed.

The days a chunk touches are marked late in both databases, so the rollups of the days that
lost and gained rows are recomputed by the next scheduled run (the coverage rule reads raw
rows for them meanwhile, so figures stay right).
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, fields
from typing import Any

from django.conf import settings
from django.db import transaction
from django.db.models import Q, QuerySet

from apps.accounts.audit import audit_record
from apps.accounts.models import CustomerRegion, Team

from .event import UsageEvent
from .models import UsageRecord
from .regions import in_region, ledger_atomic, region_names, region_spec
from .writer import insert_events_isolating, mark_late_days

CHUNK = 2000
_EVENT_FIELDS = frozenset(f.name for f in fields(UsageEvent))


@dataclass(frozen=True)
class RegionMove:
    team: str
    to: str
    moved: dict[str, int]  # source region: rows moved out of it

    @property
    def total(self) -> int:
        return sum(self.moved.values())


def usage_region_move(*, team: Team, to: str, actor: Any = None) -> RegionMove:
    """Keep `team`'s rows in region `to` from now on and move its history there."""
    from apps.accounts.services import team_region_set

    region_spec(to)  # an unknown region is refused before anything changes
    team_region_set(team=team, region=to, actor=actor)
    moved: dict[str, int] = {}
    # Rows of customers kept in a region of their own stay where they are: they live by
    # their customer's region, not the team's.
    pinned = list(CustomerRegion.objects.exclude(region=to).values_list("customer_id", flat=True))
    for source in region_names():
        if source == to:
            continue
        count = _move_from(team.pk, source, to, pinned)
        if count:
            moved[source] = count
    result = RegionMove(team.slug, to, moved)
    with transaction.atomic():
        audit_record(
            actor=actor,
            action="usage.region_moved",
            obj=team,
            before={"regions": sorted(moved)},
            after={"data_region": to, "rows_moved": result.total, "by_source": moved},
        )
    return result


def _team_rows(team_id: int, pinned: list[str]) -> QuerySet[UsageRecord]:
    rows = UsageRecord.objects.filter(team_id=team_id)
    if pinned:
        key = settings.BILLING_CUSTOMER_TAG_KEY
        # has_key first: a row without the tag compares as NULL, which `exclude` would drop.
        rows = rows.exclude(Q(tags__has_key=key) & Q(**{f"tags__{key}__in": pinned}))
    return rows


def _move_from(team_id: int, source: str, to: str, pinned: list[str]) -> int:
    moved = 0
    while True:
        with in_region(source):
            rows = list(_team_rows(team_id, pinned).order_by("created_at", "id")[:CHUNK])
        if not rows:
            return moved
        events = [_event_of(row, to) for row in rows]
        with in_region(to):
            result = insert_events_isolating(events)
        if result.dead_lettered:
            # The target refused some (and keeps them as dead letters); the source keeps
            # its copies until they are fixed and replayed, rather than losing nothing twice.
            raise RegionMoveError(
                f"{result.dead_lettered} rows of the chunk were refused by region {to}; "
                "see /usage/dead-letters/ there, then re-run the move"
            )
        with in_region(source), ledger_atomic():
            UsageRecord.objects.filter(pk__in=[row.pk for row in rows]).delete()
            mark_late_days(_row_times(rows))
        moved += len(rows)


def _event_of(row: UsageRecord, region: str) -> UsageEvent:
    values = {
        f.name: getattr(row, f.attname)
        for f in UsageRecord._meta.concrete_fields
        if f.name in _EVENT_FIELDS
    }
    if isinstance(values.get("key_lineage_id"), uuid.UUID):
        values["key_lineage_id"] = str(values["key_lineage_id"])
    values["region"] = region
    return UsageEvent(**values)


def _row_times(rows: list[UsageRecord]) -> list[dict[str, Any]]:
    return [{"created_at": row.created_at} for row in rows]


class RegionMoveError(Exception):
    pass
