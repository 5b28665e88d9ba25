"""Billing insights: month-to-date spend with a projection, tier fit, cheaper-model savings.

Org-wide reads (callers check for the admin or finance role); everything comes from the
rollups, never from raw usage rows, so the page costs a fixed handful of queries whatever the
number of subjects. On PostgreSQL the rollup rows are first summed per subject x model x tag
values in the database (dropping `user_id`); SQLite (embedded mode) sums decimals as floats,
so there the rows are summed exactly in Python.

Methods (also stated on the page and in the API description):

- **Projection to month end (linear run rate).** `projected = spend so far x (length of the
  month / elapsed time)`, elapsed time measured from the first of the month (00:00 UTC) to
  `as_of`, the latest run of this month's daily rollup (so rollup lag does not read as a
  slowdown), and at least one day (so the first hours of a month do not extrapolate a burst).
- **Tier fit.** Over the three full calendar months before the current one (monthly
  rollups), each active tier (and the subject's current one) is priced as its statement
  would be without proration: base price each month, plus overage tokens x its price per 1k,
  or, for a hard cap, no overage but the tokens it would have refused. Only a tier's included
  models count when it lists any. The recommendation is the cheapest tier that would have
  refused nothing (if every tier refuses some, the one refusing fewest); ties go to the
  smaller allowance. Months without usage count as zero tokens.
- **Hard-cap forecast.** For subjects on a hard-capped tier: month-to-date tokens (included
  models) from the daily rollups; if the allowance is already reached, the day it was; else
  the date at which the same linear run rate reaches it, when that falls within the month.
- **Cheaper model.** For each `feature` tag value x model this month: the cost of the same
  input, cached and output tokens at the latest list price of every priced model of the same
  mode (ModelPrice; a model with no price at all is skipped as a candidate); the cheapest one
  and the saving against what the usage actually cost (never below zero).
"""

from __future__ import annotations

import datetime as dt
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field
from decimal import ROUND_HALF_UP, Decimal

from django.conf import settings
from django.db import connection
from django.db.models import Max, Model, Sum
from django.utils import timezone

from apps.accounts.models import Team, VirtualAccount
from apps.billing.constants import COST_DECIMALS, FEATURE_TAG_KEY, SubjectType
from apps.billing.models import (
    ModelPrice,
    Subscription,
    Tier,
    UsageRollupDaily,
    UsageRollupMonthly,
)
from apps.billing.services.rollups import day_bounds, month_start, next_month
from apps.proxy.models import GatewayModel

CENT = Decimal("0.01")
COST_QUANTUM = Decimal(1).scaleb(-COST_DECIMALS)
DAY_SECONDS = 86_400
TIER_FIT_MONTHS = 3


def _cents(value: Decimal) -> Decimal:
    return value.quantize(CENT, ROUND_HALF_UP)


# --- Reading the rollups ------------------------------------------------------------------


@dataclass(frozen=True)
class _Row:
    period: dt.date
    team_id: int | None
    virtual_account_id: int | None
    model: str
    dims: dict
    input_tokens: int
    output_tokens: int
    cached_tokens: int
    cost_usd: Decimal
    computed_at: dt.datetime

    @property
    def tokens(self) -> int:
        return self.input_tokens + self.output_tokens

    def subject_keys(self) -> Iterator[str]:
        """Every billing subject the row counts for (same keys as `BillingSubject.key`)."""
        if self.team_id is not None:
            yield f"team:{self.team_id}"
        if self.virtual_account_id is not None:
            yield f"virtual_account:{self.virtual_account_id}"
        customer = str(self.dims.get(settings.BILLING_CUSTOMER_TAG_KEY) or "").strip()
        if customer:
            yield f"customer:{customer}"


def _rollup_rows(model: type[Model], period: str, start: dt.date, end: dt.date) -> Iterator[_Row]:
    rows = model.objects.filter(**{f"{period}__gte": start, f"{period}__lt": end}).order_by()
    keys = (period, "team_id", "virtual_account_id", "model", "dims")
    if connection.vendor == "postgresql":
        values = rows.values(*keys, "dims_key").annotate(
            s_input=Sum("input_tokens"),
            s_output=Sum("output_tokens"),
            s_cached=Sum("cached_tokens"),
            s_cost=Sum("cost_usd"),
            s_computed=Max("computed_at"),
        )
        sums = ("s_input", "s_output", "s_cached", "s_cost", "s_computed")
    else:
        sums = ("input_tokens", "output_tokens", "cached_tokens", "cost_usd", "computed_at")
        values = rows.values(*keys, *sums)
    for row in values.iterator(chunk_size=5000):
        yield _Row(
            row[period],
            row["team_id"],
            row["virtual_account_id"],
            row["model"],
            row["dims"] if isinstance(row["dims"], dict) else {},
            int(row[sums[0]] or 0),
            int(row[sums[1]] or 0),
            int(row[sums[2]] or 0),
            Decimal(row[sums[3]] or 0),
            row[sums[4]],
        )


