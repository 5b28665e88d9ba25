"""Reading the rollups for insights: rows summed per subject x model x tag values, and labels.

On PostgreSQL the rollup rows are first summed in the database (dropping `user_id`); SQLite
(embedded mode) sums decimals as floats, so there the rows are summed exactly in Python.
"""

from __future__ import annotations

import datetime as dt
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass
from decimal import Decimal

from django.conf import settings
from django.db import connection
from django.db.models import Max, Model, Sum

from apps.accounts.models import Team, VirtualAccount
from apps.billing.constants import SubjectType


@dataclass(frozen=True)
class RollupRow:
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


def rollup_rows(
    model: type[Model], period: str, start: dt.date, end: dt.date
) -> Iterator[RollupRow]:
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
        yield RollupRow(
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


def subject_labels(keys: set[str]) -> dict[str, str]:
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


def subject_type(key: str) -> str:
    return SubjectType(key.partition(":")[0]).value
