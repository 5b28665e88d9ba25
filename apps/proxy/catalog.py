"""The in-memory model catalog: client model names -> deployments, plus prices.

Loaded once per worker and refreshed in the background when the database changes, so the
hot path never queries the database for routing or pricing.

Each load is also written to Redis as a snapshot (`SNAPSHOT_KEY`), off the request path. A
worker that starts while the database is down loads that snapshot instead, and replaces it
at the first refresh that reaches the database; without it such a worker could not route
a single request. The snapshot holds what the database holds: a deployment's credential
is its environment variable name or its ciphertext, resolved only when loaded, never the
key itself. Embedded mode (no Redis) has no snapshot.
"""

import asyncio
import logging
import time
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import orjson
from asgiref.sync import sync_to_async
from django.conf import settings
from django.db import DatabaseError, connection
from django.db.models import Count, Max

from apps.accounts.models import CustomerRegion
from apps.billing.models import ModelPrice
from gateway_portal.db_snapshot import read_snapshot

from .crypto import resolve_deployment_api_key
from .errors import GatewayError
from .key_mirror import redis_client
from .models import Deployment, GatewayModel
from .outage_log import STORE_ERRORS, OutageLog
from .pricing import PriceBook
from .providers.base import DeploymentInfo

logger = logging.getLogger(__name__)
# One line when refreshes start failing (a database outage), a summary each minute, one
# when they work again: not a traceback every CATALOG_REFRESH_SECONDS.
refresh_log = OutageLog(
    "model catalog refresh", logger=logger, consequence="keeping the previous catalog"
)
snapshot_log = OutageLog(
    "model catalog snapshot (Redis)", logger=logger, consequence="not written or read"
)

SNAPSHOT_KEY = "tollgate:catalog-snapshot"
# Raised when the records change shape (2: cache write prices), so a snapshot written by
# older code is skipped rather than misread.
SNAPSHOT_VERSION = 2
# The fingerprint of a catalog loaded from the snapshot: matches no database state, so the
# first refresh that reaches the database reloads it.
_FROM_SNAPSHOT = ("snapshot",)


CATALOG_UNAVAILABLE = "The gateway cannot load its model catalog right now; retry shortly."
# After a failed first load, requests are refused at once for this long (see ensure_loaded).
LOAD_RETRY_SECONDS = 1.0


class CatalogUnavailable(GatewayError):
    status = 503
    code = "model_catalog_unavailable"


@dataclass(frozen=True, slots=True)
class ModelEntry:
    name: str
    mode: str
    routing_strategy: str
    deployments: tuple[DeploymentInfo, ...]
    created_ts: int


_DEPLOYMENT_FIELDS = (
    "id",
    "name",
    "provider",
    "upstream_model",
    "base_url",
    "api_key_env",
    "api_key_encrypted",
    "api_version",
    "timeout_seconds",
    "priority",
    "weight",
    "price_model_name",
    "input_cost_per_token",
    "output_cost_per_token",
    "cached_input_cost_per_token",
    "cache_write_cost_per_token",
    "extra",
)


def _decimal(value: Any) -> Decimal | None:
    # Decimal from the database, str from the snapshot.
    return Decimal(value) if value is not None else None


def deployment_info(record: dict[str, Any], model_name: str) -> DeploymentInfo:
    """From a Deployment's fields (a `.values()` row or its snapshot copy)."""
    return DeploymentInfo(
        id=record["id"],
        name=record["name"],
        model_name=model_name,
        provider=record["provider"],
        upstream_model=record["upstream_model"],
        base_url=record["base_url"].rstrip("/"),
        api_key=resolve_deployment_api_key(record["api_key_env"], record["api_key_encrypted"]),
        api_version=record["api_version"],
        timeout_seconds=record["timeout_seconds"],
        priority=record["priority"],
        weight=record["weight"],
        price_model_name=record["price_model_name"] or record["upstream_model"],
        input_cost_per_token=_decimal(record["input_cost_per_token"]),
        output_cost_per_token=_decimal(record["output_cost_per_token"]),
        cached_input_cost_per_token=_decimal(record["cached_input_cost_per_token"]),
        cache_write_cost_per_token=_decimal(record["cache_write_cost_per_token"]),
        extra=dict(record["extra"] or {}),
    )


def _read_records() -> dict[str, Any]:
    """The active models with their deployments, and every price, as plain data: what the
    catalog is built from, and what the snapshot stores."""
    deployments: dict[int, list[dict[str, Any]]] = {}
    rows = Deployment.objects.filter(is_active=True, model__is_active=True)
    for row in rows.order_by("priority", "id").values("model_id", *_DEPLOYMENT_FIELDS):
        deployments.setdefault(row.pop("model_id"), []).append(row)
    models = [
        {
            "name": model.name,
            "mode": model.mode,
            "routing_strategy": model.routing_strategy,
            "created_ts": int(model.created_at.timestamp()),
            "deployments": deployments.get(model.id, []),
        }
        for model in GatewayModel.objects.filter(is_active=True)
    ]
    prices = list(ModelPrice.objects.values_list(*PriceBook.VALUE_FIELDS))
    customer_regions = dict(CustomerRegion.objects.values_list("customer_id", "region"))
    return {"models": models, "prices": prices, "customer_regions": customer_regions}


