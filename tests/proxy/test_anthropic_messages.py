"""`POST /v1/messages` through a real gateway process with the official anthropic SDK.

Native: an Anthropic deployment (the simulator speaking Messages) gets the request as it
came. Translated: a chat-completions deployment serves it through the chat translation.
"""

import json
import time
from decimal import Decimal

import anthropic
import httpx
import pytest

from apps.proxy.services import model_catalog_apply
from apps.quotas.services import quota_config_apply
from tests import factories
from tests.proxy.helpers import declare_model, wait_for_usage

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.embedded]

PRICES = {"input_cost_per_token": "0.000003", "output_cost_per_token": "0.000015"}
WEATHER_TOOL = {
    "name": "get_weather",
    "description": "The weather in a city.",
    "input_schema": {
        "type": "object",
        "properties": {"city": {"type": "string"}},
        "required": ["city"],
    },
}


def native_model(gateway, name: str = "claude-native") -> None:
    model_catalog_apply(
        spec={
            "models": [
                {
                    "name": name,
                    "deployments": [
                        {
                            "name": "anthropic-sim",
                            "provider": "anthropic",
                            "upstream_model": "claude-sim-1",
                            "base_url": gateway.simulator_url,
                            "prices": PRICES,
                        }
                    ],
                }
            ]
        }
    )


@pytest.fixture
def secret(gateway, user):
    secret = factories.make_key(user=user)[1]
    native_model(gateway)
    declare_model("chat-via", gateway.simulator_url, "demo-chat", prices=PRICES)
    gateway.wait_for_model(secret, "claude-native")
    gateway.wait_for_model(secret, "chat-via")
    return secret


def client(gateway, secret, **kwargs) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=gateway.url, api_key=secret, max_retries=0, **kwargs)


def simulator(gateway) -> str:
    return gateway.simulator_url.removesuffix("/v1")


def last_upstream_request(gateway) -> dict:
    return httpx.get(f"{simulator(gateway)}/_sim/last_request").json()


def raw_events(gateway, secret, body: dict) -> list[tuple[str, dict]]:
    """The (event, data) pairs of a streamed answer, as the gateway sent them."""
    events = []
    with httpx.stream(
        "POST", f"{gateway.url}/v1/messages", json=body, headers={"x-api-key": secret}
    ) as response:
        assert response.status_code == 200
        assert response.headers["x-gateway-overhead-ms"]
        name = None
        for line in response.iter_lines():
            if line.startswith("event: "):
                name = line.removeprefix("event: ")
            elif line.startswith("data: "):
                events.append((name, json.loads(line.removeprefix("data: "))))
    return events


@pytest.mark.parametrize("model", ["claude-native", "chat-via"])
def test_a_message_is_answered_and_recorded_once(gateway, secret, team, user, model):
    raw = client(gateway, secret).messages.with_raw_response.create(
        model=model,
        max_tokens=64,
        system="Be brief.",
        messages=[{"role": "user", "content": "Name three colours."}],
        metadata={"user_id": "end-user-9"},
        extra_headers={"X-Gateway-Metadata": json.dumps({"feature": "agent"})},
    )
    message = raw.parse()
    assert message.type == "message" and message.role == "assistant"
    assert message.model == model
    assert message.content[0].type == "text" and message.content[0].text
    assert message.stop_reason in ("end_turn", "max_tokens")
    row = wait_for_usage(raw.headers["x-request-id"])
    assert (row.request_type, row.status_code, row.is_stream) == ("messages", 200, False)
    assert (row.team_id, row.user_id, row.end_user) == (team.id, user.id, "end-user-9")
    assert row.tags["feature"] == "agent"
    assert (row.input_tokens, row.output_tokens) == (
        message.usage.input_tokens,
        message.usage.output_tokens,
    )
    assert not row.tokens_estimated
    # The answer tells the caller what the ledger holds.
    assert Decimal(raw.headers["x-gateway-cost-usd"]) == row.cost_usd > 0
    assert float(raw.headers["x-gateway-overhead-ms"]) >= 0
    upstream = last_upstream_request(gateway)
    if model == "claude-native":
        assert upstream["path"].endswith("/v1/messages")
        assert upstream["json"]["system"] == "Be brief."
        assert upstream["json"]["metadata"] == {"user_id": "end-user-9"}
    else:
        assert upstream["path"].endswith("/v1/chat/completions")
        assert upstream["json"]["messages"][0] == {"role": "system", "content": "Be brief."}
        assert upstream["json"]["user"] == "end-user-9"


