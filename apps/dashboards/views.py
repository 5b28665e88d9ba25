"""Dashboard pages: resolve the caller's scope and the URL's filters, read the datasets,
build figures server side and render. Figures reach the page through `json_script`."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from django.core.exceptions import PermissionDenied
from django.http import HttpRequest, HttpResponse, QueryDict
from django.shortcuts import render
from django.urls import reverse
from django.utils import timezone

from apps.accounts.permissions import EVERY_ROLE, portal_view
from apps.accounts.selectors import PortalIdentity
from apps.usage.regions import is_multi_region
from apps.usage.scope import UsageScope, usage_scope_for

from . import charts, datasets, exports, selectors
from .filters import DashboardFilters
from .forms import FILTER_PARAMS, FilterForm

PAGES = [
    ("overview", "Overview"),
    ("cost", "Cost"),
    ("latency", "Latency"),
    ("errors", "Errors"),
    ("tags", "Tag explorer"),
]


@dataclass(frozen=True)
class Figure:
    name: str
    title: str
    dataset: str
    data: dict
    csv_url: str

    @property
    def json_id(self) -> str:
        return f"figure-{self.name}"


@dataclass(frozen=True)
class Context:
    scope: UsageScope
    filters: DashboardFilters
    options: datasets.PageOptions
    form: FilterForm
    today: dt.date


def _today() -> dt.date:
    return timezone.now().astimezone(dt.UTC).date()


def _resolve(
    request: HttpRequest, identity: PortalIdentity, *, default_group: str = "team"
) -> Context:
    scope = usage_scope_for(identity)
    team = request.GET.get("team", "")
    try:
        # As /api/usage: a team outside the scope is refused, not silently dropped.
        scope.check_filters(team_ids=[int(team)] if team.isdigit() else [])
    except PermissionError as exc:
        raise PermissionDenied(str(exc)) from exc
    regions = scope.readable_regions() if is_multi_region() else []
    form = FilterForm(
        request.GET or None, teams=selectors.teams_for_filter(scope=scope), regions=regions
    )
    if form.is_bound:
        form.is_valid()
    today = _today()
    return Context(
        scope, form.filters(today=today), form.options(default_group=default_group), form, today
    )


def _query(
    request: HttpRequest,
    *,
    only: tuple[str, ...] | None = None,
    drop: tuple[str, ...] = (),
    **changes,
) -> str:
    query = QueryDict(mutable=True)
    for key, values in request.GET.lists():
        if (only is None or key in only) and key not in drop:
            query.setlist(key, values)
    for key, value in changes.items():
        query[key] = value
    return query.urlencode()


def _figure(request, name: str, title: str, dataset: str, fig) -> Figure:
    csv_url = f"{reverse('dashboards:csv', args=[dataset])}?{_query(request)}"
    return Figure(name, title, dataset, charts.to_json_data(fig), csv_url)


def _render(
    request: HttpRequest, page: str, ctx: Context, figures: list[Figure], **extra
) -> HttpResponse:
    return render(
        request,
        f"dashboards/{page}.html",
        {
            "page": page,
            "pages": PAGES,
            "form": ctx.form,
            "filters": ctx.filters,
            "options": ctx.options,
            "figures": figures,
            "filter_query": _query(request, only=FILTER_PARAMS),
            "model_choices": selectors.model_names(scope=ctx.scope, filters=ctx.filters),
            "tag_keys": selectors.tag_keys_in_use(scope=ctx.scope),
            # Tables name the empty group as the charts do (`charts.label`).
            "none_label": selectors.NONE_LABEL,
            **extra,
        },
    )


@portal_view(EVERY_ROLE)
def overview(request: HttpRequest, identity: PortalIdentity) -> HttpResponse:
    ctx = _resolve(request, identity)
    trend = datasets.trend(ctx.scope, ctx.filters, ctx.options)
    latency = datasets.latency_trend(ctx.scope, ctx.filters, ctx.options)
    kpis = datasets.overview_kpis(ctx.scope, ctx.filters, today=ctx.today, period=trend)
    figures = [
        _figure(request, "requests", "Requests and errors", "trend", charts.requests_trend(trend)),
        _figure(request, "cost", "Cost and tokens", "trend", charts.cost_trend(trend)),
        _figure(request, "latency", "Latency and time to first token", "latency_trend",
                charts.latency_trend(latency)),
    ]  # fmt: skip
    return _render(request, "overview", ctx, figures, kpis=kpis)


@portal_view(EVERY_ROLE)
def cost(request: HttpRequest, identity: PortalIdentity) -> HttpResponse:
    ctx = _resolve(request, identity)
    points = datasets.cost_breakdown(ctx.scope, ctx.filters, ctx.options)
    figures = [_figure(request, "cost", "Cost over time", "cost", charts.stacked_cost(points))]
    choices = datasets.tag_dimension_choices(selectors.tag_keys_in_use(scope=ctx.scope))
    return _render(
        request,
        "cost",
        ctx,
        figures,
        totals=selectors.totals_by_group(points),
        group_choices=choices,
        group_label=dict(choices).get(ctx.options.group, ctx.options.group),
    )


@portal_view(EVERY_ROLE)
def latency(request: HttpRequest, identity: PortalIdentity) -> HttpResponse:
    ctx = _resolve(request, identity)
    by_model = datasets.latency_by_model(ctx.scope, ctx.filters, ctx.options)
    by_provider = datasets.latency_by_provider(ctx.scope, ctx.filters, ctx.options)
    pct = ctx.options.pct
    figures = [
        _figure(request, "latency-model", f"Latency {pct.upper()} by model", "latency_model",
                charts.percentile_lines(by_model, pct=pct)),
        _figure(request, "latency-provider", f"Latency {pct.upper()} by provider",
                "latency_provider", charts.percentile_lines(by_provider, pct=pct)),
        _figure(request, "ttft-model", f"Time to first token {pct.upper()} (streams) by model",
                "latency_model", charts.percentile_lines(by_model, pct=pct, ttft=True)),
    ]  # fmt: skip
    return _render(
        request,
        "latency",
        ctx,
        figures,
        model_table=datasets.latency_table_model(ctx.scope, ctx.filters, ctx.options),
        provider_table=datasets.latency_table_provider(ctx.scope, ctx.filters, ctx.options),
    )


@portal_view(EVERY_ROLE)
def errors(request: HttpRequest, identity: PortalIdentity) -> HttpResponse:
    ctx = _resolve(request, identity)
    by_model = datasets.errors_by_model(ctx.scope, ctx.filters, ctx.options)
    by_provider = datasets.errors_by_provider(ctx.scope, ctx.filters, ctx.options)
    types = datasets.error_types(ctx.scope, ctx.filters, ctx.options)
    figures = [
        _figure(request, "error-rate-model", "Error rate by model", "errors_model",
                charts.error_rate_lines(by_model)),
        _figure(request, "error-rate-provider", "Error rate by provider", "errors_provider",
                charts.error_rate_lines(by_provider)),
        _figure(request, "error-types", "Errors by type", "error_types",
                charts.error_types_stacked(types)),
    ]  # fmt: skip
    return _render(
        request,
        "errors",
        ctx,
        figures,
        model_table=selectors.totals_by_group(by_model),
        provider_table=selectors.totals_by_group(by_provider),
        type_table=selectors.totals_by_group(types),
    )


@portal_view(EVERY_ROLE)
def tags(request: HttpRequest, identity: PortalIdentity) -> HttpResponse:
    ctx = _resolve(request, identity)
    tag_keys = selectors.tag_keys_in_use(scope=ctx.scope)
    options = ctx.options
    if not options.tag_key and tag_keys:
        # Default to the first key so the page is never blank.
        options = datasets.PageOptions(**{**options.__dict__, "tag_key": tag_keys[0]})
        ctx = Context(ctx.scope, ctx.filters, options, ctx.form, ctx.today)
    ranking = datasets.tag_ranking(ctx.scope, ctx.filters, options)
    figures = [
        _figure(request, "tag-ranking", f"Values of {options.tag_key} by {charts.RANK_LABELS[options.rank]}",
                "tag_ranking", charts.ranking_bar(ranking, metric=options.rank)),
    ]  # fmt: skip
    drill = drill_models = None
    if options.tag_value:
        drill = datasets.tag_drill(ctx.scope, ctx.filters, options)
        drill_models = datasets.tag_drill_models(ctx.scope, ctx.filters, options)
        figures += [
            _figure(request, "tag-drill", "Cost and tokens over time", "tag_drill",
                    charts.cost_trend(drill)),
            _figure(request, "tag-drill-models", "Cost by model", "tag_drill_models",
                    charts.cost_bar(drill_models)),
        ]  # fmt: skip
    drill_base = _query(request, drop=("value",), key=options.tag_key)
    return _render(
        request,
        "tags",
        ctx,
        figures,
        ranking=ranking,
        drill_models=drill_models,
        drill_query=drill_base,
        rank_labels=charts.RANK_LABELS,
    )


@portal_view(EVERY_ROLE)
def chart_csv(request: HttpRequest, identity: PortalIdentity, dataset: str) -> HttpResponse:
    read = datasets.DATASETS.get(dataset)
    if read is None:
        return HttpResponse("Unknown chart.", status=404, content_type="text/plain")
    ctx = _resolve(request, identity)
    options = ctx.options
    if dataset.startswith("tag_") and not options.tag_key:
        return HttpResponse("Choose a tag key (key=...).", status=400, content_type="text/plain")
    region = None
    if is_multi_region():
        chosen = (ctx.filters.region,) if ctx.filters.region else ()
        region = "+".join(ctx.scope.readable_regions(chosen))
    return exports.dataset_csv(
        rows=read(ctx.scope, ctx.filters, options),
        filename=f"{dataset}-{ctx.filters.start}-{ctx.filters.end}.csv",
        region=region,
    )
