"""Quota rules: the YAML format, its validation, matching, windows and counter identities.

Windows: `day` and `month` are calendar windows in UTC (a month resets at 00:00 UTC on the
1st); `minute` and `hour` are *fixed* windows aligned on the UTC clock (a requests_per_minute
counter resets at every :00 second). Fixed windows make one counter per window, so the whole
check stays a single Redis round trip; the price is the usual burst at a window edge (up to
twice the limit across two adjacent windows).

Rules come from two sources that share one id space: hand-written YAML (`source="yaml"`) and
rules generated from pricing tiers (`source="tier:<name>"`, ids `tier-<name>`), combined with
`merge_rules`.
"""

from __future__ import annotations

import calendar
import math
import re
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from decimal import ROUND_CEILING, Decimal, InvalidOperation
from typing import Any

import yaml

CONFIG_TYPE = "gateway-rate-limiting-config"
SUBJECT_KINDS = ("team", "user", "virtualaccount")
METRICS = ("requests", "tokens", "input_tokens", "output_tokens", "cost_usd")
PERIODS = ("minute", "hour", "day", "month")
# Budgets only make sense over calendar windows.
COST_PERIODS = ("day", "month")
# Metrics whose amount is only known when the call ends: held as reservations until settled.
RESERVED_METRICS = frozenset({"tokens", "input_tokens", "output_tokens", "cost_usd"})
MICROS_PER_USD = 1_000_000
# Subject of a counter for a rule without subjects (one counter for everyone).
ANY_SUBJECT = "*"
# Value of `per` for requests that lack the tag: they share one counter rather than escape.
MISSING_PER_VALUE = "-"

_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}$")
_TOP_KEYS = frozenset({"name", "type", "on_store_failure", "rules"})
_RULE_KEYS = frozenset({"id", "when", "per", "limit_to", "unit"})
_WHEN_KEYS = frozenset({"subjects", "models", "metadata"})
_FIXED_SECONDS = {"minute": 60, "hour": 3600, "day": 86400}


def _build_units() -> dict[str, tuple[str, str]]:
    units = {}
    for metric in METRICS:
        for period in COST_PERIODS if metric == "cost_usd" else PERIODS:
            units[f"{metric}_per_{period}"] = (metric, period)
    return units


UNITS: dict[str, tuple[str, str]] = _build_units()


@dataclass(frozen=True, slots=True)
class ConfigIssue:
    """One validation problem, located for the editor (line is 1-based)."""

    message: str
    line: int | None = None
    rule_id: str | None = None

    def __str__(self) -> str:
        where = []
        if self.rule_id:
            where.append(f"rule '{self.rule_id}'")
        if self.line is not None:
            where.append(f"line {self.line}")
        return f"{', '.join(where)}: {self.message}" if where else self.message


class QuotaConfigError(ValueError):
    """An invalid quota config; `issues` lists every problem with its rule id and line."""

    def __init__(self, issues: Iterable[ConfigIssue] | str) -> None:
        if isinstance(issues, str):
            issues = [ConfigIssue(issues)]
        self.issues: list[ConfigIssue] = list(issues)
        super().__init__("; ".join(str(issue) for issue in self.issues))


