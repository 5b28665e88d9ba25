"""Reads of the quotas app: stored configs, live usage per rule, refusals, key status."""

import logging
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from asgiref.sync import async_to_sync
from django.conf import settings
from django.contrib.auth import get_user_model
from django.db.models import Count, Max, Q, QuerySet
from django.db.models.fields.json import KeyTextTransform
from django.db.models.functions import Lower
from django.utils.module_loading import import_string

from apps.accounts.models import ApiKey, Membership, Team, VirtualAccount
from apps.accounts.selectors import PortalIdentity
from apps.proxy.metadata import merge_tags
from apps.usage.models import UsageRecord
from apps.usage.regions import ledger_managers
from apps.usage.scope import UsageScope, usage_scope_for

from .counters import CounterStoreUnavailable
from .engine import get_quota_engine
from .models import QuotaConfigVersion
from .rules import (
    ANY_SUBJECT,
    MISSING_PER_VALUE,
    SUBJECT_KINDS,
    QuotaConfig,
    QuotaConfigError,
    QuotaRule,
    display_amount,
    merge_rules,
    parse_config,
    subject_ids_from,
    window_bounds_ts,
)
from .simulate import subject_directory

logger = logging.getLogger(__name__)

# The error code the proxy stores on usage rows it refused for a quota.
QUOTA_EXCEEDED = "quota_exceeded"


def active_quota_config_version() -> QuotaConfigVersion | None:
    return QuotaConfigVersion.objects.filter(is_active=True).select_related("author").first()


def active_quota_config() -> QuotaConfig:
    """The rules in force; an empty config (no limits) before the first apply."""
    row = QuotaConfigVersion.objects.filter(is_active=True).only("yaml_text").first()
    return parse_config(row.yaml_text) if row is not None else QuotaConfig()


def quota_config_versions() -> QuerySet[QuotaConfigVersion]:
    """Every stored version, newest first, for history pages and the export command."""
    return QuotaConfigVersion.objects.select_related("author").order_by("-version")


# --- current usage and recent refusals ----------------------------------------------------
#
# The portal page and GET /api/quotas/status read live counters through the counter store's
# `read` (one MGET for the whole page). Which rule refused a past request is not stored on
# the usage row yet; `recent_quota_refusals` reads it from `response_body["broken_rules"]`
# when present and otherwise attributes the refusal to every rule of the active config that
# matches the row (exact when only one does, which is the common case).

REFUSAL_LOOKBACK = timedelta(hours=24)
# Rules with `per:` list the values seen most often in usage rows of the current window.
TOP_PER_VALUES = 5

WINDOW_LABELS = {
    "minute": "this minute",
    "hour": "this hour",
    "day": "today",
    "month": "this month",
}
METRIC_LABELS = {
    "requests": "requests",
    "tokens": "tokens",
    "input_tokens": "input tokens",
    "output_tokens": "output tokens",
    "cost_usd": "USD",
}


def _fmt(rule: QuotaRule, amount: int | float) -> str:
    return f"${amount:,.2f}" if rule.metric == "cost_usd" else f"{int(amount):,}"


@dataclass(frozen=True)
class SubjectUsage:
    """One counter of a rule: a subject (and `per` value) in the current window."""

    rule: QuotaRule
    subject: str
    per_value: str | None
    used: int | float | None  # None: the counter store could not be read

    @property
    def label(self) -> str:
        name = "everyone" if self.subject == ANY_SUBJECT else self.subject.partition(":")[2]
        if self.per_value is not None:
            name = f"{name} · {self.rule.per}={self.per_value}"
        return name

    @property
    def limit(self) -> int | float:
        return display_amount(self.rule, self.rule.limit)

    @property
    def remaining(self) -> int | float | None:
        return None if self.used is None else max(0, self.limit - self.used)

    @property
    def percent(self) -> int:
        if self.used is None:
            return 0
        return min(100, round(100 * self.used / self.limit)) if self.limit else 100

    @property
    def summary(self) -> str:
        """e.g. "frontend: 3,214 / 5,000 requests today"."""
        used = "?" if self.used is None else _fmt(self.rule, self.used)
        unit = "" if self.rule.metric == "cost_usd" else f" {METRIC_LABELS[self.rule.metric]}"
        limit = _fmt(self.rule, self.limit)
        return f"{self.label}: {used} / {limit}{unit} {WINDOW_LABELS[self.rule.period]}"


