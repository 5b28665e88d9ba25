"""Synthetic usage history for demos and benchmarks (`manage.py generate_usage`, `seed_demo`).

Rows are attributed like the gateway would: to keys, users and virtual accounts of the teams
in the database, with team and owner default tags merged under per-request tags, models
priced from the deployment or the billing catalog, a weekday/office-hours rhythm, a slow
growth, a few provider incidents, errors and streams with time to first token.
"""

from __future__ import annotations

import bisect
import datetime as dt
import json
import math
import random
from collections.abc import Iterator
from dataclasses import dataclass, field
from decimal import Decimal

from django.contrib.auth import get_user_model
from django.utils import timezone

from apps.accounts.models import ApiKey, Membership, Team, VirtualAccount
from apps.billing.models import ModelPrice
from apps.proxy.models import Deployment
from apps.usage.models import UsageRecord
from apps.usage.regions import (
    current_region,
    default_region,
    in_region,
    is_multi_region,
    ledger_atomic,
    ledger_db,
    region_or_default,
)

BATCH = 5000
FEATURES = ["search", "chat-assistant", "summarize", "classify", "extract", "translate",
            "code-review", "support-bot"]  # fmt: skip
ENVIRONMENTS = [("prod", 75), ("staging", 18), ("dev", 7)]
CUSTOMERS = [f"cust-{i:04d}" for i in range(1, 41)]
# Catalog models mixed in so the demo shows several models and providers.
CATALOG_MIX = [
    ("gpt-4o", "openai", 900, 70),
    ("gpt-4o-mini", "openai", 450, 110),
    ("claude-sonnet-4-5", "anthropic", 1100, 60),
    ("claude-haiku-4-5", "anthropic", 500, 120),
    ("embed-english-v3.0", "cohere", 60, 0),
]
# (error_type, status_code, weight)
ERRORS = [("rate_limit_error", 429, 45), ("upstream_error", 502, 25), ("timeout", 504, 12),
          ("invalid_request_error", 400, 14), ("content_filter", 400, 4)]  # fmt: skip
# Input, output, cache read and cache write per token, like gpt-4o-mini (no write premium).
SMALL_MODEL_PRICE = (1.5e-7, 6e-7, 7.5e-8, 1.5e-7)
# Providers that report prompt-cache writes apart (and bill them at a premium).
CACHE_WRITE_PROVIDERS = {"anthropic"}
BASE_ERROR_RATE = 0.02
INCIDENT_ERROR_RATE = 0.35


class UsageGenerationError(Exception):
    """The database has nothing to attribute synthetic usage to."""


@dataclass(frozen=True)
class _Subject:
    api_key_id: int | None
    lineage_id: object
    user_id: int | None
    team_id: int
    virtual_account_id: int | None
    tags: dict


@dataclass(frozen=True)
class _Model:
    name: str
    deployment: str
    provider: str
    base_ms: float
    tokens_per_s: float  # 0 for embeddings: no output, no streaming
    price_in: float
    price_out: float
    price_cached: float
    price_cache_write: float


@dataclass
class _Plan:
    subjects: list[_Subject]
    subject_cum: list[float]
    models: list[_Model]
    model_cum: list[float]
    incidents: dict[int, str] = field(default_factory=dict)  # hour index -> provider


def _cumulative(weights: list[float]) -> list[float]:
    total, out = 0.0, []
    for w in weights:
        total += w
        out.append(total)
    return out


