"""Streamed CSV and NDJSON (usage API, chargebacks, statements); never a whole file in memory.

Chargeback CSV: one row per group, then a `TOTAL` row. Money is USD (`currency` column),
`cost_usd` with 6 decimals rounded half-up per cell; the total is the exact sum rounded once,
so it can differ from the sum of the rounded cells by a few millionths. Tokens are integers;
prompt-cache reads (`cached_tokens`) and writes (`cache_write_tokens`) are part of
`input_tokens`.
Cells that a spreadsheet would run as a formula (starting with = + - @ tab or CR) are
prefixed with a single quote (OWASP CSV injection).

Text is UTF-8 as is: a tag `équipe` is `équipe` in CSV cells, NDJSON and JSON, never
`\u00e9quipe` (see `gateway_portal.csv_stream` on the byte-order mark).
"""

from __future__ import annotations

import csv
import datetime as dt
import json
from collections.abc import Iterable, Iterator
from decimal import ROUND_HALF_UP, Decimal

from django.core.serializers.json import DjangoJSONEncoder
from django.http import StreamingHttpResponse

from apps.billing.constants import COST_QUANTUM, CURRENCY, EXPORT_SCHEMA_VERSION
from apps.billing.models import Statement
from apps.billing.selectors.usage import ROW_FIELDS, UsageGroup, dim_columns
from apps.billing.usage_query import UsageQuery
from apps.usage.query import PERCENTILES, UsageTotals
from apps.usage.regions import is_multi_region
from gateway_portal.csv_stream import Echo, csv_safe

NDJSON = "application/x-ndjson"


def money(value: Decimal) -> str:
    return str(value.quantize(COST_QUANTUM, ROUND_HALF_UP))


def iso_utc(moment: dt.datetime | None) -> str | None:
    """ISO 8601 in UTC with a `Z` suffix (the export schema's times)."""
    return moment.astimezone(dt.UTC).isoformat().replace("+00:00", "Z") if moment else None


# --- Grouped usage ------------------------------------------------------------------------


def metric_columns(query: UsageQuery) -> list[str]:
    columns = []
    if "requests" in query.metrics:
        columns.append("requests")
    if "error_rate" in query.metrics:
        columns += ["errors", "error_rate"]
    if "tokens" in query.metrics:
        columns += [
            "input_tokens",
            "output_tokens",
            "cached_tokens",
            "cache_write_tokens",
            "total_tokens",
        ]
    if "cost" in query.metrics:
        columns.append("cost_usd")
    if "latency" in query.metrics:
        columns += [name for name, _ in PERCENTILES]
    return columns


def group_columns(query: UsageQuery) -> list[str]:
    return [*(["period"] if query.granularity else []), *dim_columns(query), *metric_columns(query)]


def group_record(group: UsageGroup, query: UsageQuery) -> dict[str, object]:
    """Schema v1 of a grouped row (documented on /api/docs)."""
    totals = group.totals
    values: dict[str, object] = {
        "requests": totals.requests,
        "errors": totals.errors,
        "error_rate": totals.error_rate,
        "input_tokens": totals.input_tokens,
        "output_tokens": totals.output_tokens,
        "cached_tokens": totals.cached_tokens,
        "cache_write_tokens": totals.cache_write_tokens,
        "total_tokens": totals.tokens,
        "cost_usd": money(totals.cost_usd),
        **{
            name: None if value is None else round(value, 3)
            for name, value in totals.latency.items()
        },
        **group.dims,
        "period": iso_utc(totals.bucket),
    }
    return {column: values.get(column) for column in group_columns(query)}


def _count(totals: UsageTotals, metric: str) -> int:
    return totals.tokens if metric == "total_tokens" else getattr(totals, metric)


def _csv_stream(header: list[str], rows: Iterable[list[object]]) -> Iterator[str]:
    writer = csv.writer(Echo())
    yield writer.writerow(header)
    for row in rows:
        yield writer.writerow([csv_safe(cell) for cell in row])


def _response(body: Iterator[str], content_type: str, filename: str | None = None):
    response = StreamingHttpResponse(body, content_type=content_type)
    response["X-Schema-Version"] = EXPORT_SCHEMA_VERSION
    if filename:
        response["Content-Disposition"] = f'attachment; filename="{filename}"'
    return response