@dataclass(frozen=True)
class RuleRefusals:
    count: int = 0
    last_at: datetime | None = None
    # False when some refusals were attributed by matching rather than read from the row.
    exact: bool = True


@dataclass(frozen=True)
class RuleOverview:
    rule: QuotaRule
    window_start: datetime
    reset_at: datetime
    usages: list[SubjectUsage]
    refusals: RuleRefusals
    # A rule shared by everyone, whose counter sums the whole organisation: not for a
    # developer's eyes (their own refusals of it are still listed).
    counter_hidden: bool = False

    @property
    def conditions(self) -> str:
        parts = []
        if self.rule.models:
            parts.append("models " + ", ".join(sorted(self.rule.models)))
        if self.rule.metadata:
            parts.append(", ".join(f"{k}={v}" for k, v in self.rule.metadata))
        if self.rule.per:
            parts.append(f"per metadata.{self.rule.per}")
        return "; ".join(parts)


@dataclass(frozen=True)
class QuotaOverview:
    version: QuotaConfigVersion | None
    rules: list[RuleOverview]
    counters_available: bool
    refusals_since: datetime

    @property
    def refused_rules(self) -> list[RuleOverview]:
        return [item for item in self.rules if item.refusals.count]


def _parsed_or_empty(version: QuotaConfigVersion | None) -> QuotaConfig:
    # A stored version that a stricter parser now refuses must not break the status pages;
    # the gateways keep their loaded rules in that case (see QuotaEngine.refresh) too.
    if version is None:
        return QuotaConfig()
    try:
        return parse_config(version.yaml_text)
    except QuotaConfigError:
        return QuotaConfig()


def generated_quota_rules() -> list[QuotaRule]:
    """Rules generated from other sources (hard-capped tiers), as the gateways load them."""
    rules: list[QuotaRule] = []
    for path in getattr(settings, "QUOTA_GENERATED_RULE_SOURCES", ()):
        _, found = async_to_sync(import_string(path))()
        rules.extend(found)
    return rules


def quota_config_in_force(version: QuotaConfigVersion | None = None) -> QuotaConfig:
    """The rules the gateways enforce: the active YAML (`version`, default the active row)
    plus the generated ones (tier caps), merged as `QuotaEngine.refresh` merges them."""
    config = _parsed_or_empty(version if version is not None else active_quota_config_version())
    try:
        return merge_rules(config, generated_quota_rules())
    except QuotaConfigError:
        # The gateways keep their loaded rules in this case; the pages show the YAML ones.
        logger.warning("generated quota rules clash with the YAML ids; listing the YAML only")
        return config


def read_counters(keys: list[str]) -> list[int] | None:
    """Current counter values through this process's store; None if it is unreachable."""
    if not keys:
        return []
    store = get_quota_engine().store
    try:
        # Sync portal code: async_to_sync runs it on the server's loop under ASGI.
        return async_to_sync(store.read)(keys)
    except CounterStoreUnavailable:
        return None