@pytest.mark.parametrize("model", ["claude-native", "chat-via"])
def test_a_streamed_message_has_every_event_in_order(gateway, secret, model):
    with client(gateway, secret).messages.stream(
        model=model,
        max_tokens=64,
        messages=[{"role": "user", "content": "Tell me a short story."}],
    ) as stream:
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert text and final.content[0].text == text
    assert final.usage.output_tokens > 0
    events = raw_events(
        gateway,
        secret,
        {
            "model": model,
            "max_tokens": 64,
            "stream": True,
            "messages": [{"role": "user", "content": "Tell me a short story."}],
        },
    )
    names = [name for name, _ in events]
    assert names[0] == "message_start" and names[-2:] == ["message_delta", "message_stop"]
    assert "ping" in names
    first_delta = names.index("content_block_delta")
    assert names[first_delta - 1] in ("content_block_start", "ping")
    assert names.index("content_block_stop") > first_delta
    assert all(data["type"] == name for name, data in events)
    assert events[0][1]["message"]["model"] == model


def test_a_streamed_message_is_billed_as_it_was_counted(gateway, secret):
    with client(gateway, secret).messages.with_streaming_response.create(
        model="chat-via",
        max_tokens=64,
        stream=True,
        messages=[{"role": "user", "content": "Tell me a short story."}],
    ) as response:
        request_id = response.headers["x-request-id"]
        events = [line for line in response.iter_lines() if line.startswith("data: ")]
    delta = next(json.loads(line[6:]) for line in events if '"message_delta"' in line)
    row = wait_for_usage(request_id)
    assert row.is_stream and row.ttft_ms is not None
    assert delta["usage"]["output_tokens"] == row.output_tokens > 0
    assert delta["usage"]["input_tokens"] == row.input_tokens > 0


@pytest.mark.parametrize("model", ["claude-native", "chat-via"])
def test_a_tool_round_trip(gateway, secret, model):
    sdk = client(gateway, secret)
    first = sdk.messages.create(
        model=model,
        max_tokens=128,
        tools=[WEATHER_TOOL],
        tool_choice={"type": "any"},
        messages=[{"role": "user", "content": "What is the weather in Paris?"}],
    )
    assert first.stop_reason == "tool_use"
    call = next(block for block in first.content if block.type == "tool_use")
    assert call.name == "get_weather" and isinstance(call.input, dict) and "city" in call.input
    second = sdk.messages.create(
        model=model,
        max_tokens=128,
        tools=[WEATHER_TOOL],
        messages=[
            {"role": "user", "content": "What is the weather in Paris?"},
            {"role": "assistant", "content": [block.model_dump() for block in first.content]},
            {
                "role": "user",
                "content": [
                    {"type": "tool_result", "tool_use_id": call.id, "content": "Sunny, 21 C"}
                ],
            },
        ],
    )
    assert second.content[0].type == "text" and second.content[0].text
    upstream = last_upstream_request(gateway)["json"]
    if model == "chat-via":
        roles = [m["role"] for m in upstream["messages"]]
        assert roles == ["user", "assistant", "tool"]
        assert upstream["messages"][1]["tool_calls"][0]["id"] == call.id
        assert upstream["messages"][2]["tool_call_id"] == call.id
    else:
        assert upstream["messages"][2]["content"][0]["type"] == "tool_result"


