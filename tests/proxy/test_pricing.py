"""Cost from the price catalog: effective dates, cached tokens, overrides, the fixture."""

from datetime import UTC, date, datetime, timedelta, timezone
from decimal import Decimal
from io import StringIO

import pytest
from django.apps import apps

from apps.billing.models import ModelPrice
from apps.billing.services import PRICE_FIXTURE, model_prices_import
from apps.proxy.pricing import PriceBook, Quote

pytestmark = [pytest.mark.embedded, pytest.mark.django_db]


@pytest.fixture
def book() -> PriceBook:
    ModelPrice.objects.create(
        model_name="m1",
        input_cost_per_token=Decimal("0.000001"),
        output_cost_per_token=Decimal("0.000002"),
        cached_input_cost_per_token=Decimal("0.0000005"),
        effective_from=date(2024, 1, 1),
    )
    ModelPrice.objects.create(
        model_name="m1",
        input_cost_per_token=Decimal("0.000002"),
        output_cost_per_token=Decimal("0.000004"),
        effective_from=date(2025, 6, 1),
    )
    return PriceBook.load()


def test_price_in_force_at_the_request_time_with_cached_tokens(book):
    before = datetime(2025, 5, 31, 23, 59, 59, tzinfo=UTC)
    # 800 input at 1e-6 + 200 cached at 5e-7 + 500 output at 2e-6.
    assert book.cost_for("m1", 1000, 500, 200, before) == Decimal("0.0019000000")
    after = datetime(2025, 6, 1, tzinfo=UTC)
    # The new price has no cached rate, so cached tokens cost as input.
    assert book.cost_for("m1", 1000, 500, 200, after) == Decimal("0.0040000000")
    # 01:00 at UTC+2 is still May 31st in UTC.
    local = datetime(2025, 6, 1, 1, 0, tzinfo=timezone(timedelta(hours=2)))
    assert book.cost_for("m1", 1000, 500, 200, local) == Decimal("0.0019000000")


def test_unknown_model_or_date_before_any_price_is_flagged(book):
    at = datetime(2025, 1, 1, tzinfo=UTC)
    assert book.quote("nope", 10, 10, 0, at) == Quote(Decimal(0), False)
    assert book.cost_for("nope", 10, 10, 0, at) == Decimal(0)
    assert book.quote("m1", 10, 10, 0, datetime(2023, 12, 31, tzinfo=UTC)).priced is False
    assert book.quote("m1", 10, 10, 0, at).priced is True


def test_deployment_override_wins_field_by_field(book):
    at = datetime(2025, 1, 1, tzinfo=UTC)
    override = (Decimal("0.000003"), None, None)
    # 1000 input at the override, 100 output at the catalog's 2e-6.
    assert book.cost_for("m1", 1000, 100, 0, at, override) == Decimal("0.0032000000")
    # An override prices a model the catalog does not know.
    assert book.quote("private", 1000, 0, 0, at, (Decimal("0.000001"), None, None)) == Quote(
        Decimal("0.0010000000"), True
    )


def test_rounding_to_ten_places():
    book = PriceBook.load()
    ModelPrice.objects.create(
        model_name="tiny",
        input_cost_per_token=Decimal("0.000000000033"),
        output_cost_per_token=Decimal("0"),
        effective_from=date(2024, 1, 1),
    )
    book = PriceBook.load()
    cost = book.cost_for("tiny", 5, 0, 0, datetime(2025, 1, 1, tzinfo=UTC))
    assert cost == Decimal("0.0000000002") and cost.as_tuple().exponent == -10


def test_fixture_import_is_idempotent_and_prices_the_demo_models():
    first = model_prices_import()
    total = ModelPrice.objects.count()
    assert first == total > 500
    ModelPrice.objects.filter(model_name="demo-chat").update(input_cost_per_token=Decimal(1))
    assert model_prices_import(path=PRICE_FIXTURE) == first
    assert ModelPrice.objects.count() == total  # updated in place, nothing added

    book = PriceBook.load()
    at = datetime(2026, 1, 1, tzinfo=UTC)
    # A million tokens each way on demo-chat, priced like gpt-4o-mini: $0.15 + $0.60.
    assert book.cost_for("demo-chat", 1_000_000, 1_000_000, 0, at) == Decimal("0.75")
    # Half the input from cache at 7.5e-8: $0.075 + $0.0375 + $0.60.
    assert book.cost_for("demo-chat", 1_000_000, 1_000_000, 500_000, at) == Decimal("0.7125")
    assert book.cost_for("demo-embed", 1_000_000, 0, 0, at) == Decimal("0.02")
    assert book.cost_for("gpt-4o-mini", 1_000_000, 0, 0, at) == Decimal("0.15")
    assert book.quote("demo-rerank", 1000, 0, 0, at).priced


def test_billing_seed_demo_loads_prices():
    out = StringIO()
    apps.get_app_config("billing").seed_demo(stdout=out)
    assert "Model prices" in out.getvalue()
    assert ModelPrice.objects.filter(model_name="demo-embed").exists()


@pytest.mark.django_db(transaction=True)
async def test_async_load():
    await ModelPrice.objects.acreate(
        model_name="m2",
        input_cost_per_token=Decimal("0.000001"),
        effective_from=date(2024, 1, 1),
    )
    book = await PriceBook.aload()
    assert book.cost_for("m2", 10, 0, 0, datetime(2025, 1, 1, tzinfo=UTC)) == Decimal("0.00001")