def _subjects(rng: random.Random) -> list[_Subject]:
    teams = {t.pk: t.default_tags or {} for t in Team.objects.all()}
    subjects = []
    keyed_users = set()
    for key in ApiKey.objects.filter(revoked_at__isnull=True).select_related("virtual_account"):
        owner_tags = key.virtual_account.default_tags if key.virtual_account_id else {}
        tags = {**teams.get(key.team_id, {}), **(owner_tags or {}), **(key.default_tags or {})}
        subjects.append(
            _Subject(key.pk, key.lineage_id, key.user_id, key.team_id, key.virtual_account_id, tags)
        )
        keyed_users.add((key.user_id, key.team_id))
    for user_id, team_id in Membership.objects.values_list("user_id", "team_id"):
        if (user_id, team_id) not in keyed_users:
            subjects.append(_Subject(None, None, user_id, team_id, None, dict(teams[team_id])))
    for va in VirtualAccount.objects.filter(is_active=True):
        tags = {**teams.get(va.team_id, {}), **(va.default_tags or {})}
        subjects.append(_Subject(None, None, None, va.team_id, va.pk, tags))
    if not subjects and teams:
        user = get_user_model().objects.order_by("pk").first()
        team_id = next(iter(teams))
        subjects.append(_Subject(None, None, user.pk if user else None, team_id, None, {}))
    if not subjects:
        raise UsageGenerationError("No team in the database: run `manage.py seed_demo` first.")
    rng.shuffle(subjects)
    return subjects


def _price(name: str) -> tuple[float, float, float, float] | None:
    row = ModelPrice.objects.filter(model_name=name).order_by("-effective_from").first()
    if row is None:
        return None
    return _prices(
        row.input_cost_per_token,
        row.output_cost_per_token,
        row.cached_input_cost_per_token,
        row.cache_write_cost_per_token,
    )


def _prices(inp, out, cached, cache_write) -> tuple[float, float, float, float]:
    """Input, output, cache read and cache write prices; unset cache prices are input's."""
    return (
        float(inp),
        float(out or 0),
        float(cached if cached is not None else inp),
        float(cache_write if cache_write is not None else inp),
    )


def _models() -> list[_Model]:
    models = []
    for dep in Deployment.objects.filter(is_active=True, model__is_active=True).select_related(
        "model"
    ):
        mode = dep.model.mode
        if mode not in ("chat", "completion", "embedding"):
            continue
        if dep.input_cost_per_token is not None:
            price = _prices(dep.input_cost_per_token, dep.output_cost_per_token,
                            dep.cached_input_cost_per_token, dep.cache_write_cost_per_token)  # fmt: skip
        else:
            # The simulator's demo models have no list price: charge like a small model.
            price = _price(dep.price_model_name or dep.upstream_model) or SMALL_MODEL_PRICE
        is_chat = mode != "embedding"
        models.append(_Model(dep.model.name, dep.name, dep.provider, 400 if is_chat else 50,
                             90 if is_chat else 0, *price))  # fmt: skip
    for name, provider, base_ms, tps in CATALOG_MIX:
        price = _price(name)
        if price is not None:
            models.append(_Model(name, f"{provider}-primary", provider, base_ms, tps, *price))
    if not models:
        models.append(
            _Model("gpt-4o-mini", "openai-primary", "openai", 450, 110, *SMALL_MODEL_PRICE)
        )
    return models


def _hour_weight(moment: dt.datetime, progress: float) -> float:
    # Office hours in Europe/US (UTC 8-20) dominate; weekends run at a third; slow growth.
    hour = moment.hour + 0.5
    diurnal = 0.15 + math.exp(-(((hour - 14) / 4.5) ** 2))
    weekday = 1.0 if moment.weekday() < 5 else 0.35
    return diurnal * weekday * (0.7 + 0.6 * progress)


