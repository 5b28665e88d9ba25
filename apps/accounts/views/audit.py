"""The audit log (admins only): filter, page through and download as CSV. Read-only."""

import csv
import json
from collections.abc import Iterable, Iterator

from django.core.paginator import Paginator
from django.http import HttpRequest, HttpResponse, StreamingHttpResponse
from django.shortcuts import render
from django.utils import timezone

from gateway_portal.csv_stream import Echo, csv_safe

from .. import selectors
from ..forms import AuditFilterForm
from ..permissions import ADMIN_ONLY, portal_view

CSV_HEADER = [
    "created_at",
    "actor",
    "action",
    "object_type",
    "object_id",
    "object",
    "team",
    "before",
    "after",
]


def _json_cell(value: object) -> str:
    # Real UTF-8 (a tag key `équipe` stays readable), not \u escapes.
    return "" if value is None else json.dumps(value, default=str, ensure_ascii=False)


def _csv_lines(rows: Iterable) -> Iterator[str]:
    writer = csv.writer(Echo())
    yield writer.writerow(CSV_HEADER)
    for row in rows:
        yield writer.writerow(
            [
                csv_safe(cell)
                for cell in (
                    row.created_at.isoformat(),
                    row.actor_label,
                    row.action,
                    row.object_type,
                    row.object_id,
                    row.object_repr,
                    row.team_id or "",
                    _json_cell(row.before),
                    _json_cell(row.after),
                )
            ]
        )


def changed_fields(before: dict | None, after: dict | None) -> list[tuple[str, object, object]]:
    """(field, before, after) for the fields that differ, for a readable table cell."""
    before, after = before or {}, after or {}
    names = [n for n in dict.fromkeys([*before, *after]) if before.get(n) != after.get(n)]
    return [(n, before.get(n), after.get(n)) for n in names]


def _filtered(request: HttpRequest, identity):
    actions, object_types = selectors.audit_filter_choices(identity=identity)
    form = AuditFilterForm(request.GET or None, actions=actions, object_types=object_types)
    filters = form.cleaned_data if form.is_valid() else {}
    rows = selectors.audit_log_entries(identity=identity, **filters)
    return form, rows


@portal_view(ADMIN_ONLY)
def audit_list(request: HttpRequest, identity) -> HttpResponse:
    form, rows = _filtered(request, identity)
    page = Paginator(rows, 50).get_page(request.GET.get("page"))
    for row in page:
        row.changed = changed_fields(row.before, row.after)
    query = request.GET.copy()
    query.pop("page", None)
    return render(
        request,
        "accounts/audit.html",
        {"form": form, "page": page, "query": query.urlencode()},
    )


@portal_view(ADMIN_ONLY)
def audit_export(request: HttpRequest, identity) -> StreamingHttpResponse:
    _, rows = _filtered(request, identity)
    stamp = timezone.now().strftime("%Y%m%d-%H%M%S")
    response = StreamingHttpResponse(
        _csv_lines(rows.iterator(chunk_size=2000)), content_type="text/csv; charset=utf-8"
    )
    response["Content-Disposition"] = f'attachment; filename="tollgate-audit-{stamp}.csv"'
    return response