@dataclass(frozen=True, slots=True)
class QuotaRule:
    """One rule. `limit` is in the unit's integer amount (micro-dollars for cost units)."""

    id: str
    unit: str
    limit_to: int | Decimal
    subjects: tuple[str, ...] = ()
    models: frozenset[str] = frozenset()
    metadata: tuple[tuple[str, str], ...] = ()
    per: str | None = None  # a metadata key: one counter for each distinct value
    source: str = "yaml"
    line: int | None = None
    metric: str = field(init=False)
    period: str = field(init=False)
    limit: int = field(init=False)

    def __post_init__(self) -> None:
        metric, period = UNITS[self.unit]
        object.__setattr__(self, "metric", metric)
        object.__setattr__(self, "period", period)
        if metric == "cost_usd":
            # Budgets are counted in integer micro-dollars so the Lua arithmetic stays exact.
            micros = usd_to_micros(Decimal(str(self.limit_to)))
        else:
            micros = int(self.limit_to)
        object.__setattr__(self, "limit", micros)

    @property
    def reserved(self) -> bool:
        return self.metric in RESERVED_METRICS

    def matches_filters(self, model: str, tags: dict[str, Any]) -> bool:
        """Model and metadata conditions only (subjects are resolved by the caller)."""
        if self.models and model not in self.models:
            return False
        for key, value in self.metadata:
            if tags.get(key) != value:
                return False
        return True

    def matched_subjects(self, subject_ids: set[str] | frozenset[str]) -> list[str]:
        """The rule's subjects the caller has; `[ANY_SUBJECT]` for a rule without subjects."""
        if not self.subjects:
            return [ANY_SUBJECT]
        return [subject for subject in self.subjects if subject in subject_ids]

    def matches(
        self, subject_ids: set[str] | frozenset[str], model: str, tags: dict[str, Any]
    ) -> bool:
        return bool(self.matched_subjects(subject_ids)) and self.matches_filters(model, tags)

    def per_value(self, tags: dict[str, Any]) -> str | None:
        if self.per is None:
            return None
        value = tags.get(self.per)
        return MISSING_PER_VALUE if value in (None, "") else str(value)

    def counter_key(self, subject: str, per_value: str | None, window_start: int) -> str:
        """Counter identity: rule, matched subject, `per` value and window start (epoch s)."""
        return counter_key(self.id, subject, per_value, window_start)


def normalize_subject(subject: str) -> str:
    # Emails are compared case-insensitively (people type them both ways).
    return subject.lower() if subject.startswith("user:") and "@" in subject else subject


def subject_ids_from(
    *, team_slug: str | None, username: str, email: str, account_name: str | None
) -> frozenset[str]:
    """The subjects a caller speaks for: its team, its user (by name and by email), its
    virtual account. The proxy builds them from a key, the dry run and the portal from rows;
    parts a caller lacks are left out."""
    ids = set()
    if team_slug:
        ids.add(f"team:{team_slug}")
    if username:
        ids.add(f"user:{username}")
    if email:
        ids.add(f"user:{email.lower()}")
    if account_name:
        ids.add(f"virtualaccount:{account_name}")
    return frozenset(ids)


def counter_key(rule_id: str, subject: str, per_value: str | None, window_start: int) -> str:
    # '|' separates the parts; subjects and tag values are escaped so two different
    # identities can never produce the same key. `{q}` is a Redis Cluster hash tag: the
    # admission script touches several counters at once, so they must share a slot.
    key = f"{counter_key_prefix(rule_id)}{escape_key_part(subject)}|{window_start}"
    if per_value is not None:
        key = f"{key}|{escape_key_part(per_value)}"
    return key


def counter_key_prefix(rule_id: str) -> str:
    return f"tollgate:quota:{{q}}:{rule_id}|"


def escape_key_part(value: str) -> str:
    if "%" in value or "|" in value:
        return value.replace("%", "%25").replace("|", "%7C")
    return value


def usd_to_micros(amount: Decimal | float | int) -> int:
    """USD to integer micro-dollars, rounded up (a budget is never under-counted)."""
    value = Decimal(str(amount)) if isinstance(amount, float) else Decimal(amount)
    return int((value * MICROS_PER_USD).to_integral_value(rounding=ROUND_CEILING))


def display_amount(rule: QuotaRule, amount: int) -> int | float:
    """A counter amount as people read it: USD for budgets (counted in micro-dollars)."""
    return amount / MICROS_PER_USD if rule.metric == "cost_usd" else amount


@dataclass(frozen=True, slots=True)
class QuotaConfig:
    name: str = ""
    rules: tuple[QuotaRule, ...] = ()
    on_store_failure: str = "open"  # "open": admit when the store is down; "closed": refuse

    def rule(self, rule_id: str) -> QuotaRule | None:
        return next((rule for rule in self.rules if rule.id == rule_id), None)


# --- windows -----------------------------------------------------------------------------


def window_bounds_ts(period: str, now: float) -> tuple[int, int]:
    """(start, reset) as integer POSIX seconds for the window containing `now`."""
    seconds = _FIXED_SECONDS.get(period)
    if seconds is not None:
        start = int(now) - int(now) % seconds
        return start, start + seconds
    if period != "month":
        raise ValueError(f"unknown period {period!r}")
    moment = datetime.fromtimestamp(now, UTC)
    month_start = datetime(moment.year, moment.month, 1, tzinfo=UTC)
    days = calendar.monthrange(moment.year, moment.month)[1]
    start_ts = int(month_start.timestamp())
    return start_ts, start_ts + days * 86400