def _row(rng: random.Random, plan: _Plan, moment: dt.datetime, hour_index: int) -> tuple:
    subject = plan.subjects[bisect.bisect(plan.subject_cum, rng.random() * plan.subject_cum[-1])]
    model = plan.models[bisect.bisect(plan.model_cum, rng.random() * plan.model_cum[-1])]
    tags = {
        "customer_id": CUSTOMERS[min(int(rng.paretovariate(1.2)) - 1, len(CUSTOMERS) - 1)],
        "feature": rng.choice(FEATURES),
        "environment": rng.choices(ENVIRONMENTS_NAMES, ENVIRONMENT_WEIGHTS)[0],
    }
    tags.update(subject.tags)  # owner defaults win, as in the gateway
    is_chat = model.tokens_per_s > 0
    input_tokens = max(1, int(rng.lognormvariate(6.4 if is_chat else 5.5, 0.9)))
    output_tokens = max(1, int(rng.lognormvariate(5.3, 0.8))) if is_chat else 0
    cached = int(input_tokens * rng.uniform(0.3, 0.9)) if is_chat and rng.random() < 0.2 else 0
    written = 0
    if is_chat and model.provider in CACHE_WRITE_PROVIDERS and rng.random() < 0.1:
        # A prompt's first use writes the cache; part of the input, next to any read.
        written = int((input_tokens - cached) * rng.uniform(0.5, 1.0))
    is_stream = is_chat and rng.random() < 0.55
    error_rate = (
        INCIDENT_ERROR_RATE if plan.incidents.get(hour_index) == model.provider else BASE_ERROR_RATE
    )
    error_type, status = "", 200
    ttft = None
    if rng.random() < error_rate:
        error_type, status = _pick_error(rng)
        output_tokens = cached = written = 0
        input_tokens = input_tokens if status != 429 else 0
        latency = rng.uniform(30_000, 60_000) if status == 504 else rng.uniform(15, 400)
        cost = 0.0
    else:
        generation = output_tokens / model.tokens_per_s * 1000 if is_chat else 0
        latency = (model.base_ms + generation) * rng.lognormvariate(0, 0.35)
        if is_stream:
            ttft = model.base_ms * rng.lognormvariate(-0.3, 0.4)
            latency = max(latency, ttft + 1)
        cost = (
            (input_tokens - cached - written) * model.price_in
            + cached * model.price_cached
            + written * model.price_cache_write
            + output_tokens * model.price_out
        )
    overhead = rng.uniform(0.4, 3.0)
    return (
        f"gen_{rng.getrandbits(96):024x}",
        moment,
        subject.api_key_id,
        subject.lineage_id,
        subject.user_id,
        subject.team_id,
        subject.virtual_account_id,
        model.name,
        model.deployment,
        model.provider,
        "chat" if is_chat else "embedding",
        is_stream,
        status,
        error_type,
        input_tokens,
        output_tokens,
        cached,
        written,
        Decimal(f"{cost:.10f}"),
        round(latency, 2),
        None if ttft is None else round(ttft, 2),
        round(max(latency - overhead, 0), 2),
        round(overhead, 3),
        tags,
    )


ENVIRONMENTS_NAMES = [name for name, _ in ENVIRONMENTS]
ENVIRONMENT_WEIGHTS = [w for _, w in ENVIRONMENTS]
_ERROR_CUM = _cumulative([w for *_, w in ERRORS])

COLUMNS = (
    "request_id", "created_at", "api_key_id", "key_lineage_id", "user_id", "team_id",
    "virtual_account_id", "model", "deployment", "provider", "request_type", "is_stream",
    "status_code", "error_type", "input_tokens", "output_tokens", "cached_tokens",
    "cache_write_tokens", "cost_usd", "latency_ms", "ttft_ms", "upstream_latency_ms",
    "overhead_ms", "tags",
)  # fmt: skip


def _pick_error(rng: random.Random) -> tuple[str, int]:
    error_type, status, _ = ERRORS[bisect.bisect(_ERROR_CUM, rng.random() * _ERROR_CUM[-1])]
    return error_type, status


def _rows(*, rows: int, days: int, seed: int | None, now: dt.datetime) -> Iterator[tuple]:
    """Reads the tenancy and prices now, then yields rows lazily (see `_generate`)."""
    rng = random.Random(seed)  # noqa: S311 -- synthetic data, not secrets
    # Eager on purpose: rows are consumed inside a COPY, and a query on the same connection
    # during a COPY would wait forever on the connection's lock.
    subjects = _subjects(rng)
    models = _models()
    return _generate(rng, subjects, models, rows=rows, days=days, now=now)


