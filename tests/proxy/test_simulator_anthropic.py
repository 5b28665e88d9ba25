"""The simulator's Anthropic Messages API over real HTTP, checked with the official anthropic
SDK: system prompts, images, tools and tool results, stop sequences, the stream's events in
Anthropic's order, cache usage and a stream failing mid-answer."""

import base64
import json

import anthropic
import httpx
import pytest
from anthropic import Anthropic

from apps.proxy.simulator.content import TOKENS_PER_IMAGE, count_message_tokens, count_tokens
from tests.proxy.simulator_server import start_simulator

pytestmark = pytest.mark.embedded

WEATHER_TOOL = {
    "name": "get_weather",
    "description": "Current weather for a city",
    "input_schema": {
        "type": "object",
        "properties": {"city": {"type": "string"}},
        "required": ["city"],
    },
}
QUESTION = [{"role": "user", "content": "What is the weather in Berlin?"}]
EVENT_ORDER = [
    "message_start",
    "content_block_start",
    "ping",
    "content_block_delta",
    "content_block_stop",
    "message_delta",
    "message_stop",
]
# The SDK drops ping events before handing the stream over.
SDK_EVENT_ORDER = [e for e in EVENT_ORDER if e != "ping"]


@pytest.fixture(scope="module")
def sim_url():
    base_url, stop = start_simulator()
    yield base_url
    stop()


@pytest.fixture
def client(sim_url):
    return Anthropic(base_url=sim_url, api_key="x", max_retries=0)


def collapsed(types: list[str]) -> list[str]:
    return [t for i, t in enumerate(types) if i == 0 or types[i - 1] != t]


def raw_events(url: str, body: dict, **headers: str) -> list[tuple[str, dict]]:
    """(event name, data) of a streamed /v1/messages answer, read without the SDK."""
    events, name = [], None
    with httpx.stream(
        "POST", f"{url}/v1/messages", json={**body, "stream": True}, headers=headers
    ) as response:
        for line in response.iter_lines():
            if line.startswith("event: "):
                name = line[7:]
            elif line.startswith("data: "):
                events.append((name, json.loads(line[6:])))
    return events


def test_system_prompt_as_string_or_blocks_metadata_and_stop_sequences(client):
    messages = [{"role": "user", "content": "Tell me about toll roads."}]
    as_string = client.messages.create(
        model="sim-claude",
        max_tokens=200,
        system="Be terse.",
        messages=messages,
        metadata={"user_id": "user-42"},
    )
    as_blocks = client.messages.create(
        model="sim-claude",
        max_tokens=200,
        system=[{"type": "text", "text": "Be terse.", "cache_control": {"type": "ephemeral"}}],
        messages=messages,
    )
    assert as_string.type == "message" and as_string.role == "assistant"
    assert as_string.id.startswith("msg_")
    assert as_string.stop_reason == "end_turn" and as_string.stop_sequence is None
    (block,) = as_string.content
    assert block.type == "text" and block.text.endswith(".")
    assert as_string.usage.input_tokens == count_message_tokens(messages, system="Be terse.")
    assert as_string.usage.output_tokens == count_tokens(block.text)
    assert as_blocks.usage.input_tokens == as_string.usage.input_tokens
    assert as_string.usage.cache_read_input_tokens == 0
    assert as_string.usage.cache_creation_input_tokens == 0

    stop = block.text.split()[2]
    stopped = client.messages.create(
        model="sim-claude",
        max_tokens=200,
        system="Be terse.",
        messages=messages,
        stop_sequences=[stop, "never-there"],
    )
    assert stopped.stop_reason == "stop_sequence" and stopped.stop_sequence == stop
    assert stopped.content[0].text == block.text[: block.text.index(stop)]


