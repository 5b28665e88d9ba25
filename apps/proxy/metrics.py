"""Prometheus metrics: `GET /metrics`, served by the ASGI dispatcher in front of Django.

Across worker processes: counters and histograms use prometheus-client's multiprocess mode
when PROMETHEUS_MULTIPROC_DIR is set (each worker writes its own mmap files, the scraping
worker sums them all, a dead worker's counts included, so totals never go backwards). The
directory must exist and be emptied before the server starts (see README "Metrics"); without
it each process reports only itself, which is right for a single worker. Point-in-time values
(breaker state, traffic share, in flight, usage buffer depth, spool size, write lag) are not
kept in those files: the scraping worker computes them at scrape time from state every worker
shares already (the health board synced through Redis, the usage buffer), so no stale gauge
of a dead worker can linger.

Labels are bounded: model, deployment, team slug, status code, quota rule id, failure kind.
Tag values become labels only for the tag keys an admin lists in METRICS_TAG_KEYS, each
capped at METRICS_TAG_VALUES_MAX distinct values per process (the rest count as "_other"),
and only on their own counter so they do not multiply the main series.
"""

import asyncio
import hmac
import ipaddress
import logging
import os
import time
from functools import cache
from pathlib import Path
from typing import Any

from django.conf import settings
from prometheus_client import (
    REGISTRY,
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
)
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.multiprocess import MultiProcessCollector

from apps.usage.event import UsageEvent

from .asgi_types import Receive, Scope, Send
from .auth import presented_secret

logger = logging.getLogger(__name__)

OTHER = "_other"
LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60, 120, float("inf"))
TTFT_BUCKETS = (0.025, 0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, float("inf"))

REQUESTS = Counter(
    "tollgate_requests",
    "Proxied requests by model, deployment, team and HTTP status.",
    ["model", "deployment", "team", "status"],
)
INPUT_TOKENS = Counter(
    "tollgate_input_tokens", "Input tokens billed.", ["model", "deployment", "team"]
)
OUTPUT_TOKENS = Counter(
    "tollgate_output_tokens", "Output tokens billed.", ["model", "deployment", "team"]
)
COST = Counter("tollgate_cost_usd", "Cost in US dollars.", ["model", "deployment", "team"])
LATENCY = Histogram(
    "tollgate_request_latency_seconds",
    "Whole request latency as the client saw it.",
    ["model", "deployment"],
    buckets=LATENCY_BUCKETS,
)
TTFT = Histogram(
    "tollgate_time_to_first_token_seconds",
    "Time to first token of streamed answers.",
    ["model", "deployment"],
    buckets=TTFT_BUCKETS,
)
QUOTA_REFUSALS = Counter(
    "tollgate_quota_refusals", "Requests refused by a quota rule, by rule id.", ["rule"]
)
TAGGED = Counter(
    "tollgate_requests_by_tag",
    "Requests by an opted-in tag key (METRICS_TAG_KEYS) and its value.",
    ["model", "tag_key", "tag_value"],
)

_tag_values: dict[str, set[str]] = {}


def _tag_value(key: str, value: str) -> str:
    seen = _tag_values.setdefault(key, set())
    if value in seen:
        return value
    if len(seen) >= settings.METRICS_TAG_VALUES_MAX:
        return OTHER
    seen.add(value)
    return value


def observe_usage(event: UsageEvent, *, team: str) -> None:
    """Count one finished request (called beside the usage record, once per request)."""
    model, deployment = event.model, event.deployment or "none"
    REQUESTS.labels(model, deployment, team, str(event.status_code)).inc()
    # A counter refuses a negative step (ValueError, a 500 to the client); the proxy never
    # bills one, but this is the hot path's last line, so only positive figures count.
    if event.input_tokens > 0:
        INPUT_TOKENS.labels(model, deployment, team).inc(event.input_tokens)
    if event.output_tokens > 0:
        OUTPUT_TOKENS.labels(model, deployment, team).inc(event.output_tokens)
    if event.cost_usd is not None and event.cost_usd > 0:
        COST.labels(model, deployment, team).inc(float(event.cost_usd))
    if event.status_code == 200:
        LATENCY.labels(model, deployment).observe(event.latency_ms / 1000)
        if event.ttft_ms is not None:
            TTFT.labels(model, deployment).observe(event.ttft_ms / 1000)
    for key in settings.METRICS_TAG_KEYS:
        value = event.tags.get(key)
        if value:
            TAGGED.labels(model, key, _tag_value(key, str(value)[:64])).inc()


def observe_quota_refusal(extra: dict[str, Any]) -> None:
    rules = {str(item.get("rule")) for item in extra.get("broken_rules") or () if item}
    for rule in rules or {"unknown"}:
        QUOTA_REFUSALS.labels(rule).inc()


# --- scrape-time values ----------------------------------------------------------------------


class _Snapshot:
    """Collector of values computed once per scrape (see `_live_values`)."""

    def __init__(self, families: list[Any]) -> None:
        self.families = families

    def collect(self) -> list[Any]:
        return self.families


async def _buffer_values() -> tuple[float, float]:
    """(entries waiting to be written, age in seconds of the oldest one)."""
    from apps.usage.buffer import MemoryBuffer, RedisStreamBuffer, get_usage_buffer

    buffer = get_usage_buffer()
    now = time.time()
    if isinstance(buffer, RedisStreamBuffer):
        client = buffer._client()
        async with client.pipeline(transaction=False) as pipe:
            pipe.xlen(buffer.stream)
            pipe.xrange(buffer.stream, "-", "+", count=1)
            depth, oldest = await pipe.execute()
        age = 0.0
        if oldest:
            # Stream ids start with the entry's time in milliseconds; acked ones are deleted.
            millis = int(oldest[0][0].split(b"-")[0])
            age = max(now - millis / 1000, 0.0)
        return float(depth), age
    if isinstance(buffer, MemoryBuffer):
        try:
            oldest_event = buffer._queue[0]
        except IndexError:
            return 0.0, 0.0
        return float(len(buffer)), max(now - oldest_event.created_at.timestamp(), 0.0)
    return 0.0, 0.0


