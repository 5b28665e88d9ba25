"""Tier fit over the last full months, and the hard-cap forecast of the current month."""

from __future__ import annotations

import datetime as dt
from collections import defaultdict
from dataclasses import dataclass
from decimal import ROUND_HALF_UP, Decimal

from apps.billing.constants import CENT
from apps.billing.models import Subscription, Tier
from apps.usage.grouping import day_bounds, month_start, next_month

TIER_FIT_MONTHS = 3


def cents(value: Decimal) -> Decimal:
    return value.quantize(CENT, ROUND_HALF_UP)


@dataclass(frozen=True)
class TierCost:
    tier: str
    hard_cap: bool
    amount_usd: Decimal
    overage_tokens: int
    refused_tokens: int


@dataclass(frozen=True)
class CapForecast:
    tier: str
    allowance_tokens: int
    used_tokens: int
    tokens_per_day: int
    reached: bool
    hits_on: dt.date | None


@dataclass(frozen=True)
class TierFit:
    subject_key: str
    subject_type: str
    label: str
    current_tier: str
    tokens_by_month: list[int]
    costs: list[TierCost]
    current_amount_usd: Decimal
    recommended_tier: str
    recommended_amount_usd: Decimal
    # Current minus recommended over the window: > 0 means the subject would pay less.
    saving_usd: Decimal
    cap: CapForecast | None

    @property
    def pays_less_elsewhere(self) -> bool:
        return self.recommended_tier != self.current_tier and self.saving_usd > 0


def tier_fit_months(month: dt.date) -> list[dt.date]:
    """The first days of the `TIER_FIT_MONTHS` full months before `month`, oldest first."""
    months = []
    first = month
    for _ in range(TIER_FIT_MONTHS):
        first = month_start(first - dt.timedelta(days=1))
        months.insert(0, first)
    return months


def _tier_cost(tier: Tier, tokens_by_model: list[dict[str, int]]) -> TierCost:
    """What `tier` would have charged over the months (exact sum, rounded to the cent once)."""
    included = set(tier.included_models or ())
    amount = Decimal(0)
    overage_total = refused = 0
    rate = tier.overage_price_per_1k_tokens or Decimal(0)
    for month in tokens_by_model:
        used = sum(n for model, n in month.items() if not included or model in included)
        over = max(0, used - tier.monthly_token_allowance)
        amount += tier.monthly_price
        if tier.hard_cap:
            refused += over
        else:
            overage_total += over
            amount += Decimal(over) * rate / 1000
    return TierCost(tier.name, tier.hard_cap, cents(amount), overage_total, refused)


def tier_fit(
    *,
    sub: Subscription,
    label: str,
    tiers: list[Tier],
    months: list[dict[str, int]],
    days: dict[tuple[dt.date, str], int],
    month: dt.date,
    as_of: dt.datetime,
    elapsed: Decimal,
) -> TierFit:
    candidates = {tier.pk: tier for tier in tiers}
    candidates.setdefault(sub.tier.pk, sub.tier)
    costs = {
        pk: _tier_cost(tier, months)
        for pk, tier in sorted(
            candidates.items(), key=lambda item: (item[1].monthly_token_allowance, item[1].name)
        )
    }
    active = [pk for pk in costs if candidates[pk].is_active] or list(costs)
    # Order of preference: refuses nothing, then cheapest, then smallest allowance.
    best = min(
        active,
        key=lambda pk: (
            costs[pk].refused_tokens > 0,
            costs[pk].refused_tokens,
            costs[pk].amount_usd,
            candidates[pk].monthly_token_allowance,
        ),
    )
    current = costs[sub.tier.pk]
    return TierFit(
        subject_key=sub.subject_key,
        subject_type=sub.subject_type,
        label=label,
        current_tier=sub.tier.name,
        tokens_by_month=[sum(m.values()) for m in months],
        costs=list(costs.values()),
        current_amount_usd=current.amount_usd,
        recommended_tier=costs[best].tier,
        recommended_amount_usd=costs[best].amount_usd,
        saving_usd=current.amount_usd - costs[best].amount_usd,
        cap=_cap_forecast(sub.tier, days, month, as_of, elapsed) if sub.tier.hard_cap else None,
    )


def _cap_forecast(
    tier: Tier,
    days: dict[tuple[dt.date, str], int],
    month: dt.date,
    as_of: dt.datetime,
    elapsed: Decimal,
) -> CapForecast:
    included = set(tier.included_models or ())
    by_day: dict[dt.date, int] = defaultdict(int)
    for (day, model), tokens in days.items():
        if not included or model in included:
            by_day[day] += tokens
    allowance = tier.monthly_token_allowance
    used = 0
    reached_on = None
    for day in sorted(by_day):
        used += by_day[day]
        if reached_on is None and used >= allowance:
            reached_on = day
    rate = Decimal(used) / elapsed
    hits_on = reached_on
    if reached_on is None and rate > 0:
        at = as_of + dt.timedelta(days=float((allowance - used) / rate))
        _, month_end = day_bounds(month, next_month(month))
        if at < month_end:
            hits_on = at.date()
    return CapForecast(
        tier=tier.name,
        allowance_tokens=allowance,
        used_tokens=used,
        tokens_per_day=int(rate),
        reached=reached_on is not None,
        hits_on=hits_on,
    )
