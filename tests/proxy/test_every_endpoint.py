"""One call pipeline: what holds on chat holds on every endpoint.

Tags, the usage row written once, and the time-to-first-token failover are checked on each
path through a real gateway process (quotas, required tags and failover on Messages are in
`test_anthropic_messages.py`).
"""

import json
import time
import uuid
from decimal import Decimal

import httpx
import pytest

from apps.proxy.services import model_catalog_apply
from apps.usage.models import UsageRecord
from tests import factories

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.embedded]

HELLO = [{"role": "user", "content": "Tell me a short story."}]
CALLS = {
    "chat": ("/v1/chat/completions", {"model": "any-chat", "messages": HELLO}),
    "completion": ("/v1/completions", {"model": "any-chat", "prompt": "Once upon a time"}),
    "messages": ("/v1/messages", {"model": "any-chat", "max_tokens": 32, "messages": HELLO}),
    "responses": ("/v1/responses", {"model": "any-chat", "input": "Tell me a short story."}),
    "embedding": ("/v1/embeddings", {"model": "any-embed", "input": "hello"}),
    "rerank": ("/v1/rerank", {"model": "any-rerank", "query": "q", "documents": ["a", "b"]}),
}
STREAMED = ["chat", "completion", "messages", "responses"]


def _deployments(gateway, *upstreams: str, provider: str = "openai", **extra) -> list[dict]:
    return [
        {
            "name": f"d{index}-{upstream}",
            "provider": provider,
            "upstream_model": upstream,
            "base_url": gateway.simulator_url,
            "priority": index,
            "timeout_seconds": 10,
            **({"extra": extra[upstream]} if upstream in extra else {}),
        }
        for index, upstream in enumerate(upstreams)
    ]


@pytest.fixture
def secret(gateway, user):
    secret = factories.make_key(user=user, default_tags={"environment": "test"})[1]
    knobs = f"{gateway.simulator_url.removesuffix('/v1')}/_sim/knobs"
    assert httpx.post(knobs, json={"first-token-late": {"ttft_ms": 3000}}).status_code == 200
    model_catalog_apply(
        spec={
            "models": [
                {"name": "any-chat", "deployments": _deployments(gateway, "demo-chat")},
                {
                    "name": "any-embed",
                    "mode": "embedding",
                    "deployments": _deployments(gateway, "demo-embed"),
                },
                {
                    "name": "any-rerank",
                    "mode": "rerank",
                    "deployments": _deployments(gateway, "demo-rerank"),
                },
                {
                    "name": "late-chat",
                    "deployments": _deployments(
                        gateway,
                        "first-token-late",
                        "demo-chat",
                        **{"first-token-late": {"ttft_timeout_seconds": 0.5}},
                    ),
                },
                {
                    # Native Anthropic: `message_start` comes at once, the tokens 3 s later.
                    "name": "late-claude",
                    "deployments": _deployments(
                        gateway,
                        "first-token-late",
                        "demo-chat",
                        provider="anthropic",
                        **{"first-token-late": {"ttft_timeout_seconds": 0.5}},
                    ),
                },
            ]
        }
    )
    for model in ("any-chat", "any-embed", "any-rerank", "late-chat", "late-claude"):
        gateway.wait_for_model(secret, model)
    yield secret
    httpx.post(knobs, json={"first-token-late": None})


@pytest.mark.parametrize("kind", sorted(CALLS))
def test_tags_and_one_usage_row_on_every_endpoint(gateway, secret, team, user, kind):
    path, body = CALLS[kind]
    run = uuid.uuid4().hex
    response = httpx.post(
        gateway.url + path,
        json=body,
        headers={"x-api-key": secret, "X-Gateway-Metadata": json.dumps({"run": run})},
        timeout=30,
    )
    assert response.status_code == 200, response.text
    request_id = response.headers["x-request-id"]
    deadline = time.monotonic() + 10
    while not UsageRecord.objects.filter(request_id=request_id).exists():
        assert time.monotonic() < deadline, "no usage row"
        time.sleep(0.05)
    time.sleep(0.3)  # a second write of the same call would land by now
    rows = list(UsageRecord.objects.filter(request_id=request_id))
    assert len(rows) == 1
    row = rows[0]
    assert row.request_type == kind
    assert (row.team_id, row.user_id, row.status_code) == (team.id, user.id, 200)
    assert row.tags == {"cost_center": "cc-200", "environment": "test", "run": run}
    assert row.input_tokens > 0
    assert Decimal(response.headers["x-gateway-cost-usd"]) == row.cost_usd


# The Responses calls reach the simulator natively: its `response.created` comes at once
# and the tokens late, as with native Messages (late-claude): the limit is on the first
# token, not the first event.
@pytest.mark.parametrize(
    ("kind", "model"), [*((kind, "late-chat") for kind in STREAMED), ("messages", "late-claude")]
)
def test_a_late_first_token_fails_over_on_every_streaming_endpoint(gateway, secret, kind, model):
    path, body = CALLS[kind]
    body = {**body, "model": model, "stream": True}
    started = time.monotonic()
    with httpx.stream(
        "POST", gateway.url + path, json=body, headers={"x-api-key": secret}, timeout=30
    ) as response:
        assert response.status_code == 200, gateway.log()[-4000:]
        request_id = response.headers["x-request-id"]
        text = response.read().decode()
    assert time.monotonic() - started < 2.5  # did not wait for the late deployment's 3 s
    assert "error" not in text.split("\n")[0]
    deadline = time.monotonic() + 10
    while (row := UsageRecord.objects.filter(request_id=request_id).first()) is None:
        assert time.monotonic() < deadline, "no usage row"
        time.sleep(0.05)
    assert (row.status_code, row.attempts, row.deployment) == (200, 2, "d1-demo-chat")
    assert row.is_stream and row.output_tokens > 0


@pytest.mark.parametrize(
    ("kind", "provider"),
    [
        *((kind, "openai") for kind in STREAMED),
        # Anthropic streams report usage at their start (1 output token so far): a cut one
        # must not be billed that.
        ("messages", "anthropic"),
        ("chat", "anthropic"),
    ],
)
def test_a_stream_cut_upstream_is_billed_from_the_estimate_and_flagged(
    gateway, secret, kind, provider
):
    knobs = f"{gateway.simulator_url.removesuffix('/v1')}/_sim/knobs"
    assert httpx.post(knobs, json={"cut-short": {"disconnect_after_chunks": 6}}).status_code == 200
    model_catalog_apply(
        spec={
            "models": [
                {
                    "name": "cut-chat",
                    "deployments": _deployments(gateway, "cut-short", provider=provider),
                }
            ]
        }
    )
    gateway.wait_for_model(secret, "cut-chat")
    path, body = CALLS[kind]
    body = {**body, "model": "cut-chat", "stream": True}
    try:
        with httpx.stream(
            "POST", gateway.url + path, json=body, headers={"x-api-key": secret}, timeout=30
        ) as response:
            request_id = response.headers["x-request-id"]
            text = response.read().decode()
    finally:
        httpx.post(knobs, json={"cut-short": None})
    assert "error" in text  # the client is told the stream broke off, in its API's shape
    deadline = time.monotonic() + 10
    while (row := UsageRecord.objects.filter(request_id=request_id).first()) is None:
        assert time.monotonic() < deadline, "no usage row"
        time.sleep(0.05)
    assert row.tokens_estimated and row.output_tokens > 1 and row.input_tokens > 0
    assert row.error_type == "upstream_stream_error" and row.cost_usd >= 0
