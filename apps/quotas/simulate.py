"""The dry run: replay recorded usage against a candidate config, report what it would refuse.

`simulate` is a pure function over usage rows (dicts with the `UsageRecord` columns listed in
`REPLAY_FIELDS`), in time order. For each row it evaluates every matching rule's window
counter with the engine's semantics: all matching counters are checked, a row is refused if
any would go over its limit, and a refused row changes no counter (all or none).

Choices the spec leaves open, made here:
- Every recorded request is replayed, including those the active config refused: they were
  real demand, and a candidate with a higher limit would have admitted them.
- Token and cost counters use the row's *actual* usage. The live engine reserves the worst
  case at admission and settles later, so under concurrency it can refuse slightly earlier
  than the replay does; sequentially the two agree. As in the engine, a token or cost check
  asks for at least 1, so a spent budget refuses even a request that produced nothing.
- Counters start empty at the beginning of the replay period, so a daily or monthly window
  that began before it is under-counted; the report carries `counters_start_at` to say so.

`simulate_recent` loads the rows and subject names and is what the API and the editor call.
"""

from __future__ import annotations

import heapq
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

from .rules import (
    ANY_SUBJECT,
    QuotaConfig,
    QuotaRule,
    display_amount,
    subject_ids_from,
    usd_to_micros,
    window_bounds_ts,
)

REPLAY_FIELDS = (
    "created_at",
    "team_id",
    "user_id",
    "virtual_account_id",
    "model",
    "tags",
    "input_tokens",
    "output_tokens",
    "cost_usd",
)
DEFAULT_DAYS = 7
MAX_DAYS = 90
# How many subjects and `per` values a rule's report lists (the counts cover all of them).
TOP_LISTED = 20


@dataclass(frozen=True, slots=True)
class SubjectDirectory:
    """Names behind the ids stored on usage rows, to rebuild the subject ids a key had."""

    teams: Mapping[int, str] = field(default_factory=dict)  # id -> slug
    users: Mapping[int, tuple[str, str]] = field(default_factory=dict)  # id -> (name, email)
    accounts: Mapping[int, str] = field(default_factory=dict)  # id -> virtual account name

    def subject_ids(
        self, team_id: int | None, user_id: int | None, virtual_account_id: int | None
    ) -> frozenset[str]:
        # The same subjects engine.subject_ids_for gives the key the row was made with.
        username, email = ("", "") if user_id is None else self.users.get(user_id, ("", ""))
        return subject_ids_from(
            team_slug=None if team_id is None else self.teams.get(team_id),
            username=username,
            email=email,
            account_name=(
                None if virtual_account_id is None else self.accounts.get(virtual_account_id)
            ),
        )


@dataclass(slots=True)
class RuleReport:
    rule_id: str
    unit: str
    limit: int | float
    would_refuse: int = 0
    first_refusal_at: datetime | None = None
    last_refusal_at: datetime | None = None
    # Highest window usage reached (after admission), in display units.
    peak_used: int | float = 0
    subjects: Counter[str] = field(default_factory=Counter)
    per_values: Counter[str] = field(default_factory=Counter)

    @property
    def top_subjects(self) -> list[tuple[str, int]]:
        return self.subjects.most_common(TOP_LISTED)

    @property
    def top_per_values(self) -> list[tuple[str, int]]:
        return self.per_values.most_common(TOP_LISTED)

    def as_dict(self) -> dict[str, Any]:
        return {
            "rule": self.rule_id,
            "unit": self.unit,
            "limit": self.limit,
            "would_refuse": self.would_refuse,
            "first_refusal_at": self.first_refusal_at,
            "last_refusal_at": self.last_refusal_at,
            "peak_used": self.peak_used,
            "subjects": [
                {"subject": subject, "refused": count} for subject, count in self.top_subjects
            ],
            "per_values": [
                {"value": value, "refused": count} for value, count in self.top_per_values
            ],
        }


@dataclass(slots=True)
class SimulationReport:
    since: datetime
    until: datetime
    counters_start_at: datetime
    rows_replayed: int = 0
    # Rows refused by at least one rule (a row breaking two rules counts once here).
    requests_refused: int = 0
    rules: list[RuleReport] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {
            "since": self.since,
            "until": self.until,
            "counters_start_at": self.counters_start_at,
            "rows_replayed": self.rows_replayed,
            "requests_refused": self.requests_refused,
            "rules": [rule.as_dict() for rule in self.rules],
        }


def _amounts(row: Mapping[str, Any]) -> dict[str, int]:
    input_tokens = int(row.get("input_tokens") or 0)
    output_tokens = int(row.get("output_tokens") or 0)
    cost = row.get("cost_usd") or Decimal(0)
    return {
        "requests": 1,
        "tokens": input_tokens + output_tokens,
        "input_tokens": input_tokens,
        "output_tokens": output_tokens,
        "cost_usd": usd_to_micros(cost if isinstance(cost, Decimal) else Decimal(str(cost))),
    }


