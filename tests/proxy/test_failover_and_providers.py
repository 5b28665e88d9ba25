"""Failover across simulator deployments, and the Anthropic adapter against the simulator."""

import httpx
import openai
import pytest
from openai import OpenAI

from apps.proxy.services import model_catalog_apply
from tests import factories
from tests.proxy.helpers import declare_model, wait_for_usage

pytestmark = pytest.mark.django_db(transaction=True)

MESSAGES = [
    {"role": "system", "content": "You are terse."},
    {"role": "user", "content": "Name three colours."},
]


@pytest.fixture
def secret(gateway, user):
    return factories.make_key(user=user)[1]


def client_for(gateway, secret) -> OpenAI:
    return OpenAI(base_url=f"{gateway.url}/v1", api_key=secret, max_retries=0)


def test_failover_to_the_second_deployment(gateway, secret):
    declare_model("fo-chat", gateway.simulator_url, "always-500", "demo-chat")
    gateway.wait_for_model(secret, "fo-chat")
    raw = client_for(gateway, secret).chat.completions.with_raw_response.create(
        model="fo-chat", messages=MESSAGES
    )
    assert raw.parse().choices[0].message.content
    row = wait_for_usage(raw.headers["x-request-id"])
    assert (row.status_code, row.attempts, row.deployment) == (200, 2, "d1-demo-chat")


def test_streaming_failover_happens_before_anything_is_sent(gateway, secret):
    declare_model("fo-stream", gateway.simulator_url, "always-429", "demo-chat")
    gateway.wait_for_model(secret, "fo-stream")
    chunks = list(
        client_for(gateway, secret).chat.completions.create(
            model="fo-stream", messages=MESSAGES, stream=True
        )
    )
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)


@pytest.mark.embedded
def test_all_deployments_failing_gives_502_in_openai_shape(gateway, secret):
    declare_model("all-bad", gateway.simulator_url, "always-500", "always-500")
    gateway.wait_for_model(secret, "all-bad")
    with pytest.raises(openai.InternalServerError) as caught:
        client_for(gateway, secret).chat.completions.create(model="all-bad", messages=MESSAGES)
    assert caught.value.status_code == 502
    body = caught.value.response.json()
    assert body["error"]["code"] == "upstream_error"
    row = wait_for_usage(caught.value.response.headers["x-request-id"])
    assert row.status_code == 502 and row.attempts == 2


def test_all_rate_limited_gives_503_and_unreachable_gives_502(gateway, secret):
    declare_model("all-429", gateway.simulator_url, "always-429")
    model_catalog_apply(
        spec={
            "models": [
                {
                    "name": "nowhere",
                    "deployments": [
                        {
                            "name": "dead",
                            "provider": "openai",
                            "upstream_model": "x",
                            "base_url": "http://127.0.0.1:9/v1",
                            "timeout_seconds": 2,
                        }
                    ],
                }
            ]
        }
    )
    gateway.wait_for_model(secret, "nowhere")
    client = client_for(gateway, secret)
    with pytest.raises(openai.APIStatusError) as caught:
        client.chat.completions.create(model="all-429", messages=MESSAGES)
    assert caught.value.status_code == 503
    with pytest.raises(openai.APIStatusError) as caught:
        client.chat.completions.create(model="nowhere", messages=MESSAGES)
    assert caught.value.status_code == 502
    assert caught.value.response.json()["error"]["code"] == "upstream_unreachable"


def test_timeout_gives_504(gateway, secret):
    model_catalog_apply(
        spec={
            "models": [
                {
                    "name": "too-slow",
                    "deployments": [
                        {
                            "name": "slow",
                            "provider": "simulator",
                            "upstream_model": "slow-chat",
                            "base_url": gateway.simulator_url,
                            "timeout_seconds": 0.5,
                        }
                    ],
                }
            ]
        }
    )
    gateway.wait_for_model(secret, "too-slow")
    with pytest.raises(openai.APIStatusError) as caught:
        client_for(gateway, secret).chat.completions.create(model="too-slow", messages=MESSAGES)
    assert caught.value.status_code == 504


def anthropic_model(gateway, secret, name="claude-sim"):
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
                            "api_key_env": "TOLLGATE_UPSTREAM_TEST_KEY",
                        }
                    ],
                }
            ]
        }
    )
    gateway.wait_for_model(secret, name)


def test_anthropic_translation_non_streaming(gateway, secret):
    anthropic_model(gateway, secret)
    raw = client_for(gateway, secret).chat.completions.with_raw_response.create(
        model="claude-sim", messages=MESSAGES, max_tokens=50
    )
    completion = raw.parse()
    assert completion.choices[0].message.content
    assert completion.choices[0].finish_reason in ("stop", "length")
    assert completion.model == "claude-sim"
    last = httpx.get(f"{gateway.simulator_url.removesuffix('/v1')}/_sim/last_request").json()
    assert last["path"].endswith("/v1/messages")
    assert last["json"]["system"] and last["json"]["max_tokens"] == 50
    assert "x-api-key" in last["headers"] and "anthropic-version" in last["headers"]
    row = wait_for_usage(raw.headers["x-request-id"])
    assert row.provider == "anthropic"
    assert (row.input_tokens, row.output_tokens) == (
        completion.usage.prompt_tokens,
        completion.usage.completion_tokens,
    )


def test_anthropic_translation_streaming_and_tools(gateway, secret):
    anthropic_model(gateway, secret, "claude-tools")
    client = client_for(gateway, secret)
    chunks = list(
        client.chat.completions.create(
            model="claude-tools",
            messages=MESSAGES,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    whole = client.chat.completions.create(model="claude-tools", messages=MESSAGES)
    assert text == whole.choices[0].message.content
    assert chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens == whole.usage.completion_tokens
    tools = [
        {
            "type": "function",
            "function": {
                "name": "get_weather",
                "description": "Weather for a city",
                "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
            },
        }
    ]
    answer = client.chat.completions.create(
        model="claude-tools",
        tools=tools,
        messages=[{"role": "user", "content": "What is the weather in Paris?"}],
    )
    choice = answer.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert choice.message.tool_calls[0].function.name == "get_weather"
