"""Usage reads for the export API and chargebacks: grouped metrics and raw rows.

Every read takes the caller's `apps.usage.scope.UsageScope` explicitly. Grouping runs in the
database on PostgreSQL (one GROUP BY; `tags->>'key'` for tag dimensions; `percentile_cont`
for latency percentiles). SQLite (embedded mode) groups in Python: it has no
percentile_cont and sums decimals as floats.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import math
from collections.abc import Iterator
from dataclasses import dataclass, field
from decimal import Decimal

from django.conf import settings
from django.contrib.auth import get_user_model
from django.core import signing
from django.db import connection
from django.db.models import Aggregate, Count, FloatField, Q, QuerySet, Sum
from django.db.models.functions import TruncDay, TruncHour, TruncMonth
from django.utils import timezone

from apps.accounts.models import Team, VirtualAccount
from apps.billing.exceptions import UsageQueryError
from apps.billing.usage_query import Dim, UsageQuery
from apps.usage.models import UsageRecord
from apps.usage.scope import UsageScope
from apps.usage.tags import TagText, tag_equals

PERCENTILES = (("latency_p50_ms", 0.5), ("latency_p90_ms", 0.9), ("latency_p99_ms", 0.99))
_TRUNC = {"hour": TruncHour, "day": TruncDay, "month": TruncMonth}
MAX_PAGE = 50_000


class PercentileCont(Aggregate):
    """PostgreSQL `percentile_cont(f) WITHIN GROUP (ORDER BY expr)` (continuous, interpolated)."""

    function = "percentile_cont"
    template = "%(function)s(%(fraction)s) WITHIN GROUP (ORDER BY %(expressions)s)"
    output_field = FloatField()

    def __init__(self, expression, fraction: float, **extra):
        # A float from our own constants, never from a request: safe to inline in SQL.
        super().__init__(expression, fraction=repr(float(fraction)), **extra)


def _filtered(*, scope: UsageScope, query: UsageQuery) -> QuerySet[UsageRecord]:
    scope.check_filters(
        team_ids=query.team_ids,
        user_ids=query.user_ids,
        virtual_account_ids=query.virtual_account_ids,
    )
    rows = scope.filter(UsageRecord.objects.order_by())
    if query.team_ids:
        rows = rows.filter(team_id__in=query.team_ids)
    if query.start is not None:
        rows = rows.filter(created_at__gte=query.start)
    if query.end is not None:
        rows = rows.filter(created_at__lt=query.end)
    if query.user_ids:
        rows = rows.filter(user_id__in=query.user_ids)
    if query.virtual_account_ids:
        rows = rows.filter(virtual_account_id__in=query.virtual_account_ids)
    if query.models:
        rows = rows.filter(model__in=query.models)
    status = Q()
    if query.status_codes:
        status |= Q(status_code__in=query.status_codes)
    if query.status_range:
        status |= Q(status_code__gte=query.status_range[0], status_code__lt=query.status_range[1])
    if status:
        rows = rows.filter(status)
    for key, value in query.tags:
        rows = rows.filter(tag_equals(key, value))
    return rows


# --- Grouped metrics --------------------------------------------------------------------


@dataclass
class _Acc:
    requests: int = 0
    errors: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    cached_tokens: int = 0
    cost_usd: Decimal = Decimal(0)
    latencies: list[float] = field(default_factory=list)


def _percentile(sorted_values: list[float], fraction: float) -> float | None:
    """Linear interpolation between closest ranks, as PostgreSQL's percentile_cont."""
    if not sorted_values:
        return None
    pos = (len(sorted_values) - 1) * fraction
    low, high = math.floor(pos), math.ceil(pos)
    return sorted_values[low] + (sorted_values[high] - sorted_values[low]) * (pos - low)


def _truncate(moment: dt.datetime, granularity: str) -> dt.datetime:
    moment = moment.astimezone(dt.UTC)
    if granularity == "hour":
        return moment.replace(minute=0, second=0, microsecond=0)
    if granularity == "day":
        return moment.replace(hour=0, minute=0, second=0, microsecond=0)
    return moment.replace(day=1, hour=0, minute=0, second=0, microsecond=0)


