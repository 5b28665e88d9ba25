"""Month-to-date usage: rolled-up complete days plus the raw rows the rollup does not cover.

The one reader of "this month so far" (statements, the tier-change preview, insights, quota
counter seeding), right whether or not a rollup has run. It reads the same daily tables as
the dashboards (`UsageCubeDaily` for subjects without tags, `TagUsageDaily` for one tag
value, such as a customer), under `apps.usage.coverage`'s rule:

- A UTC day is read from the rollup when its rollup rows were computed at least
  `BILLING_EXPORT_SETTLE_SECONDS` after the day ended. A run replaces a day's rows in one
  transaction from one GROUP BY, so they hold every usage row committed by then; the margin
  lets the usage writer's last rows of the day land first.
- Every other day of the month (today, a day never rolled up, a day rolled up while still
  open) is read from the raw `UsageRecord` rows. A day comes from one source or the other,
  never both, so nothing is counted twice at the boundary. A day without rollup rows is read
  raw, which is right whether the rollup skipped it or it had no usage.
- Rows written late for a day already rolled up (spool replays after an outage, replayed
  dead letters) mark the day (`UsageLateDay`): it is read raw until the next rollup run
  re-rolls it, in whichever month it lies.
- What the rollups cannot answer (an API key or key lineage, several tags at once, a tag
  key that is not a rollup dimension) is read from the raw rows for the whole month.
"""

from __future__ import annotations

import datetime as dt
import json
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from decimal import Decimal

from django.db import connection
from django.db.models import Count, DateField, Min, Q, QuerySet, Sum, Value
from django.utils import timezone

from apps.usage.coverage import covered_days, covered_hours, day_is_final, late_days, uncovered
from apps.usage.grouping import (
    day_bounds,
    day_runs,
    grouped_usage,
    month_start,
    next_month,
    rollup_tag_keys,
    utc_today,
)
from apps.usage.models import (
    TagUsageDaily,
    TagUsageHourly,
    UsageCubeDaily,
    UsageCubeHourly,
    UsageRecord,
)
from apps.usage.tags import tag_equals


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

    def rollup_rows(self, *, hourly: bool = False) -> QuerySet | None:
        """The same rows in a daily (or today's hourly) rollup table; None when no rollup
        keeps them apart."""
        columns = self._columns()
        if "api_key_id" in columns or "key_lineage_id" in columns or len(self.tags) > 1:
            return None
        if not self.tags:
            return (UsageCubeHourly if hourly else UsageCubeDaily).objects.filter(**columns)
        key, value = self.tags[0]
        if key not in rollup_tag_keys():
            return None
        table = TagUsageHourly if hourly else TagUsageDaily
        return table.objects.filter(tag_key=key, tag_value=value[:256], **columns)


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


def _raw_rows(
    month: dt.date,
    covered: Iterable[dt.date],
    hours: Mapping[dt.datetime, dt.datetime] | None = None,
) -> QuerySet[UsageRecord]:
    """The month's raw rows outside the covered days and today's covered spans, selected
    by the time ranges left (index range scans)."""
    low, high = day_bounds(month, next_month(month))
    held = [day_bounds(first, end) for first, end in day_runs(covered)]
    held += list((hours or {}).items())
    time_q = Q(pk__in=[])
    for start, end in uncovered(low, high, held):
        time_q |= Q(created_at__gte=start, created_at__lt=end)
    return UsageRecord.objects.filter(time_q).order_by()


def _todays_hours(month: dt.date) -> dict[dt.datetime, dt.datetime]:
    """Today's spans the hourly rollup answers for ({hour: until}), when `month` is this
    month."""
    today = utc_today()
    if month_start(today) != month:
        return {}
    return covered_hours(today)


def _summed(rows: QuerySet) -> UsageTotals:
    """Rollup rows summed (exact Decimals on SQLite, which sums decimals as floats)."""
    fields = ("requests", "input_tokens", "output_tokens", "cost_usd")
    if connection.vendor == "postgresql":
        sums = rows.aggregate(**{name: Sum(name) for name in fields})
        values = [tuple(sums[name] for name in fields)]
    else:
        values = list(rows.values_list(*fields))
    total = UsageTotals()
    for requests, inp, out, cost in values:
        total += UsageTotals(int(requests or 0), int(inp or 0), int(out or 0), Decimal(cost or 0))
    return total


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