def _spool_size() -> tuple[float, float]:
    directory = Path(settings.USAGE_SPOOL_DIR)
    files = size = 0
    if directory.is_dir():
        for entry in os.scandir(directory):
            if entry.is_file():
                files += 1
                size += entry.stat().st_size
    return float(files), float(size)


async def _live_values() -> list[Any]:
    from .catalog import catalog
    from .health import STATE_VALUES, board

    stats = await board.fleet_stats()
    state = GaugeMetricFamily(
        "tollgate_deployment_breaker_state",
        "Circuit breaker: 0 closed, 1 half-open, 2 open.",
        labels=["model", "deployment"],
    )
    share = GaugeMetricFamily(
        "tollgate_deployment_traffic_share",
        "Share of the model's attempts over the recent window (HEALTH_STATS_WINDOW_SECONDS).",
        labels=["model", "deployment"],
    )
    busy = GaugeMetricFamily(
        "tollgate_deployment_in_flight",
        "Requests in flight, summed over workers.",
        labels=["model", "deployment"],
    )
    ewma = GaugeMetricFamily(
        "tollgate_deployment_latency_ewma_seconds",
        "Moving average of latency the latency strategy routes by.",
        labels=["model", "deployment"],
    )
    for entry in catalog.models.values():
        total = sum(stats[d.id].requests for d in entry.deployments if d.id in stats)
        for deployment in entry.deployments:
            item = stats.get(deployment.id)
            labels = [entry.name, deployment.name]
            state.add_metric(labels, STATE_VALUES[item.state] if item else 0)
            share.add_metric(labels, (item.requests / total) if item and total else 0.0)
            busy.add_metric(labels, item.in_flight if item else 0)
            if item and item.ewma_ms is not None:
                ewma.add_metric(labels, item.ewma_ms / 1000)
    depth, lag = await _buffer_values()
    files, size = await asyncio.to_thread(_spool_size)
    held = GaugeMetricFamily(
        "tollgate_usage_held_rows",
        "Usage rows held in the local spool because their data region's database is down.",
        labels=["region"],
    )
    from apps.usage.writer import held_rows_by_region

    for region, rows in (await asyncio.to_thread(held_rows_by_region)).items():
        held.add_metric([region], rows)
    return [
        state,
        share,
        busy,
        ewma,
        GaugeMetricFamily(
            "tollgate_usage_buffer_depth", "Usage records waiting to be written.", value=depth
        ),
        GaugeMetricFamily(
            "tollgate_usage_write_lag_seconds",
            "Age of the oldest usage record not yet written (0 when none waits).",
            value=lag,
        ),
        GaugeMetricFamily(
            "tollgate_usage_spool_files", "Files in the local usage spool.", value=files
        ),
        GaugeMetricFamily(
            "tollgate_usage_spool_bytes", "Bytes in the local usage spool.", value=size
        ),
        held,
    ]


def render_counters() -> bytes:
    directory = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    if directory:
        registry = CollectorRegistry()
        MultiProcessCollector(registry, path=directory)  # type: ignore[no-untyped-call]  # prometheus_client leaves its __init__ unannotated
        return generate_latest(registry)
    return generate_latest(REGISTRY)


async def render() -> bytes:
    live = CollectorRegistry()
    try:
        live.register(_Snapshot(await _live_values()))
    except Exception:  # counters are still worth serving when Redis is away
        logger.exception("could not compute live metrics")
    counters = await asyncio.to_thread(render_counters)
    return counters + generate_latest(live)


# --- the endpoint --------------------------------------------------------------------------


@cache
def _networks(spec: tuple[str, ...]) -> tuple[Any, ...]:
    return tuple(ipaddress.ip_network(item, strict=False) for item in spec if item)


def allowed(scope: Scope) -> bool:
    """With METRICS_TOKEN set, that bearer token from any address; without, a client in
    METRICS_ALLOWED_NETWORKS.

    A configured token is required from loopback too: a page in a browser on the gateway's
    host (DNS rebinding) or a local reverse proxy both reach us from 127.0.0.1.
    """
    token = settings.METRICS_TOKEN
    if token:
        for name, value in scope.get("headers") or ():
            if name == b"authorization":
                given = presented_secret({name: value})
                return given is not None and hmac.compare_digest(given.encode(), token.encode())
        return False
    client = scope.get("client")
    if not client:
        return False
    try:
        address = ipaddress.ip_address(client[0])
    except ValueError:
        return False
    return any(address in net for net in _networks(tuple(settings.METRICS_ALLOWED_NETWORKS)))


async def endpoint(scope: Scope, receive: Receive, send: Send) -> None:
    if scope["method"] not in ("GET", "HEAD"):
        status, body, kind = 405, b"method not allowed\n", b"text/plain"
    elif not allowed(scope):
        status, body, kind = 403, b"forbidden\n", b"text/plain"
    else:
        status, body, kind = 200, await render(), CONTENT_TYPE_LATEST.encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [(b"content-type", kind), (b"cache-control", b"no-store")],
        }
    )
    await send({"type": "http.response.body", "body": b"" if scope["method"] == "HEAD" else body})
