"""The synthetic history command: row counts, attribution to real tenancy, priced costs."""

from decimal import Decimal

import pytest
from django.core.management import call_command

from apps.billing.models import ModelPrice
from apps.usage.models import UsageRecord
from tests import factories

pytestmark = [pytest.mark.embedded, pytest.mark.django_db]


def test_generate_usage_writes_attributed_priced_rows(team, user, virtual_account):
    factories.make_key(user=user)
    ModelPrice.objects.create(
        model_name="gpt-4o-mini", provider="openai", input_cost_per_token=Decimal("0.00000015"),
        output_cost_per_token=Decimal("0.0000006"), effective_from="2024-01-01",
    )  # fmt: skip
    call_command("generate_usage", rows=3000, days=7, seed=7)
    rows = UsageRecord.objects.all()
    assert rows.count() == 3000
    assert set(rows.values_list("team_id", flat=True)) == {team.pk}
    assert rows.filter(virtual_account_id=virtual_account.pk).exists()
    assert rows.filter(status_code__gte=400).exclude(error_type="").exists()
    streams = rows.filter(is_stream=True, status_code=200)
    assert streams.exists()
    assert not streams.filter(ttft_ms__isnull=True).exists()
    sample = rows.filter(model="gpt-4o-mini", status_code=200, cached_tokens=0).first()
    expected = sample.input_tokens * Decimal("0.00000015") + sample.output_tokens * Decimal(
        "0.0000006"
    )
    assert sample.cost_usd == pytest.approx(expected, abs=Decimal("1e-9"))
    tags = rows.first().tags
    assert {"customer_id", "feature", "environment"} <= set(tags)
    # Team defaults are merged in, as the gateway does.
    assert tags["cost_center"] == "cc-200"
