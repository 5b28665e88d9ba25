"""/api/usage: usage export (grouped metrics or raw rows) and the chargeback CSV.

Auth: a portal session or an API key with the `usage:read` scope (acting for its owner). What
each caller reads is `apps.usage.scope`'s rule, the same as the dashboards': admin and finance
everything, team admins their teams plus their own rows, developers their own rows.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from contextlib import contextmanager
from decimal import Decimal
from typing import Any, Literal

from django.http import HttpRequest
from ninja import Field, Query, Router, Schema
from ninja.errors import HttpError

from apps.accounts.api_auth import request_caller, session_or_key_auth
from apps.accounts.models import ApiKey
from apps.accounts.selectors import portal_identity
from apps.usage.scope import UsageScope, usage_scope_for, usage_scope_for_key

from .constants import COST_DECIMALS, CURRENCY, EXPORT_SCHEMA_VERSION
from .exceptions import UsageQueryError
from .exports import (
    chargeback_csv,
    group_record,
    iso_utc,
    row_record,
    rows_response,
    usage_groups_csv,
    usage_groups_ndjson,
    usage_rows_csv,
    usage_rows_ndjson,
)
from .selectors.insights import billing_insights
from .selectors.usage import (
    MAX_PAGE,
    RowCursor,
    cursor_binding,
    usage_grouped,
    usage_rows_page,
)
from .usage_query import UsageQuery, parse_chargeback_query, parse_time, parse_usage_query

router = Router(tags=["usage"])

SCHEMA_DOC = f"""
Row schema version {EXPORT_SCHEMA_VERSION} (also in the `schema_version` field and the
`X-Schema-Version` header).

**Grouped rows** (`mode=aggregate`): `period` (ISO start of the hour/day/month bucket, UTC;
only with `granularity`), one column per `group_by` dimension (`team` + `team_id`, `user` +
`user_id`, `virtual_account` + `virtual_account_id`, `model`, `status_code`, `provider`,
`request_type`, `region` (the data region whose database holds the rows), `tag.<key>`;
null when absent), then the metrics asked for: `requests`,
`errors`, `error_rate` (0..1), `input_tokens`, `output_tokens`, `cached_tokens` (prompt-cache
reads), `cache_write_tokens` (prompt-cache writes; both are part of `input_tokens`),
`total_tokens` (input + output), `cost_usd` ({CURRENCY}, string with {COST_DECIMALS} decimals),
`latency_p50_ms`, `latency_p90_ms`, `latency_p99_ms` (percentile_cont, interpolated).