def _dim_aliases(dims: tuple[Dim, ...]) -> tuple[list[str], dict]:
    names, annotations = [], {}
    for i, dim in enumerate(dims):
        if dim.tag:
            annotations[f"_g{i}"] = TagText(dim.tag)
            names.append(f"_g{i}")
        else:
            names.append(dim.column)
    return names, annotations


def _grouped_sql(rows: QuerySet, query: UsageQuery) -> Iterator[tuple[tuple, dict]]:
    names, annotations = _dim_aliases(query.group_by)
    if query.granularity:
        annotations["_period"] = _TRUNC[query.granularity]("created_at", tzinfo=dt.UTC)
        names = ["_period", *names]
    metrics = {
        "requests": Count("pk"),
        "errors": Count("pk", filter=Q(status_code__gte=400)),
        "input_tokens": Sum("input_tokens"),
        "output_tokens": Sum("output_tokens"),
        "cached_tokens": Sum("cached_tokens"),
        "cost_usd": Sum("cost_usd"),
    }
    if "latency" in query.metrics:
        metrics.update({name: PercentileCont("latency_ms", f) for name, f in PERCENTILES})
    grouped = rows.annotate(**annotations).values(*names).annotate(**metrics).order_by(*names)
    if not names:
        grouped = [rows.aggregate(**metrics)]
        if not grouped[0]["requests"]:
            return
    else:
        # Server-side cursor: a chargeback over millions of groups never sits in memory.
        grouped = grouped.iterator(chunk_size=2000)
    for row in grouped:
        key = tuple(row[name] for name in names)
        yield key, row


def _grouped_python(rows: QuerySet, query: UsageQuery) -> Iterator[tuple[tuple, dict]]:
    want_latency = "latency" in query.metrics
    columns = [dim.column for dim in query.group_by if dim.column]
    accs: dict[tuple, _Acc] = {}
    fields = ["created_at", "tags", "status_code", "input_tokens", "output_tokens"]
    fields += ["cached_tokens", "cost_usd", "latency_ms", *columns]
    for values in rows.values_list(*fields).iterator(chunk_size=5000):
        row = dict(zip(fields, values, strict=True))
        tags = row["tags"] if isinstance(row["tags"], dict) else {}
        key = tuple(
            row[dim.column] if dim.column else _tag_text(tags.get(dim.tag))
            for dim in query.group_by
        )
        if query.granularity:
            key = (_truncate(row["created_at"], query.granularity), *key)
        acc = accs.get(key)
        if acc is None:
            acc = accs[key] = _Acc()
        acc.requests += 1
        acc.errors += row["status_code"] >= 400
        acc.input_tokens += row["input_tokens"]
        acc.output_tokens += row["output_tokens"]
        acc.cached_tokens += row["cached_tokens"]
        acc.cost_usd += row["cost_usd"]
        if want_latency:
            acc.latencies.append(row["latency_ms"])
    for key in sorted(accs, key=lambda k: tuple((v is None, str(v)) for v in k)):
        acc = accs[key]
        out = {
            "requests": acc.requests,
            "errors": acc.errors,
            "input_tokens": acc.input_tokens,
            "output_tokens": acc.output_tokens,
            "cached_tokens": acc.cached_tokens,
            "cost_usd": acc.cost_usd,
        }
        if want_latency:
            acc.latencies.sort()
            out.update({name: _percentile(acc.latencies, f) for name, f in PERCENTILES})
        yield key, out


def _tag_text(value) -> str | None:
    """A tag value as PostgreSQL's `->>` would render it, so both backends agree."""
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, dict | list):
        return json.dumps(value)
    return str(value)


def _label_maps(dims: tuple[Dim, ...]) -> dict[str, dict[int, str]]:
    maps: dict[str, dict[int, str]] = {}
    for dim in dims:
        if dim.name == "team":
            maps["team"] = dict(Team.objects.values_list("pk", "slug"))
        elif dim.name == "user":
            maps["user"] = dict(get_user_model().objects.values_list("pk", "username"))
        elif dim.name == "virtual_account":
            maps["virtual_account"] = dict(VirtualAccount.objects.values_list("pk", "name"))
    return maps


