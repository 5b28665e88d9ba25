"""The fleet's recent health per deployment, as the portal page, its JSON and /metrics show it.

Built from worker snapshots and breaker records (`shared_state`): every worker's as of its
last sync when Redis is configured, else this process's alone.
"""

from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from django.conf import settings

from .breaker import CLOSED, HALF_OPEN, OPEN
from .shared_state import LATENCY_BUCKETS_MS, BreakerRecord, EwmaSum, WorkerSnapshot

if TYPE_CHECKING:
    from apps.proxy.catalog import ModelEntry


@dataclass(slots=True)
class DeploymentStats:
    """Merged recent figures of one deployment across every worker (portal, metrics)."""

    deployment_id: int
    requests: int = 0
    errors: int = 0
    in_flight: int = 0
    p50_ms: float | None = None
    p95_ms: float | None = None
    ewma_ms: float | None = None
    ttft_ms: float | None = None
    state: str = CLOSED
    open_until: float = 0.0
    reason: str = ""
    window_seconds: float = 60.0

    @property
    def rate_per_second(self) -> float:
        return self.requests / self.window_seconds if self.window_seconds else 0.0

    @property
    def error_rate(self) -> float:
        return self.errors / self.requests if self.requests else 0.0


def _percentile(histogram: list[int], q: float) -> float | None:
    """The upper bound of the bucket holding rank q; the open last bucket reports the bound
    below it, since infinity is no figure to show."""
    total = sum(histogram)
    if not total:
        return None
    rank = q * total
    seen = 0
    for index, count in enumerate(histogram):
        seen += count
        if seen >= rank:
            bound = LATENCY_BUCKETS_MS[index]
            return LATENCY_BUCKETS_MS[index - 1] if bound == float("inf") else float(bound)
    return None


def merge_stats(
    snapshots: list[WorkerSnapshot], breakers: dict[int, BreakerRecord], now: float
) -> dict[int, DeploymentStats]:
    window = float(settings.HEALTH_STATS_WINDOW_SECONDS)
    live = 3 * settings.HEALTH_SYNC_SECONDS + 1
    stats: dict[int, DeploymentStats] = {}
    histograms: dict[int, list[int]] = {}
    ewmas: dict[int, EwmaSum] = {}
    for snapshot in snapshots:
        age = now - snapshot.get("ts", 0)
        for key, item in snapshot.get("deployments", {}).items():
            deployment_id = int(key)
            entry = stats.setdefault(
                deployment_id, DeploymentStats(deployment_id, window_seconds=window)
            )
            ewmas.setdefault(deployment_id, EwmaSum()).add(item)
            if age > window:
                continue  # a long-gone worker: its EWMA still informs, its counts are stale
            entry.requests += int(item.get("req") or 0)
            entry.errors += int(item.get("err") or 0)
            if age < live:
                entry.in_flight += int(item.get("busy") or 0)
            hist = histograms.setdefault(deployment_id, [0] * len(LATENCY_BUCKETS_MS))
            for index, count in enumerate(item.get("hist") or ()):
                if index < len(hist):
                    hist[index] += int(count)
    for deployment_id, ewma in ewmas.items():
        entry = stats[deployment_id]
        entry.ewma_ms = ewma.latency_ms
        entry.ttft_ms = ewma.ttft_ms
    for deployment_id, hist in histograms.items():
        stats[deployment_id].p50_ms = _percentile(hist, 0.5)
        stats[deployment_id].p95_ms = _percentile(hist, 0.95)
    for deployment_id, record in breakers.items():
        entry = stats.setdefault(
            deployment_id, DeploymentStats(deployment_id, window_seconds=window)
        )
        until = float(record.get("until") or 0.0)
        if record.get("state") == OPEN and until > now:
            entry.state, entry.open_until = OPEN, until
        elif record.get("state") in (OPEN, HALF_OPEN):
            entry.state = HALF_OPEN
        entry.reason = str(record.get("reason") or "") if entry.state != CLOSED else ""
    return stats


def overview(
    models: Iterable["ModelEntry"], stats: dict[int, DeploymentStats]
) -> list[dict[str, Any]]:
    """Per model, its deployments' recent figures as plain data (portal page, JSON)."""
    result = []
    for model in models:
        total = sum(stats[d.id].requests for d in model.deployments if d.id in stats)
        rows = []
        for deployment in model.deployments:
            item = stats.get(deployment.id) or DeploymentStats(
                deployment.id, window_seconds=float(settings.HEALTH_STATS_WINDOW_SECONDS)
            )
            rows.append(
                {
                    "id": deployment.id,
                    "name": deployment.name,
                    "provider": deployment.provider,
                    "upstream_model": deployment.upstream_model,
                    "priority": deployment.priority,
                    "weight": deployment.weight,
                    "rate_per_second": round(item.rate_per_second, 3),
                    "requests": item.requests,
                    "p50_ms": item.p50_ms,
                    "p95_ms": item.p95_ms,
                    "ewma_ms": round(item.ewma_ms, 1) if item.ewma_ms is not None else None,
                    "ttft_ewma_ms": round(item.ttft_ms, 1) if item.ttft_ms is not None else None,
                    "error_rate": round(item.error_rate, 4),
                    "in_flight": item.in_flight,
                    "state": item.state,
                    "open_until": item.open_until or None,
                    "reason": item.reason,
                    "share": round(item.requests / total, 4) if total else 0.0,
                }
            )
        result.append({"name": model.name, "strategy": model.routing_strategy, "deployments": rows})
    return result
