"""Usage reads for the export API and chargebacks: grouped metrics and raw rows.

Every read takes the caller's `apps.usage.scope.UsageScope` explicitly. Grouped metrics come
from the one query layer (`apps.usage.query`), the same one the dashboards read; here they
get their API shape (labels beside ids, `status_code`, `tag.<key>` columns).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import heapq
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
from apps.usage.regions import default_region, in_region, region_names
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
        regions=query.regions,
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
        # Only when set, so cursors handed out before region filters existed still resume.
        *([sorted(query.regions)] if query.regions else []),
    ]
    raw = json.dumps(parts, separators=(",", ":")).encode()
    return hashlib.sha256(raw).hexdigest()[:32]


Position = tuple[dt.datetime, int]


@dataclass(frozen=True)
class RowCursor:
    """Per data region, the position after the last row handed out: (inserted_at, id) in
    that region's export order. A region it does not name starts from its first row.

    On the wire it is signed (django.core.signing, SECRET_KEY, CURSOR_SALT) together with the
    `cursor_binding` of the export, so a client can neither forge a position nor replay it
    under another scope or other filters.
    """

    positions: dict[str, Position]

    def at(self, region: str) -> Position | None:
        return self.positions.get(region)

    def encode(self, *, binding: str) -> str:
        places = {name: [at.isoformat(), pk] for name, (at, pk) in sorted(self.positions.items())}
        # Signer, not signing.dumps: no timestamp in it, so the same positions and binding
        # always give the same cursor (an empty page hands back the one it was given).
        return signing.Signer(salt=CURSOR_SALT).sign_object({"p": places, "b": binding})

    @classmethod
    def decode(cls, token: str, *, binding: str) -> RowCursor:
        try:
            data = signing.Signer(salt=CURSOR_SALT).unsign_object(token)
            if "p" in data:
                places = {str(name): (_moment(at), int(pk)) for name, (at, pk) in data["p"].items()}
            else:
                # A cursor from before data regions: a position in the default region.
                places = {default_region(): (_moment(data["i"]), int(data["id"]))}
            cursor, bound_to = cls(places), data["b"]
        except (signing.BadSignature, ValueError, KeyError, TypeError, AttributeError) as error:
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
        return cls({name: (moment, 2**63 - 1) for name in region_names()})


def _moment(value: str) -> dt.datetime:
    moment = dt.datetime.fromisoformat(value)
    if timezone.is_naive(moment):
        raise ValueError("naive")
    return moment


@dataclass(frozen=True)
class RowPage:
    rows: Iterator[dict]
    next_cursor: RowCursor | None
    has_more: bool
    horizon: dt.datetime


ROW_FIELDS = (
    "id", "request_id", "created_at", "inserted_at", "region", "team_id", "user_id",
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
    """A page of raw rows after `cursor`, from every region the caller reads, in
    (inserted_at, region, id) order.

    Only rows inserted before the settle horizon are handed out, so a writer transaction that
    commits late cannot slip a row behind a cursor already returned: resuming from the last
    `next_cursor` yields each row exactly once, late (spooled) rows included. Each region
    keeps its own position, since ids are numbered per database.
    """
    limit = max(1, min(limit, MAX_PAGE))
    now = now or timezone.now()
    horizon = now - dt.timedelta(seconds=settings.BILLING_EXPORT_SETTLE_SECONDS)
    where = _usage_filter(scope=scope, query=query)
    names = scope.readable_regions(query.regions)
    after = {name: cursor.at(name) if cursor else None for name in names}
    # The page's keys first (index-only), so headers can carry the cursor before a streamed
    # body starts: each region's next `limit + 1`, merged, the first `limit` taken.
    keys: list[tuple[dt.datetime, int, int]] = []
    for index, name in enumerate(names):
        rows = _region_rows(name, scope, where, horizon, after[name], None)
        keys += [(at, index, pk) for at, pk in rows.values_list("inserted_at", "id")[: limit + 1]]
    keys.sort()
    taken = keys[:limit]
    if not taken:
        return RowPage(iter(()), cursor, False, horizon)
    ends: dict[str, Position] = {}
    for at, index, pk in taken:
        ends[names[index]] = (at, pk)
    parts = [
        (index, name, _region_rows(name, scope, where, horizon, after[name], ends[name]))
        for index, name in enumerate(names)
        if name in ends
    ]
    positions = {**(cursor.positions if cursor else {}), **ends}
    return RowPage(_merged_rows(parts), RowCursor(positions), len(keys) > limit, horizon)


def _region_rows(
    name: str,
    scope: UsageScope,
    where: UsageFilter,
    horizon: dt.datetime,
    after: Position | None,
    through: Position | None,
) -> QuerySet[UsageRecord]:
    """Region `name`'s rows of the export, after `after` and up to `through`, in export
    order. Bound to its database (`using`), so they can be read outside `in_region`."""
    with in_region(name) as alias:
        rows = raw_rows(scope=scope, where=where).using(alias)
    rows = rows.filter(inserted_at__lte=horizon)
    if after is not None:
        rows = rows.filter(Q(inserted_at__gt=after[0]) | Q(inserted_at=after[0], id__gt=after[1]))
    if through is not None:
        rows = rows.filter(
            Q(inserted_at__lt=through[0]) | Q(inserted_at=through[0], id__lte=through[1])
        )
    return rows.order_by("inserted_at", "id")


def _merged_rows(parts: list[tuple[int, str, QuerySet[UsageRecord]]]) -> Iterator[dict]:
    """The regions' rows interleaved in (inserted_at, region, id) order; `region` is the
    region whose database holds the row (older rows may have none stored)."""

    def keyed(index: int, name: str, rows: QuerySet[UsageRecord]) -> Iterator[tuple]:
        for row in rows.values(*ROW_FIELDS).iterator(chunk_size=2000):
            row["region"] = name
            yield (row["inserted_at"], index, row["id"]), row

    for _, row in heapq.merge(*(keyed(*part) for part in parts), key=lambda pair: pair[0]):
        yield row