def simulate(
    config: QuotaConfig,
    rows: Iterable[Mapping[str, Any]],
    directory: SubjectDirectory,
    *,
    since: datetime,
    until: datetime,
) -> SimulationReport:
    """Replay `rows` (oldest first) against `config`; see the module docstring."""
    reports = [
        RuleReport(rule_id=rule.id, unit=rule.unit, limit=display_amount(rule, rule.limit))
        for rule in config.rules
    ]
    report = SimulationReport(since=since, until=until, counters_start_at=since, rules=reports)
    # (rule position, subject, per value) -> [window start, value]. One slot per identity,
    # reset when its window rolls over, so memory stays bounded by distinct identities
    # rather than growing with the number of minute windows in the period.
    counters: dict[tuple[int, str, str | None], list[int]] = {}
    subjects_cache: dict[tuple[Any, ...], frozenset[str]] = {}
    peaks = [0] * len(config.rules)
    for row in rows:
        report.rows_replayed += 1
        ident = (row.get("team_id"), row.get("user_id"), row.get("virtual_account_id"))
        subject_ids = subjects_cache.get(ident)
        if subject_ids is None:
            subject_ids = subjects_cache[ident] = directory.subject_ids(*ident)
        model = row.get("model") or ""
        tags = row.get("tags") or {}
        now = row["created_at"].timestamp()
        amounts = _amounts(row)
        checks: list[tuple[int, QuotaRule, str, str | None, list[int], int]] = []
        for position, rule in enumerate(config.rules):
            if not rule.matches_filters(model, tags):
                continue
            for subject in rule.matched_subjects(subject_ids):
                per_value = rule.per_value(tags)
                start, _ = window_bounds_ts(rule.period, now)
                slot = counters.get((position, subject, per_value))
                if slot is None or slot[0] != start:
                    slot = counters[(position, subject, per_value)] = [start, 0]
                checks.append((position, rule, subject, per_value, slot, amounts[rule.metric]))
        if not checks:
            continue
        broken = [
            check
            for check in checks
            # At least 1 for reserved metrics, as the engine asks at admission.
            if check[4][1] + (check[5] if check[1].metric == "requests" else max(1, check[5]))
            > check[1].limit
        ]
        if not broken:
            for position, _, _, _, slot, amount in checks:
                slot[1] += amount
                if slot[1] > peaks[position]:
                    peaks[position] = slot[1]
            continue
        report.requests_refused += 1
        when = row["created_at"]
        for position, _, subject, per_value, _, _ in broken:
            rule_report = reports[position]
            rule_report.would_refuse += 1
            if rule_report.first_refusal_at is None:
                rule_report.first_refusal_at = when
            rule_report.last_refusal_at = when
            rule_report.subjects["everyone" if subject == ANY_SUBJECT else subject] += 1
            if per_value is not None:
                rule_report.per_values[per_value] += 1
    for position, rule in enumerate(config.rules):
        reports[position].peak_used = display_amount(rule, peaks[position])
    return report


# --- loading rows (the ORM side) ----------------------------------------------------------


def subject_directory(
    *,
    team_ids: Iterable[int | None],
    user_ids: Iterable[int | None],
    account_ids: Iterable[int | None],
) -> SubjectDirectory:
    """Names for the given ids: three queries, whatever the number of rows."""
    from django.contrib.auth import get_user_model

    from apps.accounts.models import Team, VirtualAccount

    user_model = get_user_model()
    username_field = user_model.USERNAME_FIELD
    return SubjectDirectory(
        teams=dict(Team.objects.filter(id__in=set(team_ids)).values_list("id", "slug")),
        users={
            user_id: (username or "", email or "")
            for user_id, username, email in user_model.objects.filter(
                id__in=set(user_ids)
            ).values_list("id", username_field, "email")
        },
        accounts=dict(
            VirtualAccount.objects.filter(id__in=set(account_ids)).values_list("id", "name")
        ),
    )


def simulate_recent(
    config: QuotaConfig, *, days: int, now: datetime | None = None
) -> SimulationReport:
    """Replay the last `days` days of recorded usage (oldest first) against `config`."""
    from apps.usage.models import UsageRecord
    from apps.usage.regions import ledger_managers

    until = now or datetime.now(UTC)
    since = until - timedelta(days=days)
    # Each data region's rows; replayed as one history, merged in time order.
    regions = [
        objects.filter(created_at__gte=since, created_at__lt=until)
        for objects in ledger_managers(UsageRecord)
    ]
    team_ids, user_ids, account_ids = set(), set(), set()
    for rows in regions:
        ids = rows.order_by().values_list("team_id", "user_id", "virtual_account_id").distinct()
        for team_id, user_id, account_id in ids.iterator():
            team_ids.add(team_id)
            user_ids.add(user_id)
            account_ids.add(account_id)
    directory = subject_directory(team_ids=team_ids, user_ids=user_ids, account_ids=account_ids)
    ordered = heapq.merge(
        *(
            rows.order_by("created_at", "id").values(*REPLAY_FIELDS).iterator(chunk_size=5000)
            for rows in regions
        ),
        key=lambda row: row["created_at"],
    )
    return simulate(config, ordered, directory, since=since, until=until)
