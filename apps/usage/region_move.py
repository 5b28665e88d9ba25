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

Each move is journalled (`TeamRegionMove`, in the primary). The scheduled sweep
(`usage_region_moves_sweep`, beat every few minutes) finishes a move nobody is running any
more (a killed command: its chunk in both databases is deleted from the source, since the
target's insert skips the rows it has), and for `USAGE_REGION_MOVE_SWEEP_HOURS` after a move
moves the team's rows that still landed in an old region: events in flight at the change.
"""

from __future__ import annotations

import datetime as dt
import uuid
from dataclasses import dataclass, fields
from typing import Any

from django.conf import settings
from django.db import transaction
from django.db.models import F, Q, QuerySet
from django.utils import timezone

from apps.accounts.audit import audit_record
from apps.accounts.models import CustomerRegion, Team, TeamRegionMove

from .event import UsageEvent
from .models import UsageRecord
from .regions import in_region, ledger_atomic, region_names, region_or_default, region_spec
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
    now = timezone.now()
    # An earlier move of the team that never finished is superseded by this one.
    TeamRegionMove.objects.filter(team=team, finished_at__isnull=True).update(finished_at=now)
    journal = TeamRegionMove.objects.create(team=team, to=to)
    moved = _move_history(team, to, journal)
    journal.finished_at = timezone.now()
    journal.save(update_fields=["finished_at", "touched_at"])
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


def _move_history(team: Team, to: str, journal: TeamRegionMove) -> dict[str, int]:
    """Every row of `team` in another region moved to `to`: {source region: rows moved}."""
    moved: dict[str, int] = {}
    # Rows of customers kept in a region of their own stay where they are: they live by
    # their customer's region, not the team's.
    pinned = list(CustomerRegion.objects.exclude(region=to).values_list("customer_id", flat=True))
    for source in region_names():
        if source == to:
            continue
        count = _move_from(team.pk, source, to, pinned, journal)
        if count:
            moved[source] = count
    return moved


@dataclass(frozen=True)
class MovesSwept:
    finished: list[str]  # teams whose interrupted move the sweep finished
    stragglers: dict[str, int]  # team: rows moved that landed in an old region after a move


def usage_region_moves_sweep(*, now: dt.datetime | None = None) -> MovesSwept:
    """Finish interrupted moves and move stragglers of recent ones (see the module doc)."""
    now = now or timezone.now()
    idle = now - dt.timedelta(seconds=settings.USAGE_REGION_MOVE_IDLE_SECONDS)
    recent = now - dt.timedelta(hours=settings.USAGE_REGION_MOVE_SWEEP_HOURS)
    finished: list[str] = []
    stragglers: dict[str, int] = {}
    wanted = Q(finished_at__isnull=True, touched_at__lt=idle) | Q(finished_at__gte=recent)
    seen: set[int] = set()
    journals = TeamRegionMove.objects.filter(wanted).select_related("team").order_by("-started_at")
    for journal in journals:
        team = journal.team
        if team.pk in seen:
            continue  # a team's latest move stands for its earlier ones (re-runs, all)
        seen.add(team.pk)
        if region_or_default(team.data_region) != journal.to:
            # The team's region changed since without a move: nothing of this one to finish.
            if journal.finished_at is None:
                journal.finished_at = now
                journal.save(update_fields=["finished_at", "touched_at"])
            continue
        moved = sum(_move_history(team, journal.to, journal).values())
        if journal.finished_at is None:
            journal.finished_at = timezone.now()
            journal.save(update_fields=["finished_at", "touched_at"])
            finished.append(team.slug)
        elif moved:
            stragglers[team.slug] = stragglers.get(team.slug, 0) + moved
        if moved or team.slug in finished:
            with transaction.atomic():
                audit_record(
                    actor=None,
                    action="usage.region_move_swept",
                    obj=team,
                    before={},
                    after={"data_region": journal.to, "rows_moved": moved},
                )
    return MovesSwept(finished, stragglers)


def _team_rows(team_id: int, pinned: list[str]) -> QuerySet[UsageRecord]:
    rows = UsageRecord.objects.filter(team_id=team_id)
    if pinned:
        key = settings.BILLING_CUSTOMER_TAG_KEY
        # has_key first: a row without the tag compares as NULL, which `exclude` would drop.
        rows = rows.exclude(Q(tags__has_key=key) & Q(**{f"tags__{key}__in": pinned}))
    return rows


def _move_from(
    team_id: int, source: str, to: str, pinned: list[str], journal: TeamRegionMove
) -> int:
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
        TeamRegionMove.objects.filter(pk=journal.pk).update(
            touched_at=timezone.now(), rows_moved=F("rows_moved") + len(rows)
        )


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
