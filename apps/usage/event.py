"""The usage event: what the proxy knows about one finished request, before it is a row.

It travels through the usage buffer (a Redis stream, an in-process queue or a spool file) as
JSON, so it must survive a round trip exactly: money as a decimal string, times as ISO 8601.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass, field, fields
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import orjson

from apps.usage.capture import clamp_token_count, clean_json, clean_tags, clean_text
from apps.usage.models import UsageRecord
from apps.usage.regions import region_or_default

# The cost column is DecimalField(decimal_places=10); quantizing here keeps the buffered
# value identical to what the database will store.
COST_QUANTUM = Decimal("1e-10")


def _utcnow() -> datetime:
    return datetime.now(UTC)


@dataclass(kw_only=True, slots=True)
class UsageEvent:
    """One proxied request's usage, mirroring `UsageRecord` field by field."""

    request_id: str = field(default_factory=UsageRecord.new_request_id)
    created_at: datetime = field(default_factory=_utcnow)
    api_key_id: int | None = None
    key_lineage_id: str | None = None
    user_id: int | None = None
    team_id: int | None = None
    virtual_account_id: int | None = None
    end_user: str = ""
    model: str
    deployment: str = ""
    provider: str = ""
    request_type: str
    is_stream: bool = False
    status_code: int
    error_type: str = ""
    input_tokens: int = 0
    output_tokens: int = 0
    cached_tokens: int = 0
    cache_write_tokens: int = 0
    tokens_estimated: bool = False
    usage_suspect: bool = False
    cost_usd: Decimal = Decimal(0)
    latency_ms: float = 0.0
    ttft_ms: float | None = None
    upstream_latency_ms: float | None = None
    overhead_ms: float | None = None
    attempts: int = 1
    client_disconnected: bool = False
    tags: dict[str, Any] = field(default_factory=dict)
    request_body: Any = None
    response_body: Any = None
    region: str = ""

    def __post_init__(self) -> None:
        if self.created_at.tzinfo is None:
            raise ValueError("UsageEvent.created_at must be timezone-aware (UTC)")
        self.created_at = self.created_at.astimezone(UTC)
        if not isinstance(self.cost_usd, Decimal):
            # A float cost would carry binary noise into the bill; go through str.
            self.cost_usd = Decimal(str(self.cost_usd))
        if self.key_lineage_id is not None:
            self.key_lineage_id = str(self.key_lineage_id)

    def to_json(self) -> bytes:
        # Built by hand and dumped with orjson: this runs once per request on the hot path,
        # where dataclasses.asdict (a deep copy) and json.dumps cost several times more.
        data = {name: getattr(self, name) for name in _FIELD_NAMES}
        data["created_at"] = self.created_at.isoformat()
        data["cost_usd"] = str(self.cost_usd)
        return orjson.dumps(data, default=str)

    @classmethod
    def from_json(cls, raw: bytes | str) -> UsageEvent:
        """The event in `raw`; ValueError for anything that is not one, whatever is wrong."""
        try:
            return cls._from_json(raw)
        except (TypeError, KeyError, ArithmeticError, AttributeError) as exc:
            # Decimal("abc") raises InvalidOperation (an ArithmeticError), a missing field
            # KeyError: callers set unreadable entries aside on ValueError alone.
            raise ValueError(f"not a usage event: {exc!r}") from exc

    @classmethod
    def _from_json(cls, raw: bytes | str) -> UsageEvent:
        try:
            data = orjson.loads(raw)
        except orjson.JSONDecodeError:
            # orjson refuses what json accepts at the edges (integers beyond 64 bits, NaN);
            # such an event is still read, and normalised like any other.
            data = json.loads(raw)
        if not isinstance(data, dict):
            raise ValueError("a usage event is a JSON object")
        # Ignore keys this version does not know, so a rolling upgrade that adds a field
        # does not strand events written by the newer code.
        data = {k: v for k, v in data.items() if k in _FIELD_SET}
        created_at = datetime.fromisoformat(data["created_at"])
        if created_at.tzinfo is None:
            created_at = created_at.replace(tzinfo=UTC)
        data["created_at"] = created_at
        data["cost_usd"] = Decimal(data.get("cost_usd") or "0")
        return cls(**data)

    def to_row(self) -> dict[str, Any]:
        """The row's column values, normalised (see `apps.usage.capture`).

        Normalising here, in the writer's thread, rather than on the request path keeps the
        proxy fast, and also cleans events buffered before a fix was deployed.
        """
        input_tokens, bad_input = clamp_token_count(self.input_tokens)
        output_tokens, bad_output = clamp_token_count(self.output_tokens)
        cached_tokens, bad_cached = clamp_token_count(self.cached_tokens)
        cache_write_tokens, bad_write = clamp_token_count(self.cache_write_tokens)
        bad = bad_input or bad_output or bad_cached or bad_write
        return {
            "request_id": clean_text(self.request_id, 64),
            "created_at": self.created_at,
            "api_key_id": self.api_key_id,
            "key_lineage_id": uuid.UUID(self.key_lineage_id) if self.key_lineage_id else None,
            "user_id": self.user_id,
            "team_id": self.team_id,
            "virtual_account_id": self.virtual_account_id,
            "end_user": clean_text(self.end_user, 256),
            "model": clean_text(self.model, 200),
            "deployment": clean_text(self.deployment, 200),
            "provider": clean_text(self.provider, 20),
            "request_type": clean_text(self.request_type, 20),
            "is_stream": bool(self.is_stream),
            "status_code": self.status_code,
            "error_type": clean_text(self.error_type, 64),
            "input_tokens": input_tokens,
            "output_tokens": output_tokens,
            "cached_tokens": cached_tokens,
            "cache_write_tokens": cache_write_tokens,
            "tokens_estimated": bool(self.tokens_estimated),
            "usage_suspect": bool(self.usage_suspect or bad),
            "cost_usd": self.cost_usd.quantize(COST_QUANTUM),
            "latency_ms": self.latency_ms,
            "ttft_ms": self.ttft_ms,
            "upstream_latency_ms": self.upstream_latency_ms,
            "overhead_ms": self.overhead_ms,
            "attempts": self.attempts,
            "client_disconnected": bool(self.client_disconnected),
            "tags": clean_tags(self.tags),
            "request_body": clean_json(self.request_body),
            "response_body": clean_json(self.response_body),
            # Blank on events buffered before regions existed: those are the default's.
            "region": region_or_default(self.region),
        }

    def to_record(self) -> UsageRecord:
        """An unsaved, normalised row."""
        return UsageRecord(**self.to_row())


_FIELD_NAMES = tuple(f.name for f in fields(UsageEvent))
_FIELD_SET = frozenset(_FIELD_NAMES)
