"""One bad row never blocks another: capture-side normalisation, bisecting and dead letters."""

import json
from decimal import Decimal

import pytest
from django.urls import reverse
from prometheus_client import REGISTRY

from apps.accounts.constants import Role
from apps.proxy.providers.anthropic import _usage as anthropic_usage
from apps.proxy.providers.base import Usage
from apps.usage.buffer import MemoryBuffer
from apps.usage.capture import MAX_TOKENS_PER_REQUEST, sane_token_count
from apps.usage.models import UsageDeadLetter, UsageRecord
from apps.usage.services import usage_dead_letters_replay
from apps.usage.writer import drain_all_sync
from tests import factories
from tests.usage.helpers import make_event

pytestmark = [pytest.mark.embedded, pytest.mark.django_db(transaction=True)]


def _dead_lettered_total() -> float:
    return REGISTRY.get_sample_value("tollgate_usage_dead_lettered_total") or 0.0


def test_values_the_database_would_refuse_are_normalised_at_capture(tmp_path):
    buffer = MemoryBuffer(spool_dir=tmp_path)
    good = [make_event() for _ in range(50)]
    hostile = make_event(
        tags={"feature": "se\x00arch\r\n", "bad\x00key": "v", "\x00": "gone"},
        end_user="eve\x00" + "x" * 400,
        input_tokens=-5,
        output_tokens=10**12,
        cache_write_tokens=-7,
        request_body={"messages": [{"role": "user", "content": "a\x00b\nc"}]},
    )
    for event in [*good[:25], hostile, *good[25:]]:
        buffer.put_nowait(event)

    assert drain_all_sync(buffer) == 51

    row = UsageRecord.objects.get(request_id=hostile.request_id)
    assert row.tags == {"feature": "search", "badkey": "v"}
    assert row.end_user.startswith("eve") and len(row.end_user) == 256
    assert row.input_tokens == 0
    assert row.output_tokens == MAX_TOKENS_PER_REQUEST
    assert row.cache_write_tokens == 0
    assert row.usage_suspect is True
    # Newlines are part of a prompt; only what the database refuses is taken out.
    assert row.request_body["messages"][0]["content"] == "ab\nc"
    assert UsageRecord.objects.filter(usage_suspect=False).count() == 50
    assert not UsageDeadLetter.objects.exists()


def test_a_row_the_database_refuses_is_dead_lettered_and_the_rest_are_written(tmp_path, client):
    before = _dead_lettered_total()
    buffer = MemoryBuffer(spool_dir=tmp_path)
    events = [make_event() for _ in range(40)]
    # Nothing at capture can make a negative status code valid: the row itself is bad.
    refused = make_event(status_code=-1)
    events.insert(17, refused)
    for event in events:
        buffer.put_nowait(event)

    assert drain_all_sync(buffer) == 40
    assert len(buffer) == 0  # nothing is left to jam the next batch
    assert UsageRecord.objects.count() == 40
    (letter,) = UsageDeadLetter.objects.all()
    assert letter.request_id == refused.request_id
    assert "IntegrityError" in letter.error
    assert json.loads(letter.payload)["status_code"] == -1
    assert _dead_lettered_total() == before + 1

    ready = client.get("/readyz")
    assert ready.status_code == 200
    assert ready.json()["status"] == "degraded"
    assert ready.json()["reason"] == "degraded: 1 row dead-lettered"

    # Still refused on replay: it stays open and counts the failure.
    result = usage_dead_letters_replay()
    assert (result.written, result.still_failing) == (0, 1)
    letter.refresh_from_db()
    assert letter.failures == 2 and letter.replayed_at is None

    # After a fix (here: the operator corrects the event) the replay writes it, once.
    payload = json.loads(letter.payload)
    payload["status_code"] = 200
    UsageDeadLetter.objects.filter(pk=letter.pk).update(payload=json.dumps(payload))
    assert usage_dead_letters_replay().written == 1
    assert usage_dead_letters_replay().written == 0
    assert UsageRecord.objects.count() == 41
    assert client.get("/readyz").json()["status"] == "ok"


