"""Month-to-date usage: rolled-up complete days plus the raw rows the rollup does not cover.

The one reader of "this month so far" (statements, the tier-change preview, insights, quota
counter seeding), right whether or not a rollup has run. Which days a rollup covers is
`apps.usage.coverage`'s rule, the one the dashboards apply too:

- A UTC day is read from billing's daily rollup when its rollup rows (those matching what is
  asked) were computed at least `BILLING_EXPORT_SETTLE_SECONDS` after the day ended. A run
  replaces a day's rows in one transaction from one GROUP BY, so they hold every usage row
  committed by then; the margin lets the usage writer's last rows of the day land first.
- Every other day of the month (today, a day never rolled up, a day rolled up while still
  open) is read from the raw `UsageRecord` rows. A day comes from one source or the other,
  never both, so nothing is counted twice at the boundary. A day without rollup rows is read
  raw, which is right whether the rollup skipped it or it had no usage.
- Rows written late for a day already rolled up (spool replays after an outage, replayed
  dead letters) mark the day (`UsageLateDay`): it is read raw until the next rollup run
  re-rolls it, in whichever month it lies.
- What the rollup cannot answer (an API key or key lineage, a tag key that is not a rollup
  dimension) is read from the raw rows for the whole month.
- A past month whose monthly rollup ran after the month ended (same margin) is read from the
  monthly rollup when whole-month rows are asked for: one query for the month.
"""

from __future__ import annotations

import datetime as dt
import json
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from decimal import Decimal

from django.db import connection
from django.db.models import Count, DateField, Min, Q, QuerySet, Sum, Value
from django.utils import timezone

from apps.billing.models import UsageRollupDaily, UsageRollupMonthly
from apps.usage.coverage import covered_days, day_is_final, late_days
from apps.usage.grouping import day_bounds, grouped_usage, month_start, next_month, rollup_tag_keys
from apps.usage.models import UsageRecord
from apps.usage.tags import TagText, tag_equals


@dataclass(frozen=True)
class UsageSubject:
    """Whose usage: rows matching every field that is set (nothing set: all usage).

    Subjects of tiers and quota rules map onto it: a team, a user, a virtual account, an API
    key or key lineage, a customer (a tag value), or several of them together.
    """

    team_id: int | None = None
    user_id: int | None = None
    virtual_account_id: int | None = None
    api_key_id: int | None = None
    key_lineage_id: uuid.UUID | None = None
    tags: tuple[tuple[str, str], ...] = ()

    def _columns(self) -> dict[str, object]:
        columns = {
            "team_id": self.team_id,
            "user_id": self.user_id,
            "virtual_account_id": self.virtual_account_id,
            "api_key_id": self.api_key_id,
            "key_lineage_id": self.key_lineage_id,
        }
        return {name: value for name, value in columns.items() if value is not None}

    def raw_filter(self) -> Q:
        q = Q(**self._columns())
        for key, value in self.tags:
            q &= tag_equals(key, value)
        return q

    def rollup_filter(self) -> Q | None:
        """The same rows in the rollup table; None when the rollup does not keep them apart."""
        columns = self._columns()
        if "api_key_id" in columns or "key_lineage_id" in columns:
            return None
        keys = set(rollup_tag_keys())
        if any(key not in keys for key, _ in self.tags):
            return None
        q = Q(**columns)
        for key, value in self.tags:
            q &= tag_equals(key, value, "dims")
        return q


@dataclass(frozen=True)
class UsageTotals:
    requests: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    cost_usd: Decimal = Decimal(0)

    @property
    def tokens(self) -> int:
        return self.input_tokens + self.output_tokens

    def __add__(self, other: UsageTotals) -> UsageTotals:
        return UsageTotals(
            self.requests + other.requests,
            self.input_tokens + other.input_tokens,
            self.output_tokens + other.output_tokens,
            self.cost_usd + other.cost_usd,
        )


@dataclass(frozen=True)
class UsageRow:
    """Usage of one day x team x virtual account x model x rollup tag values (`dims`)."""

    day: dt.date
    team_id: int | None
    virtual_account_id: int | None
    model: str
    dims: dict
    requests: int
    input_tokens: int
    output_tokens: int
    cached_tokens: int
    cost_usd: Decimal

    @property
    def tokens(self) -> int:
        return self.input_tokens + self.output_tokens


def current_month() -> dt.date:
    return month_start(timezone.now().astimezone(dt.UTC).date())