def resolve_subjects(subjects: set[str]) -> dict[str, tuple[str, int, int | None]]:
    """subject id -> (usage row column, id, team id or None); unknown subjects are absent."""
    wanted: dict[str, set[str]] = {kind: set() for kind in SUBJECT_KINDS}
    for subject in subjects:
        kind, _, name = subject.partition(":")
        if kind in wanted:
            wanted[kind].add(name)
    resolved: dict[str, tuple[str, int, int | None]] = {}
    if wanted["team"]:
        for team_id, slug in Team.objects.filter(slug__in=wanted["team"]).values_list("id", "slug"):
            resolved[f"team:{slug}"] = ("team_id", team_id, team_id)
    if wanted["user"]:
        user_model = get_user_model()
        name_field = user_model.USERNAME_FIELD
        rows = (
            user_model.objects.annotate(email_lower=Lower("email"))
            .filter(Q(**{f"{name_field}__in": wanted["user"]}) | Q(email_lower__in=wanted["user"]))
            .values_list("id", name_field, "email_lower")
        )
        for user_id, username, email in rows:
            for name in (username, email):
                if name in wanted["user"]:
                    resolved[f"user:{name}"] = ("user_id", user_id, None)
    if wanted["virtualaccount"]:
        for va_id, name, team_id in VirtualAccount.objects.filter(
            name__in=wanted["virtualaccount"]
        ).values_list("id", "name", "team_id"):
            resolved[f"virtualaccount:{name}"] = ("virtual_account_id", va_id, team_id)
    return resolved


def _visible_subjects(
    scope: UsageScope, resolved: dict[str, tuple[str, int, int | None]]
) -> set[str]:
    """The subjects a scoped viewer may see: their teams, their members, their accounts and
    themselves (a developer: only themselves)."""
    team_ids = scope.team_ids
    member_ids = set()
    if team_ids:
        member_ids = set(
            Membership.objects.filter(
                team_id__in=team_ids,
                user_id__in=[i for col, i, _ in resolved.values() if col == "user_id"],
            ).values_list("user_id", flat=True)
        )
    visible = set()
    for subject, (column, row_id, team_id) in resolved.items():
        if column == "user_id":
            if row_id in member_ids or row_id == scope.user_id:
                visible.add(subject)
        elif team_id in team_ids:
            visible.add(subject)
    return visible


def _top_per_values(
    rule: QuotaRule,
    subject: str,
    resolved: dict[str, tuple[str, int, int | None]],
    since: datetime,
    scope: UsageScope,
) -> list[str]:
    # The counters cannot be listed through the store, so the values come from the usage
    # rows of the current window: the most frequent ones are the ones worth showing.
    counts: dict[str, int] = {}
    for objects in ledger_managers(UsageRecord, scope.readable_regions()):  # each region's
        rows = scope.filter(objects.filter(created_at__gte=since))
        if subject != ANY_SUBJECT:
            column, row_id, _ = resolved[subject]
            rows = rows.filter(**{column: row_id})
        if rule.models:
            rows = rows.filter(model__in=rule.models)
        values = (
            rows.order_by()
            .annotate(per_value=KeyTextTransform(rule.per, "tags"))
            .values("per_value")
            .annotate(n=Count("id"))
            .order_by("-n")[:TOP_PER_VALUES]
        )
        for row in values:
            value = MISSING_PER_VALUE if row["per_value"] in (None, "") else str(row["per_value"])
            counts[value] = counts.get(value, 0) + row["n"]
    ranked = sorted(counts.items(), key=lambda item: -item[1])
    return [value for value, _ in ranked[:TOP_PER_VALUES]]


