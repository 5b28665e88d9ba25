"""Usage reads for the export API and chargebacks: grouped metrics and raw rows.

Every read takes the caller's `apps.usage.scope.UsageScope` explicitly. Grouped metrics come
from the one query layer (`apps.usage.query`), the same one the dashboards read; here they
get their API shape (labels beside ids, `status_code`, `tag.<key>` columns).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from django.conf import settings
from django.contrib.auth import get_user_model
from django.core import signing
from django.db.models import Q, QuerySet
from django.utils import timezone

from apps.accounts.models import Team, VirtualAccount
from apps.billing.exceptions import UsageQueryError
from apps.billing.usage_query import Dim, UsageQuery
from apps.usage.models import UsageRecord
from apps.usage.query import (
    UsageFilter,
    UsageTotals,
    raw_rows,
    tag_dimension,
    usage_totals,
)
from apps.usage.scope import UsageScope

MAX_PAGE = 50_000
# An open end of a range: every row there is.
_EARLIEST = dt.datetime.min.replace(tzinfo=dt.UTC)
_LATEST = dt.datetime.max.replace(tzinfo=dt.UTC)


def _usage_filter(*, scope: UsageScope, query: UsageQuery) -> UsageFilter:
    """The query's row filters for the query layer, once the scope allows them."""
    scope.check_filters(
        team_ids=query.team_ids,
        user_ids=query.user_ids,
        virtual_account_ids=query.virtual_account_ids,
    )
    return UsageFilter(
        start=query.start or _EARLIEST,
        end=query.end or _LATEST,
        team_ids=query.team_ids,
        user_ids=query.user_ids,
        virtual_account_ids=query.virtual_account_ids,
        models=query.models,
        tags=query.tags,
        status_codes=query.status_codes,
        status_range=query.status_range,
        regions=query.regions,
    )


def _filtered(*, scope: UsageScope, query: UsageQuery) -> QuerySet[UsageRecord]:
    return raw_rows(scope=scope, where=_usage_filter(scope=scope, query=query))


# --- Grouped metrics --------------------------------------------------------------------


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
    """One output row of grouped usage: the query layer's sums and the API's dimension
    columns (labels beside ids, `status_code`, `tag.<key>`)."""

    totals: UsageTotals
    dims: dict[str, object]


def usage_grouped(*, scope: UsageScope, query: UsageQuery) -> Iterator[UsageGroup]:
    """Grouped metrics, ordered by period then dimensions (the query layer,
    `apps.usage.query.usage_totals`: rollups where they cover, raw rows for the rest).

    The scope is checked now, not on the first row: a streamed CSV or NDJSON body starts
    after the response status is sent, too late for the caller to turn a PermissionError
    into a 403.
    """
    where = _usage_filter(scope=scope, query=query)
    found = usage_totals(
        scope=scope,
        where=where,
        group_by=tuple(tag_dimension(d.tag) if d.tag else d.name for d in query.group_by),
        bucket=query.granularity,
        latency="latency" in query.metrics,
    )
    return _usage_groups(found, query)


def _usage_groups(found: Iterable[UsageTotals], query: UsageQuery) -> Iterator[UsageGroup]:
    labels = _label_maps(query.group_by)
    for totals in found:
        dims: dict[str, object] = {}
        for dim, value in zip(query.group_by, totals.group, strict=True):
            if dim.name in labels:
                dims[f"{dim.name}_id"] = value
                dims[dim.name] = labels[dim.name].get(value) if value is not None else None
            elif dim.name == "status":
                dims["status_code"] = value
            else:
                dims[dim.output] = value
        yield UsageGroup(totals, dims)


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
    "cached_tokens", "cache_write_tokens", "tokens_estimated", "cost_usd", "latency_ms",
    "ttft_ms", "upstream_latency_ms", "attempts", "client_disconnected", "tags",
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