def _labels(keys: set[str]) -> dict[str, str]:
    """Display labels for subject keys: two queries (teams, virtual accounts), any count."""
    ids: dict[str, set[int]] = defaultdict(set)
    for key in keys:
        kind, _, value = key.partition(":")
        if kind in ("team", "virtual_account"):
            ids[kind].add(int(value))
    teams = dict(Team.objects.filter(pk__in=ids["team"]).order_by().values_list("pk", "slug"))
    vas = dict(
        VirtualAccount.objects.filter(pk__in=ids["virtual_account"])
        .order_by()
        .values_list("pk", "name")
    )
    out = {}
    for key in keys:
        kind, _, value = key.partition(":")
        if kind == "team":
            out[key] = f"team {teams.get(int(value), f'#{value} (deleted)')}"
        elif kind == "virtual_account":
            out[key] = f"virtual account {vas.get(int(value), f'#{value} (deleted)')}"
        else:
            out[key] = f"customer {value}"
    return out


def _subject_type(key: str) -> str:
    return SubjectType(key.partition(":")[0]).value


# --- Results ------------------------------------------------------------------------------


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


@dataclass(frozen=True)
class ModelSaving:
    feature: str
    model: str
    mode: str
    input_tokens: int
    output_tokens: int
    cached_tokens: int
    cost_usd: Decimal
    cheapest_model: str | None
    cheapest_cost_usd: Decimal | None
    saving_usd: Decimal


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


# --- Pricing helpers ----------------------------------------------------------------------


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
    return TierCost(tier.name, tier.hard_cap, _cents(amount), overage_total, refused)


@dataclass(frozen=True)
class _ListPrice:
    mode: str
    input: Decimal
    output: Decimal
    cached: Decimal | None

    def cost(self, input_tokens: int, output_tokens: int, cached_tokens: int) -> Decimal:
        # As the proxy prices a request: cached tokens are part of the input count.
        cached = max(0, min(cached_tokens, input_tokens))
        cached_price = self.input if self.cached is None else self.cached
        return (
            Decimal(input_tokens - cached) * self.input
            + Decimal(cached) * cached_price
            + Decimal(output_tokens) * self.output
        )


def _latest_prices(today: dt.date) -> dict[str, _ListPrice]:
    latest: dict[str, _ListPrice] = {}
    rows = ModelPrice.objects.filter(effective_from__lte=today).order_by(
        "model_name", "-effective_from"
    )
    for row in rows.iterator(chunk_size=2000):
        if row.model_name not in latest:
            latest[row.model_name] = _ListPrice(
                row.mode,
                row.input_cost_per_token,
                row.output_cost_per_token,
                row.cached_input_cost_per_token,
            )
    return latest


# --- The report -------------------------------------------------------------------------


def _month_to_date(
    rows: list[_Row], month: dt.date, now: dt.datetime
) -> tuple[dt.datetime, Decimal, int]:
    low, high = day_bounds(month, next_month(month))
    computed = [row.computed_at for row in rows if row.computed_at]
    as_of = min(max(computed), now) if computed else now
    as_of = max(as_of, low)
    elapsed = max(Decimal((as_of - low).total_seconds()) / DAY_SECONDS, Decimal(1))
    return as_of, elapsed, (high - low).days


