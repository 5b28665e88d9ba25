"""`POST /v1/responses` through a real gateway process with the official openai SDK.

Native: the simulator speaks Responses and gets the request as it came. Translated: a
deployment marked `responses_api: false`, and an Anthropic deployment, serve it through
chat completions.
"""

import json
import time
import uuid
from decimal import Decimal

import httpx
import openai
import pytest
from openai import OpenAI

from apps.proxy.services import model_catalog_apply
from apps.usage.models import UsageRecord
from tests import factories
from tests.proxy.helpers import wait_for_usage

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.embedded]

PRICES = {"input_cost_per_token": "0.000002", "output_cost_per_token": "0.000008"}
MODELS = ["resp-native", "resp-via-chat", "resp-via-anthropic"]
WEATHER_TOOL = {
    "type": "function",
    "name": "get_weather",
    "description": "The weather in a city.",
    "parameters": {
        "type": "object",
        "properties": {"city": {"type": "string"}},
        "required": ["city"],
    },
}


def _model(name: str, deployment: dict) -> dict:
    return {"name": name, "deployments": [{"name": f"{name}-d", "prices": PRICES, **deployment}]}


@pytest.fixture
def secret(gateway, user):
    secret = factories.make_key(user=user)[1]
    url = gateway.simulator_url
    model_catalog_apply(
        spec={
            "models": [
                _model(
                    "resp-native",
                    {"provider": "openai", "upstream_model": "demo-chat", "base_url": url},
                ),
                _model(
                    "resp-via-chat",
                    {
                        "provider": "openai",
                        "upstream_model": "demo-chat",
                        "base_url": url,
                        "extra": {"responses_api": False},
                    },
                ),
                _model(
                    "resp-via-anthropic",
                    {"provider": "anthropic", "upstream_model": "claude-sim-1", "base_url": url},
                ),
            ]
        }
    )
    for name in MODELS:
        gateway.wait_for_model(secret, name)
    return secret


def sdk(gateway, secret) -> OpenAI:
    return OpenAI(base_url=f"{gateway.url}/v1", api_key=secret, max_retries=0)


def wait_for_tagged(run: str, timeout: float = 10.0) -> UsageRecord:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        row = UsageRecord.objects.filter(tags__run=run).first()
        if row is not None:
            return row
        time.sleep(0.05)
    raise AssertionError(f"no usage row tagged run={run}")


def last_upstream_request(gateway) -> dict:
    return httpx.get(f"{gateway.simulator_url.removesuffix('/v1')}/_sim/last_request").json()


@pytest.mark.parametrize("model", MODELS)
def test_a_response_is_answered_and_recorded_once(gateway, secret, model):
    raw = sdk(gateway, secret).responses.with_raw_response.create(
        model=model,
        instructions="Be brief.",
        input="Name three colours.",
        max_output_tokens=64,
        extra_headers={"X-Gateway-Metadata": json.dumps({"feature": "codex"})},
    )
    response = raw.parse()
    assert response.object == "response" and response.model == model
    assert response.output_text
    row = wait_for_usage(raw.headers["x-request-id"])
    assert (row.request_type, row.status_code, row.is_stream) == ("responses", 200, False)
    assert row.tags["feature"] == "codex"
    assert (row.input_tokens, row.output_tokens) == (
        response.usage.input_tokens,
        response.usage.output_tokens,
    )
    assert not row.tokens_estimated
    assert Decimal(raw.headers["x-gateway-cost-usd"]) == row.cost_usd > 0
    path = last_upstream_request(gateway)["path"]
    expected = {
        "resp-native": "/v1/responses",
        "resp-via-chat": "/v1/chat/completions",
        "resp-via-anthropic": "/v1/messages",
    }[model]
    assert path.endswith(expected)


@pytest.mark.parametrize("model", MODELS)
def test_a_streamed_response_reads_usage_from_response_completed(gateway, secret, model):
    run = uuid.uuid4().hex
    with sdk(gateway, secret).responses.stream(
        model=model,
        input="Tell me a short story.",
        max_output_tokens=64,
        extra_headers={"X-Gateway-Metadata": json.dumps({"run": run})},
    ) as stream:
        names = []
        text = ""
        for event in stream:
            names.append(event.type)
            if event.type == "response.output_text.delta":
                text += event.delta
        final = stream.get_final_response()
    assert names[:2] == ["response.created", "response.in_progress"]
    assert names[-1] in ("response.completed", "response.incomplete")
    assert "response.output_item.added" in names and "response.output_text.done" in names
    assert text and final.output_text == text
    assert final.usage.output_tokens > 0
    row = wait_for_tagged(run)
    assert (row.input_tokens, row.output_tokens) == (
        final.usage.input_tokens,
        final.usage.output_tokens,
    )
    assert not row.tokens_estimated and row.ttft_ms is not None


@pytest.mark.parametrize("model", MODELS)
def test_a_function_call_round_trip(gateway, secret, model):
    client = sdk(gateway, secret)
    first = client.responses.create(
        model=model,
        input="What is the weather in Paris?",
        tools=[WEATHER_TOOL],
        tool_choice="required",
    )
    call = next(item for item in first.output if item.type == "function_call")
    assert call.name == "get_weather" and "city" in json.loads(call.arguments)
    second = client.responses.create(
        model=model,
        tools=[WEATHER_TOOL],
        input=[
            {"role": "user", "content": "What is the weather in Paris?"},
            {
                "type": "function_call",
                "call_id": call.call_id,
                "name": call.name,
                "arguments": call.arguments,
            },
            {"type": "function_call_output", "call_id": call.call_id, "output": "Sunny, 21 C"},
        ],
    )
    assert second.output_text
    if model == "resp-via-chat":
        messages = last_upstream_request(gateway)["json"]["messages"]
        assert [m["role"] for m in messages] == ["user", "assistant", "tool"]
        assert messages[2]["tool_call_id"] == call.call_id


def test_stateful_requests_need_a_responses_server(gateway, secret):
    with pytest.raises(openai.BadRequestError) as caught:
        sdk(gateway, secret).responses.create(
            model="resp-via-chat", input="hi", previous_response_id="resp_123"
        )
    assert "previous_response_id" in caught.value.body["message"]
    # Structured output through chat would come back as free text: refused, not dropped.
    with pytest.raises(openai.BadRequestError) as caught:
        sdk(gateway, secret).responses.create(
            model="resp-via-chat", input="hi", text={"format": {"type": "json_object"}}
        )
    assert "text.format" in caught.value.body["message"]
    with pytest.raises(openai.BadRequestError) as caught:
        sdk(gateway, secret).responses.create(model="resp-native", input=42)  # type: ignore[arg-type]
    assert caught.value.body["param"] == "input"
