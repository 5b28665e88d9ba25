"""Price catalog import."""

import json
from decimal import Decimal
from pathlib import Path

from django.db import transaction

from apps.billing.models import ModelPrice

PRICE_FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "model_prices.json"
PRICE_FIELDS = [
    "provider",
    "mode",
    "input_cost_per_token",
    "output_cost_per_token",
    "cached_input_cost_per_token",
    "cache_write_cost_per_token",
]


def _decimal(value: str | float | int | None) -> Decimal | None:
    # Through str so a float in a hand-edited file does not bring binary noise along.
    return None if value is None else Decimal(str(value))


@transaction.atomic
def model_prices_import(*, path: Path | None = None) -> int:
    """Upsert the price catalog from a Django fixture file; returns rows written.

    Idempotent on (model_name, effective_from): re-importing updates prices in place, so a
    corrected list price replaces the old one for that date rather than adding a row.
    """
    entries = json.loads((path or PRICE_FIXTURE).read_text())
    rows = []
    for item in entries:
        fields = item["fields"]
        rows.append(
            ModelPrice(
                model_name=fields["model_name"],
                provider=fields.get("provider", ""),
                mode=fields.get("mode", ""),
                input_cost_per_token=_decimal(fields["input_cost_per_token"]),
                output_cost_per_token=_decimal(fields.get("output_cost_per_token")) or Decimal(0),
                cached_input_cost_per_token=_decimal(fields.get("cached_input_cost_per_token")),
                cache_write_cost_per_token=_decimal(fields.get("cache_write_cost_per_token")),
                effective_from=fields["effective_from"],
            )
        )
    ModelPrice.objects.bulk_create(
        rows,
        batch_size=500,
        update_conflicts=True,
        unique_fields=["model_name", "effective_from"],
        update_fields=PRICE_FIELDS,
    )
    return len(rows)
