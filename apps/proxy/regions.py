"""The data region of a request's usage row, decided on the request path for free.

The key's cached information holds its team's region; a customer (the customer tag's value)
kept in another region is found in the catalog's in-memory map. No query, no round trip.
"""

from typing import Any

from django.conf import settings

from .auth import KeyInfo
from .catalog import catalog


def row_region(key: KeyInfo, tags: dict[str, Any]) -> str:
    customer = tags.get(settings.BILLING_CUSTOMER_TAG_KEY)
    if customer and catalog.customer_regions:
        return catalog.customer_regions.get(str(customer), key.region)
    return key.region
