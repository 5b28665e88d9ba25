"""How every usage figure reads on a page: counts, USD, percentages and durations.

One rule per kind of figure, used by every template (`{% load usage_format %}`):
- `count`: the exact integer with thousands separators: 912194 -> "912,194".
- `compact`: for KPI tiles only, where space is tight; below 10,000 the exact count, then
  one decimal of "k" (20000 -> "20.0k", 912194 -> "912.2k"), then two decimals of "M" or
  "B" (1234567 -> "1.23M"). A value that would round up to 1000 of a unit is shown in the
  next unit (999999 -> "1.00M"). Put the exact `count` in the element's `title`.
- `usd`: "$1,234.56"; `usd:6` for per-request and per-1k prices ("$0.000600"). Decimal
  arithmetic rounded half up (as statements are), never an SI suffix, never an exponent.
- `percent`: a fraction as a percentage with two decimals: 0.125 -> "12.50%".
- `ms`: a duration in milliseconds: below one second "850 ms", from one second on "1.25 s".
- `number`: any other quantity with separators and fixed places: `number:1` -> "10.4".
A missing value (None) reads "—" everywhere.
"""

from __future__ import annotations

from decimal import ROUND_HALF_UP, Decimal, InvalidOperation

from django import template

register = template.Library()

MISSING = "—"
_COMPACT_UNITS = ((1_000_000_000, "B", 2), (1_000_000, "M", 2), (1_000, "k", 1))
_COMPACT_FROM = 10_000


def _decimal(value: object) -> Decimal | None:
    """Decimal from a Decimal, int, float or numeric string; via str so 0.1 stays 0.1."""
    if value is None or value == "":
        return None
    try:
        number = value if isinstance(value, Decimal) else Decimal(str(value))
    except InvalidOperation:
        return None
    return number if number.is_finite() else None


def _fixed(value: Decimal, places: int) -> str:
    rounded = value.quantize(Decimal(1).scaleb(-places), rounding=ROUND_HALF_UP)
    if rounded == 0:
        rounded = abs(rounded)  # no "-0.00" for a tiny negative
    return f"{rounded:,.{places}f}"


@register.filter
def count(value: object) -> str:
    number = _decimal(value)
    if number is None:
        return MISSING
    return _fixed(number, 0)


@register.filter
def compact(value: object) -> str:
    number = _decimal(value)
    if number is None:
        return MISSING
    if abs(number) < _COMPACT_FROM:
        return _fixed(number, 0)
    sign = "-" if number < 0 else ""
    magnitude = abs(number)
    for limit, suffix, places in _COMPACT_UNITS:
        scaled = (magnitude / limit).quantize(Decimal(1).scaleb(-places), rounding=ROUND_HALF_UP)
        # Checked after rounding, so 999,999 reads "1.00M" rather than "1000.0k".
        if scaled >= 1:
            return f"{sign}{scaled:,.{places}f}{suffix}"
    raise AssertionError("unreachable: values from 10,000 on have a unit")


@register.filter
def usd(value: object, places: int = 2) -> str:
    amount = _decimal(value)
    if amount is None:
        return MISSING
    text = _fixed(amount, int(places))
    return f"-${text[1:]}" if text.startswith("-") else f"${text}"


@register.filter
def percent(value: object, places: int = 2) -> str:
    fraction = _decimal(value)
    if fraction is None:
        return MISSING
    return f"{_fixed(100 * fraction, int(places))}%"


@register.filter
def ms(value: object) -> str:
    duration = _decimal(value)
    if duration is None:
        return MISSING
    whole_ms = duration.quantize(Decimal(1), rounding=ROUND_HALF_UP)
    # Decided on the rounded value, so 999.6 ms reads "1.00 s", not "1,000 ms".
    if abs(whole_ms) < 1000:
        return f"{_fixed(whole_ms, 0)} ms"
    return f"{_fixed(duration / 1000, 2)} s"


@register.filter
def number(value: object, places: int = 0) -> str:
    quantity = _decimal(value)
    if quantity is None:
        return MISSING
    return _fixed(quantity, int(places))