def _raw_rows(month: dt.date, covered: Iterable[dt.date]) -> QuerySet[UsageRecord]:
    """The month's raw rows outside the covered days (runs of days excluded as ranges)."""
    low, high = day_bounds(month, next_month(month))
    rows = UsageRecord.objects.filter(created_at__gte=low, created_at__lt=high).order_by()
    days = sorted(covered)
    while days:
        first = last = days.pop(0)
        while days and days[0] == last + dt.timedelta(days=1):
            last = days.pop(0)
        start, end = day_bounds(first, last + dt.timedelta(days=1))
        rows = rows.exclude(created_at__gte=start, created_at__lt=end)
    return rows


def _raw_totals(rows: QuerySet[UsageRecord]) -> UsageTotals:
    if connection.vendor == "postgresql":
        sums = rows.aggregate(
            n=Count("pk"), i=Sum("input_tokens"), o=Sum("output_tokens"), c=Sum("cost_usd")
        )
        return UsageTotals(sums["n"], sums["i"] or 0, sums["o"] or 0, sums["c"] or Decimal(0))
    # SQLite sums decimals as floats: sum exact Decimals here (embedded mode is small).
    total = UsageTotals()
    for inp, out, cost in rows.values_list("input_tokens", "output_tokens", "cost_usd"):
        total += UsageTotals(1, inp, out, cost)
    return total


def _rollup_days(rows: QuerySet[UsageRollupDaily]) -> dict[dt.date, UsageTotals]:
    """Totals of the covered days among `rows` (rollup rows of one month)."""
    fields = ("requests", "input_tokens", "output_tokens", "cost_usd")
    if connection.vendor == "postgresql":
        sums = {f"s_{name}": Sum(name) for name in fields}
        values = (
            rows.order_by()
            .values("day")
            .annotate(**sums, done=Min("computed_at"))
            .values_list("day", *sums, "done")
        )
    else:
        values = rows.order_by().values_list("day", *fields, "computed_at")
    totals: dict[dt.date, UsageTotals] = {}
    done: dict[dt.date, dt.datetime] = {}
    for day, requests, inp, out, cost, computed_at in values:
        totals[day] = totals.get(day, UsageTotals()) + UsageTotals(
            int(requests or 0), int(inp or 0), int(out or 0), Decimal(cost or 0)
        )
        done[day] = min(done.get(day, computed_at), computed_at)
    late = late_days(min(totals), max(totals) + dt.timedelta(days=1)) if totals else set()
    return {day: total for day, total in totals.items() if day_is_final(day, done[day], late)}


def month_to_date(
    *, subject: UsageSubject, month: dt.date | None = None, models: Iterable[str] = ()
) -> UsageTotals:
    """Requests, tokens and cost of `subject` in `month` (default: this one) so far.

    `models`, when given, counts only those models (a tier's included models, a rule's
    model filter). Two queries: the subject's rollup rows per day, then its raw rows of the
    days the rollup does not cover.
    """
    month = month_start(month or current_month())
    models = sorted(models)
    covered: dict[dt.date, UsageTotals] = {}
    rollup_filter = subject.rollup_filter()
    if rollup_filter is not None:
        rollups = UsageRollupDaily.objects.filter(
            rollup_filter, day__gte=month, day__lt=next_month(month)
        )
        if models:
            rollups = rollups.filter(model__in=models)
        covered = _rollup_days(rollups)
    raw = _raw_rows(month, covered).filter(subject.raw_filter())
    if models:
        raw = raw.filter(model__in=models)
    return sum(covered.values(), UsageTotals()) + _raw_totals(raw)


