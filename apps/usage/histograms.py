"""Log-scale latency histograms: percentiles within a fixed relative error, from counts.

A value v > 0 falls in bucket i = ceil(ln(v) / ln(GAMMA)), the interval (GAMMA^(i-1), GAMMA^i].
Each bucket is read back as 2 * GAMMA^i / (GAMMA + 1), which is within RELATIVE_ERROR of every
value in it (the DDSketch construction). Histograms are plain `{bucket: count}` dicts, so
days, teams and models merge by adding counts, which percentiles themselves cannot do.

A percentile follows `percentile_cont`: the value at rank f * (n - 1), interpolated between
the two nearest ranks, so on the same rows it is within RELATIVE_ERROR of PostgreSQL's.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence

RELATIVE_ERROR = 0.02
GAMMA = (1 + RELATIVE_ERROR) / (1 - RELATIVE_ERROR)
LN_GAMMA = math.log(GAMMA)
# Latencies below this (ms) share the lowest bucket; nothing real is that fast.
MIN_MS = 0.01

Histogram = dict[int, int]


def bucket_of(value_ms: float) -> int:
    """The bucket of one value, as the SQL expression in `selectors` computes it."""
    return math.ceil(math.log(max(value_ms, MIN_MS)) / LN_GAMMA)


def bucket_value(bucket: int) -> float:
    return 2 * GAMMA**bucket / (GAMMA + 1)


def merge_into(target: Histogram, source: Mapping) -> None:
    """Add `source` counts to `target`; keys may be text (histograms read back from JSON)."""
    for bucket, count in source.items():
        key = int(bucket)
        target[key] = target.get(key, 0) + int(count)


def add_counts(target: dict, source: Mapping) -> None:
    """Add `source` counts to `target` key for key, as they are: both keyed alike (text, as
    read back from JSON, or int). Three times faster than `merge_into`, which is what a page
    merging thousands of rolled-up histograms needs; `percentiles` reads either kind."""
    get = target.get
    for bucket, count in source.items():
        target[bucket] = get(bucket, 0) + count


def total(histogram: Mapping) -> int:
    return sum(int(count) for count in histogram.values())


def percentiles(histogram: Mapping, fractions: Sequence[float]) -> list[float | None]:
    """`percentile_cont` of each fraction over the counted values; None when empty. The
    keys may be text (see `add_counts`)."""
    n = total(histogram)
    if n == 0:
        return [None for _ in fractions]
    ordered = sorted((int(bucket), int(count)) for bucket, count in histogram.items())
    return [_at_rank(ordered, f * (n - 1)) for f in fractions]


def _at_rank(ordered: Iterable[tuple[int, int]], rank: float) -> float:
    low_rank = math.floor(rank)
    high_rank = math.ceil(rank)
    low: float | None = None
    seen = 0
    for bucket, count in ordered:
        seen += count
        if low is None and seen > low_rank:
            low = bucket_value(bucket)
        if seen > high_rank:
            high = bucket_value(bucket)
            return low + (high - low) * (rank - low_rank)
    raise ValueError(f"rank {rank} beyond {seen} counted values")


def sql_bucket(field: str):
    """`bucket_of` as a database expression (PostgreSQL, and SQLite through Django's
    registered math functions), so rows are bucketed where they are stored."""
    from django.db.models import F, FloatField, Value
    from django.db.models.functions import Ceil, Greatest, Ln

    return Ceil(
        Ln(Greatest(F(field), Value(MIN_MS), output_field=FloatField()))
        / Value(LN_GAMMA, output_field=FloatField())
    )
