"""Cheaper-model savings: each feature x model's usage priced on every same-mode model."""

from __future__ import annotations

import datetime as dt
from collections import defaultdict
from dataclasses import dataclass
from decimal import ROUND_HALF_UP, Decimal

from apps.billing.constants import COST_QUANTUM
from apps.billing.models import ModelPrice
from apps.proxy.models import GatewayModel
from apps.proxy.pricing import Price


@dataclass(frozen=True)
class ModelSaving:
    feature: str
    model: str
    mode: str
    input_tokens: int
    output_tokens: int
    cached_tokens: int
    cost_usd: Decimal
    cheapest_model: str | None
    cheapest_cost_usd: Decimal | None
    saving_usd: Decimal


@dataclass(frozen=True)
class _ListPrice:
    mode: str
    # Priced as the proxy prices a request (`Price.cost`).
    price: Price


def _latest_prices(today: dt.date) -> dict[str, _ListPrice]:
    latest: dict[str, _ListPrice] = {}
    rows = ModelPrice.objects.filter(effective_from__lte=today).order_by(
        "model_name", "-effective_from"
    )
    for row in rows.iterator(chunk_size=2000):
        if row.model_name not in latest:
            latest[row.model_name] = _ListPrice(
                row.mode,
                Price(
                    row.effective_from,
                    row.input_cost_per_token,
                    row.output_cost_per_token,
                    row.cached_input_cost_per_token,
                    row.cache_write_cost_per_token,
                ),
            )
    return latest


def _rounded_cost(value: Decimal) -> Decimal:
    return value.quantize(COST_QUANTUM, ROUND_HALF_UP)


def model_savings(features: dict[tuple[str, str], list], today: dt.date) -> list[ModelSaving]:
    """`features` maps (feature, model) to [input, output, cache read, cache write tokens,
    cost]."""
    prices = _latest_prices(today)
    modes = dict(GatewayModel.objects.values_list("name", "mode"))
    by_mode: dict[str, list[tuple[str, _ListPrice]]] = defaultdict(list)
    for name, listed in prices.items():
        if listed.mode and (listed.price.input or listed.price.output):
            by_mode[listed.mode].append((name, listed))
    out = []
    for (feature, model), (inp, outp, cached, written, cost) in features.items():
        mode = prices[model].mode if model in prices else modes.get(model, "")
        quotes = sorted(
            (listed.price.cost(inp, outp, cached, written), name)
            for name, listed in by_mode.get(mode, [])
        )
        cheapest_cost, cheapest = quotes[0] if quotes else (None, None)
        saving = max(Decimal(0), cost - cheapest_cost) if cheapest_cost is not None else Decimal(0)
        out.append(
            ModelSaving(
                feature=feature,
                model=model,
                mode=mode,
                input_tokens=inp,
                output_tokens=outp,
                cached_tokens=cached,
                cost_usd=_rounded_cost(cost),
                cheapest_model=cheapest,
                cheapest_cost_usd=None if cheapest_cost is None else _rounded_cost(cheapest_cost),
                saving_usd=_rounded_cost(saving),
            )
        )
    out.sort(key=lambda s: (-s.saving_usd, s.feature, s.model))
    return out
