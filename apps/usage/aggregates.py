"""The sums usage reads and rollups compute, and how their values read back, named once."""

from decimal import Decimal

from django.db.models import Count, Q, Sum

# Tokens and cost: columns of the same name on raw rows and on every rollup.
TOKEN_AND_COST_SUMS = {
    "s_in": Sum("input_tokens"),
    "s_out": Sum("output_tokens"),
    "s_cached": Sum("cached_tokens"),
    "s_cache_write": Sum("cache_write_tokens"),
    "s_cost": Sum("cost_usd"),
}
# Requests, errors, tokens and cost of raw usage rows.
RAW_SUMS = {
    "n": Count("pk"),
    "n_err": Count("pk", filter=Q(status_code__gte=400)),
    **TOKEN_AND_COST_SUMS,
}
# The same, summed from rollup rows.
ROLLUP_SUMS = {"n": Sum("requests"), "n_err": Sum("errors"), **TOKEN_AND_COST_SUMS}

COST_PRECISION = Decimal("1e-10")


def summed_cost(value: object) -> Decimal:
    """A database sum of `cost_usd` as an exact Decimal at the column's precision: SQLite
    sums decimals as floats. No rows (NULL) is zero."""
    if not value:
        return Decimal(0)
    return Decimal(str(value)).quantize(COST_PRECISION)


def group_text(value: object) -> str:
    """A grouped value as text; NULL (a missing tag, no team) is "", as rollups store it."""
    return "" if value is None else str(value)
