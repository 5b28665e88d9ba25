"""Shaping selector output for display: top N plus "other", totals, and display labels."""

from __future__ import annotations

import datetime as dt
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import replace
from decimal import Decimal

from django.contrib.auth import get_user_model

from apps.accounts.models import Team, VirtualAccount

from .usage import UsagePoint

OTHER = "other"
NONE_LABEL = "(none)"


def top_groups(points: Iterable[UsagePoint], *, n: int, metric: str = "cost_usd") -> list[str]:
    """The `n` groups with the largest total `metric`, largest first."""
    totals: dict[str, float] = defaultdict(float)
    for point in points:
        totals[point.group] += float(getattr(point, metric))
    return [g for g, _ in sorted(totals.items(), key=lambda kv: (-kv[1], kv[0]))[:n]]


def fold_other(points: list[UsagePoint], *, keep: Sequence[str]) -> list[UsagePoint]:
    """Groups outside `keep` summed into one "other" group per bucket."""
    kept = set(keep)
    out: list[UsagePoint] = []
    other: dict[dt.datetime | None, list] = {}
    for p in points:
        if p.group in kept:
            out.append(p)
            continue
        acc = other.setdefault(p.bucket, [0, 0, 0, 0, Decimal(0)])
        for i, value in enumerate(
            (p.requests, p.errors, p.input_tokens, p.output_tokens, p.cost_usd)
        ):
            acc[i] += value
    out.extend(UsagePoint(bucket, OTHER, *acc) for bucket, acc in other.items())
    epoch = dt.datetime.min.replace(tzinfo=dt.UTC)
    return sorted(out, key=lambda p: (p.bucket or epoch, p.group))


def totals_by_group(points: Iterable[UsagePoint]) -> list[UsagePoint]:
    """Points summed over buckets, one per group, by descending cost."""
    sums: dict[str, list] = {}
    for p in points:
        acc = sums.setdefault(p.group, [0, 0, 0, 0, Decimal(0)])
        for i, value in enumerate(
            (p.requests, p.errors, p.input_tokens, p.output_tokens, p.cost_usd)
        ):
            acc[i] += value
    rows = [UsagePoint(None, group, *acc) for group, acc in sums.items()]
    return sorted(rows, key=lambda p: (-p.cost_usd, -p.requests, p.group))


def group_labels(dimension: str | None, groups: Iterable[str]) -> dict[str, str]:
    """Display names for ids (teams, users, virtual accounts); other values as they are.

    Only ids already present in the caller's rows are looked up, so no name outside the
    scope is revealed.
    """
    groups = list(groups)
    labels = {g: (g if g else NONE_LABEL) for g in groups}
    models = {
        "team": (Team, "name"),
        "virtual_account": (VirtualAccount, "name"),
        "user": (get_user_model(), "username"),
    }
    if dimension in models:
        model, field = models[dimension]
        ids = [int(g) for g in groups if g.isdigit()]
        for pk, name in model.objects.filter(pk__in=ids).values_list("pk", field):
            labels[str(pk)] = str(name)
    return labels


def relabel(points: list, labels: dict[str, str]) -> list:
    return [replace(p, group=labels.get(p.group, p.group)) for p in points]