def usage_groups_csv(groups: Iterable[UsageGroup], query: UsageQuery) -> StreamingHttpResponse:
    columns = group_columns(query)
    rows = ([record[c] for c in columns] for record in (group_record(g, query) for g in groups))
    return _response(_csv_stream(columns, rows), "text/csv; charset=utf-8", "usage.csv")


def usage_groups_ndjson(groups: Iterable[UsageGroup], query: UsageQuery) -> StreamingHttpResponse:
    body = (
        json.dumps(group_record(group, query), cls=DjangoJSONEncoder, ensure_ascii=False) + "\n"
        for group in groups
    )
    return _response(body, NDJSON)


def chargeback_csv(
    groups: Iterable[UsageGroup], query: UsageQuery, *, filename: str
) -> StreamingHttpResponse:
    dims = [*(["period"] if query.granularity else []), *dim_columns(query)]
    metrics = [
        "requests",
        "input_tokens",
        "output_tokens",
        "cached_tokens",
        "cache_write_tokens",
        "total_tokens",
    ]
    header = [*dims, *metrics, "cost_usd", "currency"]

    def rows() -> Iterator[list[object]]:
        totals = dict.fromkeys(metrics, 0)
        cost = Decimal(0)
        for group in groups:
            record = group_record(group, query)
            counts = {metric: _count(group.totals, metric) for metric in metrics}
            yield [
                *(record.get(column) for column in dims),
                *counts.values(),
                money(group.totals.cost_usd),
                CURRENCY,
            ]
            for metric, count in counts.items():
                totals[metric] += count
            cost += group.totals.cost_usd
        label = ["TOTAL", *[""] * (len(dims) - 1)] if dims else []
        yield [*label, *totals.values(), money(cost), CURRENCY]

    return _response(_csv_stream(header, rows()), "text/csv; charset=utf-8", filename)


# --- Raw rows ---------------------------------------------------------------------------


def row_record(row: dict) -> dict[str, object]:
    """Schema v1 of a raw usage row; `cost_usd` is an exact decimal string (10 places)."""
    record = dict(row)
    record["created_at"] = iso_utc(row["created_at"])
    record["inserted_at"] = iso_utc(row["inserted_at"])
    record["cost_usd"] = str(row["cost_usd"])
    record["tags"] = row["tags"] if isinstance(row["tags"], dict) else {}
    return record


def usage_rows_csv(rows: Iterable[dict]) -> Iterator[str]:
    def cells() -> Iterator[list[object]]:
        for row in rows:
            record = row_record(row)
            record["tags"] = json.dumps(record["tags"], sort_keys=True, ensure_ascii=False)
            yield [record[field] for field in ROW_FIELDS]

    return _csv_stream(list(ROW_FIELDS), cells())


def usage_rows_ndjson(rows: Iterable[dict]) -> Iterator[str]:
    for row in rows:
        yield json.dumps(row_record(row), cls=DjangoJSONEncoder, ensure_ascii=False) + "\n"


def rows_response(body: Iterator[str], fmt: str) -> StreamingHttpResponse:
    if fmt == "csv":
        return _response(body, "text/csv; charset=utf-8", "usage_rows.csv")
    return _response(body, NDJSON)


# --- Statements ---------------------------------------------------------------------------

STATEMENT_COLUMNS = [
    "month",
    "subject_type",
    "subject",
    "tier",
    "allowance_tokens",
    "used_tokens",
    "overage_tokens",
    "base_amount",
    "overage_amount",
    "amount",
    "currency",
]


def statements_month_csv(
    statements: Iterable[Statement], *, month: dt.date
) -> StreamingHttpResponse:
    """One row per statement of `month` (amounts in cents, as stored); with several data
    regions, also the regions whose ledgers hold the usage billed ("eu", "eu+us")."""
    by_region = is_multi_region()
    columns = [*STATEMENT_COLUMNS, *(["regions"] if by_region else [])]
    rows = (
        [
            f"{s.month:%Y-%m}",
            s.subject_type,
            s.subject_label,
            s.tier.name,
            s.allowance_tokens,
            s.used_tokens,
            s.overage_tokens,
            s.base_amount,
            s.overage_amount,
            s.amount,
            CURRENCY,
            *(["+".join(s.regions)] if by_region else []),
        ]
        for s in statements
    )
    response = StreamingHttpResponse(
        _csv_stream(columns, rows), content_type="text/csv; charset=utf-8"
    )
    response["Content-Disposition"] = f'attachment; filename="statements_{month:%Y-%m}.csv"'
    return response