**Raw rows** (`mode=rows`): `id` (stable; unique within its region), `request_id` (unique),
`created_at`, `inserted_at` (when the row reached the database: the incremental watermark),
`region` (the data region whose database holds the row), attribution ids, `model`, `deployment`, `provider`, `request_type`, `is_stream`, `status_code`,
`error_type`, token counts, `tokens_estimated`, `cost_usd` (exact decimal string, 10 places),
latencies in ms, `attempts`, `client_disconnected`, `tags` (object; JSON text in CSV). Rows
come in (`inserted_at`, `id`) order. Resume from the last `next_cursor` (JSON body, or the
`X-Next-Cursor` header for CSV/NDJSON) to load each row exactly once, late rows included
(with several regions, in (`inserted_at`, `region`, `id`) order, the cursor keeping a
position per region);
rows are handed out once they are BILLING_EXPORT_SETTLE_SECONDS (default 120 s) old. A cursor
is signed and bound to the caller's scope and the row filters (range, team, user, virtual
account, model, status, tags): replayed by another caller, with other filters, or altered,
it is refused with a 400.
"""


class UsageParams(Schema):
    start: str | None = Field(
        None, description="ISO date (00:00 UTC) or datetime; default: start of this month"
    )
    end: str | None = Field(
        None, description="ISO datetime (exclusive) or date (inclusive); default: now"
    )
    team: str | None = Field(None, description="Team slugs or ids, comma-separated")
    user: str | None = Field(None, description="Usernames or ids, comma-separated")
    virtual_account: str | None = Field(None, description="Virtual account names or ids")
    model: str | None = Field(None, description="Model names, comma-separated")
    status: str | None = Field(None, description="Codes (429), classes (4xx), success or error")
    region: str | None = Field(
        None, description="Data regions, comma-separated (DATA_REGIONS); default: all, merged"
    )
    group_by: str | None = Field(
        None,
        description="Comma-separated: team, user, virtual_account, model, status, provider, request_type, region, tag.<key> (or a configured tag key). Tag filters: tag.<key>=<value>",
    )
    granularity: Literal["hour", "day", "month"] | None = None
    metrics: str | None = Field(
        None, description="Any of requests, tokens, cost, latency, error_rate (default all)"
    )
    mode: Literal["aggregate", "rows"] = "aggregate"
    format: Literal["json", "ndjson", "csv"] = "json"
    updated_since: str | None = Field(
        None, description="rows mode: inserted_at strictly after this"
    )
    cursor: str | None = Field(None, description="rows mode: next_cursor of the previous page")
    limit: int = Field(1000, ge=1, le=MAX_PAGE, description="rows mode: page size")


class ChargebackParams(Schema):
    start: str | None = Field(None, description="As for /api/usage; or use month")
    end: str | None = None
    month: str | None = Field(None, description="YYYY-MM: the whole UTC month")
    team: str | None = None
    user: str | None = None
    virtual_account: str | None = None
    model: str | None = None
    status: str | None = None
    group_by: str | None = Field(None, description="As for /api/usage; default team")
    granularity: Literal["hour", "day", "month"] | None = None


class UsageOut(Schema):
    schema_version: str
    mode: str
    start: str | None
    end: str | None
    group_by: list[str] = []
    granularity: str | None = None
    data: list[dict[str, Any]]
    next_cursor: str | None = None
    has_more: bool = False
    watermark: str | None = Field(None, description="rows mode: settle horizon of this page")


def _scope(request: HttpRequest) -> UsageScope:
    caller = request_caller(request)
    try:
        if isinstance(caller, ApiKey):
            scope = usage_scope_for_key(caller)
        else:
            scope = usage_scope_for(portal_identity(user=caller))
    except PermissionError as error:
        raise HttpError(403, str(error)) from error
    if scope.is_empty:
        raise HttpError(403, "Usage export needs a portal role.")
    return scope


@contextmanager
def _http_errors() -> Iterator[None]:
    """A query the caller may not read is a 403; a malformed one a 400."""
    try:
        yield
    except PermissionError as error:
        raise HttpError(403, str(error)) from error
    except UsageQueryError as error:
        raise HttpError(400, str(error)) from error


@router.get(
    "", response=UsageOut, auth=session_or_key_auth, summary="Usage export", description=SCHEMA_DOC
)
def usage(request: HttpRequest, params: Query[UsageParams]):
    scope = _scope(request)
    rows_mode = params.mode == "rows"
    with _http_errors():
        query = parse_usage_query(request.GET, require_start=not rows_mode)
        if rows_mode:
            return _rows(scope, query, params)
        groups = usage_grouped(scope=scope, query=query)
        if params.format == "csv":
            return usage_groups_csv(groups, query)
        if params.format == "ndjson":
            return usage_groups_ndjson(groups, query)
        return {
            "schema_version": EXPORT_SCHEMA_VERSION,
            "mode": "aggregate",
            "start": iso_utc(query.start),
            "end": iso_utc(query.end),
            "group_by": [dim.output for dim in query.group_by],
            "granularity": query.granularity,
            "data": [group_record(group, query) for group in groups],
        }


def _rows(scope: UsageScope, query: UsageQuery, params: UsageParams):
    # A cursor resumes only the export it came from: same scope, same row filters.
    binding = cursor_binding(scope=scope, query=query)
    cursor = None
    if params.cursor:
        cursor = RowCursor.decode(params.cursor, binding=binding)
    elif params.updated_since:
        cursor = RowCursor.after(parse_time(params.updated_since, name="updated_since"))
    page = usage_rows_page(scope=scope, query=query, cursor=cursor, limit=params.limit)
    next_cursor = page.next_cursor.encode(binding=binding) if page.next_cursor else None
    if params.format == "json":
        return {
            "schema_version": EXPORT_SCHEMA_VERSION,
            "mode": "rows",
            "start": iso_utc(query.start),
            "end": iso_utc(query.end),
            "data": [row_record(row) for row in page.rows],
            "next_cursor": next_cursor,
            "has_more": page.has_more,
            "watermark": iso_utc(page.horizon),
        }
    body = usage_rows_csv(page.rows) if params.format == "csv" else usage_rows_ndjson(page.rows)
    response = rows_response(body, params.format)
    response["X-Next-Cursor"] = next_cursor or ""
    response["X-Has-More"] = "true" if page.has_more else "false"
    return response


@router.get(
    "chargeback.csv",
    auth=session_or_key_auth,
    summary="Chargeback CSV",
    description=(
        "Cost and tokens per group (default: per team) for a month or any range, streamed. "
        f"`cost_usd` is {CURRENCY} with {COST_DECIMALS} decimals (half-up); the last row is "
        "`TOTAL` (the exact sum, rounded once). Cells starting with = + - @ tab or CR are "
        "prefixed with a single quote against CSV injection."
    ),
)
def chargeback(request: HttpRequest, params: Query[ChargebackParams]):
    scope = _scope(request)
    with _http_errors():
        query = parse_chargeback_query(request.GET)
        filename = f"chargeback_{query.start:%Y%m%d}_{query.end:%Y%m%d}.csv"
        return chargeback_csv(usage_grouped(scope=scope, query=query), query, filename=filename)


class SubjectSpendOut(Schema):
    subject_key: str
    subject_type: str
    label: str
    tier: str | None
    tokens: int
    spend_usd: Decimal
    projected_tokens: int
    projected_usd: Decimal


class TierCostOut(Schema):
    tier: str
    hard_cap: bool
    amount_usd: Decimal
    overage_tokens: int
    refused_tokens: int


class CapForecastOut(Schema):
    tier: str
    allowance_tokens: int
    used_tokens: int
    tokens_per_day: int
    reached: bool
    hits_on: dt.date | None


class TierFitOut(Schema):
    subject_key: str
    subject_type: str
    label: str
    current_tier: str
    tokens_by_month: list[int]
    costs: list[TierCostOut]
    current_amount_usd: Decimal
    recommended_tier: str
    recommended_amount_usd: Decimal
    saving_usd: Decimal
    pays_less_elsewhere: bool
    cap: CapForecastOut | None


class ModelSavingOut(Schema):
    feature: str
    model: str
    mode: str
    input_tokens: int
    output_tokens: int
    cached_tokens: int
    cost_usd: Decimal
    cheapest_model: str | None
    cheapest_cost_usd: Decimal | None
    saving_usd: Decimal


class InsightsOut(Schema):
    month: dt.date
    as_of: dt.datetime
    elapsed_days: Decimal
    days_in_month: int
    tier_fit_months: list[dt.date]
    spend_total_usd: Decimal
    projected_total_usd: Decimal
    spend: list[SubjectSpendOut]
    tier_fit: list[TierFitOut]
    model_savings: list[ModelSavingOut]


@router.get(
    "insights",
    response=InsightsOut,
    auth=session_or_key_auth,
    summary="Billing insights",
    description=(
        "Admin and finance sessions only. The data of /billing/insights/: month-to-date spend "
        "per subject with a linear projection to month end (spend x days in month / elapsed "
        "days, elapsed up to now, at least one day); the tier fit of each "
        "subscribed subject over the last three full months (cost on each active tier, the "
        "cheapest that would refuse nothing, hard-cap date at the same run rate); and per "
        f"`feature` tag x model the cost on the cheapest same-mode model. Money: {CURRENCY} "
        "as decimal strings (cents; model costs with 6 decimals)."
    ),
)
def insights(request: HttpRequest):
    caller = request_caller(request)
    if isinstance(caller, ApiKey) or not portal_identity(user=caller).is_org_wide:
        raise HttpError(403, "Billing insights need the admin or finance role.")
    return billing_insights()
