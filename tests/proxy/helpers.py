"""Data set-up and polling helpers for the end-to-end proxy tests."""

import time
from decimal import Decimal

from apps.proxy.providers.base import DeploymentInfo
from apps.proxy.services import model_catalog_apply
from apps.usage.models import UsageRecord


def declare_model(
    name: str,
    simulator_url: str,
    *upstreams: str,
    mode: str = "chat",
    provider: str = "simulator",
    prices: dict | None = None,
) -> None:
    """A model served by simulator deployments, one per upstream model name, in order."""
    deployments = []
    for index, upstream in enumerate(upstreams or (name,)):
        deployment = {
            "name": f"d{index}-{upstream}",
            "provider": provider,
            "upstream_model": upstream,
            "base_url": simulator_url,
            "priority": index,
            "timeout_seconds": 10,
        }
        if prices:
            deployment["prices"] = prices
        deployments.append(deployment)
    model_catalog_apply(spec={"models": [{"name": name, "mode": mode, "deployments": deployments}]})


def wait_for_usage(request_id: str, timeout: float = 10.0) -> UsageRecord:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        row = UsageRecord.objects.filter(request_id=request_id).first()
        if row is not None:
            return row
        time.sleep(0.05)
    raise AssertionError(f"no usage row for {request_id}")


def expected_cost(input_tokens: int, output_tokens: int, prices: dict) -> Decimal:
    return Decimal(input_tokens) * Decimal(prices["input_cost_per_token"]) + Decimal(
        output_tokens
    ) * Decimal(prices["output_cost_per_token"])


def deployment_info(**overrides) -> DeploymentInfo:
    """A deployment as the catalog hands it to the pipeline, for tests that need no server."""
    values = {
        "id": 1,
        "name": "d",
        "model_name": "m",
        "provider": "openai",
        "upstream_model": "m",
        "base_url": "http://127.0.0.1:9/v1",
    }
    return DeploymentInfo(**{**values, **overrides})
