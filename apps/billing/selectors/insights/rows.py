"""Subject labels and types for insights (the rows themselves come from
`apps.usage.month_to_date`)."""

from __future__ import annotations

from collections import defaultdict

from apps.accounts.models import Team, VirtualAccount
from apps.billing.constants import SubjectType


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
