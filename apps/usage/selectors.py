"""Reads of the usage ledger's side tables. Usage figures themselves are read through the
query layer, never here."""

from __future__ import annotations

from django.db.models import QuerySet

from .models import UsageDeadLetter
from .regions import alias_for, current_region, region_names


def usage_dead_letters_open(region: str | None = None) -> QuerySet[UsageDeadLetter]:
    """Refused rows not yet replayed in `region`'s ledger (default: the current region),
    newest failure first."""
    alias = alias_for(region or current_region())
    return (
        UsageDeadLetter.objects.using(alias)
        .filter(replayed_at__isnull=True)
        .order_by("-last_failed_at")
    )


def usage_dead_letter_counts() -> dict[str, int]:
    """Open dead letters per data region."""
    return {region: usage_dead_letters_open(region).count() for region in region_names()}
