"""Reads of the usage ledger's side tables. Usage figures themselves are read through the
query layer, never here."""

from __future__ import annotations

from django.db.models import QuerySet

from .models import UsageDeadLetter


def usage_dead_letters_open() -> QuerySet[UsageDeadLetter]:
    """Refused rows not yet replayed, newest failure first."""
    return UsageDeadLetter.objects.filter(replayed_at__isnull=True).order_by("-last_failed_at")


def usage_dead_letter_count() -> int:
    return usage_dead_letters_open().count()
