"""Writes for the model catalog: apply and export the declarative YAML of models."""

import os
import re
from decimal import Decimal, InvalidOperation
from typing import Any

from django.conf import settings
from django.core.exceptions import ValidationError
from django.db import transaction

from apps.outbound.guard import check_url
from apps.usage.regions import region_names

from .crypto import api_key_env_problem
from .models import Deployment, GatewayModel, ModelMode, ProviderType, RoutingStrategy

MODEL_KEYS = {"name", "mode", "description", "routing_strategy", "is_active", "deployments"}
DEPLOYMENT_KEYS = {
    "name",
    "provider",
    "upstream_model",
    "base_url",
    "api_version",
    "api_key_env",
    "api_key_encrypted",
    "timeout_seconds",
    "priority",
    "weight",
    "price_model_name",
    "prices",
    "extra",
    "ttft_timeout_seconds",
    "regions",
    "is_active",
}
PRICE_KEYS = (
    "input_cost_per_token",
    "output_cost_per_token",
    "cached_input_cost_per_token",
    "cache_write_cost_per_token",
)
_VAR = re.compile(r"\$\{([A-Z0-9_]+)\}")


class CatalogSpecError(ValueError):
    """The YAML declaration is invalid; the message names the model and deployment."""


def _expand(value: str) -> str:
    """${NAME} in strings: a Django setting of that name, else the environment."""

    def repl(match: re.Match[str]) -> str:
        name = match.group(1)
        found = getattr(settings, name, None)
        if isinstance(found, str):
            return found
        if name in os.environ:
            return os.environ[name]
        raise CatalogSpecError(f"${{{name}}} is neither a setting nor an environment variable")

    return _VAR.sub(repl, value)


def _check_keys(where: str, item: object, allowed: set[str]) -> dict[str, Any]:
    if not isinstance(item, dict):
        raise CatalogSpecError(f"{where}: must be a mapping")
    unknown = set(item) - allowed
    if unknown:
        raise CatalogSpecError(f"{where}: unknown keys {sorted(unknown)}")
    return item


def _deployment_fields(where: str, spec: dict[str, Any]) -> dict[str, Any]:
    for required in ("name", "provider", "upstream_model", "base_url"):
        if not spec.get(required):
            raise CatalogSpecError(f"{where}: '{required}' is required")
    if spec["provider"] not in ProviderType.values:
        raise CatalogSpecError(f"{where}: provider must be one of {ProviderType.values}")
    base_url = _expand(str(spec["base_url"]))
    try:
        check_url(base_url, settings.UPSTREAM_ALLOWED_HOSTS)
    except ValidationError as exc:
        raise CatalogSpecError(f"{where}: {' '.join(exc.messages)}") from exc
    if "api_key" in spec:
        raise CatalogSpecError(f"{where}: plaintext api_key is not accepted; use api_key_env")
    api_key_env = str(spec.get("api_key_env", ""))
    if api_key_env and (problem := api_key_env_problem(api_key_env)):
        raise CatalogSpecError(f"{where}: api_key_env: {problem}")
    prices = spec.get("prices") or {}
    _check_keys(f"{where}.prices", prices, set(PRICE_KEYS))
    fields = {
        "provider": spec["provider"],
        "upstream_model": str(spec["upstream_model"]),
        "base_url": base_url,
        "api_version": str(spec.get("api_version", "")),
        "api_key_env": api_key_env,
        "api_key_encrypted": str(spec.get("api_key_encrypted", "")),
        "timeout_seconds": float(spec.get("timeout_seconds", 60)),
        "priority": int(spec.get("priority", 0)),
        "weight": int(spec.get("weight", 1)),
        "price_model_name": str(spec.get("price_model_name", "")),
        "extra": dict(spec.get("extra") or {}),
        "is_active": bool(spec.get("is_active", True)),
    }
    for key in PRICE_KEYS:
        try:
            fields[key] = Decimal(str(prices[key])) if key in prices else None
        except InvalidOperation as exc:
            raise CatalogSpecError(f"{where}.prices.{key}: not a number") from exc
    if fields["timeout_seconds"] <= 0:
        raise CatalogSpecError(f"{where}: timeout_seconds must be positive")
    if fields["weight"] < 0:
        raise CatalogSpecError(f"{where}: weight must not be negative")
    # The stream time-to-first-token limit lives in `extra`, where the router reads it.
    if "ttft_timeout_seconds" in spec:
        try:
            ttft = float(spec["ttft_timeout_seconds"])
        except (TypeError, ValueError) as exc:
            raise CatalogSpecError(f"{where}: ttft_timeout_seconds must be a number") from exc
        if ttft <= 0:
            raise CatalogSpecError(f"{where}: ttft_timeout_seconds must be positive")
        fields["extra"]["ttft_timeout_seconds"] = ttft
    # The data regions the deployment may serve (a strict region's tenants go only to
    # deployments naming it; apps/proxy/regions.py); kept in `extra`, where routing reads it.
    if "regions" in spec:
        regions = spec["regions"]
        if not isinstance(regions, list) or not all(isinstance(r, str) for r in regions):
            raise CatalogSpecError(f"{where}: regions must be a list of region names")
        unknown = sorted(set(regions) - set(region_names()))
        if unknown:
            raise CatalogSpecError(
                f"{where}: regions: {', '.join(unknown)} not in DATA_REGIONS "
                f"({', '.join(region_names())})"
            )
        fields["extra"]["regions"] = list(dict.fromkeys(regions))
    return fields


