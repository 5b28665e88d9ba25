"""Number formats for the dashboards: counts, USD, percentages and milliseconds."""

from decimal import Decimal

from django import template

register = template.Library()


@register.filter
def count(value: int | None) -> str:
    if value is None:
        return "—"
    value = int(value)
    for limit, suffix in ((1_000_000_000, "B"), (1_000_000, "M"), (10_000, "k")):
        if abs(value) >= limit:
            return f"{value / limit:.1f}{suffix}"
    return f"{value:,}"


@register.filter
def usd(value: Decimal | float | None, places: int = 2) -> str:
    if value is None:
        return "—"
    return f"${float(value):,.{int(places)}f}"


@register.filter
def percent(value: float | None) -> str:
    return "—" if value is None else f"{100 * float(value):.2f}%"


@register.filter
def ms(value: float | None) -> str:
    if value is None:
        return "—"
    return f"{value / 1000:.2f} s" if value >= 10_000 else f"{value:.0f} ms"
