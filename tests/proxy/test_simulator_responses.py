"""The simulator's OpenAI Responses API over real HTTP, checked with the official openai SDK:
whole and streamed answers, function tool round trips, previous_response_id, knobs, errors."""

import base64
import json

import httpx
import openai
import pytest
from openai import OpenAI

from apps.proxy.simulator.content import TOKENS_PER_IMAGE, count_message_tokens, count_tokens
from tests.proxy.simulator_server import running_simulator, start_simulator

pytestmark = pytest.mark.embedded

INSTRUCTIONS = "You are terse."
PROMPT = "Tell me about toll roads."
# The same conversation in chat's shape: the simulator answers both alike.
CHAT_MESSAGES = [
    {"role": "system", "content": INSTRUCTIONS},
    {"role": "user", "content": PROMPT},
]
WEATHER_TOOL = {
    "type": "function",
    "name": "get_weather",
    "description": "Current weather for a city",
    "parameters": {
        "type": "object",
        "properties": {
            "location": {"type": "string"},
            "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
        },
        "required": ["location", "unit"],
        "additionalProperties": False,
    },
    "strict": True,
}
WEATHER_QUESTION = "What is the weather in Paris?"
TEXT_EVENTS = [
    "response.created",
    "response.in_progress",
    "response.output_item.added",
    "response.content_part.added",
    "response.output_text.delta",
    "response.output_text.done",
    "response.content_part.done",
    "response.output_item.done",
    "response.completed",
]
CALL_EVENTS = [
    "response.created",
    "response.in_progress",
    "response.output_item.added",
    "response.function_call_arguments.delta",
    "response.function_call_arguments.done",
    "response.output_item.done",
    "response.completed",
]


@pytest.fixture(scope="module")
def sim_url():
    base_url, stop = start_simulator()
    yield base_url
    stop()


@pytest.fixture
def client(sim_url):
    return OpenAI(base_url=f"{sim_url}/v1", api_key="x", max_retries=0)


def collapsed(types: list[str]) -> list[str]:
    """Event types with runs of the same type (the deltas) folded into one."""
    return [t for i, t in enumerate(types) if i == 0 or types[i - 1] != t]


def raw_events(url: str, body: dict, **headers: str) -> list[tuple[str, dict]]:
    """(event name, data) of a streamed /v1/responses answer, read without the SDK."""
    events, name = [], None
    with httpx.stream(
        "POST", f"{url}/v1/responses", json={**body, "stream": True}, headers=headers
    ) as response:
        assert response.headers["content-type"].startswith("text/event-stream")
        for line in response.iter_lines():
            if line.startswith("event: "):
                name = line[7:]
            elif line.startswith("data: "):
                events.append((name, json.loads(line[6:])))
    return events


# Whole answers -----------------------------------------------------------------------------


def test_response_shape_usage_and_echoed_settings(client):
    response = client.responses.create(
        model="sim-chat",
        input=PROMPT,
        instructions=INSTRUCTIONS,
        metadata={"team": "a"},
        temperature=0.5,
        user="someone",
    )
    assert response.id.startswith("resp_")
    assert response.object == "response"
    assert response.status == "completed"
    assert response.model == "sim-chat"
    assert response.created_at > 0
    assert response.error is None and response.incomplete_details is None
    (item,) = response.output
    assert item.type == "message" and item.id.startswith("msg_")
    assert item.role == "assistant" and item.status == "completed"
    (part,) = item.content
    assert part.type == "output_text" and part.annotations == []
    assert part.text.endswith(".")
    assert response.output_text == part.text

    usage = response.usage
    assert usage.input_tokens == count_message_tokens(CHAT_MESSAGES)
    assert usage.output_tokens == count_tokens(part.text)
    assert usage.total_tokens == usage.input_tokens + usage.output_tokens
    assert usage.input_tokens_details.cached_tokens == 0
    assert usage.output_tokens_details.reasoning_tokens == 0

    assert response.instructions == INSTRUCTIONS
    assert response.metadata == {"team": "a"}
    assert response.temperature == 0.5 and response.top_p == 1.0
    assert response.user == "someone"
    assert response.tools == [] and response.tool_choice == "auto"
    assert response.parallel_tool_calls is True
    assert response.previous_response_id is None
    assert response.text.format.type == "text"

    # The chat simulator answers the same conversation with the same text.
    chat = client.chat.completions.create(model="sim-chat", messages=CHAT_MESSAGES)
    assert chat.choices[0].message.content == part.text
    assert chat.usage.prompt_tokens == usage.input_tokens


