"""The in-memory model catalog: client model names -> deployments, plus prices.

Loaded once per worker and refreshed in the background when the database changes, so the
hot path never queries the database for routing or pricing.
"""

import asyncio
import logging
from dataclasses import dataclass

from asgiref.sync import sync_to_async
from django.conf import settings
from django.db import DatabaseError, connection
from django.db.models import Count, Max

from apps.billing.models import ModelPrice

from .crypto import resolve_deployment_api_key
from .models import Deployment, GatewayModel
from .pricing import PriceBook
from .providers.base import DeploymentInfo

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class ModelEntry:
    name: str
    mode: str
    routing_strategy: str
    deployments: tuple[DeploymentInfo, ...]
    created_ts: int


def deployment_info(row: Deployment) -> DeploymentInfo:
    return DeploymentInfo(
        id=row.id,
        name=row.name,
        model_name=row.model.name,
        provider=row.provider,
        upstream_model=row.upstream_model,
        base_url=row.base_url.rstrip("/"),
        api_key=resolve_deployment_api_key(row.api_key_env, row.api_key_encrypted),
        api_version=row.api_version,
        timeout_seconds=row.timeout_seconds,
        priority=row.priority,
        weight=row.weight,
        price_model_name=row.price_model_name or row.upstream_model,
        input_cost_per_token=row.input_cost_per_token,
        output_cost_per_token=row.output_cost_per_token,
        cached_input_cost_per_token=row.cached_input_cost_per_token,
        extra=dict(row.extra or {}),
    )


def _fingerprint() -> tuple:
    parts = []
    for model in (GatewayModel, Deployment):
        agg = model.objects.aggregate(n=Count("id"), t=Max("updated_at"))
        parts.append((agg["n"], agg["t"]))
    agg = ModelPrice.objects.aggregate(n=Count("id"), m=Max("id"))
    parts.append((agg["n"], agg["m"]))
    return tuple(parts)


def _load_models() -> dict[str, ModelEntry]:
    entries: dict[str, ModelEntry] = {}
    deployments: dict[int, list[DeploymentInfo]] = {}
    rows = Deployment.objects.filter(is_active=True, model__is_active=True).select_related("model")
    for row in rows.order_by("priority", "id"):
        deployments.setdefault(row.model_id, []).append(deployment_info(row))
    for model in GatewayModel.objects.filter(is_active=True):
        entries[model.name] = ModelEntry(
            name=model.name,
            mode=model.mode,
            routing_strategy=model.routing_strategy,
            deployments=tuple(deployments.get(model.id, ())),
            created_ts=int(model.created_at.timestamp()),
        )
    return entries


class Catalog:
    def __init__(self) -> None:
        self.models: dict[str, ModelEntry] = {}
        self.prices = PriceBook()
        self._fingerprint: tuple | None = None
        self._task: asyncio.Task | None = None
        self._lock = asyncio.Lock()

    @property
    def loaded(self) -> bool:
        return self._fingerprint is not None

    def load_sync(self, *, force: bool = False) -> bool:
        """Reload if the database changed; returns True when something was reloaded."""
        try:
            fingerprint = _fingerprint()
            if not force and fingerprint == self._fingerprint:
                return False
            models = _load_models()
            prices = PriceBook.load()
        except DatabaseError:
            # Outside Django's request cycle nobody else resets a broken connection.
            connection.close()
            raise
        # Swap whole objects so a request never sees half a catalog.
        self.models, self.prices, self._fingerprint = models, prices, fingerprint
        return True

    async def refresh(self, *, force: bool = False) -> bool:
        async with self._lock:
            return await sync_to_async(self.load_sync)(force=force)

    async def ensure_loaded(self) -> None:
        if not self.loaded:
            await self.refresh(force=True)

    async def _refresh_forever(self) -> None:
        interval = settings.CATALOG_REFRESH_SECONDS
        while True:
            await asyncio.sleep(interval)
            try:
                if await self.refresh():
                    logger.info("model catalog reloaded: %d models", len(self.models))
            except Exception:  # keep serving the last good catalog
                logger.exception("model catalog refresh failed; keeping the previous one")

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._refresh_forever())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            self._task = None


catalog = Catalog()