def _generate(
    rng: random.Random, subjects: list[_Subject], models: list[_Model], *, rows: int, days: int,
    now: dt.datetime,
) -> Iterator[tuple]:  # fmt: skip
    # Zipf-like: a few subjects and models carry most of the traffic.
    plan = _Plan(
        subjects=subjects,
        subject_cum=_cumulative([1 / (i + 1) ** 0.8 for i in range(len(subjects))]),
        models=models,
        model_cum=_cumulative([1 / (i + 1) ** 0.6 for i in range(len(models))]),
    )
    start = (now - dt.timedelta(days=days)).replace(minute=0, second=0, microsecond=0)
    hours = [start + dt.timedelta(hours=h) for h in range(days * 24 + 1)]
    span = max(len(hours) - 1, 1)
    hour_cum = _cumulative([_hour_weight(m, i / span) for i, m in enumerate(hours)])
    providers = sorted({m.provider for m in models})
    for _ in range(max(1, days // 10)):
        first = rng.randrange(len(hours))
        provider = rng.choice(providers)
        for h in range(first, min(first + rng.randint(1, 3), len(hours))):
            plan.incidents[h] = provider
    picks = sorted(bisect.bisect(hour_cum, rng.random() * hour_cum[-1]) for _ in range(rows))
    for index in picks:
        index = min(index, len(hours) - 1)
        moment = min(hours[index] + dt.timedelta(seconds=rng.random() * 3600), now)
        yield _row(rng, plan, moment, index)


def _bulk_insert(rows: Iterator[tuple], inserted_at: dt.datetime) -> int:
    written = 0
    batch: list[UsageRecord] = []
    region = current_region()
    for values in rows:
        batch.append(
            UsageRecord(
                **dict(zip(COLUMNS, values, strict=True)), inserted_at=inserted_at, region=region
            )
        )
        if len(batch) >= BATCH:
            UsageRecord.objects.bulk_create(batch)
            written += len(batch)
            batch = []
    if batch:
        UsageRecord.objects.bulk_create(batch)
        written += len(batch)
    return written


def _copy_insert(rows: Iterator[tuple], inserted_at: dt.datetime) -> int:
    """PostgreSQL COPY: roughly ten times faster than INSERTs for a million rows."""
    meta = UsageRecord._meta
    columns = [meta.get_field(name).column for name in COLUMNS]
    defaults = {"end_user": "", "tokens_estimated": False, "attempts": 1,
                "client_disconnected": False, "inserted_at": inserted_at}  # fmt: skip
    quote = ledger_db.ops.quote_name
    names = ", ".join(quote(c) for c in [*columns, *defaults, "region"])
    sql = f"COPY {quote(meta.db_table)} ({names}) FROM STDIN"
    region = current_region()
    written = 0
    with ledger_db.cursor() as cursor, cursor.cursor.copy(sql) as copy:
        for values in rows:
            *head, tags = values
            copy.write_row((*head, json.dumps(tags), *defaults.values(), region))
            written += 1
    return written


def usage_generate(*, rows: int, days: int, seed: int | None = None, use_copy: bool = True) -> int:
    """Write `rows` synthetic usage rows spread over the last `days` days; returns the count."""
    if rows <= 0 or days <= 0:
        return 0
    now = timezone.now()
    generated = _rows(rows=rows, days=days, seed=seed, now=now)
    if not is_multi_region():
        return _insert(generated, now, use_copy)
    # Each row goes to its team's region, as the gateway's writer would put it. The rows are
    # held in memory to be split: a demo's size, not a benchmark's.
    regions = {
        team_id: region_or_default(region)
        for team_id, region in Team.objects.values_list("pk", "data_region")
    }
    team_at = COLUMNS.index("team_id")
    by_region: dict[str, list[tuple]] = {}
    for values in generated:
        by_region.setdefault(regions.get(values[team_at], default_region()), []).append(values)
    written = 0
    for region, region_rows in by_region.items():
        with in_region(region):
            written += _insert(iter(region_rows), now, use_copy)
    return written


def _insert(rows: Iterator[tuple], now: dt.datetime, use_copy: bool) -> int:
    """Into the current region's ledger, in one transaction."""
    with ledger_atomic():
        if use_copy and ledger_db.vendor == "postgresql":
            return _copy_insert(rows, now)
        return _bulk_insert(rows, now)
