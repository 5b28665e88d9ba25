"""The sums usage reads and rollups compute, named once."""

from django.db.models import Count, Q, Sum

# Tokens and cost: columns of the same name on raw rows and on every rollup.
TOKEN_AND_COST_SUMS = {
    "s_in": Sum("input_tokens"),
    "s_out": Sum("output_tokens"),
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
