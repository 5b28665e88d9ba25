"""The pipeline hands every count it knows of a call to the usage event.

`Usage` (what a provider reports) and `UsageEvent` (what the ledger stores, checked against
`UsageRecord` in tests/usage/test_event_round_trip.py) are defined once each; this test
fails when a count added to `Usage` is not carried into the event by `calls._record`.
"""

import asyncio
from dataclasses import fields

import pytest

from apps.proxy import calls
from apps.proxy.auth import KeyInfo
from apps.proxy.catalog import ModelEntry
from apps.proxy.endpoints import ENDPOINTS
from apps.proxy.providers.base import Usage
from tests.proxy.helpers import deployment_info

pytestmark = pytest.mark.embedded

# Usage field -> UsageEvent field, where the names differ.
EVENT_NAMES = {"estimated": "tokens_estimated", "suspect": "usage_suspect"}


class CapturingBuffer:
    def __init__(self) -> None:
        self.events: list = []

    async def put(self, event) -> None:
        self.events.append(event)


def a_key() -> KeyInfo:
    return KeyInfo(
        id=1,
        prefix="tg_live_abc",
        lineage_id="lineage",
        team_id=2,
        team_slug="team",
        user_id=3,
        username="dev",
        user_email="dev@example.com",
        virtual_account_id=None,
        virtual_account_name="",
        team_tags={},
        owner_tags={},
        key_tags={},
        enforced_tag_keys=frozenset(),
        required_tag_keys=(),
        allowed_models=frozenset(),
        scopes=frozenset(),
        allow_request_logging=False,
        owner_active=True,
        expires_ts=None,
        revoked_ts=None,
        region="eu",
    )


def test_every_count_of_usage_reaches_the_event(monkeypatch):
    buffer = CapturingBuffer()
    monkeypatch.setattr(calls, "get_usage_buffer", lambda: buffer)
    monkeypatch.setattr(calls.metrics, "observe_usage", lambda *args, **kwargs: None)
    # Distinct non-default values, so a field left out (or swapped) shows.
    values: dict[str, object] = {}
    for number, field in enumerate(fields(Usage), start=11):
        values[field.name] = True if field.type in (bool, "bool") else number * 10
    usage = Usage(**values)  # type: ignore[arg-type]
    deployment = deployment_info()
    call = calls.Call(
        request_id="req-1",
        started=0.0,
        key=a_key(),
        endpoint=ENDPOINTS["/v1/messages"],
        kind="messages",
        model=ModelEntry("m", "chat", "priority", (deployment,), 0),
        body={},
        tags={},
        end_user="",
        stream=False,
        log_bodies=False,
        status=200,
        deployment=deployment,
        usage=usage,
    )
    asyncio.run(calls._record(call))
    [event] = buffer.events
    for name, value in values.items():
        assert getattr(event, EVENT_NAMES.get(name, name)) == value, name
    # The key's cached team region (no customer region applies) reached the row.
    assert event.region == "eu"