def test_input_items_with_parts_and_roles(client):
    image = "data:image/png;base64," + base64.b64encode(b"\x89PNG fake").decode()
    items = [
        {"role": "developer", "content": "Answer in English."},
        {
            "type": "message",
            "role": "user",
            "content": [
                {"type": "input_text", "text": "What is in this picture?"},
                {"type": "input_image", "image_url": image, "detail": "low"},
            ],
        },
        {"role": "assistant", "content": [{"type": "output_text", "text": "A toll gate."}]},
        {"role": "user", "content": "And the road?"},
    ]
    response = client.responses.create(model="m", input=items)
    assert response.status == "completed"
    assert response.output_text
    as_chat = [
        {"role": "developer", "content": "Answer in English."},
        {"role": "user", "content": "What is in this picture?"},
        {"role": "assistant", "content": "A toll gate."},
        {"role": "user", "content": "And the road?"},
    ]
    assert response.usage.input_tokens == count_message_tokens(as_chat) + TOKENS_PER_IMAGE
    assert client.responses.create(model="m", input=items).output_text == response.output_text


def test_max_output_tokens_makes_an_incomplete_response(client, sim_url):
    full = client.responses.create(
        model="m", input=PROMPT, extra_headers={"x-sim-output-tokens": "40"}
    )
    assert full.usage.output_tokens == 40
    cut = client.responses.create(
        model="m", input=PROMPT, max_output_tokens=16, extra_headers={"x-sim-output-tokens": "40"}
    )
    assert cut.status == "incomplete"
    assert cut.incomplete_details.reason == "max_output_tokens"
    assert cut.output[0].status == "incomplete"
    assert cut.usage.output_tokens == 16
    assert full.output_text.startswith(cut.output_text)
    assert cut.max_output_tokens == 16

    events = raw_events(
        sim_url,
        {"model": "m", "input": PROMPT, "max_output_tokens": 16},
        **{"x-sim-output-tokens": "40"},
    )
    assert events[-1][0] == "response.incomplete"
    assert events[-1][1]["response"]["incomplete_details"] == {"reason": "max_output_tokens"}
    assert events[-1][1]["response"]["usage"]["output_tokens"] == 16

    with pytest.raises(openai.BadRequestError) as caught:
        client.responses.create(model="m", input=PROMPT, max_output_tokens=5)
    assert caught.value.body["param"] == "max_output_tokens"


# Streams -----------------------------------------------------------------------------------


def test_stream_events_in_openai_order(client):
    whole = client.responses.create(model="m", input=PROMPT, instructions=INSTRUCTIONS)
    with client.responses.stream(model="m", input=PROMPT, instructions=INSTRUCTIONS) as stream:
        events = list(stream)
        final = stream.get_final_response()
    types = [e.type for e in events]
    assert collapsed(types) == TEXT_EVENTS
    assert types.count("response.output_text.delta") > 3
    assert [e.sequence_number for e in events] == list(range(len(events)))

    created, in_progress = events[0], events[1]
    assert created.response.status == in_progress.response.status == "in_progress"
    assert created.response.output == [] and created.response.usage is None
    assert created.response.id == final.id
    added = events[2]
    assert added.item.type == "message" and added.item.status == "in_progress"
    deltas = [e for e in events if e.type == "response.output_text.delta"]
    assert all(d.item_id == added.item.id and d.output_index == 0 for d in deltas)
    text = "".join(d.delta for d in deltas)
    assert text == whole.output_text
    assert events[-4].text == text  # response.output_text.done
    assert events[-3].part.text == text  # response.content_part.done
    assert events[-2].item.status == "completed"

    assert final.status == "completed"
    assert final.output_text == text
    assert final.usage == whole.usage