def test_images_and_stop_sequences_reach_the_upstream(gateway, secret):
    pixel = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNkYPhfDwAChwGA60e6kgAAAABJRU5ErkJggg=="
    content = [
        {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": pixel}},
        {"type": "text", "text": "What is in this picture?"},
    ]
    for model in ("claude-native", "chat-via"):
        message = client(gateway, secret).messages.create(
            model=model,
            max_tokens=32,
            stop_sequences=["\n\n"],
            messages=[{"role": "user", "content": content}],
        )
        assert message.content
        upstream = last_upstream_request(gateway)["json"]
        if model == "chat-via":
            part = upstream["messages"][0]["content"][0]
            assert part["image_url"]["url"] == f"data:image/png;base64,{pixel}"
            assert upstream["stop"] == ["\n\n"]
        else:
            assert upstream["messages"][0]["content"][0]["source"]["data"] == pixel
            assert upstream["stop_sequences"] == ["\n\n"]


def test_images_in_a_tool_result_reach_a_chat_upstream(gateway, secret):
    pixel = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNkYPhfDwAChwGA60e6kgAAAABJRU5ErkJggg=="
    image = {
        "type": "image",
        "source": {"type": "base64", "media_type": "image/png", "data": pixel},
    }
    call = {"type": "tool_use", "id": "toolu_1", "name": "get_weather", "input": {"city": "Oslo"}}
    result = {
        "type": "tool_result",
        "tool_use_id": "toolu_1",
        "content": [{"type": "text", "text": "Radar attached"}, image],
    }
    client(gateway, secret).messages.create(
        model="chat-via",
        max_tokens=32,
        tools=[WEATHER_TOOL],
        messages=[
            {"role": "user", "content": "Weather in Oslo?"},
            {"role": "assistant", "content": [call]},
            {"role": "user", "content": [result]},
        ],
    )
    messages = last_upstream_request(gateway)["json"]["messages"]
    # Chat tool messages carry text only: the image follows in a user message, not dropped.
    assert [m["role"] for m in messages] == ["user", "assistant", "tool", "user"]
    assert messages[2] == {"role": "tool", "tool_call_id": "toolu_1", "content": "Radar attached"}
    note, part = messages[3]["content"]
    assert "toolu_1" in note["text"]
    assert part["image_url"]["url"] == f"data:image/png;base64,{pixel}"


def test_auth_by_bearer_and_version_headers_pass_through(gateway, secret):
    sdk = anthropic.Anthropic(base_url=gateway.url, auth_token=secret, max_retries=0)
    sdk.messages.create(
        model="claude-native",
        max_tokens=16,
        messages=[{"role": "user", "content": "hi"}],
        extra_headers={
            "anthropic-version": "2023-06-01",
            "anthropic-beta": "prompt-caching-2024-07-31",
        },
    )
    headers = last_upstream_request(gateway)["headers"]
    assert headers["anthropic-version"] == "2023-06-01"
    assert headers["anthropic-beta"] == "prompt-caching-2024-07-31"
    # The caller's gateway key never reaches the upstream.
    assert secret not in json.dumps(headers)


def test_bad_requests_get_anthropic_errors_without_an_upstream_call(gateway, secret):
    sdk = client(gateway, secret)
    assert httpx.post(f"{simulator(gateway)}/_sim/reset").status_code == 200
    with pytest.raises(anthropic.BadRequestError) as caught:
        sdk.messages.create(model="claude-native", max_tokens=0, messages=[])
    body = caught.value.body
    assert body["type"] == "error"
    assert body["error"]["type"] == "invalid_request_error"
    assert body["error"]["message"].startswith("max_tokens")
    with pytest.raises(anthropic.BadRequestError) as caught:
        sdk.messages.create(
            model="claude-native", max_tokens=8, messages=[{"role": "wizard", "content": "hi"}]
        )
    assert "messages.0.role" in caught.value.body["error"]["message"]
    with pytest.raises(anthropic.NotFoundError) as caught:
        sdk.messages.create(
            model="no-such-model", max_tokens=8, messages=[{"role": "user", "content": "hi"}]
        )
    assert caught.value.body["error"]["type"] == "not_found_error"
    with pytest.raises(anthropic.BadRequestError) as caught:
        sdk.messages.create(
            model="chat-via",
            max_tokens=8,
            tools=[{"type": "web_search_20250305", "name": "web_search"}],
            messages=[{"role": "user", "content": "hi"}],
        )
    assert "server tools" in caught.value.body["error"]["message"]
    assert httpx.get(f"{simulator(gateway)}/_sim/requests").json()["requests"] == []
    with pytest.raises(anthropic.AuthenticationError) as caught:
        anthropic.Anthropic(
            base_url=gateway.url, api_key="tg-wrong", max_retries=0
        ).messages.create(
            model="claude-native", max_tokens=8, messages=[{"role": "user", "content": "hi"}]
        )
    assert caught.value.body["error"]["type"] == "authentication_error"


def test_count_tokens_is_answered_by_the_gateway(gateway, secret):
    count = client(gateway, secret).messages.count_tokens(
        model="claude-native",
        system="Be brief.",
        messages=[{"role": "user", "content": "Name three colours, please."}],
    )
    assert count.input_tokens > 0
    with pytest.raises(anthropic.NotFoundError):
        client(gateway, secret).messages.count_tokens(
            model="no-such-model", messages=[{"role": "user", "content": "hi"}]
        )


def test_quotas_required_tags_and_failover_hold_on_messages(gateway, team, user):
    """The pipeline is the same for every endpoint: what chat gets, messages gets."""
    suffix = str(time.monotonic_ns())
    _, secret = factories.make_key(user=user)
    declare_model("msg-failover", gateway.simulator_url, "always-500", "demo-chat")
    gateway.wait_for_model(secret, "msg-failover")
    sdk = client(gateway, secret)
    raw = sdk.messages.with_raw_response.create(
        model="msg-failover", max_tokens=16, messages=[{"role": "user", "content": "hi"}]
    )
    assert raw.parse().content[0].text
    row = wait_for_usage(raw.headers["x-request-id"])
    assert (row.status_code, row.attempts, row.deployment) == (200, 2, "d1-demo-chat")

    quota_config_apply(
        yaml_text=f"""
name: test
type: gateway-rate-limiting-config
rules:
  - id: messages-burst-{suffix}
    when: {{subjects: ["team:{team.slug}"], models: ["msg-failover"]}}
    limit_to: 1
    unit: requests_per_minute
"""
    )
    time.sleep(0.8)  # the test gateway reloads quota configs every 0.2 s
    hello = [{"role": "user", "content": "hi"}]
    sdk.messages.create(model="msg-failover", max_tokens=16, messages=hello)
    with pytest.raises(anthropic.RateLimitError) as caught:
        sdk.messages.create(
            model="msg-failover", max_tokens=16, messages=[{"role": "user", "content": "hi"}]
        )
    error = caught.value.body["error"]
    assert error["type"] == "rate_limit_error" and error["code"] == "quota_exceeded"
    assert [rule["rule"] for rule in error["broken_rules"]] == [f"messages-burst-{suffix}"]
    refused = wait_for_usage(caught.value.response.headers["x-request-id"])
    assert (refused.status_code, refused.request_type) == (429, "messages")

    team.required_tag_keys = ["project"]
    team.save()
    _, tagged_secret = factories.make_key(user=user)
    native_model(gateway)
    gateway.wait_for_model(tagged_secret, "claude-native")
    with pytest.raises(anthropic.BadRequestError) as caught:
        client(gateway, tagged_secret).messages.create(
            model="claude-native", max_tokens=16, messages=[{"role": "user", "content": "hi"}]
        )
    assert caught.value.body["error"]["code"] == "missing_required_tag"