@dataclass(frozen=True)
class UsageGroup:
    """One output row of grouped usage: the period, dimension values and metrics."""

    period: dt.datetime | None
    dims: dict[str, object]
    requests: int
    errors: int
    input_tokens: int
    output_tokens: int
    cached_tokens: int
    cost_usd: Decimal
    latency: dict[str, float | None]

    @property
    def total_tokens(self) -> int:
        return self.input_tokens + self.output_tokens

    @property
    def error_rate(self) -> float:
        return round(self.errors / self.requests, 6) if self.requests else 0.0


def usage_grouped(*, scope: UsageScope, query: UsageQuery) -> Iterator[UsageGroup]:
    """Grouped metrics, ordered by period then dimensions; a lazy iterator (stream it).

    The scope is checked now, not on the first row: a streamed CSV or NDJSON body starts
    after the response status is sent, too late for the caller to turn a PermissionError
    into a 403.
    """
    return _usage_groups(_filtered(scope=scope, query=query), query)


def _usage_groups(rows: QuerySet[UsageRecord], query: UsageQuery) -> Iterator[UsageGroup]:
    grouped = _grouped_sql if connection.vendor == "postgresql" else _grouped_python
    labels = _label_maps(query.group_by)
    for key, values in grouped(rows, query):
        period = key[0] if query.granularity else None
        dim_values = key[1:] if query.granularity else key
        dims: dict[str, object] = {}
        for dim, value in zip(query.group_by, dim_values, strict=True):
            if dim.name in labels:
                dims[f"{dim.name}_id"] = value
                dims[dim.name] = labels[dim.name].get(value) if value is not None else None
            elif dim.name == "status":
                dims["status_code"] = value
            else:
                dims[dim.output] = value
        yield UsageGroup(
            period=period.astimezone(dt.UTC) if period else None,
            dims=dims,
            requests=values["requests"] or 0,
            errors=values["errors"] or 0,
            input_tokens=values["input_tokens"] or 0,
            output_tokens=values["output_tokens"] or 0,
            cached_tokens=values["cached_tokens"] or 0,
            cost_usd=Decimal(values["cost_usd"] or 0),
            latency={name: values.get(name) for name, _ in PERCENTILES},
        )


def dim_columns(query: UsageQuery) -> list[str]:
    """Output column names of the dimensions, in order (labels beside ids)."""
    out = []
    for dim in query.group_by:
        if dim.name in ("team", "user", "virtual_account"):
            out += [dim.name, f"{dim.name}_id"]
        elif dim.name == "status":
            out.append("status_code")
        else:
            out.append(dim.output)
    return out


# --- Raw rows (incremental export) --------------------------------------------------------


# Salt of the cursor signature: a value signed for another purpose never passes as a cursor.
CURSOR_SALT = "tollgate.billing.usage-rows-cursor"


def cursor_binding(*, scope: UsageScope, query: UsageQuery) -> str:
    """A fingerprint of who reads which rows: the caller's scope and the query's row filters.

    A cursor carries it under its signature, so it resumes only the export it came from: not
    another team's (or anyone with another scope), not the same caller with other filters.
    Filters that do not choose rows (format, limit, grouping) are left out; ids are sorted so
    `team=1,2` and `team=2,1` are one export.
    """
    parts = [
        [scope.everything, sorted(scope.team_ids), scope.user_id, scope.virtual_account_id],
        query.start.isoformat() if query.start else None,
        query.end.isoformat() if query.end else None,
        sorted(query.team_ids),
        sorted(query.user_ids),
        sorted(query.virtual_account_ids),
        sorted(query.models),
        sorted(query.status_codes),
        list(query.status_range) if query.status_range else None,
        sorted(query.tags),
    ]
    raw = json.dumps(parts, separators=(",", ":")).encode()
    return hashlib.sha256(raw).hexdigest()[:32]