def billing_insights(*, now: dt.datetime | None = None) -> Insights:
    """Spend projection, tier fit and cheaper-model savings (see the module docstring)."""
    now = (now or timezone.now()).astimezone(dt.UTC)
    month = month_start(now.date())
    daily = list(_rollup_rows(UsageRollupDaily, "day", month, next_month(month)))
    as_of, elapsed, days_in_month = _month_to_date(daily, month, now)
    factor = Decimal(days_in_month) / elapsed

    subscriptions = {
        sub.subject_key: sub
        for sub in Subscription.objects.filter(
            ends_at__isnull=True, starts_at__lte=now
        ).select_related("tier")
    }

    # One pass over this month's daily rows: spend per subject, tokens per subject x model
    # x day (cap forecast), tokens and cost per feature x model (cheaper-model report).
    spend: dict[str, list] = defaultdict(lambda: [0, Decimal(0)])
    per_day: dict[str, dict[tuple[dt.date, str], int]] = defaultdict(lambda: defaultdict(int))
    features: dict[tuple[str, str], list] = defaultdict(lambda: [0, 0, 0, Decimal(0)])
    total = Decimal(0)
    for row in daily:
        total += row.cost_usd
        for key in row.subject_keys():
            spend[key][0] += row.tokens
            spend[key][1] += row.cost_usd
            if key in subscriptions:
                per_day[key][(row.period, row.model)] += row.tokens
        acc = features[(str(row.dims.get(FEATURE_TAG_KEY) or ""), row.model)]
        acc[0] += row.input_tokens
        acc[1] += row.output_tokens
        acc[2] += row.cached_tokens
        acc[3] += row.cost_usd

    # Tier fit: the three full months before this one, tokens per subject x month x model.
    fit_months = []
    first = month
    for _ in range(TIER_FIT_MONTHS):
        first = month_start(first - dt.timedelta(days=1))
        fit_months.insert(0, first)
    history: dict[str, dict[dt.date, dict[str, int]]] = defaultdict(
        lambda: defaultdict(lambda: defaultdict(int))
    )
    for row in _rollup_rows(UsageRollupMonthly, "month", fit_months[0], month):
        for key in row.subject_keys():
            if key in subscriptions:
                history[key][row.period][row.model] += row.tokens

    labels = _labels(set(spend) | set(subscriptions))
    spend_rows = [
        SubjectSpend(
            subject_key=key,
            subject_type=_subject_type(key),
            label=labels[key],
            tier=subscriptions[key].tier.name if key in subscriptions else None,
            tokens=tokens,
            spend_usd=_cents(cost),
            projected_tokens=int(Decimal(tokens) * factor),
            projected_usd=_cents(cost * factor),
        )
        for key, (tokens, cost) in spend.items()
    ]
    spend_rows.sort(key=lambda s: (-s.projected_usd, s.subject_key))

    tiers = list(Tier.objects.filter(is_active=True))
    fits = [
        _tier_fit(
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
        spend_total_usd=_cents(total),
        projected_total_usd=_cents(total * factor),
        spend=spend_rows,
        tier_fit=fits,
        model_savings=_model_savings(features, now.date()),
    )


def _tier_fit(
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
        if at < day_bounds(next_month(month), next_month(month))[0]:
            hits_on = at.date()
    return CapForecast(
        tier=tier.name,
        allowance_tokens=allowance,
        used_tokens=used,
        tokens_per_day=int(rate),
        reached=reached_on is not None,
        hits_on=hits_on,
    )


def _model_savings(features: dict[tuple[str, str], list], today: dt.date) -> list[ModelSaving]:
    prices = _latest_prices(today)
    modes = dict(GatewayModel.objects.values_list("name", "mode"))
    by_mode: dict[str, list[tuple[str, _ListPrice]]] = defaultdict(list)
    for name, price in prices.items():
        if price.mode and (price.input or price.output):
            by_mode[price.mode].append((name, price))
    out = []
    for (feature, model), (inp, outp, cached, cost) in features.items():
        mode = prices[model].mode if model in prices else modes.get(model, "")
        quotes = sorted(
            (price.cost(inp, outp, cached), name) for name, price in by_mode.get(mode, [])
        )
        cheapest_cost, cheapest = quotes[0] if quotes else (None, None)
        saving = max(Decimal(0), cost - cheapest_cost) if cheapest_cost is not None else Decimal(0)
        out.append(
            ModelSaving(
                feature=feature,
                model=model,
                mode=mode,
                input_tokens=inp,
                output_tokens=outp,
                cached_tokens=cached,
                cost_usd=cost.quantize(COST_QUANTUM, ROUND_HALF_UP),
                cheapest_model=cheapest,
                cheapest_cost_usd=(
                    None
                    if cheapest_cost is None
                    else cheapest_cost.quantize(COST_QUANTUM, ROUND_HALF_UP)
                ),
                saving_usd=saving.quantize(COST_QUANTUM, ROUND_HALF_UP),
            )
        )
    out.sort(key=lambda s: (-s.saving_usd, s.feature, s.model))
    return out
