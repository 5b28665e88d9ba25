"""Writes to the usage ledger's side tables: dead letters and their replay.

The writer itself (`apps.usage.writer`) inserts usage rows; these are the use cases around
rows the database refused.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from typing import Any

from django.db import IntegrityError
from django.db.models import F
from django.utils import timezone

from apps.accounts.audit import audit_record

from .capture import clean_text
from .models import UsageDeadLetter
from .regions import current_region, in_region, ledger_atomic

logger = logging.getLogger(__name__)


def error_summary(error: str) -> str:
    """The first line of a write error with its quoted values left out: the audit log lives in
    the primary database, and an error's text may quote a region's row (tags, bodies)."""
    first = error.splitlines()[0] if error else ""
    return re.sub(r"\([^)]*\)|\"[^\"]*\"|'[^']*'", "…", first)[:200]


def usage_dead_letter_record(*, request_id: str, payload: str, error: str) -> None:
    """Keep a refused event; a second refusal of the same request counts up, no new row."""
    request_id = clean_text(request_id, 64) or "(no request id)"
    # The payload is JSON text, where a NUL is already escaped; the error may quote the row.
    payload = payload.replace("\x00", "")
    error = clean_text(error, 2000)
    try:
        with ledger_atomic():
            UsageDeadLetter.objects.create(request_id=request_id, payload=payload, error=error)
    except IntegrityError:
        # Already there (refused before, or another writer refused its copy just now).
        UsageDeadLetter.objects.filter(request_id=request_id).update(
            payload=payload,
            error=error,
            failures=F("failures") + 1,
            last_failed_at=timezone.now(),
            replayed_at=None,
        )
    logger.error(
        "usage writer: row %s rejected by the database, dead-lettered: %s", request_id, error
    )


@dataclass(frozen=True)
class ReplayResult:
    written: int
    already_there: int
    still_failing: int


def usage_dead_letters_replay(
    *, actor: Any = None, ids: list[int] | None = None, region: str | None = None
) -> ReplayResult:
    """Write open dead letters of `region` (default: the current one) again (all, or those in
    `ids`), e.g. after a fix is deployed.

    Goes through the writer's own isolating, idempotent insert: a row that made it in an
    earlier attempt is not counted twice, and one that is still refused stays open. A dead
    letter is kept, and replayed, in the region whose row it is.
    """
    with in_region(region or current_region()):
        return _replay(actor=actor, ids=ids)


def _replay(*, actor: Any, ids: list[int] | None) -> ReplayResult:
    from .event import UsageEvent
    from .writer import insert_events_isolating

    letters = UsageDeadLetter.objects.filter(replayed_at__isnull=True).order_by("id")
    if ids is not None:
        letters = letters.filter(id__in=ids)
    written = already = failing = 0
    for letter in letters:
        try:
            event = UsageEvent.from_json(letter.payload)
        except (ValueError, TypeError, KeyError) as exc:
            usage_dead_letter_record(
                request_id=letter.request_id, payload=letter.payload, error=f"unreadable: {exc}"
            )
            failing += 1
            continue
        result = insert_events_isolating([event])
        if result.dead_lettered:
            failing += 1
            continue
        with ledger_atomic():
            UsageDeadLetter.objects.filter(pk=letter.pk).update(replayed_at=timezone.now())
            audit_record(
                actor=actor,
                action="usage.dead_letter_replayed",
                obj=letter,
                before={"error": error_summary(letter.error), "failures": letter.failures},
                after={"written": bool(result.inserted)},
            )
        if result.inserted:
            written += 1
        else:
            already += 1
    return ReplayResult(written=written, already_there=already, still_failing=failing)
