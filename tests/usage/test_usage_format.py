"""The shared number filters at their boundaries, as the strings a person reads."""

from decimal import Decimal

import pytest
from django.template import Context, Template

from apps.usage.templatetags.usage_format import compact, count, ms, number, percent, usd

pytestmark = pytest.mark.embedded


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (0, "0"),
        (999, "999"),
        (1_000, "1,000"),
        (9_999, "9,999"),
        (10_000, "10,000"),
        (20_000, "20,000"),
        (912_194, "912,194"),
        (999_999, "999,999"),
        (1_000_000, "1,000,000"),
        (1_234_567_890, "1,234,567,890"),
        (-12_345, "-12,345"),
        (Decimal("912194"), "912,194"),
        (None, "—"),
    ],
)
def test_count_is_exact_with_separators(value, expected):
    assert count(value) == expected


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (999, "999"),
        (1_000, "1,000"),
        (9_999, "9,999"),
        (10_000, "10.0k"),
        (20_000, "20.0k"),
        (912_194, "912.2k"),
        (994_949, "994.9k"),
        # Would round to "1000.0k": the next unit instead.
        (999_999, "1.00M"),
        (1_000_000, "1.00M"),
        (1_234_567, "1.23M"),
        (999_999_999, "1.00B"),
        (2_500_000_000, "2.50B"),
        (-20_000, "-20.0k"),
        (None, "—"),
    ],
)
def test_compact_is_correct_where_it_abbreviates(value, expected):
    assert compact(value) == expected


@pytest.mark.parametrize(
    ("value", "places", "expected"),
    [
        (Decimal("1234.5"), 2, "$1,234.50"),
        (1234.5, 2, "$1,234.50"),
        (Decimal("0.005"), 2, "$0.01"),  # half up, as statements round
        (Decimal("0.000600"), 2, "$0.00"),
        (Decimal("0.000600"), 6, "$0.000600"),
        (Decimal("0.0001230000"), 6, "$0.000123"),
        (Decimal("1E-7"), 6, "$0.000000"),  # never an exponent
        (6e-07, 6, "$0.000001"),
        (Decimal("-133.00"), 2, "-$133.00"),
        (Decimal("-0.0001"), 2, "$0.00"),  # no "-$0.00"
        (Decimal("1234567.891"), 2, "$1,234,567.89"),
        (0, 2, "$0.00"),
        (None, 2, "—"),
    ],
)
def test_usd(value, places, expected):
    assert usd(value, places) == expected
    assert "µ" not in usd(value, places)


@pytest.mark.parametrize(
    ("value", "expected"),
    [(0, "0.00%"), (0.125, "12.50%"), (Decimal("1"), "100.00%"), (1 / 3, "33.33%"), (None, "—")],
)
def test_percent(value, expected):
    assert percent(value) == expected


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (0, "0 ms"),
        (12.4, "12 ms"),
        (850, "850 ms"),
        (999.4, "999 ms"),
        (999.6, "1.00 s"),  # rounds to a whole second: shown in seconds
        (1000, "1.00 s"),
        (1250, "1.25 s"),
        (12_000, "12.00 s"),
        (1_234_567, "1,234.57 s"),
        (None, "—"),
    ],
)
def test_ms(value, expected):
    assert ms(value) == expected


def test_number_and_bad_input():
    assert number(Decimal("10.4375"), 1) == "10.4"
    assert number(12345) == "12,345"
    assert count("not a number") == "—"
    assert ms(float("nan")) == "—"


def test_filters_load_in_a_template():
    template = Template(
        "{% load usage_format %}{{ n|count }}|{{ n|compact }}|{{ c|usd }}|{{ c|usd:6 }}|{{ t|ms }}"
    )
    rendered = template.render(Context({"n": 912_194, "c": Decimal("0.000600"), "t": 1250}))
    assert rendered == "912,194|912.2k|$0.00|$0.000600|1.25 s"