def test_create_with_stream_true_yields_the_same_events(client):
    events = list(client.responses.create(model="m", input=PROMPT, stream=True))
    assert collapsed([e.type for e in events]) == TEXT_EVENTS
    completed = events[-1].response
    assert completed.usage.output_tokens == count_tokens(completed.output_text)


# Function tools ------------------------------------------------------------------------------


def test_function_call_and_its_output_round_trip(client):
    question = [{"role": "user", "content": WEATHER_QUESTION}]
    first = client.responses.create(model="m", input=question, tools=[WEATHER_TOOL])
    (call,) = first.output
    assert call.type == "function_call"
    assert call.id.startswith("fc_") and call.call_id.startswith("call_")
    assert call.name == "get_weather" and call.status == "completed"
    assert json.loads(call.arguments) == {"location": "Paris", "unit": "celsius"}
    assert first.output_text == ""
    assert first.usage.output_tokens == count_tokens("get_weather") + count_tokens(call.arguments)
    assert first.tools[0].name == "get_weather"

    # The caller keeps the conversation: the call goes back with its output.
    result = {"type": "function_call_output", "call_id": call.call_id, "output": "Sunny, 21C"}
    second = client.responses.create(
        model="m", input=[*question, *first.output, result], tools=[WEATHER_TOOL]
    )
    (message,) = second.output
    assert message.type == "message" and second.output_text
    assert second.usage.input_tokens > first.usage.input_tokens

    # The server keeps it: only the output is sent, after previous_response_id.
    chained = client.responses.create(
        model="m", previous_response_id=first.id, input=[result], tools=[WEATHER_TOOL]
    )
    assert chained.previous_response_id == first.id
    assert chained.output[0].type == "message" and chained.output_text
    # The earlier turn is billed again as input.
    assert chained.usage.input_tokens > first.usage.total_tokens

    with pytest.raises(openai.BadRequestError) as caught:
        client.responses.create(model="m", input=[*question, {**result, "call_id": "call_nope"}])
    assert "No tool call found" in caught.value.message


def test_function_call_streamed(client):
    whole = client.responses.create(model="m", input=WEATHER_QUESTION, tools=[WEATHER_TOOL])
    with client.responses.stream(model="m", input=WEATHER_QUESTION, tools=[WEATHER_TOOL]) as stream:
        events = list(stream)
        final = stream.get_final_response()
    assert collapsed([e.type for e in events]) == CALL_EVENTS
    added = events[2]
    assert added.item.type == "function_call" and added.item.arguments == ""
    assert added.item.name == "get_weather"
    deltas = [e.delta for e in events if e.type == "response.function_call_arguments.delta"]
    arguments = "".join(deltas)
    assert arguments == whole.output[0].arguments
    assert events[-3].arguments == arguments
    (call,) = final.output
    assert call.call_id == added.item.call_id and call.arguments == arguments
    assert final.usage.output_tokens == whole.usage.output_tokens


def test_tool_choice(client):
    plain = client.responses.create(model="m", input="Hello.", tools=[WEATHER_TOOL])
    assert plain.output[0].type == "message"
    required = client.responses.create(
        model="m", input="Hello.", tools=[WEATHER_TOOL], tool_choice="required"
    )
    assert required.output[0].type == "function_call"
    named = client.responses.create(
        model="m",
        input="Hello.",
        tools=[WEATHER_TOOL],
        tool_choice={"type": "function", "name": "get_weather"},
    )
    assert named.output[0].name == "get_weather"
    refused = client.responses.create(
        model="m", input=WEATHER_QUESTION, tools=[WEATHER_TOOL], tool_choice="none"
    )
    assert refused.output[0].type == "message"
    with pytest.raises(openai.BadRequestError) as caught:
        client.responses.create(
            model="m",
            input="Hello.",
            tools=[WEATHER_TOOL],
            tool_choice={"type": "function", "name": "nope"},
        )
    assert caught.value.body["param"] == "tool_choice"


