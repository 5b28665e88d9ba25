"""Month-to-date usage: the one reader of "this month so far" (statements, the tier-change
preview, insights, quota counter seeding), right whether or not a rollup has run.

It is the query layer (`apps.usage.query.usage_totals`) over one UTC month: whole days the
daily rollups cover (`apps.usage.coverage`: computed after the day settled, no late rows
since), today's spans the hourly rollups cover, and the raw rows for the rest, so a day or
span comes from one source or the other, never both. Rows written late for a day already
rolled up (spool replays, replayed dead letters) mark the day, which is read raw until the
next rollup run. What the rollups cannot answer (an API key or key lineage, several tags at
once, a tag key that is not a rollup dimension) is read from the raw rows for the whole month.
"""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from decimal import Decimal

from django.utils import timezone

from apps.usage.grouping import day_bounds, month_start, next_month
from apps.usage.query import REGION, UsageFilter, tag_dimension, usage_totals
from apps.usage.regions import is_multi_region
from apps.usage.scope import UsageScope

EVERYTHING = UsageScope(everything=True)


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

    def usage_filter(self, month: dt.date, models: Iterable[str] = ()) -> UsageFilter:
        """This subject's rows of `month` (of `models`, when given) for the query layer."""
        start, end = day_bounds(month, next_month(month))
        return UsageFilter(
            start=start,
            end=end,
            team_ids=_one(self.team_id),
            user_ids=_one(self.user_id),
            virtual_account_ids=_one(self.virtual_account_id),
            api_key_ids=_one(self.api_key_id),
            key_lineage_ids=_one(self.key_lineage_id),
            models=tuple(sorted(models)),
            tags=self.tags,
        )


def _one(value):
    return () if value is None else (value,)


@dataclass(frozen=True)
class MonthTotals:
    requests: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    cost_usd: Decimal = Decimal(0)

    @property
    def tokens(self) -> int:
        return self.input_tokens + self.output_tokens

    def __add__(self, other: MonthTotals) -> MonthTotals:
        return MonthTotals(
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
    cache_write_tokens: int
    cost_usd: Decimal
    # With several data regions, the region whose ledger holds these rows; else "".
    region: str = ""

    @property
    def tokens(self) -> int:
        return self.input_tokens + self.output_tokens


def current_month() -> dt.date:
    return month_start(timezone.now().astimezone(dt.UTC).date())


def month_to_date(
    *, subject: UsageSubject, month: dt.date | None = None, models: Iterable[str] = ()
) -> MonthTotals:
    """Requests, tokens and cost of `subject` in `month` (default: this one) so far.

    `models`, when given, counts only those models (a tier's included models, a rule's
    model filter).
    """
    month = month_start(month or current_month())
    found = usage_totals(scope=EVERYTHING, where=subject.usage_filter(month, models))
    total = MonthTotals()
    for totals in found:
        total += MonthTotals(
            totals.requests, totals.input_tokens, totals.output_tokens, totals.cost_usd
        )
    return total


def month_to_date_rows(
    *, month: dt.date | None = None, by_day: bool = True, tag_key: str | None = None
) -> list[UsageRow]:
    """Every usage of `month` (default: this one) so far, per day x team x virtual account x
    model, and with `tag_key` also per value of that tag (`dims`, {} when the row has none).

    A few queries; never one per subject. `by_day=False` sums the days into one row per
    group (`day` the first of the month), for readers that need the month only.
    """
    month = month_start(month or current_month())
    group_by = ("team", "virtual_account", "model")
    if tag_key is not None:
        group_by += (tag_dimension(tag_key),)
    by_region = is_multi_region()
    if by_region:
        group_by += (REGION,)
    found = usage_totals(
        scope=EVERYTHING,
        where=UsageSubject().usage_filter(month),
        group_by=group_by,
        bucket="day" if by_day else "month",
    )
    rows = []
    for totals in found:
        team_id, virtual_account_id, model, *rest = totals.group
        region = str(rest.pop()) if by_region else ""
        tag = rest
        rows.append(
            UsageRow(
                totals.bucket.date() if totals.bucket else month,
                team_id,  # type: ignore[arg-type]
                virtual_account_id,  # type: ignore[arg-type]
                str(model),
                {tag_key: tag[0]} if tag_key and tag and tag[0] else {},
                totals.requests,
                totals.input_tokens,
                totals.output_tokens,
                totals.cached_tokens,
                totals.cache_write_tokens,
                totals.cost_usd,
                region,
            )
        )
    return rows
