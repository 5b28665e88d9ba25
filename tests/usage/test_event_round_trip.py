"""UsageEvent survives JSON exactly and maps onto an unsaved UsageRecord."""

import dataclasses
import uuid
from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal

import pytest

from apps.usage.event import UsageEvent
from apps.usage.models import UsageRecord
from tests.usage.helpers import make_event

pytestmark = pytest.mark.embedded


def test_json_round_trip_keeps_every_field_exact():
    event = make_event(
        created_at=datetime(2026, 3, 1, 12, 30, 15, 123456, tzinfo=UTC),
        key_lineage_id=str(uuid.uuid4()),
        cost_usd=Decimal("0.1234567891"),
        cached_tokens=20,
        cache_write_tokens=15,
        ttft_ms=12.5,
        is_stream=True,
        tags={"feature": "search", "nested": {"a": [1, 2]}},
        request_body={"messages": [{"role": "user", "content": "héllo"}]},
        response_body=None,
    )
    again = UsageEvent.from_json(event.to_json())
    assert again == event
    assert isinstance(again.cost_usd, Decimal) and again.cost_usd == Decimal("0.1234567891")
    assert again.created_at.tzinfo is not None


def test_created_at_is_normalised_to_utc_and_naive_is_refused():
    local = datetime(2026, 3, 1, 14, 0, tzinfo=timezone(timedelta(hours=2)))
    assert make_event(created_at=local).created_at == datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
    with pytest.raises(ValueError, match="timezone-aware"):
        make_event(created_at=datetime(2026, 3, 1, 12, 0))  # noqa: DTZ001 - the point


def test_unknown_keys_from_a_newer_writer_are_ignored():
    raw = make_event().to_json().replace(b'"model"', b'"future_field":1,"model"', 1)
    assert UsageEvent.from_json(raw).model == "demo-chat"


def test_to_record_builds_an_unsaved_row():
    lineage = uuid.uuid4()
    event = make_event(key_lineage_id=str(lineage), cost_usd=Decimal("0.000000000049"))
    record = event.to_record()
    assert isinstance(record, UsageRecord) and record.pk is None
    assert record.request_id == event.request_id and record.key_lineage_id == lineage
    # Rounded to the column's 10 places the same way the database would.
    assert record.cost_usd == Decimal("0.0000000000")
    assert record.tags == {"feature": "search"}


def test_event_and_row_have_the_same_fields():
    """The usage schema is written once: the event carries every column the row stores
    (but the id and the insert time, which the database assigns) and nothing else."""
    event_fields = {f.name for f in dataclasses.fields(UsageEvent)}
    row_fields = {
        f.name for f in UsageRecord._meta.concrete_fields if f.name not in {"id", "inserted_at"}
    }
    assert event_fields == row_fields
    assert set(make_event().to_row()) == row_fields