# previous_response_id ------------------------------------------------------------------------


def test_previous_response_id_continues_a_kept_response(client):
    first = client.responses.create(model="m", input="Hi.")
    again = client.responses.create(model="m", previous_response_id=first.id, input="More.")
    same = client.responses.create(model="m", previous_response_id=first.id, input="More.")
    fresh = client.responses.create(model="m", input="More.")
    assert again.output_text == same.output_text != fresh.output_text
    assert again.usage.input_tokens == first.usage.total_tokens + fresh.usage.input_tokens

    with pytest.raises(openai.BadRequestError) as caught:
        client.responses.create(model="m", previous_response_id="resp_unknown", input="Hi.")
    assert caught.value.code == "previous_response_not_found"
    assert caught.value.body["param"] == "previous_response_id"
    assert "resp_unknown" in caught.value.message

    unkept = client.responses.create(model="m", input="Hi.", store=False)
    assert unkept.store is False
    with pytest.raises(openai.BadRequestError):
        client.responses.create(model="m", previous_response_id=unkept.id, input="More.")


def test_reset_forgets_kept_responses():
    with running_simulator() as url:
        client = OpenAI(base_url=f"{url}/v1", api_key="x", max_retries=0)
        kept = client.responses.create(model="m", input="Hi.")
        with client.responses.stream(model="m", input="Hi.") as stream:
            streamed = stream.get_final_response()
        for response in (kept, streamed):
            client.responses.create(model="m", previous_response_id=response.id, input="More.")
        assert httpx.post(f"{url}/_sim/reset").status_code == 200
        with pytest.raises(openai.BadRequestError):
            client.responses.create(model="m", previous_response_id=kept.id, input="More.")


# Knobs ---------------------------------------------------------------------------------------


def test_cache_knobs_report_cached_and_written_tokens(client):
    response = client.responses.create(
        model="m",
        input=PROMPT,
        extra_headers={"x-sim-cached-tokens": "4", "x-sim-cache-creation-tokens": "2"},
    )
    details = response.usage.input_tokens_details
    assert details.cached_tokens == 4
    assert details.cache_write_tokens == 2
    assert response.usage.input_tokens == count_message_tokens(
        [{"role": "user", "content": PROMPT}]
    )
    capped = client.responses.create(
        model="m", input=PROMPT, extra_headers={"x-sim-cached-tokens": "100000"}
    )
    assert capped.usage.input_tokens_details.cached_tokens == capped.usage.input_tokens


def test_stream_error_knob_fails_the_response_mid_stream(sim_url, client):
    headers = {"x-sim-stream-error-after-chunks": "6"}
    events = raw_events(sim_url, {"model": "m", "input": PROMPT}, **headers)
    names = [name for name, _ in events]
    assert names == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.content_part.added",
        "response.output_text.delta",
        "response.output_text.delta",
        "response.failed",
    ]
    assert [data["sequence_number"] for _, data in events] == list(range(7))
    failed = events[-1][1]["response"]
    assert failed["status"] == "failed"
    assert failed["error"]["code"] == "server_error"
    assert "x-sim-stream-error-after-chunks" in failed["error"]["message"]
    assert failed["usage"] is None

    with client.responses.stream(
        model="m",
        input=PROMPT,
        extra_headers={**headers, "x-sim-error-status": "429"},
    ) as stream:
        streamed = list(stream)
        assert streamed[-1].type == "response.failed"
        assert streamed[-1].response.error.code == "rate_limit_exceeded"
        with pytest.raises(RuntimeError):
            stream.get_final_response()


def test_disconnect_knob_cuts_the_stream(sim_url):
    received = []
    with (
        pytest.raises(httpx.RemoteProtocolError),
        httpx.stream(
            "POST",
            f"{sim_url}/v1/responses",
            json={"model": "m", "input": PROMPT, "stream": True},
            headers={"x-sim-disconnect-after-chunks": "3"},
        ) as response,
    ):
        for line in response.iter_lines():
            if line.startswith("event: "):
                received.append(line)
    assert received == [
        "event: response.created",
        "event: response.in_progress",
        "event: response.output_item.added",
    ]