def _rollup_days(rows: QuerySet) -> dict[dt.date, UsageTotals]:
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
    hours: dict[dt.datetime, dt.datetime] = {}
    today = UsageTotals()
    rollups = subject.rollup_rows()
    if rollups is not None:
        rollups = rollups.filter(day__gte=month, day__lt=next_month(month))
        model_q = Q(model__in=models) if models else Q()
        covered = _rollup_days(rollups.filter(model_q))
        hours = _todays_hours(month)
        if hours:
            hourly = subject.rollup_rows(hourly=True)
            today = _summed(hourly.filter(model_q, hour__in=sorted(hours)))  # type: ignore[union-attr]
    raw = _raw_rows(month, covered, hours).filter(subject.raw_filter())
    if models:
        raw = raw.filter(model__in=models)
    return sum(covered.values(), UsageTotals()) + today + _raw_totals(raw)


def _rollup_rows(rows: QuerySet, *, month: dt.date | None, tag_key: str | None) -> list[UsageRow]:
    """Rollup rows summed per day (or into `month`, when given) x team x virtual account x
    model (x the value of `tag_key`, from `TagUsageDaily`). On PostgreSQL the sums happen in
    the GROUP BY, so a month of rows reaches Python as a few rows per subject and model."""
    fields = ("requests", "input_tokens", "output_tokens", "cached_tokens", "cost_usd")
    tag = ("tag_value",) if tag_key else ()
    if month is not None:
        rows = rows.annotate(_period=Value(month, output_field=DateField()))
    period = "day" if month is None else "_period"
    keys = (period, "team_id", "virtual_account_id", "model", *tag)
    if connection.vendor == "postgresql":
        # Summed in the database, dropping user_id (readers never split by user).
        sums = {f"s_{name}": Sum(name) for name in fields}
        values = rows.order_by().values(*keys).annotate(**sums).values_list(*keys, *sums)
    else:
        # SQLite sums decimals as floats: the rows are read as they are.
        values = rows.order_by().values_list(*keys, *fields)
    out = []
    for item in values:
        day, team, va, model = item[:4]
        value = item[4] if tag_key else ""
        requests, inp, out_tokens, cached, cost = item[4 + len(tag) :]
        out.append(
            UsageRow(
                day,
                team,
                va,
                model,
                {tag_key: value} if tag_key and value else {},
                int(requests or 0),
                int(inp or 0),
                int(out_tokens or 0),
                int(cached or 0),
                Decimal(cost or 0),
            )
        )
    return out


def month_to_date_rows(
    *, month: dt.date | None = None, by_day: bool = True, tag_key: str | None = None
) -> list[UsageRow]:
    """Every usage of `month` (default: this one) so far, per day x team x virtual account x
    model, and with `tag_key` also per value of that tag (`dims`, {} when the row has none):
    covered days from the daily rollups, the rest grouped from raw rows.

    A few queries; never one per subject. `by_day=False` sums the rolled-up days into one
    row per group (`day` the first of the month), for readers that need the month only.
    """
    month = month_start(month or current_month())
    end = next_month(month)
    if tag_key is None:
        rollups: QuerySet = UsageCubeDaily.objects.all()
    else:
        rollups = TagUsageDaily.objects.filter(tag_key=tag_key)
    # A key the rollups do not keep is read raw for the whole month.
    answered = tag_key is None or tag_key in rollup_tag_keys()
    covered = sorted(covered_days(UsageCubeDaily, month, end)) if answered else []
    hours = _todays_hours(month) if answered else {}
    period = None if by_day else month
    out = _rollup_rows(rollups.filter(day__in=covered), month=period, tag_key=tag_key)
    if hours:
        hourly = (
            TagUsageHourly.objects.filter(tag_key=tag_key) if tag_key else UsageCubeHourly.objects
        )
        out += _rollup_rows(hourly.filter(hour__in=sorted(hours)), month=period, tag_key=tag_key)
    keys = [tag_key] if tag_key else []
    for key, group in grouped_usage(_raw_rows(month, covered, hours), keys):
        out.append(
            UsageRow(
                key[0],
                key[1],
                key[3],
                key[4],
                _present(dict(zip(keys, json.loads(key[5]), strict=True))),
                group.requests,
                group.input_tokens,
                group.output_tokens,
                group.cached_tokens,
                group.cost_usd,
            )
        )
    return out


def _present(dims: dict) -> dict:
    """Only the tag values a row has: rollup and raw rows then look alike ({} for none)."""
    return {key: value for key, value in dims.items() if value not in (None, "")}