def test_base64_image_block_is_accepted_and_billed(client):
    image = base64.b64encode(b"\x89PNG not really").decode()
    content = [
        {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": image}},
        {"type": "text", "text": "What is in this picture?"},
    ]
    answer = client.messages.create(
        model="sim-claude", max_tokens=100, messages=[{"role": "user", "content": content}]
    )
    assert answer.content[0].text
    text_only = [{"role": "user", "content": [content[1]]}]
    assert answer.usage.input_tokens == count_message_tokens(text_only) + TOKENS_PER_IMAGE


def test_tool_use_and_tool_result_round_trip(client):
    first = client.messages.create(
        model="sim-claude", max_tokens=100, tools=[WEATHER_TOOL], messages=QUESTION
    )
    assert first.stop_reason == "tool_use"
    (use,) = first.content
    assert use.type == "tool_use" and use.id.startswith("toolu_")
    assert use.name == "get_weather" and use.input == {"city": "Berlin"}
    assert first.usage.output_tokens == count_tokens("get_weather") + count_tokens(
        json.dumps(use.input, separators=(",", ":"))
    )

    conversation = [
        *QUESTION,
        {"role": "assistant", "content": first.content},
        {
            "role": "user",
            "content": [
                {
                    "type": "tool_result",
                    "tool_use_id": use.id,
                    "content": [{"type": "text", "text": "Sunny, 21C"}],
                }
            ],
        },
    ]
    second = client.messages.create(
        model="sim-claude", max_tokens=100, tools=[WEATHER_TOOL], messages=conversation
    )
    assert second.stop_reason == "end_turn"
    assert second.content[0].type == "text" and second.content[0].text
    assert second.usage.input_tokens > first.usage.input_tokens

    forced = client.messages.create(
        model="sim-claude",
        max_tokens=100,
        tools=[WEATHER_TOOL],
        tool_choice={"type": "tool", "name": "get_weather"},
        messages=[{"role": "user", "content": "Hello."}],
    )
    assert forced.content[0].type == "tool_use"
    with pytest.raises(anthropic.BadRequestError) as caught:
        client.messages.create(
            model="sim-claude",
            max_tokens=100,
            tools=[WEATHER_TOOL],
            tool_choice={"type": "tool", "name": "nope"},
            messages=QUESTION,
        )
    assert caught.value.body["error"]["type"] == "invalid_request_error"


def test_stream_events_in_anthropic_order(sim_url, client):
    messages = [{"role": "user", "content": "Tell me about toll roads."}]
    whole = client.messages.create(model="sim-claude", max_tokens=200, messages=messages)
    raw = raw_events(sim_url, {"model": "sim-claude", "max_tokens": 200, "messages": messages})
    assert collapsed([name for name, _ in raw]) == EVENT_ORDER
    assert all(data["type"] == name for name, data in raw)
    events = list(
        client.messages.create(model="sim-claude", max_tokens=200, messages=messages, stream=True)
    )
    assert collapsed([e.type for e in events]) == SDK_EVENT_ORDER
    start = events[0].message
    assert start.id.startswith("msg_") and start.content == [] and start.stop_reason is None
    assert start.usage.input_tokens == whole.usage.input_tokens
    assert events[1].content_block.type == "text" and events[1].index == 0
    deltas = [e.delta for e in events if e.type == "content_block_delta"]
    assert all(d.type == "text_delta" for d in deltas)
    assert "".join(d.text for d in deltas) == whole.content[0].text
    assert events[-2].delta.stop_reason == "end_turn"
    assert events[-2].usage.output_tokens == whole.usage.output_tokens

    with client.messages.stream(model="sim-claude", max_tokens=200, messages=messages) as stream:
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert text == whole.content[0].text
    assert final.content[0].text == text
    assert final.stop_reason == "end_turn"
    assert final.usage.input_tokens == whole.usage.input_tokens
    assert final.usage.output_tokens == whole.usage.output_tokens


def test_tool_use_streamed(sim_url, client):
    body = {"model": "sim-claude", "max_tokens": 100, "tools": [WEATHER_TOOL], "messages": QUESTION}
    assert collapsed([name for name, _ in raw_events(sim_url, body)]) == EVENT_ORDER
    events = list(
        client.messages.create(
            model="sim-claude", max_tokens=100, tools=[WEATHER_TOOL], messages=QUESTION, stream=True
        )
    )
    assert collapsed([e.type for e in events]) == SDK_EVENT_ORDER
    assert events[1].content_block.type == "tool_use"
    assert events[1].content_block.input == {}
    deltas = [e.delta for e in events if e.type == "content_block_delta"]
    assert all(d.type == "input_json_delta" for d in deltas)
    assert json.loads("".join(d.partial_json for d in deltas)) == {"city": "Berlin"}
    assert events[-2].delta.stop_reason == "tool_use"

    with client.messages.stream(
        model="sim-claude", max_tokens=100, tools=[WEATHER_TOOL], messages=QUESTION
    ) as stream:
        final = stream.get_final_message()
    (use,) = final.content
    assert use.type == "tool_use" and use.input == {"city": "Berlin"}
    assert final.stop_reason == "tool_use"


def test_cache_knobs_split_the_input_tokens(client):
    messages = [{"role": "user", "content": "Tell me about toll roads, at length."}]
    prompt = count_message_tokens(messages, system="Be terse.")
    headers = {"x-sim-cached-tokens": "6", "x-sim-cache-creation-tokens": "3"}
    answer = client.messages.create(
        model="sim-claude",
        max_tokens=200,
        system="Be terse.",
        messages=messages,
        extra_headers=headers,
    )
    usage = answer.usage
    assert usage.cache_read_input_tokens == 6
    assert usage.cache_creation_input_tokens == 3
    # Anthropic's input_tokens are the rest of the prompt.
    assert usage.input_tokens == prompt - 9
    assert usage.cache_creation.ephemeral_5m_input_tokens == 3

    with client.messages.stream(
        model="sim-claude",
        max_tokens=200,
        system="Be terse.",
        messages=messages,
        extra_headers=headers,
    ) as stream:
        final = stream.get_final_message()
    assert final.usage.cache_read_input_tokens == 6
    assert final.usage.cache_creation_input_tokens == 3
    assert final.usage.input_tokens == prompt - 9
    assert final.usage.output_tokens == usage.output_tokens

    capped = client.messages.create(
        model="sim-claude",
        max_tokens=200,
        system="Be terse.",
        messages=messages,
        extra_headers={"x-sim-cached-tokens": "100000", "x-sim-cache-creation-tokens": "5"},
    )
    assert capped.usage.cache_read_input_tokens == prompt
    assert capped.usage.cache_creation_input_tokens == 0
    assert capped.usage.input_tokens == 0


def test_stream_error_knob_sends_an_error_event(sim_url, client):
    headers = {"x-sim-stream-error-after-chunks": "5", "x-sim-error-status": "529"}
    received = []
    with pytest.raises(anthropic.APIStatusError) as caught:
        for event in client.messages.create(
            model="sim-claude",
            max_tokens=200,
            messages=[{"role": "user", "content": "Hi"}],
            stream=True,
            extra_headers=headers,
        ):
            received.append(event.type)
    # Five events went out (the SDK hides the ping), then the error.
    assert received == [
        "message_start",
        "content_block_start",
        "content_block_delta",
        "content_block_delta",
    ]
    assert caught.value.body["error"]["type"] == "overloaded_error"

    body = {
        "model": "sim-claude",
        "max_tokens": 200,
        "messages": [{"role": "user", "content": "Hi"}],
    }
    raw = raw_events(sim_url, body, **headers)
    # The body ends cleanly (raw_events would raise otherwise) after the error event.
    assert [name for name, _ in raw] == [
        "message_start",
        "content_block_start",
        "ping",
        "content_block_delta",
        "content_block_delta",
        "error",
    ]
    assert raw[-1][1] == {
        "type": "error",
        "error": {
            "type": "overloaded_error",
            "message": "The simulator broke this stream on purpose "
            "(x-sim-stream-error-after-chunks).",
        },
    }


def test_count_tokens_matches_the_billed_input(client):
    kwargs = {"model": "sim-claude", "system": "Be terse.", "tools": [WEATHER_TOOL]}
    counted = client.messages.count_tokens(messages=QUESTION, **kwargs)
    billed = client.messages.create(max_tokens=50, messages=QUESTION, **kwargs)
    assert counted.input_tokens == billed.usage.input_tokens