def quota_overview(*, identity: PortalIdentity, now: datetime | None = None) -> QuotaOverview:
    """Every rule in force (the active YAML and the tier caps) with live usage per subject,
    scoped to the viewer.

    The viewer's usage scope (`apps.usage.scope`) decides: org-wide roles see every rule
    and subject. Team admins see the subjects of the teams they administer (the team, its
    members, its virtual accounts) and themselves, developers only themselves; rules that
    cover none of them are hidden; rules without subjects (everyone) are shown with their
    shared counter to team admins, and without it to developers (it sums the whole
    organisation), since they apply to the viewer too. `per` values and refusals come from
    the usage rows of the scope.
    """
    now = now or datetime.now(UTC)
    version = active_quota_config_version()
    config = quota_config_in_force(version)
    scope = usage_scope_for(identity)
    resolved = resolve_subjects({s for rule in config.rules for s in rule.subjects})
    visible = None if scope.everything else _visible_subjects(scope, resolved)
    # A developer's scope is their own rows: an organisation-wide counter is not theirs.
    personal = not scope.everything and not scope.team_ids
    hidden: set[str] = set()

    plan: list[tuple[QuotaRule, datetime, datetime, list[tuple[str, str | None]]]] = []
    for rule in config.rules:
        start_ts, reset_ts = window_bounds_ts(rule.period, now.timestamp())
        start = datetime.fromtimestamp(start_ts, UTC)
        if rule.subjects:
            subjects = [s for s in rule.subjects if visible is None or s in visible]
            if not subjects:
                continue
        elif rule.source != "yaml" and visible is not None:
            continue  # a customer's tier cap spans teams: org-wide roles only
        elif personal:
            plan.append((rule, start, datetime.fromtimestamp(reset_ts, UTC), []))
            hidden.add(rule.id)
            continue
        else:
            subjects = [ANY_SUBJECT]
        pairs: list[tuple[str, str | None]] = []
        for subject in subjects:
            if rule.per is None:
                pairs.append((subject, None))
            elif subject == ANY_SUBJECT or subject in resolved:
                values = _top_per_values(rule, subject, resolved, start, scope)
                pairs += [(subject, value) for value in values]
        plan.append((rule, start, datetime.fromtimestamp(reset_ts, UTC), pairs))

    keys = [
        rule.counter_key(subject, per_value, int(start.timestamp()))
        for rule, start, _, pairs in plan
        for subject, per_value in pairs
    ]
    counts = read_counters(keys)
    refusals = recent_quota_refusals(config=config, since=now - REFUSAL_LOOKBACK, scope=scope)
    position = 0
    rules = []
    for rule, start, reset, pairs in plan:
        usages = []
        for subject, per_value in pairs:
            used = None if counts is None else display_amount(rule, counts[position])
            usages.append(SubjectUsage(rule, subject, per_value, used))
            position += 1
        if rule.per is not None:
            usages.sort(key=lambda usage: -(usage.used or 0))
        rules.append(
            RuleOverview(
                rule,
                start,
                reset,
                usages,
                refusals.get(rule.id, RuleRefusals()),
                counter_hidden=rule.id in hidden,
            )
        )
    return QuotaOverview(
        version=version,
        rules=rules,
        counters_available=counts is not None,
        refusals_since=now - REFUSAL_LOOKBACK,
    )


def _broken_rule_ids(response_body: Any) -> list[str] | None:
    if not isinstance(response_body, dict):
        return None
    broken = response_body.get("broken_rules")
    if broken is None and isinstance(response_body.get("error"), dict):
        broken = response_body["error"].get("broken_rules")
    if not isinstance(broken, list):
        return None
    return [str(item["rule"]) for item in broken if isinstance(item, dict) and "rule" in item]


