"""Reads for tiers, subscriptions and statements (portal pages and CSV downloads)."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from dataclasses import dataclass

from django.db.models import QuerySet

from apps.billing.models import Statement, Subscription, Tier
from apps.billing.services.statements import statements_draft_month
from apps.billing.subjects import BillingSubject
from apps.usage.grouping import month_start
from apps.usage.month_to_date import current_month, month_to_date


def tier_list() -> QuerySet[Tier]:
    return Tier.objects.all()


def subscriptions_current() -> QuerySet[Subscription]:
    return (
        Subscription.objects.filter(ends_at__isnull=True)
        .select_related("tier", "team", "virtual_account")
        .order_by("subject_type", "subject_key")
    )


def subscription_history(*, subject_key: str) -> QuerySet[Subscription]:
    return (
        Subscription.objects.filter(subject_key=subject_key)
        .select_related("tier", "team", "virtual_account", "created_by")
        .order_by("-starts_at")
    )


def subscription_current_for(*, subject: BillingSubject) -> Subscription | None:
    return (
        Subscription.objects.filter(subject_key=subject.key, ends_at__isnull=True)
        .select_related("tier")
        .first()
    )


@dataclass(frozen=True)
class AllowanceFit:
    tier: Tier | None
    used_tokens: int

    @property
    def allowance(self) -> int | None:
        return self.tier.monthly_token_allowance if self.tier else None

    @property
    def remaining(self) -> int | None:
        return None if self.tier is None else self.allowance - self.used_tokens

    @property
    def percent(self) -> int:
        if not self.allowance:
            return 0
        return min(100, round(100 * self.used_tokens / self.allowance))


@dataclass(frozen=True)
class TierChangePreview:
    subject: BillingSubject
    month: dt.date
    current: AllowanceFit
    proposed: AllowanceFit


def tier_change_preview(*, subject: BillingSubject, tier: Tier) -> TierChangePreview:
    """Month-to-date usage (live: rollups plus rows not rolled up yet) against the old and the
    new allowance, each counting only its tier's included models when it lists any."""
    month = current_month()
    current = subscription_current_for(subject=subject)

    def fit(candidate: Tier | None) -> AllowanceFit:
        models = (candidate.included_models or ()) if candidate else ()
        used = month_to_date(subject=subject.usage_subject(), month=month, models=models)
        return AllowanceFit(candidate, used.tokens)

    return TierChangePreview(subject, month, fit(current.tier if current else None), fit(tier))


def statements_for_month(*, month: dt.date) -> Iterator[Statement]:
    """The month's statements in subject order: computed live for the current month (so they
    never wait for a rollup run), as stored by the last monthly rollup for other months."""
    month = month_start(month)
    if month == current_month():
        return iter(statements_draft_month(month=month))
    return Statement.objects.filter(month=month).select_related("tier").iterator()


def statement_months() -> list[dt.date]:
    stored = Statement.objects.order_by("-month").values_list("month", flat=True).distinct()
    return sorted({current_month(), *stored}, reverse=True)
