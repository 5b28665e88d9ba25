"""A chart's dataset as CSV: the rows of the same selector the chart was drawn from."""

from __future__ import annotations

import csv
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import fields

from django.http import StreamingHttpResponse

from gateway_portal.csv_stream import Echo, csv_safe

from .selectors import PercentilePoint, UsagePoint

USAGE_COLUMNS = (
    "bucket", "group", "requests", "errors", "error_rate", "input_tokens", "output_tokens",
    "tokens", "cost_usd", "cost_per_request",
)  # fmt: skip
PERCENTILE_COLUMNS = tuple(f.name for f in fields(PercentilePoint))


def _cell(value: object) -> object:
    if value is None:
        return ""
    if hasattr(value, "isoformat"):
        return value.isoformat()
    if isinstance(value, float):
        return round(value, 6)
    # Tag values are untrusted: no spreadsheet formulas.
    return csv_safe(value)


def _lines(rows: Sequence[object], region: str | None) -> Iterator[str]:
    writer = csv.writer(Echo())
    is_percentile = bool(rows) and isinstance(rows[0], PercentilePoint)
    columns = PERCENTILE_COLUMNS if is_percentile else USAGE_COLUMNS
    yield writer.writerow([*columns, *(["region"] if region else [])])
    for row in rows:
        cells = [_cell(getattr(row, name)) for name in columns]
        yield writer.writerow([*cells, *([region] if region else [])])


def dataset_csv(
    *, rows: Iterable[UsagePoint | PercentilePoint], filename: str, region: str | None = None
) -> StreamingHttpResponse:
    """`region` (several data regions): the regions the figures were read from, joined by
    "+" when merged, in a last column, so every CSV says where its rows live."""
    body = _lines(list(rows), region)
    response = StreamingHttpResponse(body, content_type="text/csv; charset=utf-8")
    response["Content-Disposition"] = f'attachment; filename="{filename}"'
    return response
