"""Billing insights: month-to-date spend with a projection, tier fit, cheaper-model savings.

Org-wide reads (callers check for the admin or finance role). Every month is read
through `apps.usage.month_to_date` (rolled-up complete days or months plus the raw rows not
rolled up yet), so the figures never wait for a rollup run, and the page costs a fixed
handful of queries whatever the number of subjects. The package is split by subject: `rows`
labels subjects, `tiers` prices tier fit and the hard-cap forecast, `cheaper_models` the
cheaper-model savings; this module assembles the report.

Methods (also stated on the page and in the API description):

- **Projection to month end (linear run rate).** `projected = spend so far x (length of the
  month / elapsed time)`, elapsed time measured from the first of the month (00:00 UTC) to
  `as_of` (now: the month-to-date figures are live), and at least one day (so the first
  hours of a month do not extrapolate a burst).
- **Tier fit.** Over the three full calendar months before the current one, each active tier (and the subject's current one) is priced as its statement
  would be without proration: base price each month, plus overage tokens x its price per 1k,
  or, for a hard cap, no overage but the tokens it would have refused. Only a tier's included
  models count when it lists any. The recommendation is the cheapest tier that would have
  refused nothing (if every tier refuses some, the one refusing fewest); ties go to the
  smaller allowance. Months without usage count as zero tokens.
- **Hard-cap forecast.** For subjects on a hard-capped tier: month-to-date tokens (included
  models); if the allowance is already reached, the day it was; else
  the date at which the same linear run rate reaches it, when that falls within the month.
- **Cheaper model.** For each `feature` tag value x model this month: the cost of the same
  input, cached and output tokens at the latest list price of every priced model of the same
  mode (ModelPrice; a model with no price at all is skipped as a candidate); the cheapest one
  and the saving against what the usage actually cost (never below zero).
"""

from __future__ import annotations

import datetime as dt
from collections import defaultdict
from dataclasses import dataclass, field
from decimal import Decimal

from django.conf import settings
from django.utils import timezone

from apps.billing.constants import FEATURE_TAG_KEY
from apps.billing.models import Subscription, Tier
from apps.billing.subjects import row_subject_keys
from apps.usage.grouping import day_bounds, month_start, next_month
from apps.usage.month_to_date import month_to_date_rows

from .cheaper_models import ModelSaving, model_savings
from .rows import subject_labels, subject_type
from .tiers import CapForecast, TierCost, TierFit, cents, tier_fit, tier_fit_months

__all__ = [
    "CapForecast",
    "Insights",
    "ModelSaving",
    "SubjectSpend",
    "TierCost",
    "TierFit",
    "billing_insights",
]

DAY_SECONDS = 86_400


@dataclass(frozen=True)
class SubjectSpend:
    subject_key: str
    subject_type: str
    label: str
    tier: str | None
    tokens: int
    spend_usd: Decimal
    projected_tokens: int
    projected_usd: Decimal


@dataclass(frozen=True)
class Insights:
    month: dt.date
    as_of: dt.datetime
    elapsed_days: Decimal
    days_in_month: int
    tier_fit_months: list[dt.date]
    # Every row of the month, attributed or not (a row can count for several subjects).
    spend_total_usd: Decimal
    projected_total_usd: Decimal
    spend: list[SubjectSpend] = field(default_factory=list)
    tier_fit: list[TierFit] = field(default_factory=list)
    model_savings: list[ModelSaving] = field(default_factory=list)


def _elapsed(month: dt.date, now: dt.datetime) -> tuple[dt.datetime, Decimal, int]:
    low, high = day_bounds(month, next_month(month))
    as_of = max(now, low)
    elapsed = max(Decimal((as_of - low).total_seconds()) / DAY_SECONDS, Decimal(1))
    return as_of, elapsed, (high - low).days


def billing_insights(*, now: dt.datetime | None = None) -> Insights:
    """Spend projection, tier fit and cheaper-model savings (see the module docstring)."""
    now = (now or timezone.now()).astimezone(dt.UTC)
    month = month_start(now.date())
    daily = month_to_date_rows(month=month, tag_key=settings.BILLING_CUSTOMER_TAG_KEY)
    as_of, elapsed, days_in_month = _elapsed(month, now)
    factor = Decimal(days_in_month) / elapsed

    subscriptions = {
        sub.subject_key: sub
        for sub in Subscription.objects.filter(
            ends_at__isnull=True, starts_at__lte=now
        ).select_related("tier")
    }

    # One pass over this month's daily rows per customer: spend per subject, tokens per
    # subject x model x day (cap forecast); a second per feature: tokens and cost per
    # feature x model (cheaper-model report). Each key's rollup rows hold all usage once.
    spend: dict[str, list] = defaultdict(lambda: [0, Decimal(0)])
    per_day: dict[str, dict[tuple[dt.date, str], int]] = defaultdict(lambda: defaultdict(int))
    features: dict[tuple[str, str], list] = defaultdict(lambda: [0, 0, 0, 0, Decimal(0)])
    total = Decimal(0)
    for row in daily:
        total += row.cost_usd
        for key in row_subject_keys(row):
            spend[key][0] += row.tokens
            spend[key][1] += row.cost_usd
            if key in subscriptions:
                per_day[key][(row.day, row.model)] += row.tokens
    for row in month_to_date_rows(month=month, by_day=False, tag_key=FEATURE_TAG_KEY):
        acc = features[(str(row.dims.get(FEATURE_TAG_KEY) or ""), row.model)]
        acc[0] += row.input_tokens
        acc[1] += row.output_tokens
        acc[2] += row.cached_tokens
        acc[3] += row.cache_write_tokens
        acc[4] += row.cost_usd

    # Tier fit: the three full months before this one, tokens per subject x month x model.
    fit_months = tier_fit_months(month)
    history: dict[str, dict[dt.date, dict[str, int]]] = defaultdict(
        lambda: defaultdict(lambda: defaultdict(int))
    )
    for fit_month in fit_months:
        rows = month_to_date_rows(
            month=fit_month, by_day=False, tag_key=settings.BILLING_CUSTOMER_TAG_KEY
        )
        for row in rows:
            for key in row_subject_keys(row):
                if key in subscriptions:
                    history[key][fit_month][row.model] += row.tokens

    labels = subject_labels(set(spend) | set(subscriptions))
    spend_rows = [
        SubjectSpend(
            subject_key=key,
            subject_type=subject_type(key),
            label=labels[key],
            tier=subscriptions[key].tier.name if key in subscriptions else None,
            tokens=tokens,
            spend_usd=cents(cost),
            projected_tokens=int(Decimal(tokens) * factor),
            projected_usd=cents(cost * factor),
        )
        for key, (tokens, cost) in spend.items()
    ]
    spend_rows.sort(key=lambda s: (-s.projected_usd, s.subject_key))

    tiers = list(Tier.objects.filter(is_active=True))
    fits = [
        tier_fit(
            sub=sub,
            label=labels[key],
            tiers=tiers,
            months=[history[key][m] for m in fit_months],
            days=per_day.get(key, {}),
            month=month,
            as_of=as_of,
            elapsed=elapsed,
        )
        for key, sub in subscriptions.items()
    ]
    fits.sort(key=lambda f: (-f.saving_usd, f.subject_key))

    return Insights(
        month=month,
        as_of=as_of,
        elapsed_days=elapsed.quantize(Decimal("0.001")),
        days_in_month=days_in_month,
        tier_fit_months=fit_months,
        spend_total_usd=cents(total),
        projected_total_usd=cents(total * factor),
        spend=spend_rows,
        tier_fit=fits,
        model_savings=model_savings(features, now.date()),
    )