def _rollup_rows(
    rows: QuerySet,
    period: str,
    *,
    as_period: dt.date | None = None,
    tag_keys: tuple[str, ...] | None = None,
) -> tuple[dict[dt.date, list[UsageRow]], dict[dt.date, dt.datetime]]:
    """Rollup rows per period start, and the earliest computed_at of each period.

    With `as_period`, all rows are summed into that one period; with `tag_keys`, only those
    tag values are kept (`dims` holds just them). On PostgreSQL both happen in the GROUP BY,
    so a month of daily rows crossed with every tag value reaches Python as a few rows per
    subject and model instead of tens of thousands.
    """
    if as_period is not None:
        rows = rows.annotate(_period=Value(as_period, output_field=DateField()))
        period = "_period"
    fields = ("requests", "input_tokens", "output_tokens", "cached_tokens", "cost_usd")
    by_period: dict[dt.date, list[UsageRow]] = {}
    done: dict[dt.date, dt.datetime] = {}
    if connection.vendor == "postgresql":
        # Summed in the database, dropping user_id (readers never split by user).
        sums = {f"s_{name}": Sum(name) for name in fields}
        if tag_keys is None:
            groups: tuple[str, ...] = ("dims", "dims_key")
        else:
            rows = rows.annotate(
                **{f"_tag{i}": TagText(key, "dims") for i, key in enumerate(tag_keys)}
            )
            groups = tuple(f"_tag{i}" for i in range(len(tag_keys)))
        keys = (period, "team_id", "virtual_account_id", "model", *groups)
        values = (
            rows.order_by()
            .values(*keys)
            .annotate(**sums, done=Min("computed_at"))
            .values_list(*keys, *sums, "done")
        )
        for item in values:
            day, team, va, model = item[:4]
            tags = item[4 : 4 + len(groups)]
            if tag_keys is None:
                dims = _present(tags[0] if isinstance(tags[0], dict) else {})
            else:
                dims = {key: value for key, value in zip(tag_keys, tags, strict=True) if value}
            _add_rollup_row(by_period, done, day, team, va, model, dims, item[4 + len(groups) :])
        return by_period, done
    # SQLite sums decimals as floats: the rows are read as they are.
    keys = (period, "team_id", "virtual_account_id", "model", "dims")
    for day, team, va, model, dims, *rest in rows.order_by().values_list(
        *keys, *fields, "computed_at"
    ):
        dims = _present(dims if isinstance(dims, dict) else {})
        if tag_keys is not None:
            dims = {key: dims[key] for key in tag_keys if dims.get(key)}
        _add_rollup_row(by_period, done, day, team, va, model, dims, rest)
    return by_period, done


def _present(dims: dict) -> dict:
    """Only the tag values a row has: rollup and raw rows then look alike ({} for none)."""
    return {key: value for key, value in dims.items() if value not in (None, "")}


def _add_rollup_row(
    by_period: dict[dt.date, list[UsageRow]],
    done: dict[dt.date, dt.datetime],
    day: dt.date,
    team: int | None,
    va: int | None,
    model: str,
    dims: dict,
    sums: tuple | list,
) -> None:
    requests, inp, out, cached, cost, computed_at = sums
    row = UsageRow(
        day,
        team,
        va,
        model,
        dims,
        int(requests or 0),
        int(inp or 0),
        int(out or 0),
        int(cached or 0),
        Decimal(cost or 0),
    )
    by_period.setdefault(day, []).append(row)
    done[day] = min(done.get(day, computed_at), computed_at)


def month_to_date_rows(
    *, month: dt.date | None = None, by_day: bool = True, tag_keys: tuple[str, ...] | None = None
) -> list[UsageRow]:
    """Every usage of `month` (default: this one) so far, per day x team x virtual account x
    model x rollup tag values: covered days from the rollup, the rest grouped from raw rows.

    A past month whose monthly rollup ran after it ended (plus the settle margin) is read
    from that rollup in one query (`day` is then the first of the month). Otherwise a few
    queries; never one per subject. `by_day=False` sums the rolled-up days into one row per
    group (`day` the first of the month), for readers that need the month only; `tag_keys`
    keeps only those tag values in `dims` (default: every rollup tag key), so readers that
    need, say, the customer alone are not handed every combination of every tag.
    """
    month = month_start(month or current_month())
    end = next_month(month)
    if month < current_month():
        monthly, done = _rollup_rows(
            UsageRollupMonthly.objects.filter(month=month), "month", tag_keys=tag_keys
        )
        # Whole-month rows stand only if no day of the month got rows since they were made.
        if (
            monthly
            and day_is_final(end - dt.timedelta(days=1), done[month])
            and not late_days(month, end)
        ):
            return monthly[month]
    daily = UsageRollupDaily.objects.filter(day__gte=month, day__lt=end)
    if by_day:
        per_day, done = _rollup_rows(daily, "day", tag_keys=tag_keys)
        late = late_days(month, end)
        covered = [day for day in per_day if day_is_final(day, done[day], late)]
        out = [row for day in covered for row in per_day[day]]
    else:
        covered = sorted(covered_days(UsageRollupDaily, month, end))
        summed, _ = _rollup_rows(
            daily.filter(day__in=covered), "day", as_period=month, tag_keys=tag_keys
        )
        out = summed.get(month, [])
    raw_keys = rollup_tag_keys() if tag_keys is None else list(tag_keys)
    for key, group in grouped_usage(_raw_rows(month, covered), raw_keys):
        out.append(
            UsageRow(
                key[0],
                key[1],
                key[3],
                key[4],
                _present(dict(zip(raw_keys, json.loads(key[5]), strict=True))),
                group.requests,
                group.input_tokens,
                group.output_tokens,
                group.cached_tokens,
                group.cost_usd,
            )
        )
    return out