def test_dead_letters_page_is_for_admins_and_replays(client, tmp_path):
    team = factories.make_team()
    admin = factories.make_user("root-admin", team=team, role=Role.ADMIN)
    developer = factories.make_user("dev-only", team=team, role=Role.DEVELOPER)
    buffer = MemoryBuffer(spool_dir=tmp_path)
    buffer.put_nowait(make_event(status_code=-1, request_id="req_refused_on_purpose"))
    drain_all_sync(buffer)

    client.force_login(developer)
    assert client.get(reverse("usage:dead_letters")).status_code == 403
    assert client.post(reverse("usage:dead_letters_replay")).status_code == 403

    client.force_login(admin)
    page = client.get(reverse("usage:dead_letters"))
    assert page.status_code == 200
    html = page.content.decode()
    assert "req_refused_on_purpose" in html and "IntegrityError" in html
    response = client.post(reverse("usage:dead_letters_replay"), follow=True)
    assert "0 written, 0 already in the ledger, 1 still refused" in response.content.decode()


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (0, 0),
        (12, 12),
        (12.0, 12),
        ("12", 12),
        (-5, None),
        (10**12, None),
        (1.5, None),
        ("abc", None),
        (True, None),
        (None, None),
        ([], None),
    ],
)
def test_sane_token_count(value, expected):
    assert sane_token_count(value) == expected


def test_unbelievable_upstream_usage_is_flagged_not_raised():
    assert Usage.from_openai({"prompt_tokens": 10, "completion_tokens": 5}) == Usage(10, 5, 0)
    for raw in (
        {"prompt_tokens": -3, "completion_tokens": 5},
        {"prompt_tokens": 10, "completion_tokens": 10**12},
        {"prompt_tokens": "ten", "completion_tokens": 5},
        "usage",
        {
            "prompt_tokens": 1,
            "completion_tokens": 1,
            "prompt_tokens_details": {"cached_tokens": -1},
        },
    ):
        assert Usage.from_openai(raw).suspect is True, raw
    assert anthropic_usage({"input_tokens": -1, "output_tokens": 3}).suspect is True
    assert anthropic_usage(
        {"input_tokens": 4, "output_tokens": 3, "cache_read_input_tokens": 2}
    ) == Usage(6, 3, 2)
    # Cache writes are part of the input count too, and as unbelievable when negative.
    assert anthropic_usage(
        {"input_tokens": 4, "output_tokens": 3, "cache_creation_input_tokens": 5}
    ) == Usage(9, 3, 0, 5)
    assert anthropic_usage(
        {"input_tokens": 4, "output_tokens": 3, "cache_creation_input_tokens": -5}
    ).suspect


def test_costs_stay_exact_through_normalisation(tmp_path):
    buffer = MemoryBuffer(spool_dir=tmp_path)
    event = make_event(cost_usd=Decimal("0.0000360001"))
    buffer.put_nowait(event)
    drain_all_sync(buffer)
    assert UsageRecord.objects.get(request_id=event.request_id).cost_usd == Decimal("0.0000360001")


def test_an_event_with_an_unreadable_cost_is_set_aside_not_raised():
    from apps.usage.event import UsageEvent

    raw = make_event().to_json().replace(b'"cost_usd":"0.0000360000"', b'"cost_usd":"abc"')
    with pytest.raises(ValueError, match="not a usage event"):
        UsageEvent.from_json(raw)


def test_a_replayed_dead_letter_leaves_no_row_values_in_the_audit_log():
    from apps.accounts.models import AuditLog

    event = make_event(request_id="req_quoted", tags={"site": "berlin"})
    UsageDeadLetter.objects.create(
        request_id="req_quoted",
        payload=event.to_json().decode(),
        error='null value in column "x" violates not-null constraint\n'
        'DETAIL:  Failing row contains (7, req_quoted, {"site": "berlin"}).',
    )
    assert usage_dead_letters_replay().written == 1
    entry = AuditLog.objects.get(action="usage.dead_letter_replayed")
    # The audit log is governance data in the primary: the row's tag value stays out of it.
    assert "berlin" not in json.dumps(entry.before) + entry.object_repr
    assert entry.before["error"].startswith("null value in column")