def recent_quota_refusals(
    *, config: QuotaConfig, since: datetime, scope: UsageScope
) -> dict[str, RuleRefusals]:
    """rule id -> refusals since `since` among the usage rows of `scope`."""
    groups: list[dict[str, Any]] = []
    for objects in ledger_managers(UsageRecord, scope.readable_regions()):  # each region's
        rows = scope.filter(objects.filter(error_type=QUOTA_EXCEEDED, created_at__gte=since))
        # Grouped in the database: a client hammering a spent quota makes many identical rows.
        groups += list(
            rows.order_by()
            .values("team_id", "user_id", "virtual_account_id", "model", "tags", "response_body")
            .annotate(n=Count("id"), last_at=Max("created_at"))
        )
    if not groups:
        return {}
    directory = subject_directory(
        team_ids={g["team_id"] for g in groups if g["team_id"] is not None},
        user_ids={g["user_id"] for g in groups if g["user_id"] is not None},
        account_ids={
            g["virtual_account_id"] for g in groups if g["virtual_account_id"] is not None
        },
    )
    totals: dict[str, list[Any]] = {}
    for group in groups:
        rule_ids = _broken_rule_ids(group["response_body"])
        exact = rule_ids is not None
        if rule_ids is None:
            subject_ids = directory.subject_ids(
                group["team_id"], group["user_id"], group["virtual_account_id"]
            )
            tags = group["tags"] or {}
            rule_ids = [
                rule.id for rule in config.rules if rule.matches(subject_ids, group["model"], tags)
            ]
            exact = len(rule_ids) == 1
        for rule_id in rule_ids:
            entry = totals.setdefault(rule_id, [0, None, True])
            entry[0] += group["n"]
            if entry[1] is None or group["last_at"] > entry[1]:
                entry[1] = group["last_at"]
            entry[2] = entry[2] and exact
    return {rule_id: RuleRefusals(*entry) for rule_id, entry in totals.items()}


def key_quota_status(
    *,
    key: ApiKey,
    model: str | None = None,
    tags: dict[str, str] | None = None,
    now: datetime | None = None,
) -> list[dict[str, Any]]:
    """Every rule in force (the active YAML and the tier caps) that covers the key, with its
    counter right now.

    `model` and `tags` narrow the list to the rules a request with them would meet; without
    a model, model-filtered rules are listed (with their `models`). The key's default tags
    count as request tags, as in the proxy; a metadata condition whose tag the request does
    not carry is listed too, since a request could still send it.
    """
    now = now or datetime.now(UTC)
    config = quota_config_in_force()
    user = key.user
    account = key.virtual_account
    subject_ids = subject_ids_from(
        team_slug=key.team.slug,
        username=user.get_username() if user is not None else "",
        email=user.email if user is not None else "",
        account_name=account.name if account is not None else None,
    )
    merged = merge_tags(
        team_defaults=key.team.default_tags or {},
        owner_defaults=(account.default_tags or {}) if account else {},
        key_defaults=key.default_tags or {},
        request_tags=tags or {},
        enforced_keys=frozenset(key.enforced_tag_keys or ()),
    )
    items: list[dict[str, Any]] = []
    for rule in config.rules:
        if model is not None and rule.models and model not in rule.models:
            continue
        if any(k in merged and merged[k] != v for k, v in rule.metadata):
            continue
        if rule.source != "yaml" and any(merged.get(k) != v for k, v in rule.metadata):
            # A customer's tier cap is listed only to requests tagged with that customer,
            # so a key never learns which other customers are capped.
            continue
        start_ts, reset_ts = window_bounds_ts(rule.period, now.timestamp())
        per_value = rule.per_value(merged)
        for subject in rule.matched_subjects(subject_ids):
            items.append(
                {
                    "rule": rule,
                    "subject": subject,
                    "per_value": per_value,
                    "key": rule.counter_key(subject, per_value, start_ts),
                    "window_start": datetime.fromtimestamp(start_ts, UTC),
                    "reset": datetime.fromtimestamp(reset_ts, UTC),
                }
            )
    values = read_counters([item["key"] for item in items])
    out = []
    for index, item in enumerate(items):
        rule = item["rule"]
        used = None if values is None else display_amount(rule, values[index])
        limit = display_amount(rule, rule.limit)
        out.append(
            {
                "rule": rule.id,
                "unit": rule.unit,
                "subject": item["subject"],
                "per": {rule.per: item["per_value"]} if rule.per is not None else None,
                "models": sorted(rule.models),
                "metadata": dict(rule.metadata),
                "limit": limit,
                "used": used,
                "remaining": None if used is None else max(0, limit - used),
                "window_start": item["window_start"],
                "reset": item["reset"],
            }
        )
    return out
