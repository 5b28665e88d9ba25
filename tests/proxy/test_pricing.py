"""Cost from the price catalog: effective dates, the four token classes (input, output, cache
reads and writes), overrides, the fixture and the list prices it is built from."""

import importlib.util
import json
from datetime import UTC, date, datetime, timedelta, timezone
from decimal import Decimal
from io import StringIO
from pathlib import Path

import pytest
from django.apps import apps

from apps.billing.models import ModelPrice
from apps.billing.services import PRICE_FIXTURE, model_prices_import
from apps.proxy.pricing import Price, PriceBook, Quote

BUILD_SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "build_price_fixture.py"
# claude-sonnet-4-5's list prices: input, output, cache read, cache write.
SONNET = ("0.000003", "0.000015", "0.0000003", "0.00000375")

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


@pytest.fixture
def sonnet() -> PriceBook:
    inp, out, read, write = (Decimal(v) for v in SONNET)
    ModelPrice.objects.create(
        model_name="sonnet",
        input_cost_per_token=inp,
        output_cost_per_token=out,
        cached_input_cost_per_token=read,
        cache_write_cost_per_token=write,
        effective_from=date(2024, 1, 1),
    )
    return PriceBook.load()


def test_four_token_classes_each_at_their_price(sonnet):
    at = datetime(2025, 1, 1, tzinfo=UTC)
    # 1,234,567 prompt tokens: 345,678 read from the cache, 123,457 written to it, so
    # 765,432 fresh. Fresh 765,432 x 3e-6 = 2.296296; reads 345,678 x 3e-7 = 0.1037034;
    # writes 123,457 x 3.75e-6 = 0.46296375; output 98,765 x 1.5e-5 = 1.481475.
    quote = sonnet.quote("sonnet", 1_234_567, 98_765, 345_678, at, cache_write_tokens=123_457)
    assert quote == Quote(Decimal("4.3444381500"), True)
    assert (
        sonnet.cost_for("sonnet", 1_234_567, 98_765, 345_678, at, cache_write_tokens=123_457)
        == quote.cost_usd
    )
    # Without the write count, those tokens are fresh input: 888,889 x 3e-6 = 2.666667.
    assert sonnet.cost_for("sonnet", 1_234_567, 98_765, 345_678, at) == Decimal("4.2518454000")


def test_cache_writes_without_a_write_price_cost_as_input(book):
    before = datetime(2025, 5, 31, tzinfo=UTC)
    # m1 lists a read price and no write price: 500 fresh + 300 written at 1e-6, 200 read at
    # 5e-7, 500 output at 2e-6: the same as 800 fresh input.
    assert book.cost_for("m1", 1000, 500, 200, before, cache_write_tokens=300) == Decimal(
        "0.0019000000"
    )
    assert book.cost_for("m1", 1000, 500, 200, before) == Decimal("0.0019000000")


def test_reads_and_writes_are_cut_to_the_input(sonnet):
    at = datetime(2025, 1, 1, tzinfo=UTC)
    # 8,000 reads leave room for 2,000 of the 5,000 writes and no fresh input:
    # 8,000 x 3e-7 + 2,000 x 3.75e-6 = 0.0024 + 0.0075.
    assert sonnet.cost_for("sonnet", 10_000, 0, 8_000, at, cache_write_tokens=5_000) == Decimal(
        "0.0099000000"
    )
    assert Price(date(2024, 1, 1), *(Decimal(v) for v in SONNET)).cost(10_000, 0, 8_000, 5_000) == (
        Decimal("0.0099")
    )


def test_override_of_the_cache_write_price(sonnet):
    at = datetime(2025, 1, 1, tzinfo=UTC)
    # 1,000 written at the deployment's 5e-6 instead of the catalog's 3.75e-6.
    override = (None, None, None, Decimal("0.000005"))
    assert sonnet.cost_for("sonnet", 1000, 0, 0, at, override, cache_write_tokens=1000) == (
        Decimal("0.0050000000")
    )
    # A 3-tuple override (input, output, read) keeps the catalog's write price.
    override3 = (Decimal("0.000004"), None, None)
    # 1,000 fresh at 4e-6 + 1,000 written at 3.75e-6.
    assert sonnet.cost_for("sonnet", 2000, 0, 0, at, override3, cache_write_tokens=1000) == (
        Decimal("0.0077500000")
    )
    # A model the catalog does not know: writes cost as the override's input.
    private = (Decimal("0.000001"), None, None, None)
    quote = PriceBook().quote("private", 2000, 0, 0, at, private, cache_write_tokens=500)
    assert quote == Quote(Decimal("0.0020000000"), True)


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
    # Both prompt-cache prices come from the list prices where they are listed.
    sonnet = ModelPrice.objects.get(model_name="claude-sonnet-4-5")
    assert sonnet.cached_input_cost_per_token == Decimal("0.0000003")
    assert sonnet.cache_write_cost_per_token == Decimal("0.00000375")
    mini = ModelPrice.objects.get(model_name="gpt-4o-mini")
    assert mini.cached_input_cost_per_token == Decimal("0.000000075")
    assert mini.cache_write_cost_per_token is None
    # 1000 prompt tokens of which 600 read and 300 written, 100 output, on Sonnet:
    # 100 x 3e-6 + 600 x 3e-7 + 300 x 3.75e-6 + 100 x 1.5e-5.
    cost = book.cost_for("claude-sonnet-4-5", 1000, 100, 600, at, cache_write_tokens=300)
    assert cost == Decimal("0.0031050000")


def _build_script():
    spec = importlib.util.spec_from_file_location("build_price_fixture", BUILD_SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_list_prices_import_with_both_cache_prices(tmp_path):
    source = tmp_path / "model_prices.json"
    source.write_text(
        json.dumps(
            {
                "models": {
                    "claude-x": {
                        "provider": "anthropic",
                        "mode": "chat",
                        "input_cost_per_token": 3e-06,
                        "output_cost_per_token": 1.5e-05,
                        "cache_read_input_token_cost": 3e-07,
                        "cache_creation_input_token_cost": 3.75e-06,
                    },
                    "gpt-x": {
                        "provider": "openai",
                        "mode": "chat",
                        "input_cost_per_token": 1.5e-07,
                        "output_cost_per_token": 6e-07,
                        "cache_read_input_token_cost": 7.5e-08,
                    },
                    "plain-x": {
                        "provider": "mistral",
                        "mode": "chat",
                        "input_cost_per_token": 1e-06,
                    },
                }
            }
        )
    )
    fixture = tmp_path / "fixture.json"
    assert _build_script().main([str(source), "--out", str(fixture)]) == 0
    assert model_prices_import(path=fixture) == 6  # three, and the three demo models
    prices = {
        row.model_name: (row.cached_input_cost_per_token, row.cache_write_cost_per_token)
        for row in ModelPrice.objects.all()
    }
    assert prices["claude-x"] == (Decimal("0.0000003"), Decimal("0.00000375"))
    assert prices["gpt-x"] == (Decimal("0.000000075"), None)
    assert prices["plain-x"] == (None, None)


def test_the_shipped_fixture_is_built_from_the_list_prices():
    """The fixture matches what the build script makes of the shared list prices now, so
    its cache prices are the list's (skipped where the list is not at hand)."""
    module = _build_script()
    if not module.DEFAULT_SOURCE.exists():
        pytest.skip(f"{module.DEFAULT_SOURCE} is not here")
    assert module.build(module.DEFAULT_SOURCE) == json.loads(PRICE_FIXTURE.read_text())


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
