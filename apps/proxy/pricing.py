"""Cost of a request from the price catalog (billing.ModelPrice), held in memory.

The proxy loads a `PriceBook` once and refreshes it now and then; costing a request is then
pure arithmetic, no query. Prices change by new rows with a later `effective_from`, so a
request is costed with the price in force on its UTC date.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime
from decimal import ROUND_HALF_UP, Decimal
from typing import Any, NamedTuple

from apps.billing.models import ModelPrice

# UsageRecord.cost_usd has decimal_places=10.
COST_QUANTUM = Decimal("1e-10")
ZERO = Decimal(0)

PriceOverride = tuple[Decimal | None, Decimal | None, Decimal | None]
NO_OVERRIDE: PriceOverride = (None, None, None)


@dataclass(frozen=True, slots=True)
class Price:
    effective_from: date
    input: Decimal
    output: Decimal
    cached_input: Decimal | None


class Quote(NamedTuple):
    cost_usd: Decimal
    # False when neither the catalog nor an override priced the model: the caller marks the
    # row (cost 0 would otherwise look like a free model).
    priced: bool


class PriceBook:
    """Every ModelPrice row, by model name, sorted by effective date."""

    def __init__(self, prices: dict[str, list[Price]] | None = None) -> None:
        self._prices: dict[str, list[Price]] = {}
        self._dates: dict[str, list[date]] = {}
        for name, rows in (prices or {}).items():
            ordered = sorted(rows, key=lambda p: p.effective_from)
            self._prices[name] = ordered
            self._dates[name] = [p.effective_from for p in ordered]

    def __len__(self) -> int:
        return len(self._prices)

    # The ModelPrice columns `from_values` takes, in order.
    VALUE_FIELDS = (
        "model_name",
        "effective_from",
        "input_cost_per_token",
        "output_cost_per_token",
        "cached_input_cost_per_token",
    )

    @staticmethod
    def from_values(rows: Iterable[Sequence[Any]]) -> PriceBook:
        """From `VALUE_FIELDS` tuples: as the database returns them, or as JSON brought them
        back from the catalog snapshot (dates and decimals as strings)."""
        prices: dict[str, list[Price]] = {}
        for name, effective_from, input_cost, output_cost, cached_cost in rows:
            if not isinstance(effective_from, date):
                effective_from = date.fromisoformat(effective_from)
            prices.setdefault(name, []).append(
                Price(
                    effective_from=effective_from,
                    input=Decimal(input_cost),
                    output=Decimal(output_cost),
                    cached_input=Decimal(cached_cost) if cached_cost is not None else None,
                )
            )
        return PriceBook(prices)

    @classmethod
    def load(cls) -> PriceBook:
        return cls.from_values(ModelPrice.objects.values_list(*cls.VALUE_FIELDS))

    @classmethod
    async def aload(cls) -> PriceBook:
        return cls.from_values(
            [row async for row in ModelPrice.objects.values_list(*cls.VALUE_FIELDS)]
        )

    def price_at(self, price_model_name: str, at: datetime) -> Price | None:
        """The price whose effective_from is the latest on or before `at` (its UTC date)."""
        dates = self._dates.get(price_model_name)
        if not dates:
            return None
        day = at.astimezone(UTC).date() if at.tzinfo else at.date()
        index = bisect.bisect_right(dates, day) - 1
        return self._prices[price_model_name][index] if index >= 0 else None

    def quote(
        self,
        price_model_name: str,
        input_tokens: int,
        output_tokens: int,
        cached_tokens: int,
        at: datetime,
        override: PriceOverride = NO_OVERRIDE,
    ) -> Quote:
        listed = self.price_at(price_model_name, at)
        over_input, over_output, over_cached = override
        if listed is None and over_input is None and over_output is None:
            return Quote(ZERO, False)
        input_price = _first(over_input, listed.input if listed else None)
        output_price = _first(over_output, listed.output if listed else None)
        # Cached tokens are part of the input count; without a cached price they cost as input.
        cached_price = _first(over_cached, listed.cached_input if listed else None, input_price)
        cached = max(0, min(cached_tokens, input_tokens))
        cost = (
            Decimal(input_tokens - cached) * input_price
            + Decimal(cached) * cached_price
            + Decimal(output_tokens) * output_price
        )
        return Quote(cost.quantize(COST_QUANTUM, rounding=ROUND_HALF_UP), True)

    def cost_for(
        self,
        price_model_name: str,
        input_tokens: int,
        output_tokens: int,
        cached_tokens: int,
        at: datetime,
        override: PriceOverride = NO_OVERRIDE,
    ) -> Decimal:
        """Cost in USD; Decimal 0 for an unknown model (use `quote` to tell the two apart)."""
        return self.quote(
            price_model_name, input_tokens, output_tokens, cached_tokens, at, override
        ).cost_usd


def _first(*values: Decimal | None) -> Decimal:
    for value in values:
        if value is not None:
            return Decimal(value)
    return ZERO