def window_bounds(unit: str, now: datetime) -> tuple[datetime, datetime]:
    """(window start, reset time) in UTC for a unit (or a bare period) at `now` (aware)."""
    if now.tzinfo is None:
        raise ValueError("now must be timezone-aware")
    period = UNITS[unit][1] if unit in UNITS else unit
    start, reset = window_bounds_ts(period, now.timestamp())
    return datetime.fromtimestamp(start, UTC), datetime.fromtimestamp(reset, UTC)


# --- parsing -----------------------------------------------------------------------------


def _line(node: yaml.Node) -> int:
    return node.start_mark.line + 1


class _Parser:
    """Walks the composed node tree so every message can carry the line of its node."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.issues: list[ConfigIssue] = []
        self._constructor = yaml.SafeLoader("")

    def error(self, node: yaml.Node | None, message: str, rule_id: str | None = None) -> None:
        self.issues.append(ConfigIssue(message, _line(node) if node else None, rule_id))

    def scalar(self, node: yaml.Node) -> Any:
        return self._constructor.construct_object(node, deep=True)

    def mapping(
        self, node: yaml.Node, what: str, allowed: frozenset[str], rule_id: str | None = None
    ) -> dict[str, tuple[yaml.Node, yaml.Node]] | None:
        if not isinstance(node, yaml.MappingNode):
            self.error(node, f"{what} must be a mapping", rule_id)
            return None
        entries: dict[str, tuple[yaml.Node, yaml.Node]] = {}
        for key_node, value_node in node.value:
            key = key_node.value if isinstance(key_node, yaml.ScalarNode) else None
            if key is None:
                self.error(key_node, f"{what}: keys must be plain names", rule_id)
            elif key in entries:
                self.error(key_node, f"{what}: duplicate key '{key}'", rule_id)
            elif allowed and key not in allowed:
                known = ", ".join(sorted(allowed))
                self.error(key_node, f"{what}: unknown key '{key}' (expected {known})", rule_id)
            else:
                entries[key] = (key_node, value_node)
        return entries

    def string_list(self, node: yaml.Node, what: str, rule_id: str) -> list[tuple[str, int]]:
        if not isinstance(node, yaml.SequenceNode):
            self.error(node, f"{what} must be a list", rule_id)
            return []
        values = []
        for item in node.value:
            value = self.scalar(item) if isinstance(item, yaml.ScalarNode) else None
            if not isinstance(value, str) or not value.strip():
                self.error(item, f"{what}: each item must be a non-empty string", rule_id)
                continue
            values.append((value.strip(), _line(item)))
        return values

    def parse(self) -> QuotaConfig:
        try:
            root = yaml.compose(self.text, Loader=yaml.SafeLoader)
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            line = mark.line + 1 if mark is not None else None
            raise QuotaConfigError([ConfigIssue(f"not valid YAML: {exc}", line)]) from None
        if root is None:
            raise QuotaConfigError("the config is empty")
        top = self.mapping(root, "the config", _TOP_KEYS)
        if top is None:
            raise QuotaConfigError(self.issues)
        name = self._top_string(top, "name", required=True)
        config_type = self._top_string(top, "type", required=True)
        if config_type is not None and config_type != CONFIG_TYPE:
            self.error(top["type"][1], f"type must be '{CONFIG_TYPE}'")
        on_failure = self._top_string(top, "on_store_failure") or "open"
        if on_failure not in ("open", "closed"):
            self.error(top["on_store_failure"][1], "on_store_failure must be 'open' or 'closed'")
        rules: list[QuotaRule] = []
        if "rules" not in top:
            self.error(root, "missing key 'rules'")
        else:
            rules_node = top["rules"][1]
            if isinstance(rules_node, yaml.ScalarNode) and self.scalar(rules_node) is None:
                pass  # `rules:` with nothing after it: no rules
            elif not isinstance(rules_node, yaml.SequenceNode):
                self.error(rules_node, "rules must be a list")
            else:
                seen: dict[str, int] = {}
                for rule_node in rules_node.value:
                    rule_id = self._rule_id(rule_node)
                    if rule_id is not None and rule_id in seen:
                        self.error(
                            rule_node,
                            f"duplicate rule id (first defined on line {seen[rule_id]})",
                            rule_id,
                        )
                        continue
                    if rule_id is not None:
                        seen[rule_id] = _line(rule_node)
                    rule = self._rule(rule_node, rule_id)
                    if rule is not None:
                        rules.append(rule)
        if self.issues:
            self.issues.sort(key=lambda issue: issue.line or 0)
            raise QuotaConfigError(self.issues)
        return QuotaConfig(name=name or "", rules=tuple(rules), on_store_failure=on_failure)

    def _top_string(self, top: dict[str, Any], key: str, required: bool = False) -> str | None:
        if key not in top:
            if required:
                self.issues.append(ConfigIssue(f"missing key '{key}'", 1))
            return None
        node = top[key][1]
        value = self.scalar(node) if isinstance(node, yaml.ScalarNode) else None
        if not isinstance(value, str) or not value:
            self.error(node, f"{key} must be a non-empty string")
            return None
        return value

    def _rule_id(self, node: yaml.Node) -> str | None:
        # Read before the rest of the rule, so every message about it can name it.
        if isinstance(node, yaml.MappingNode):
            for key_node, value_node in node.value:
                if getattr(key_node, "value", None) == "id" and isinstance(
                    value_node, yaml.ScalarNode
                ):
                    raw = self.scalar(value_node)
                    return str(raw) if raw is not None else None
        return None

    def _rule(self, node: yaml.Node, rule_id: str | None) -> QuotaRule | None:
        entries = self.mapping(node, "a rule", _RULE_KEYS, rule_id)
        if entries is None:
            return None
        before = len(self.issues)
        if rule_id is None:
            self.error(node, "a rule needs an 'id'")
        elif not _ID_RE.match(rule_id):
            self.error(
                entries["id"][1],
                "id must be 1-100 letters, digits, '_', '.' or '-', starting with a letter "
                "or digit",
                rule_id,
            )
        unit = None
        if "unit" not in entries:
            self.error(node, "missing key 'unit'", rule_id)
        else:
            unit_node = entries["unit"][1]
            unit = self.scalar(unit_node) if isinstance(unit_node, yaml.ScalarNode) else None
            if unit not in UNITS:
                self.error(
                    unit_node,
                    f"unknown unit {unit!r} (expected one of: {', '.join(UNITS)})",
                    rule_id,
                )
                unit = None
        limit = self._limit(entries, node, rule_id, unit)
        subjects: list[str] = []
        models: list[str] = []
        metadata: dict[str, str] = {}
        if "when" in entries:
            subjects, models, metadata = self._when(entries["when"][1], rule_id)
        per = None
        if "per" in entries:
            per_node = entries["per"][1]
            raw = self.scalar(per_node) if isinstance(per_node, yaml.ScalarNode) else None
            if (
                not isinstance(raw, str)
                or not raw.startswith("metadata.")
                or not raw[len("metadata.") :]
            ):
                self.error(per_node, "per must be 'metadata.<tag key>'", rule_id)
            else:
                per = raw[len("metadata.") :]
        if len(self.issues) > before or unit is None or limit is None or rule_id is None:
            return None
        return QuotaRule(
            id=rule_id,
            unit=unit,
            limit_to=limit,
            subjects=tuple(dict.fromkeys(subjects)),
            models=frozenset(models),
            metadata=tuple(sorted(metadata.items())),
            per=per,
            source="yaml",
            line=_line(node),
        )

    def _limit(
        self, entries: dict[str, Any], node: yaml.Node, rule_id: str | None, unit: str | None
    ) -> int | Decimal | None:
        if "limit_to" not in entries:
            self.error(node, "missing key 'limit_to'", rule_id)
            return None
        limit_node = entries["limit_to"][1]
        raw = self.scalar(limit_node) if isinstance(limit_node, yaml.ScalarNode) else None
        is_cost = unit is not None and UNITS[unit][0] == "cost_usd"
        if isinstance(raw, bool) or not isinstance(raw, int | float):
            self.error(limit_node, "limit_to must be a number", rule_id)
            return None
        if isinstance(raw, float) and not math.isfinite(raw):
            self.error(limit_node, "limit_to must be a finite number", rule_id)
            return None
        if raw <= 0:
            self.error(limit_node, "limit_to must be positive", rule_id)
            return None
        if is_cost:
            try:
                value = Decimal(str(raw))
            except InvalidOperation:
                self.error(limit_node, "limit_to must be a number", rule_id)
                return None
            if usd_to_micros(value) < 1:
                self.error(limit_node, "limit_to must be at least 0.000001 USD", rule_id)
                return None
            return value
        if isinstance(raw, float):
            if not raw.is_integer():
                self.error(limit_node, "limit_to must be a whole number for this unit", rule_id)
                return None
            raw = int(raw)
        return raw

    def _when(
        self, node: yaml.Node, rule_id: str | None
    ) -> tuple[list[str], list[str], dict[str, str]]:
        subjects: list[str] = []
        models: list[str] = []
        metadata: dict[str, str] = {}
        if isinstance(node, yaml.ScalarNode) and self.scalar(node) is None:
            return subjects, models, metadata  # `when:` left empty: every request
        entries = self.mapping(node, "when", _WHEN_KEYS, rule_id)
        if entries is None:
            return subjects, models, metadata
        rid = rule_id or ""
        if "subjects" in entries:
            subject_node = entries["subjects"][1]
            for subject, line in self.string_list(subject_node, "subjects", rid):
                kind, sep, name = subject.partition(":")
                if not sep or kind not in SUBJECT_KINDS or not name.strip():
                    self.issues.append(
                        ConfigIssue(
                            f"unknown subject {subject!r} (expected team:<slug>, "
                            "user:<username or email> or virtualaccount:<name>)",
                            line,
                            rule_id,
                        )
                    )
                    continue
                subjects.append(normalize_subject(f"{kind}:{name.strip()}"))
        if "models" in entries:
            models = [value for value, _ in self.string_list(entries["models"][1], "models", rid)]
        if "metadata" in entries:
            meta = self.mapping(entries["metadata"][1], "metadata", frozenset(), rule_id)
            for key, (_, value_node) in (meta or {}).items():
                value = self.scalar(value_node) if isinstance(value_node, yaml.ScalarNode) else []
                if isinstance(value, bool):
                    value = "true" if value else "false"
                if not isinstance(value, str | int | float) or value == "":
                    self.error(value_node, f"metadata.{key} must be a non-empty scalar", rule_id)
                    continue
                metadata[key] = str(value)
        return subjects, models, metadata


def parse_config(text: str) -> QuotaConfig:
    """Parse and validate YAML; raise QuotaConfigError listing every problem with its line."""
    return _Parser(text).parse()


# --- rules generated from pricing tiers --------------------------------------------------


def tier_rule_id(tier_name: str) -> str:
    slug = re.sub(r"[^A-Za-z0-9_.-]+", "-", tier_name.strip()).strip("-.").lower()
    return f"tier-{slug}"[:100]


def tier_rule(
    *, tier_name: str, monthly_tokens: int, subjects: Iterable[str], unit: str = "tokens_per_month"
) -> QuotaRule:
    """A tier's allowance as a rule over its subscribers (each subscriber its own counter)."""
    if monthly_tokens <= 0:
        raise QuotaConfigError(
            [ConfigIssue("allowance must be positive", rule_id=tier_rule_id(tier_name))]
        )
    subject_list = tuple(dict.fromkeys(normalize_subject(s) for s in subjects))
    if not subject_list:
        # A rule without subjects would cap every request; a tier without subscribers caps none.
        raise QuotaConfigError(
            [ConfigIssue("a tier rule needs subscribers", rule_id=tier_rule_id(tier_name))]
        )
    return QuotaRule(
        id=tier_rule_id(tier_name),
        unit=unit,
        limit_to=monthly_tokens,
        subjects=subject_list,
        source=f"tier:{tier_name}",
    )


def merge_rules(config: QuotaConfig, generated: Iterable[QuotaRule]) -> QuotaConfig:
    """Hand-written rules plus generated ones; ids must stay unique across both."""
    by_id = {rule.id: rule for rule in config.rules}
    merged = list(config.rules)
    issues = []
    for rule in generated:
        clash = by_id.get(rule.id)
        if clash is not None:
            issues.append(
                ConfigIssue(
                    f"id used by both {clash.source} and {rule.source}",
                    clash.line,
                    rule.id,
                )
            )
            continue
        by_id[rule.id] = rule
        merged.append(rule)
    if issues:
        raise QuotaConfigError(issues)
    return replace(config, rules=tuple(merged))
