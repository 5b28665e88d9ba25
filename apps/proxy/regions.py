"""The data region of a request's usage row, and the deployments a strict region allows.

The region is decided on the request path for free: the key's cached information holds its
team's region; a customer (the customer tag's value) kept in another region is found in the
catalog's in-memory map. No query, no round trip.

A region marked strict (`DATA_REGIONS_STRICT`) is served only by deployments that declare
it (`extra: {regions: [eu]}` in the catalog). With none of them available the call fails
closed with a 503 naming the policy; it is never sent to another region's deployment.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from django.conf import settings

from .auth import KeyInfo
from .catalog import catalog
from .errors import UpstreamError
from .providers.base import DeploymentInfo

if TYPE_CHECKING:
    from .calls import Call


def row_region(key: KeyInfo, tags: dict[str, Any]) -> str:
    """The team's region, unless the customer tag names a customer kept elsewhere. The tag
    comes from the client, so it never takes a row out of a strict team region."""
    customer = tags.get(settings.BILLING_CUSTOMER_TAG_KEY)
    if customer and catalog.customer_regions and not is_strict(key.region):
        return catalog.customer_regions.get(str(customer), key.region)
    return key.region


def is_strict(region: str) -> bool:
    return any(spec.strict and spec.name == region for spec in settings.DATA_REGIONS)


def serves(deployment: DeploymentInfo, region: str) -> bool:
    regions = deployment.extra.get("regions")
    return isinstance(regions, list) and region in regions


def serving_region(call: Call, candidates: list[DeploymentInfo]) -> list[DeploymentInfo]:
    """The candidates that serve the call's strict region; a 503 when none is left."""
    serving = [d for d in candidates if serves(d, call.region)]
    if not serving and not call.attempts:
        raise ResidencyUnavailable(
            f"Data residency policy: region '{call.region}' is strict, and no available "
            f"deployment of the model '{call.model.name}' serves it. The request was not sent "
            "to another region's deployment.",
        )
    return serving


class ResidencyUnavailable(UpstreamError):
    def __init__(self, message: str) -> None:
        super().__init__(message, status=503, code="residency_unavailable")