@transaction.atomic
def model_catalog_apply(*, spec: dict[str, Any]) -> dict[str, int]:
    """Make the database match the models declared in `spec` (idempotent).

    Models not named in the spec are left alone; a named model's deployments become exactly
    those listed.
    """
    if not isinstance(spec, dict) or not isinstance(spec.get("models"), list):
        raise CatalogSpecError("the file must have a top-level 'models' list")
    counts = {"models": 0, "deployments": 0, "removed_deployments": 0}
    seen: set[str] = set()
    for index, model_spec in enumerate(spec["models"]):
        where = f"models[{index}]"
        _check_keys(where, model_spec, MODEL_KEYS)
        name = model_spec.get("name")
        if not name or not isinstance(name, str):
            raise CatalogSpecError(f"{where}: 'name' is required")
        where = f"model {name!r}"
        if name in seen:
            raise CatalogSpecError(f"{where}: declared twice")
        seen.add(name)
        mode = model_spec.get("mode", ModelMode.CHAT)
        if mode not in ModelMode.values:
            raise CatalogSpecError(f"{where}: mode must be one of {ModelMode.values}")
        strategy = model_spec.get("routing_strategy", RoutingStrategy.PRIORITY)
        if strategy not in RoutingStrategy.values:
            raise CatalogSpecError(
                f"{where}: routing_strategy must be one of {RoutingStrategy.values}"
            )
        model, _ = GatewayModel.objects.update_or_create(
            name=name,
            defaults={
                "mode": mode,
                "description": model_spec.get("description", ""),
                "routing_strategy": strategy,
                "is_active": bool(model_spec.get("is_active", True)),
            },
        )
        counts["models"] += 1
        names = []
        for d_index, dep_spec in enumerate(model_spec.get("deployments") or []):
            dep_where = f"{where} deployments[{d_index}]"
            _check_keys(dep_where, dep_spec, DEPLOYMENT_KEYS)
            fields = _deployment_fields(dep_where, dep_spec)
            Deployment.objects.update_or_create(model=model, name=dep_spec["name"], defaults=fields)
            names.append(dep_spec["name"])
            counts["deployments"] += 1
        removed, _ = model.deployments.exclude(name__in=names).delete()
        counts["removed_deployments"] += removed
    return counts


def model_catalog_export() -> dict[str, Any]:
    models = []
    for model in GatewayModel.objects.prefetch_related("deployments").order_by("name"):
        deployments = []
        for dep in model.deployments.order_by("priority", "id"):
            item = {
                "name": dep.name,
                "provider": dep.provider,
                "upstream_model": dep.upstream_model,
                "base_url": dep.base_url,
                "timeout_seconds": dep.timeout_seconds,
                "priority": dep.priority,
                "weight": dep.weight,
            }
            for key in ("api_version", "api_key_env", "api_key_encrypted", "price_model_name"):
                if getattr(dep, key):
                    item[key] = getattr(dep, key)
            prices = {k: str(getattr(dep, k)) for k in PRICE_KEYS if getattr(dep, k) is not None}
            if prices:
                item["prices"] = prices
            extra = dict(dep.extra or {})
            if "ttft_timeout_seconds" in extra:
                item["ttft_timeout_seconds"] = extra.pop("ttft_timeout_seconds")
            if "regions" in extra:
                item["regions"] = extra.pop("regions")
            if extra:
                item["extra"] = extra
            if not dep.is_active:
                item["is_active"] = False
            deployments.append(item)
        entry: dict[str, Any] = {
            "name": model.name,
            "mode": model.mode,
            "routing_strategy": model.routing_strategy,
            "deployments": deployments,
        }
        if model.description:
            entry["description"] = model.description
        if not model.is_active:
            entry["is_active"] = False
        models.append(entry)
    return {"models": models}