def _build(records: dict[str, Any]) -> tuple[dict[str, ModelEntry], PriceBook]:
    models = {
        model["name"]: ModelEntry(
            name=model["name"],
            mode=model["mode"],
            routing_strategy=model["routing_strategy"],
            deployments=tuple(deployment_info(d, model["name"]) for d in model["deployments"]),
            created_ts=model["created_ts"],
        )
        for model in records["models"]
    }
    return models, PriceBook.from_values(records["prices"])


def _fingerprint() -> tuple[Any, ...]:
    parts: list[tuple[Any, ...]] = []
    for model in (GatewayModel, Deployment):
        agg = model.objects.aggregate(n=Count("id"), t=Max("updated_at"))
        parts.append((agg["n"], agg["t"]))
    agg = ModelPrice.objects.aggregate(n=Count("id"), m=Max("id"), t=Max("updated_at"))
    parts.append((agg["n"], agg["m"], agg["t"]))
    agg = CustomerRegion.objects.aggregate(n=Count("id"), t=Max("updated_at"))
    parts.append((agg["n"], agg["t"]))
    return tuple(parts)


class Catalog:
    def __init__(self) -> None:
        self.models: dict[str, ModelEntry] = {}
        self.prices = PriceBook()
        # Customer tag value -> data region, for the customers kept outside their team's.
        self.customer_regions: dict[str, str] = {}
        self._fingerprint: tuple[Any, ...] | None = None
        self._task: asyncio.Task[None] | None = None
        self._lock = asyncio.Lock()
        self._load_retry_at = 0.0

    @property
    def loaded(self) -> bool:
        return self._fingerprint is not None

    def load_sync(self, *, force: bool = False) -> bool:
        """Reload if the database changed; returns True when something was reloaded."""
        return self._load_sync(force=force) is not None

    def _load_sync(self, *, force: bool) -> dict[str, Any] | None:
        """Reload if the database changed; returns the records it was built from, if so."""
        try:
            with read_snapshot():
                fingerprint = _fingerprint()
                if not force and fingerprint == self._fingerprint:
                    return None
                records = _read_records()
        except DatabaseError:
            # Outside Django's request cycle nobody else resets a broken connection.
            connection.close()
            raise
        self._install(records, fingerprint)
        return records

    def _install(self, records: dict[str, Any], fingerprint: tuple[Any, ...]) -> None:
        models, prices = _build(records)
        # Swap whole objects so a request never sees half a catalog.
        self.models, self.prices, self._fingerprint = models, prices, fingerprint
        # A snapshot written before regions existed has none.
        self.customer_regions = dict(records.get("customer_regions") or {})

    async def refresh(self, *, force: bool = False) -> bool:
        """Reload from the database if it changed (a first load falls back on the snapshot)."""
        async with self._lock:
            try:
                records = await sync_to_async(self._load_sync)(force=force)
            except DatabaseError as exc:
                if self.loaded or not await self._load_snapshot():
                    raise
                refresh_log.failed(exc)
                logger.warning(
                    "model catalog loaded from the Redis snapshot: %d models", len(self.models)
                )
                return True
            if records is not None:
                await self._write_snapshot(records)
            return records is not None

    async def ensure_loaded(self) -> None:
        if self.loaded:
            return
        # While the database is down each request would queue on the lock for its own
        # failed connect; one attempt a second is enough (the refresh loop keeps trying).
        if time.monotonic() < self._load_retry_at:
            raise CatalogUnavailable(CATALOG_UNAVAILABLE)
        try:
            await self.refresh(force=True)
        except DatabaseError as exc:
            self._load_retry_at = time.monotonic() + LOAD_RETRY_SECONDS
            refresh_log.failed(exc)
            raise CatalogUnavailable(CATALOG_UNAVAILABLE) from None

    async def _write_snapshot(self, records: dict[str, Any]) -> None:
        client = redis_client()
        if client is None:
            return
        try:
            await client.set(
                SNAPSHOT_KEY, orjson.dumps({"version": SNAPSHOT_VERSION, **records}, default=str)
            )
        except STORE_ERRORS as exc:
            snapshot_log.failed(exc)
            return
        snapshot_log.ok()

    async def _load_snapshot(self) -> bool:
        client = redis_client()
        if client is None:
            return False
        try:
            raw = await client.get(SNAPSHOT_KEY)
        except STORE_ERRORS as exc:
            snapshot_log.failed(exc)
            return False
        snapshot_log.ok()
        if raw is None:
            return False
        try:
            records = orjson.loads(raw)
            if records.get("version") != SNAPSHOT_VERSION:
                return False
            self._install(records, _FROM_SNAPSHOT)
        except (orjson.JSONDecodeError, AttributeError, KeyError, TypeError, ValueError) as exc:
            logger.warning("ignoring an unreadable model catalog snapshot: %s", exc)
            return False
        return True

    async def _refresh_forever(self) -> None:
        interval = settings.CATALOG_REFRESH_SECONDS
        while True:
            await asyncio.sleep(interval)
            try:
                reloaded = await self.refresh()
            except Exception as exc:  # keep serving the last good catalog
                refresh_log.failed(exc)
                continue
            refresh_log.ok()
            if reloaded:
                logger.info("model catalog reloaded: %d models", len(self.models))

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._refresh_forever())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            self._task = None


catalog = Catalog()
