"""Cost of a request from the price catalog (billing.ModelPrice), held in memory.

The proxy loads a `PriceBook` once and refreshes it now and then; costing a request is then
pure arithmetic, no query. Prices change by new rows with a later `effective_from`, so a
request is costed with the price in force on its UTC date.

Four token classes are priced: fresh input, output, and prompt-cache reads and writes. Cache
reads (`cached_tokens`) and writes (`cache_write_tokens`) are part of `input_tokens`, as
OpenAI counts them, so fresh input is input - cached - cache_write.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime
from decimal import ROUND_HALF_UP, Decimal
from typing import TYPE_CHECKING, Any, NamedTuple

from apps.billing.models import ModelPrice

if TYPE_CHECKING:
    from apps.proxy.providers.base import DeploymentInfo

# UsageRecord.cost_usd has decimal_places=10.
COST_QUANTUM = Decimal("1e-10")
ZERO = Decimal(0)

# A deployment's own (input, output, cache read, cache write) prices, None where the catalog's
# apply. A 3-tuple (no cache write override) is read as if its 4th element were None.
PriceOverride = tuple[Decimal | None, ...]
NO_OVERRIDE: PriceOverride = (None, None, None, None)


@dataclass(frozen=True, slots=True)
class Price:
    effective_from: date
    input: Decimal
    output: Decimal
    cached_input: Decimal | None
    cache_write: Decimal | None = None

    def cost(
        self,
        input_tokens: int,
        output_tokens: int,
        cached_tokens: int = 0,
        cache_write_tokens: int = 0,
    ) -> Decimal:
        """The tokens' cost at these prices, not rounded.

        Cache reads and writes are part of `input_tokens`: each is cut to what the input
        holds (reads first), and the rest of the input is fresh. Without a cache read or a
        cache write price, those tokens cost as input.
        """
        cached = max(0, min(cached_tokens, input_tokens))
        written = max(0, min(cache_write_tokens, input_tokens - cached))
        cost = Decimal(input_tokens - cached - written) * self.input
        cost += Decimal(output_tokens) * self.output
        # Most requests have no cache tokens: their terms are skipped, not multiplied by 0.
        if cached:
            cost += Decimal(cached) * _first(self.cached_input, self.input)
        if written:
            cost += Decimal(written) * _first(self.cache_write, self.input)
        return cost


# What an override is laid over when the catalog has no price for the model.
_UNLISTED = Price(date.min, ZERO, ZERO, None, None)


def price_override(deployment: DeploymentInfo) -> PriceOverride:
    """The prices `deployment` sets itself, in `PriceOverride` order."""
    return (
        deployment.input_cost_per_token,
        deployment.output_cost_per_token,
        deployment.cached_input_cost_per_token,
        deployment.cache_write_cost_per_token,
    )


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
        "cache_write_cost_per_token",
    )

    @staticmethod
    def from_values(rows: Iterable[Sequence[Any]]) -> PriceBook:
        """From `VALUE_FIELDS` tuples: as the database returns them, or as JSON brought them
        back from the catalog snapshot (dates and decimals as strings)."""
        prices: dict[str, list[Price]] = {}
        for name, effective_from, input_cost, output_cost, cached_cost, write_cost in rows:
            if not isinstance(effective_from, date):
                effective_from = date.fromisoformat(effective_from)
            prices.setdefault(name, []).append(
                Price(
                    effective_from=effective_from,
                    input=Decimal(input_cost),
                    output=Decimal(output_cost),
                    cached_input=_decimal(cached_cost),
                    cache_write=_decimal(write_cost),
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
        *,
        cache_write_tokens: int = 0,
    ) -> Quote:
        """The cost of a request's tokens at the price in force at `at`, rounded to the
        ledger's 10 places.

        `cached_tokens` (cache reads) and `cache_write_tokens` are part of `input_tokens`.
        Each price is the deployment's `override` if it sets one, else the catalog's. Cache
        reads, and cache writes, with no price of their own cost as input: a list price
        without a cache write rate bills writes at the input rate, not at the write premium.
        """
        listed = self.price_at(price_model_name, at)
        over_input, over_output, over_cached, over_write = (*override, None, None, None, None)[:4]
        if listed is None and over_input is None and over_output is None:
            return Quote(ZERO, False)
        if listed is not None and over_input is over_output is over_cached is over_write is None:
            price = listed  # the common case, on every request: no copy
        else:
            base = listed or _UNLISTED
            price = Price(
                effective_from=base.effective_from,
                input=_first(over_input, base.input),
                output=_first(over_output, base.output),
                cached_input=over_cached if over_cached is not None else base.cached_input,
                cache_write=over_write if over_write is not None else base.cache_write,
            )
        cost = price.cost(input_tokens, output_tokens, cached_tokens, cache_write_tokens)
        return Quote(cost.quantize(COST_QUANTUM, rounding=ROUND_HALF_UP), True)

    def cost_for(
        self,
        price_model_name: str,
        input_tokens: int,
        output_tokens: int,
        cached_tokens: int,
        at: datetime,
        override: PriceOverride = NO_OVERRIDE,
        *,
        cache_write_tokens: int = 0,
    ) -> Decimal:
        """Cost in USD as `quote` computes it (cache writes without a price of their own cost
        as input); Decimal 0 for an unknown model (use `quote` to tell the two apart)."""
        return self.quote(
            price_model_name,
            input_tokens,
            output_tokens,
            cached_tokens,
            at,
            override,
            cache_write_tokens=cache_write_tokens,
        ).cost_usd


def _first(*values: Decimal | None) -> Decimal:
    for value in values:
        if value is not None:
            return Decimal(value)
    return ZERO


def _decimal(value: Any) -> Decimal | None:
    # Decimal from the database, str from the catalog snapshot.
    return Decimal(value) if value is not None else None