def test_error_rate_latency_and_output_knobs(client, sim_url):
    with pytest.raises(openai.InternalServerError):
        client.responses.create(model="m", input=PROMPT, extra_headers={"x-sim-error-rate": "1"})
    limited = httpx.post(
        f"{sim_url}/v1/responses",
        json={"model": "m", "input": PROMPT},
        headers={"x-sim-error-rate": "1", "x-sim-error-status": "429"},
    )
    assert limited.status_code == 429
    assert limited.headers["retry-after"] == "1"
    assert limited.json()["error"]["code"] == "rate_limit_exceeded"
    long = client.responses.create(
        model="m", input=PROMPT, extra_headers={"x-sim-output-tokens": "90"}
    )
    assert long.usage.output_tokens == 90 and long.status == "completed"


def test_model_knobs_apply_to_responses():
    app_knobs = {"broken": {"error_rate": 1, "error_status": 503}, "short": {"output_tokens": 7}}
    with running_simulator(model_knobs=app_knobs) as url:
        client = OpenAI(base_url=f"{url}/v1", api_key="x", max_retries=0)
        with pytest.raises(openai.InternalServerError):
            client.responses.create(model="broken", input=PROMPT)
        assert client.responses.create(model="short", input=PROMPT).usage.output_tokens == 7


# Errors, history, prefix ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"input": "Hi"}, "model"),
        ({"model": "m"}, "input"),
        ({"model": "m", "input": []}, "input"),
        ({"model": "m", "input": [{"role": "robot", "content": "Hi"}]}, "input[0].role"),
        (
            {"model": "m", "input": [{"role": "user", "content": [{"type": "text", "text": "x"}]}]},
            "input[0].content[0].type",
        ),
        ({"model": "m", "input": [{"type": "function_call", "name": "f"}]}, "input[0].arguments"),
        ({"model": "m", "input": [{"type": "web_search_call"}]}, "input[0].type"),
        ({"model": "m", "input": "Hi", "tools": [{"type": "function"}]}, "tools[0].name"),
        ({"model": "m", "input": "Hi", "tool_choice": "sometimes"}, "tool_choice"),
        ({"model": "m", "input": "Hi", "temperature": 3}, "temperature"),
        ({"model": "m", "input": "Hi", "instructions": ["x"]}, "instructions"),
    ],
)
def test_bad_requests_get_openai_errors(sim_url, body, param):
    response = httpx.post(f"{sim_url}/v1/responses", json=body)
    assert response.status_code == 400
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["type"] == "invalid_request_error"
    assert error["param"] == param


def test_wrong_method_and_bad_json(sim_url):
    assert httpx.get(f"{sim_url}/v1/responses").status_code == 405
    bad = httpx.post(f"{sim_url}/v1/responses", content=b"{nope")
    assert bad.status_code == 400
    assert bad.json()["error"]["type"] == "invalid_request_error"


def test_requests_are_recorded(sim_url, client):
    client.responses.create(model="recorded", input="Remember me.", extra_headers={"X-Tag": "t"})
    last = httpx.get(f"{sim_url}/_sim/last_request").json()
    assert last["path"] == "/v1/responses"
    assert last["json"] == {"model": "recorded", "input": "Remember me."}
    assert last["headers"]["x-tag"] == "t"
    history = httpx.get(f"{sim_url}/_sim/requests").json()["requests"]
    assert history[-1] == last


def test_prefix_mounted_and_required_key():
    with running_simulator(prefix="/simulator", required_key="sk-up") as url:
        client = OpenAI(base_url=f"{url}/simulator/v1", api_key="sk-up", max_retries=0)
        assert client.responses.create(model="m", input="Hi.").output_text
        with pytest.raises(openai.AuthenticationError):
            OpenAI(base_url=f"{url}/simulator/v1", api_key="no", max_retries=0).responses.create(
                model="m", input="Hi."
            )
        assert httpx.post(f"{url}/v1/responses", json={}).status_code == 404
