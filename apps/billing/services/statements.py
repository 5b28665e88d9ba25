"""Monthly statements per billing subject, computed from month-to-date usage.

Usage comes from `apps.usage.month_to_date` (complete rolled-up days plus the raw rows not
rolled up yet), so the current month's statement is live and a closed month's stored one is
recomputed by every monthly rollup run.

Rules (documented in the portal):
- The allowance is the allowance of the tier held at the end of the month (or now, for the
  current month): a change of tier applies at once to the month's usage so far.
- The base price is prorated by the share of the month each tier was held, to the second.
- Used tokens are input + output tokens of the whole month (only the tier's included models
  when it lists any). Overage is charged at the final tier's rate; a hard-capped tier charges
  none (its quota rule refuses requests instead).
- Amounts are USD rounded half-up to the cent once, after summing exact fractions.
"""

from __future__ import annotations

import datetime as dt
from collections import defaultdict
from dataclasses import dataclass, field, replace
from decimal import ROUND_HALF_UP, Decimal

from django.conf import settings
from django.db import transaction
from django.db.models import Q
from django.utils import timezone

from apps.billing.constants import CENT
from apps.billing.models import Statement, Subscription, Tier
from apps.billing.subjects import BillingSubject, row_subject_keys, subject_of
from apps.usage.grouping import day_bounds, month_start, next_month
from apps.usage.month_to_date import month_to_date_rows


@dataclass(frozen=True)
class TierSegment:
    tier: Tier
    starts_at: dt.datetime
    ends_at: dt.datetime
    fraction: Decimal


@dataclass(frozen=True)
class StatementDraft:
    subject: BillingSubject
    month: dt.date
    tier: Tier
    segments: list[TierSegment]
    allowance_tokens: int
    used_tokens: int
    overage_tokens: int
    base_amount: Decimal
    overage_amount: Decimal
    amount: Decimal
    cost_usd: Decimal
    regions: list[str] = field(default_factory=list)  # the data regions holding its usage


def _segments(subscriptions: list[Subscription], month: dt.date) -> list[TierSegment]:
    low, high = day_bounds(month, next_month(month))
    seconds = Decimal((high - low).total_seconds())
    out = []
    for sub in sorted(subscriptions, key=lambda s: s.starts_at):
        start = max(sub.starts_at, low)
        end = min(sub.ends_at or high, high)
        if end > start:
            fraction = Decimal((end - start).total_seconds()) / seconds
            out.append(TierSegment(sub.tier, start, end, fraction))
    return out


def _usage_by_subject(month: dt.date) -> tuple[dict[str, dict[str, list]], dict[str, set[str]]]:
    """(subject key -> model -> [input + output tokens, cost] for the month so far, subject
    key -> the data regions holding that usage; empty with one region)."""
    usage: dict[str, dict[str, list]] = defaultdict(lambda: defaultdict(lambda: [0, Decimal(0)]))
    regions: dict[str, set[str]] = defaultdict(set)
    # Statements need the month per subject and model only: no day, no tag but the customer.
    rows = month_to_date_rows(month=month, by_day=False, tag_key=settings.BILLING_CUSTOMER_TAG_KEY)
    for row in rows:
        for key in row_subject_keys(row):
            acc = usage[key][row.model]
            acc[0] += row.tokens
            acc[1] += row.cost_usd
            if row.region:
                regions[key].add(row.region)
    return usage, regions


def statement_draft(
    *,
    subject: BillingSubject,
    subscriptions: list[Subscription],
    month: dt.date,
    usage: dict[str, list],
) -> StatementDraft | None:
    """`usage` maps model -> [tokens, cost] of the subject in the month (see above)."""
    segments = _segments(subscriptions, month)
    if not segments:
        return None
    tier = segments[-1].tier
    included = set(tier.included_models or ())
    counted = [acc for model, acc in usage.items() if not included or model in included]
    used = sum(acc[0] for acc in counted)
    cost = sum((acc[1] for acc in counted), Decimal(0))
    overage = max(0, used - tier.monthly_token_allowance)
    rate = Decimal(0) if tier.hard_cap else (tier.overage_price_per_1k_tokens or Decimal(0))
    base = sum((s.tier.monthly_price * s.fraction for s in segments), Decimal(0))
    overage_amount = Decimal(overage) * rate / 1000
    return StatementDraft(
        subject=subject,
        month=month,
        tier=tier,
        segments=segments,
        allowance_tokens=tier.monthly_token_allowance,
        used_tokens=used,
        overage_tokens=overage,
        base_amount=base.quantize(CENT, ROUND_HALF_UP),
        overage_amount=overage_amount.quantize(CENT, ROUND_HALF_UP),
        amount=(base + overage_amount).quantize(CENT, ROUND_HALF_UP),
        cost_usd=cost,
    )


def _overlapping(month: dt.date) -> dict[str, list[Subscription]]:
    low, high = day_bounds(month, next_month(month))
    subs = (
        Subscription.objects.filter(
            Q(ends_at__isnull=True) | Q(ends_at__gt=low), starts_at__lt=high
        )
        .select_related("tier", "team", "virtual_account")
        .order_by("subject_key", "starts_at")
    )
    by_subject: dict[str, list[Subscription]] = defaultdict(list)
    for sub in subs:
        by_subject[sub.subject_key].append(sub)
    return by_subject


def _fields(draft: StatementDraft, now: dt.datetime) -> dict:
    return {
        "subject_type": draft.subject.type,
        "subject_label": draft.subject.label,
        "tier": draft.tier,
        "allowance_tokens": draft.allowance_tokens,
        "used_tokens": draft.used_tokens,
        "overage_tokens": draft.overage_tokens,
        "base_amount": draft.base_amount,
        "overage_amount": draft.overage_amount,
        "amount": draft.amount,
        "cost_usd": draft.cost_usd,
        "regions": draft.regions,
        "lines": [
            {
                "tier": s.tier.name,
                "from": s.starts_at.isoformat(),
                "to": s.ends_at.isoformat(),
                "fraction": str(s.fraction.quantize(Decimal("0.000001"))),
                "base": str((s.tier.monthly_price * s.fraction).quantize(CENT)),
            }
            for s in draft.segments
        ],
        "computed_at": now,
    }


def _drafts(month: dt.date) -> list[tuple[str, StatementDraft]]:
    usage, regions = _usage_by_subject(month)
    out = []
    for key, subs in _overlapping(month).items():
        draft = statement_draft(
            subject=subject_of(subs[-1]), subscriptions=subs, month=month, usage=usage.get(key, {})
        )
        if draft is not None:
            out.append((key, replace(draft, regions=sorted(regions.get(key, ())))))
    return out


def statements_draft_month(*, month: dt.date) -> list[Statement]:
    """Every subject's statement of `month` computed now, unsaved, in subject order.

    The current month's statements page reads these: month-to-date usage is live, so the
    page never waits for a rollup run. A fixed number of queries whatever the subjects.
    """
    month = month_start(month)
    now = timezone.now()
    return [
        Statement(subject_key=key, month=month, **_fields(draft, now))
        for key, draft in _drafts(month)
    ]


@transaction.atomic
def statements_compute(*, month: dt.date) -> int:
    """Upsert the statement of every subject subscribed during `month`; returns how many."""
    month = month_start(month)
    now = timezone.now()
    keep = []
    for key, draft in _drafts(month):
        Statement.objects.update_or_create(
            subject_key=key, month=month, defaults=_fields(draft, now)
        )
        keep.append(key)
    Statement.objects.filter(month=month).exclude(subject_key__in=keep).delete()
    return len(keep)