@dataclass(frozen=True)
class RowCursor:
    """Position after the last row handed out: (inserted_at, id) in export order.

    On the wire it is signed (django.core.signing, SECRET_KEY, CURSOR_SALT) together with the
    `cursor_binding` of the export, so a client can neither forge a position nor replay it
    under another scope or other filters.
    """

    inserted_at: dt.datetime
    id: int

    def encode(self, *, binding: str) -> str:
        payload = {"i": self.inserted_at.isoformat(), "id": self.id, "b": binding}
        # Signer, not signing.dumps: no timestamp in it, so the same position and binding
        # always give the same cursor (an empty page hands back the one it was given).
        return signing.Signer(salt=CURSOR_SALT).sign_object(payload)

    @classmethod
    def decode(cls, token: str, *, binding: str) -> RowCursor:
        try:
            data = signing.Signer(salt=CURSOR_SALT).unsign_object(token)
            moment = dt.datetime.fromisoformat(data["i"])
            if timezone.is_naive(moment):
                raise ValueError("naive")
            cursor, bound_to = cls(moment, int(data["id"])), data["b"]
        except (signing.BadSignature, ValueError, KeyError, TypeError) as error:
            raise UsageQueryError(
                "cursor: not a cursor returned by this API (altered or truncated)"
            ) from error
        if bound_to != binding:
            raise UsageQueryError(
                "cursor: it belongs to another caller or to other filters; resume with the "
                "caller and filters it came from, or start again without a cursor"
            )
        return cursor

    @classmethod
    def after(cls, moment: dt.datetime) -> RowCursor:
        # Every row inserted at `moment` itself is excluded: `updated_since` is strict.
        return cls(moment, 2**63 - 1)


@dataclass(frozen=True)
class RowPage:
    rows: QuerySet[UsageRecord]
    next_cursor: RowCursor | None
    has_more: bool
    horizon: dt.datetime


ROW_FIELDS = (
    "id", "request_id", "created_at", "inserted_at", "team_id", "user_id",
    "virtual_account_id", "api_key_id", "end_user", "model", "deployment", "provider",
    "request_type", "is_stream", "status_code", "error_type", "input_tokens", "output_tokens",
    "cached_tokens", "tokens_estimated", "cost_usd", "latency_ms", "ttft_ms",
    "upstream_latency_ms", "attempts", "client_disconnected", "tags",
)  # fmt: skip


def usage_rows_page(
    *,
    scope: UsageScope,
    query: UsageQuery,
    cursor: RowCursor | None,
    limit: int,
    now: dt.datetime | None = None,
) -> RowPage:
    """A page of raw rows in (inserted_at, id) order, after `cursor`.

    Only rows inserted before the settle horizon are handed out, so a writer transaction that
    commits late cannot slip a row behind a cursor already returned: resuming from the last
    `next_cursor` yields each row exactly once, late (spooled) rows included.
    """
    limit = max(1, min(limit, MAX_PAGE))
    now = now or timezone.now()
    horizon = now - dt.timedelta(seconds=settings.BILLING_EXPORT_SETTLE_SECONDS)
    rows = _filtered(scope=scope, query=query).filter(inserted_at__lte=horizon)
    if cursor is not None:
        rows = rows.filter(
            Q(inserted_at__gt=cursor.inserted_at)
            | Q(inserted_at=cursor.inserted_at, id__gt=cursor.id)
        )
    rows = rows.order_by("inserted_at", "id")
    # Find the page's last row first (index-only), so headers can carry the cursor before
    # a streamed body starts.
    edge = list(rows.values_list("inserted_at", "id")[limit - 1 : limit + 1])
    if len(edge) == 0:
        # Fewer than `limit` rows: the page ends at the last row there is.
        last = rows.values_list("inserted_at", "id").reverse().first()
        has_more = False
    else:
        last = edge[0]
        has_more = len(edge) == 2
    if last is None:
        return RowPage(rows.none(), cursor, False, horizon)
    end = RowCursor(last[0], last[1])
    page = rows.filter(
        Q(inserted_at__lt=end.inserted_at) | Q(inserted_at=end.inserted_at, id__lte=end.id)
    ).values(*ROW_FIELDS)
    return RowPage(page, end, has_more, horizon)
