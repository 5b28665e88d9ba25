"""Reads for tiers, subscriptions and statements (portal pages and CSV downloads)."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from django.db.models import QuerySet
from django.utils import timezone

from apps.billing.models import Statement, Subscription, Tier
from apps.billing.services.rollups import month_start
from apps.billing.services.statements import subject_month_usage
from apps.billing.subjects import BillingSubject


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
    """Month-to-date usage (from the monthly rollup) against the old and the new allowance."""
    month = month_start(timezone.now().astimezone(dt.UTC).date())
    current = subscription_current_for(subject=subject)

    def fit(candidate: Tier | None) -> AllowanceFit:
        models = list(candidate.included_models or []) if candidate else None
        used, _ = subject_month_usage(subject=subject, month=month, models=models)
        return AllowanceFit(candidate, used)

    return TierChangePreview(subject, month, fit(current.tier if current else None), fit(tier))


def statements_for_month(*, month: dt.date) -> QuerySet[Statement]:
    return Statement.objects.filter(month=month_start(month)).select_related("tier")


def statement_months() -> list[dt.date]:
    return list(Statement.objects.order_by("-month").values_list("month", flat=True).distinct())
