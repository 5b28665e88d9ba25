"""The quota check on the hot path: match rules, admit through the counter store, settle.

`QuotaEngine.check` evaluates every matching rule (not just the first) in one store round
trip and returns an `Admission`: allowed or not, every broken rule, and rate-limit headers
for the tightest rule. `settle` replaces the token and cost reservations by actual usage.

The engine holds a compiled snapshot of the active config; `load` swaps it with a single
attribute assignment, so a reload never disturbs checks in flight.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from typing import TYPE_CHECKING, Any

from .counters import (
    AsyncRedisCounterStore,
    CounterCheck,
    CounterStore,
    CounterStoreUnavailable,
    MemoryCounterStore,
    Reservation,
)
from .rules import (
    ANY_SUBJECT,
    QuotaConfig,
    QuotaConfigError,
    QuotaRule,
    counter_key_prefix,
    display_amount,
    escape_key_part,
    merge_rules,
    parse_config,
    subject_ids_from,
    usd_to_micros,
    window_bounds_ts,
)

if TYPE_CHECKING:
    from apps.proxy.auth import KeyInfo

logger = logging.getLogger(__name__)

DEFAULT_MAX_OUTPUT_TOKENS = 4096
# Counters outlive their window a little so "used today" can still be read at the reset.
COUNTER_GRACE_SECONDS = 600


@dataclass(slots=True)
class Admission:
    """The outcome of one check.

    `status` is 200 when allowed, 429 when a rule is exceeded (`code="quota_exceeded"`), 503
    when the counter store is down and the config says `on_store_failure: closed`
    (`code="quota_store_unavailable"`). `degraded` marks an admission made without checking.
    """

    allowed: bool
    broken: list[dict[str, Any]] = field(default_factory=list)
    headers: dict[str, str] = field(default_factory=dict)
    reservation: Reservation | None = None
    status: int = 200
    code: str | None = None
    message: str = ""
    degraded: bool = False
    # The metric of each reserved counter, aligned with reservation.checks.
    reserved_metrics: tuple[str, ...] = ()

    def error_extra(self) -> dict[str, Any]:
        """Machine-readable part of the 429 body (beside message/type/code)."""
        return {"broken_rules": self.broken} if self.broken else {}


_FAMILIES = {
    "requests": "requests",
    "tokens": "tokens",
    "input_tokens": "tokens",
    "output_tokens": "tokens",
    "cost_usd": "",  # budgets are reported in the error body, not in rate-limit headers
}


class _Entry:
    """A rule prepared for the hot path: filters, key prefix and unit facts precomputed."""

    __slots__ = (
        "accepts",
        "family",
        "filtered",
        "key_prefix",
        "limit",
        "metric",
        "per",
        "period",
        "position",
        "reserve",
        "rule",
    )

    def __init__(self, position: int, rule: QuotaRule) -> None:
        self.position = position
        self.rule = rule
        # Bound once: the rule's own model and metadata test, without a lookup per request.
        self.accepts = rule.matches_filters
        self.filtered = bool(rule.models or rule.metadata)
        self.key_prefix = counter_key_prefix(rule.id)
        self.metric = rule.metric
        self.period = rule.period
        self.limit = rule.limit
        self.reserve = rule.reserved
        self.family = _FAMILIES[rule.metric]
        self.per = rule.per


@dataclass(frozen=True, slots=True)
class _Compiled:
    config: QuotaConfig
    # subject id -> (entry, subject as escaped in counter keys) for each rule listing it
    by_subject: dict[str, tuple[tuple[_Entry, str], ...]]
    everyone: tuple[_Entry, ...]


def _compile(config: QuotaConfig) -> _Compiled:
    by_subject: dict[str, list[tuple[_Entry, str]]] = {}
    everyone = []
    for position, rule in enumerate(config.rules):
        entry = _Entry(position, rule)
        if not rule.subjects:
            everyone.append(entry)
        for subject in rule.subjects:
            by_subject.setdefault(subject, []).append((entry, escape_key_part(subject)))
    return _Compiled(
        config=config,
        by_subject={subject: tuple(entries) for subject, entries in by_subject.items()},
        everyone=tuple(everyone),
    )


def _position_and_subject(item: tuple[Any, ...]) -> tuple[int, str]:
    return item[0], item[1]


def subject_ids_for(key_info: KeyInfo) -> frozenset[str]:
    """The subjects a key speaks for: its team, its user (by name and email), its account."""
    return subject_ids_from(
        team_slug=key_info.team_slug,
        username=key_info.username,
        email=key_info.user_email,
        account_name=key_info.virtual_account_name,
    )


def _iso(ts: int) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _duration(seconds: int) -> str:
    """OpenAI's reset format (Go durations): '45s', '6m0s', '23h59m59s'."""
    hours, rest = divmod(max(0, seconds), 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h{minutes}m{secs}s"
    if minutes:
        return f"{minutes}m{secs}s"
    return f"{secs}s"


# What `reload` compares: (stored version, generated rule stamps); callers may pass an int.
ConfigVersion = int | tuple[int | None, tuple[Any, ...]] | None


class QuotaEngine:
    def __init__(
        self,
        config: QuotaConfig | None = None,
        store: CounterStore | None = None,
        *,
        default_max_output_tokens: int = DEFAULT_MAX_OUTPUT_TOKENS,
        clock: Callable[[], float] = time.time,
        version: ConfigVersion = None,
    ) -> None:
        self.store: CounterStore = store if store is not None else MemoryCounterStore()
        self.default_max_output_tokens = default_max_output_tokens
        self._clock = clock
        self._compiled = _compile(config or QuotaConfig())
        self._windows: dict[str, tuple[int, int]] = {}
        self.version = version
        # Store outages by outcome ("open" admitted unchecked, "closed" refused): for metrics.
        self.store_failures: Counter[str] = Counter()

    @property
    def config(self) -> QuotaConfig:
        return self._compiled.config

    def load(self, config: QuotaConfig, version: ConfigVersion = None) -> None:
        self._compiled = _compile(config)
        self.version = version

    async def refresh(self) -> bool:
        """Load the active stored config if it or a generated rule source changed.

        One small query per source; call it every second or so off the request path. A
        stored version that no longer parses keeps the current rules. Generated rules (for
        instance a hard-capped pricing tier's monthly allowance) come from the async
        callables named in settings.QUOTA_GENERATED_RULE_SOURCES, each returning
        (stamp, rules); they are merged over the hand-written YAML.
        """
        from django.conf import settings
        from django.utils.module_loading import import_string

        from .models import QuotaConfigVersion  # the app registry must be ready

        row = await (
            QuotaConfigVersion.objects.filter(is_active=True).values_list("version").afirst()
        )
        stored_version = row[0] if row else None
        generated: list[QuotaRule] = []
        stamps = []
        for path in getattr(settings, "QUOTA_GENERATED_RULE_SOURCES", ()):
            stamp, rules = await import_string(path)()
            stamps.append(stamp)
            generated.extend(rules)
        version = (stored_version, tuple(stamps))
        if version == self.version:
            return False
        if self.version is None and stored_version is None and not generated:
            self.version = version  # still no rules at all: nothing to reload
            return False
        text = ""
        if stored_version is not None:
            text = await (
                QuotaConfigVersion.objects.filter(version=stored_version)
                .values_list("yaml_text", flat=True)
                .aget()
            )
        try:
            config = parse_config(text) if text else QuotaConfig()
            if generated:
                config = merge_rules(config, generated)
        except QuotaConfigError:
            logger.exception(
                "stored quota config version %s does not parse; keeping rules", stored_version
            )
            self.version = version
            return False
        self.load(config, version)
        return True

    def _match(
        self, subject_ids: set[str] | frozenset[str], model: str, tags: dict[str, Any]
    ) -> list[Any]:
        compiled = self._compiled
        found: list[tuple[int, str, str, _Entry]] = []
        for subject in subject_ids:
            hits = compiled.by_subject.get(subject)
            if hits is None:
                continue
            for entry, escaped in hits:
                if not entry.filtered or entry.accepts(model, tags):
                    found.append((entry.position, subject, escaped, entry))
        for entry in compiled.everyone:
            if not entry.filtered or entry.accepts(model, tags):
                found.append((entry.position, ANY_SUBJECT, ANY_SUBJECT, entry))
        if len(found) > 1:
            # Config order, whatever the set's order: stable broken lists and headers.
            found.sort(key=_position_and_subject)
        return found

    def matching(
        self, subject_ids: set[str] | frozenset[str], model: str, tags: dict[str, Any]
    ) -> list[tuple[QuotaRule, str]]:
        """(rule, matched subject) for every matching rule, in config order."""
        return [
            (entry.rule, subject) for _, subject, _, entry in self._match(subject_ids, model, tags)
        ]

    def _window(self, period: str, now: float) -> tuple[int, int]:
        # Cached across checks: bounds only change when a window rolls over.
        bounds = self._windows.get(period)
        if bounds is None or not bounds[0] <= now < bounds[1]:
            bounds = self._windows[period] = window_bounds_ts(period, now)
        return bounds

    async def check(
        self,
        *,
        subject_ids: set[str] | frozenset[str],
        model: str,
        tags: dict[str, Any],
        request_tokens_estimate: int,
        max_output_tokens: int | None = None,
        cost_estimate_usd: Decimal | float | Callable[[], Decimal] | None = None,
    ) -> Admission:
        matched = self._match(subject_ids, model, tags)
        if not matched:
            return Admission(True)
        now = self._clock()
        input_tokens = max(0, int(request_tokens_estimate))
        output_tokens = (
            self.default_max_output_tokens
            if max_output_tokens is None
            else max(0, max_output_tokens)
        )
        # At least 1 so a spent budget refuses even a request estimated at nothing.
        amounts = {
            "requests": 1,
            "tokens": max(1, input_tokens + output_tokens),
            "input_tokens": max(1, input_tokens),
            "output_tokens": max(1, output_tokens),
        }
        checks: list[CounterCheck] = []
        plan: list[tuple[_Entry, str, str | None, int, int]] = []
        reserved_metrics: list[str] = []
        for _, subject, escaped, entry in matched:
            start, reset = self._window(entry.period, now)
            amount = amounts.get(entry.metric)
            if amount is None:  # cost: priced only when a budget rule matches
                if callable(cost_estimate_usd):
                    cost_estimate_usd = cost_estimate_usd()
                amount = amounts["cost_usd"] = max(1, usd_to_micros(cost_estimate_usd or 0))
            key = f"{entry.key_prefix}{escaped}|{start}"
            per_value = None
            if entry.per is not None:
                per_value = entry.rule.per_value(tags)
                key = f"{key}|{escape_key_part(per_value)}"
            checks.append(
                CounterCheck(
                    key,
                    entry.limit,
                    amount,
                    int(reset - now) + COUNTER_GRACE_SECONDS,
                    entry.reserve,
                )
            )
            plan.append((entry, subject, per_value, start, reset))
            if entry.reserve:
                reserved_metrics.append(entry.metric)
        try:
            result = await self.store.admit(checks)
        except CounterStoreUnavailable as exc:
            return self._store_down(exc)
        if result.allowed:
            return Admission(
                True,
                headers=self._headers(plan, checks, result.used, now, admitted=True),
                reservation=result.reservation,
                reserved_metrics=tuple(reserved_metrics),
            )
        broken: list[dict[str, Any]] = []
        for (entry, subject, per_value, _, reset), check, used in zip(
            plan, checks, result.used, strict=True
        ):
            if used + check.amount > check.limit:
                rule = entry.rule
                item: dict[str, Any] = {
                    "rule": rule.id,
                    "subject": subject,
                    "unit": rule.unit,
                    "limit": display_amount(rule, rule.limit),
                    "used": display_amount(rule, used),
                    "requested": display_amount(rule, check.amount),
                    "reset": _iso(reset),
                }
                if rule.per is not None:
                    item["per"] = {rule.per: per_value}
                broken.append(item)
        ids = ", ".join(dict.fromkeys(item["rule"] for item in broken))
        return Admission(
            False,
            broken=broken,
            headers=self._headers(plan, checks, result.used, now, admitted=False),
            status=429,
            code="quota_exceeded",
            message=f"Quota exceeded: rule {ids}. See error.broken_rules for limits and resets.",
        )

    def _store_down(self, exc: BaseException) -> Admission:
        mode = self._compiled.config.on_store_failure
        self.store_failures[mode] += 1
        logger.warning("quota counter store unavailable (%s); failing %s", exc, mode)
        if mode == "closed":
            return Admission(
                False,
                status=503,
                code="quota_store_unavailable",
                message="Quotas cannot be checked right now (counter store unreachable) and "
                "this gateway refuses unchecked requests; retry shortly.",
                headers={"retry-after": "1"},
            )
        return Admission(True, degraded=True)

    @staticmethod
    def _headers(
        plan: list[Any],
        checks: list[CounterCheck],
        used: tuple[int, ...],
        now: float,
        *,
        admitted: bool,
    ) -> dict[str, str]:
        # Per family (requests, tokens), the rule that will refuse first: least remaining,
        # and on a tie the later reset. On refusal, the broken rule that resets last.
        tightest: dict[str, tuple[Any, ...]] = {}
        latest_broken: tuple[Any, ...] | None = None
        for (entry, _, _, start, reset), check, value in zip(plan, checks, used, strict=True):
            remaining = check.limit - value
            if remaining < 0:
                remaining = 0
            wait = math.ceil(reset - now) or 1
            if not admitted and value + check.amount > check.limit:
                if latest_broken is None or wait > latest_broken[0]:
                    latest_broken = (wait, entry.rule, remaining, reset - start)
            family = entry.family
            if family:
                best = tightest.get(family)
                if best is None or remaining < best[0] or (remaining == best[0] and wait > best[1]):
                    tightest[family] = (remaining, wait, entry.rule, reset - start)
        headers: dict[str, str] = {}
        for family, (remaining, wait, rule, _) in tightest.items():
            headers[f"x-ratelimit-limit-{family}"] = str(rule.limit)
            headers[f"x-ratelimit-remaining-{family}"] = str(remaining)
            headers[f"x-ratelimit-reset-{family}"] = _duration(wait)
        if latest_broken is not None:
            wait, rule, remaining, window = latest_broken
            headers["retry-after"] = str(wait)
        elif tightest:
            # The IETF fields name one policy: the family closest to its limit.
            remaining, wait, rule, window = min(
                tightest.values(), key=lambda item: item[0] / max(1, item[2].limit)
            )
        else:
            return headers
        headers["RateLimit-Policy"] = f'"{rule.id}";q={rule.limit};w={window}'
        headers["RateLimit"] = f'"{rule.id}";r={remaining};t={wait}'
        return headers

    async def settle(
        self,
        admission: Admission,
        *,
        input_tokens: int,
        output_tokens: int,
        cost_usd: Decimal | float | None = None,
    ) -> None:
        """Replace the admission's reservations by actual usage (once; later calls no-op)."""
        reservation = admission.reservation
        if reservation is None:
            return
        admission.reservation = None
        input_tokens = max(0, int(input_tokens))
        output_tokens = max(0, int(output_tokens))
        actual = []
        for metric in admission.reserved_metrics:
            if metric == "tokens":
                actual.append(input_tokens + output_tokens)
            elif metric == "input_tokens":
                actual.append(input_tokens)
            elif metric == "output_tokens":
                actual.append(output_tokens)
            else:
                actual.append(usd_to_micros(cost_usd or 0))
        try:
            # Shielded: a client disconnect cancelling the request must not lose the usage.
            await asyncio.shield(self.store.settle(reservation, actual))
        except CounterStoreUnavailable as exc:
            # The reservation stays counted until it expires; the actual usage is lost
            # from the counters (the usage records still have it).
            logger.warning("quota settle failed (%s); reservation %s expires", exc, reservation.id)


def store_from_settings() -> CounterStore:
    """Redis counters when REDIS_URL is set, in-process counters in embedded mode."""
    from django.conf import settings  # keeps this module importable bare

    ttl = float(getattr(settings, "QUOTA_RESERVATION_TTL", 600))
    if getattr(settings, "REDIS_URL", ""):
        return AsyncRedisCounterStore(settings.REDIS_URL, reservation_ttl=ttl)
    return MemoryCounterStore(reservation_ttl=ttl)


_engine: QuotaEngine | None = None


def get_quota_engine() -> QuotaEngine:
    """This process's engine (rules empty until the first `refresh`)."""
    global _engine
    if _engine is None:
        from django.conf import settings

        _engine = QuotaEngine(
            store=store_from_settings(),
            default_max_output_tokens=int(
                getattr(settings, "QUOTA_DEFAULT_MAX_OUTPUT_TOKENS", DEFAULT_MAX_OUTPUT_TOKENS)
            ),
        )
    return _engine
