"""The upstream simulator over real HTTP: OpenAI wire format checked with the official SDK,
Anthropic Messages, rerank, knobs, credentials and the prefix-mounted app."""

import base64
import json
import time
from array import array

import httpx
import openai
import pytest
from openai import OpenAI

from apps.proxy.simulator.app import create_app
from apps.proxy.simulator.content import count_message_tokens, count_tokens
from tests.proxy.simulator_server import running_simulator, start_simulator

pytestmark = pytest.mark.embedded

WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather for a city",
        "parameters": {
            "type": "object",
            "properties": {
                "location": {"type": "string"},
                "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
            },
            "required": ["location", "unit"],
        },
    },
}
MESSAGES = [
    {"role": "system", "content": "You are terse."},
    {"role": "user", "content": "Tell me about toll roads."},
]


@pytest.fixture(scope="module")
def sim_url():
    base_url, stop = start_simulator()
    yield base_url
    stop()


@pytest.fixture
def client(sim_url):
    # No retries: an injected error must surface at once.
    return OpenAI(base_url=f"{sim_url}/v1", api_key="x", max_retries=0)


def read_sse(response: httpx.Response) -> list[tuple[str | None, str]]:
    """(event name, data) pairs of a server-sent event stream."""
    events, name = [], None
    for line in response.iter_lines():
        if line.startswith("event: "):
            name = line[7:]
        elif line.startswith("data: "):
            events.append((name, line[6:]))
            name = None
    return events


# Token counting ---------------------------------------------------------------------------


def test_count_tokens_is_deterministic_and_realistic():
    assert count_tokens("") == 0
    assert count_tokens("the cat") == 2
    assert count_tokens("Hello, world!") == 6  # Hello(2) ,(1) world(2) !(1)
    assert count_tokens("tokenization") == 3
    text = "The quick brown fox jumps over the lazy dog. " * 20
    assert len(text) / 6 < count_tokens(text) < len(text) / 3


def test_count_message_tokens_counts_framing_content_and_tools():
    base = count_message_tokens([{"role": "user", "content": "hi"}])
    assert base == 3 + 3 + 1
    parts = [{"role": "user", "content": [{"type": "text", "text": "hi"}]}]
    assert count_message_tokens(parts) == base
    assert count_message_tokens([{"role": "user", "content": "hi"}], tools=[WEATHER_TOOL]) > base
    assert count_message_tokens([{"role": "user", "content": "hi"}], system="Be nice.") > base


# Chat completions ------------------------------------------------------------------------


def test_chat_completion_shape_and_usage(client):
    answer = client.chat.completions.create(model="sim-chat", messages=MESSAGES)
    assert answer.id.startswith("chatcmpl-")
    assert answer.object == "chat.completion"
    assert answer.model == "sim-chat"
    choice = answer.choices[0]
    assert choice.message.role == "assistant"
    assert choice.finish_reason == "stop"
    content = choice.message.content
    assert content.endswith(".")
    assert 20 <= answer.usage.completion_tokens <= 60
    assert answer.usage.completion_tokens == count_tokens(content)
    assert answer.usage.prompt_tokens == count_message_tokens(MESSAGES)
    assert answer.usage.total_tokens == answer.usage.prompt_tokens + answer.usage.completion_tokens
    assert answer.usage.prompt_tokens_details.cached_tokens == 0

    again = client.chat.completions.create(model="other-model", messages=MESSAGES)
    assert again.choices[0].message.content == content
    different = client.chat.completions.create(
        model="sim-chat", messages=[{"role": "user", "content": "Something else."}]
    )
    assert different.choices[0].message.content != content


def test_chat_stream_matches_whole_answer(client):
    whole = client.chat.completions.create(model="sim-chat", messages=MESSAGES)
    chunks = list(
        client.chat.completions.create(
            model="sim-chat",
            messages=MESSAGES,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    assert chunks[0].choices[0].delta.role == "assistant"
    assert all(c.object == "chat.completion.chunk" and c.model == "sim-chat" for c in chunks)
    assert len({c.id for c in chunks}) == 1
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == whole.choices[0].message.content
    finish = [
        c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason
    ]
    assert finish == ["stop"]
    assert chunks[-1].choices == []
    assert chunks[-1].usage == whole.usage
    assert all(c.usage is None for c in chunks[:-1])


def test_chat_stream_without_include_usage_has_no_usage_chunk(client):
    chunks = list(client.chat.completions.create(model="m", messages=MESSAGES, stream=True))
    assert chunks[-1].choices[0].finish_reason == "stop"
    assert all(c.usage is None and c.choices for c in chunks)


def test_max_tokens_cuts_with_length_in_both_modes(client):
    whole = client.chat.completions.create(model="m", messages=MESSAGES, max_tokens=5)
    assert whole.choices[0].finish_reason == "length"
    assert whole.usage.completion_tokens == 5
    full = client.chat.completions.create(model="m", messages=MESSAGES)
    assert full.choices[0].message.content.startswith(whole.choices[0].message.content)

    chunks = list(
        client.chat.completions.create(
            model="m",
            messages=MESSAGES,
            max_completion_tokens=5,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == whole.choices[0].message.content
    assert chunks[-2].choices[0].finish_reason == "length"
    assert chunks[-1].usage.completion_tokens == 5


def test_stop_sequence_cuts_the_answer(client):
    full = client.chat.completions.create(model="m", messages=MESSAGES).choices[0].message.content
    stop = full.split()[3]
    cut = client.chat.completions.create(model="m", messages=MESSAGES, stop=[stop])
    assert cut.choices[0].message.content == full[: full.index(stop)]
    assert cut.choices[0].finish_reason == "stop"


def test_tool_call_whole_and_streamed(client):
    messages = [{"role": "user", "content": "What is the weather in Paris?"}]
    answer = client.chat.completions.create(model="m", messages=messages, tools=[WEATHER_TOOL])
    choice = answer.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert choice.message.content is None
    (call,) = choice.message.tool_calls
    assert call.id.startswith("call_")
    assert call.function.name == "get_weather"
    assert json.loads(call.function.arguments) == {"location": "Paris", "unit": "celsius"}
    assert answer.usage.completion_tokens > 0

    chunks = list(
        client.chat.completions.create(
            model="m",
            messages=messages,
            tools=[WEATHER_TOOL],
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    deltas = [tc for c in chunks if c.choices for tc in c.choices[0].delta.tool_calls or ()]
    assert deltas[0].id.startswith("call_") and deltas[0].function.name == "get_weather"
    assert all(d.index == 0 for d in deltas)
    assert "".join(d.function.arguments or "" for d in deltas) == call.function.arguments
    assert chunks[-2].choices[0].finish_reason == "tool_calls"
    assert chunks[-1].usage == answer.usage


def test_tool_choice_and_tool_results(client):
    plain = [{"role": "user", "content": "Hello."}]
    assert (
        client.chat.completions.create(model="m", messages=plain, tools=[WEATHER_TOOL])
        .choices[0]
        .message.tool_calls
        is None
    )
    forced = client.chat.completions.create(
        model="m",
        messages=plain,
        tools=[WEATHER_TOOL],
        tool_choice={"type": "function", "function": {"name": "get_weather"}},
    )
    assert forced.choices[0].message.tool_calls[0].function.name == "get_weather"
    after_result = [
        {"role": "user", "content": "What is the weather in Paris?"},
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": "call_1",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": "{}"},
                }
            ],
        },
        {"role": "tool", "tool_call_id": "call_1", "content": "Sunny, 21C"},
    ]
    answer = client.chat.completions.create(model="m", messages=after_result, tools=[WEATHER_TOOL])
    assert answer.choices[0].finish_reason == "stop"
    assert answer.choices[0].message.content


# Completions, embeddings, models ---------------------------------------------------------


def test_legacy_completions_whole_and_streamed(client):
    whole = client.completions.create(model="sim-instruct", prompt="Once upon a time")
    assert whole.object == "text_completion"
    assert whole.choices[0].finish_reason == "stop"
    assert whole.usage.prompt_tokens == count_tokens("Once upon a time")
    assert whole.usage.completion_tokens == count_tokens(whole.choices[0].text)
    chunks = list(
        client.completions.create(
            model="sim-instruct",
            prompt="Once upon a time",
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    assert "".join(c.choices[0].text for c in chunks if c.choices) == whole.choices[0].text
    assert chunks[-1].usage == whole.usage
    short = client.completions.create(model="m", prompt="Once upon a time", max_tokens=3)
    assert short.choices[0].finish_reason == "length"
    assert short.usage.completion_tokens == 3


def test_embeddings_float_and_base64_agree(client, sim_url):
    inputs = ["first text", "second, longer text"]
    default = client.embeddings.create(model="sim-embed", input=inputs)  # SDK asks for base64
    as_float = client.embeddings.create(model="sim-embed", input=inputs, encoding_format="float")
    assert [d.embedding for d in default.data] == [d.embedding for d in as_float.data]
    vector = as_float.data[0].embedding
    assert len(vector) == 256
    assert abs(sum(v * v for v in vector) - 1.0) < 1e-4
    assert as_float.data[0].embedding != as_float.data[1].embedding
    assert as_float.usage.prompt_tokens == sum(count_tokens(t) for t in inputs)
    assert as_float.usage.total_tokens == as_float.usage.prompt_tokens

    raw = httpx.post(
        f"{sim_url}/v1/embeddings",
        json={"model": "e", "input": "first text", "encoding_format": "base64", "dimensions": 64},
    ).json()
    decoded = array("f", base64.b64decode(raw["data"][0]["embedding"])).tolist()
    assert len(decoded) == 64
    single = client.embeddings.create(
        model="e", input="first text", dimensions=64, encoding_format="float"
    )
    assert single.data[0].embedding == decoded


def test_embeddings_reject_token_arrays(client):
    with pytest.raises(openai.BadRequestError) as caught:
        client.embeddings.create(model="e", input=[[1, 2, 3]])
    assert caught.value.body["param"] == "input"


def test_models_list(client):
    ids = [m.id for m in client.models.list()]
    assert "sim-chat" in ids and "sim-embed" in ids
    assert client.models.retrieve("anything").id == "anything"


# Rerank ------------------------------------------------------------------------------------


def test_rerank_orders_by_overlap(sim_url):
    documents = ["Cats sleep a lot.", {"text": "Paris weather is mild in spring."}, "Weather"]
    response = httpx.post(
        f"{sim_url}/v1/rerank",
        json={
            "model": "sim-rerank",
            "query": "weather in Paris",
            "documents": documents,
            "top_n": 2,
            "return_documents": True,
        },
    )
    assert response.status_code == 200
    body = response.json()
    assert body["id"]
    assert [r["index"] for r in body["results"]] == [1, 2]
    assert body["results"][0]["document"] == {"text": "Paris weather is mild in spring."}
    assert 0 <= body["results"][1]["relevance_score"] <= body["results"][0]["relevance_score"] <= 1
    assert body["meta"]["billed_units"]["search_units"] == 1
    assert body["usage"]["total_tokens"] == body["usage"]["prompt_tokens"] > 0
    assert httpx.post(f"{sim_url}/v1/rerank", json={"query": "q"}).status_code == 400


# Anthropic Messages ------------------------------------------------------------------------


def anthropic_post(url: str, body: dict, **headers: str) -> httpx.Response:
    return httpx.post(
        f"{url}/v1/messages",
        json=body,
        headers={"x-api-key": "x", "anthropic-version": "2023-06-01", **headers},
    )


def test_anthropic_message(sim_url):
    body = {
        "model": "sim-claude",
        "max_tokens": 200,
        "system": [{"type": "text", "text": "Be terse."}],
        "messages": [{"role": "user", "content": [{"type": "text", "text": "Hello"}]}],
    }
    answer = anthropic_post(sim_url, body).json()
    assert answer["id"].startswith("msg_")
    assert answer["type"] == "message" and answer["role"] == "assistant"
    assert answer["model"] == "sim-claude"
    assert answer["stop_reason"] == "end_turn"
    (block,) = answer["content"]
    assert block["type"] == "text"
    assert answer["usage"]["output_tokens"] == count_tokens(block["text"])
    assert answer["usage"]["input_tokens"] == count_message_tokens(
        body["messages"], system=body["system"]
    )

    capped = anthropic_post(sim_url, {**body, "max_tokens": 4}).json()
    assert capped["stop_reason"] == "max_tokens"
    assert capped["usage"]["output_tokens"] == 4
    stop = block["text"].split()[2]
    stopped = anthropic_post(sim_url, {**body, "stop_sequences": [stop]}).json()
    assert stopped["stop_reason"] == "stop_sequence"
    assert stopped["stop_sequence"] == stop
    assert stopped["content"][0]["text"] == block["text"][: block["text"].index(stop)]


def test_anthropic_stream_event_sequence(sim_url):
    body = {
        "model": "sim-claude",
        "max_tokens": 200,
        "messages": [{"role": "user", "content": "Hi"}],
    }
    whole = anthropic_post(sim_url, body).json()
    with httpx.stream(
        "POST", f"{sim_url}/v1/messages", json={**body, "stream": True}, headers={"x-api-key": "x"}
    ) as response:
        assert response.headers["content-type"].startswith("text/event-stream")
        events = read_sse(response)
    names = [name for name, _ in events]
    assert names[:3] == ["message_start", "content_block_start", "ping"]
    assert names[-3:] == ["content_block_stop", "message_delta", "message_stop"]
    assert set(names[3:-3]) == {"content_block_delta"}
    data = [json.loads(d) for _, d in events]
    assert all(d["type"] == name for d, name in zip(data, names, strict=True))
    assert data[0]["message"]["usage"]["input_tokens"] == whole["usage"]["input_tokens"]
    text = "".join(d["delta"]["text"] for d in data[3:-3])
    assert text == whole["content"][0]["text"]
    assert data[-2]["delta"]["stop_reason"] == "end_turn"
    assert data[-2]["usage"]["output_tokens"] == whole["usage"]["output_tokens"]


def test_anthropic_tool_use_whole_and_streamed(sim_url):
    tool = {
        "name": "get_weather",
        "description": "Weather",
        "input_schema": {
            "type": "object",
            "properties": {"city": {"type": "string"}},
            "required": ["city"],
        },
    }
    body = {
        "model": "sim-claude",
        "max_tokens": 100,
        "tools": [tool],
        "messages": [{"role": "user", "content": "weather in Berlin please"}],
    }
    answer = anthropic_post(sim_url, body).json()
    assert answer["stop_reason"] == "tool_use"
    (block,) = answer["content"]
    assert block["type"] == "tool_use" and block["id"].startswith("toolu_")
    assert block["input"] == {"city": "Berlin"}
    with httpx.stream("POST", f"{sim_url}/v1/messages", json={**body, "stream": True}) as response:
        data = [json.loads(d) for _, d in read_sse(response)]
    assert data[1]["content_block"]["type"] == "tool_use"
    partial = "".join(
        d["delta"]["partial_json"] for d in data if d["type"] == "content_block_delta"
    )
    assert json.loads(partial) == {"city": "Berlin"}
    assert data[-2]["delta"]["stop_reason"] == "tool_use"


def test_anthropic_errors(sim_url):
    response = anthropic_post(
        sim_url, {"model": "sim-claude", "messages": [{"role": "user", "content": "Hi"}]}
    )
    assert response.status_code == 400
    body = response.json()
    assert body["type"] == "error"
    assert body["error"]["type"] == "invalid_request_error"
    assert "max_tokens" in body["error"]["message"]
    bad_json = httpx.post(f"{sim_url}/v1/messages", content=b"{not json")
    assert bad_json.status_code == 400
    assert bad_json.json()["type"] == "error"


# Errors, knobs, credentials ------------------------------------------------------------------


def test_openai_error_shapes(sim_url):
    bad_json = httpx.post(f"{sim_url}/v1/chat/completions", content=b"{oops")
    assert bad_json.status_code == 400
    assert set(bad_json.json()["error"]) == {"message", "type", "param", "code"}
    missing = httpx.post(f"{sim_url}/v1/chat/completions", json={"model": "m"})
    assert missing.status_code == 400
    assert missing.json()["error"]["param"] == "messages"
    unknown = httpx.post(f"{sim_url}/v1/nowhere", json={})
    assert unknown.status_code == 404
    assert unknown.json()["error"]["type"] == "invalid_request_error"
    assert httpx.get(f"{sim_url}/v1/chat/completions").status_code == 405
    bad_knob = httpx.post(
        f"{sim_url}/v1/chat/completions",
        json={"model": "m", "messages": MESSAGES},
        headers={"x-sim-latency-ms": "soon"},
    )
    assert bad_knob.status_code == 400


def test_latency_knob(client):
    started = time.monotonic()
    client.chat.completions.create(
        model="m", messages=MESSAGES, extra_headers={"x-sim-latency-ms": "150"}
    )
    assert time.monotonic() - started >= 0.15


def test_ttft_and_pacing_knobs(client):
    started = time.monotonic()
    stream = client.chat.completions.create(
        model="m",
        messages=MESSAGES,
        stream=True,
        extra_headers={"x-sim-ttft-ms": "100", "x-sim-tokens-per-second": "200"},
    )
    text = "".join(c.choices[0].delta.content or "" for c in stream)
    tokens = count_tokens(text)
    # The first token after 100 ms, then one every 5 ms.
    assert time.monotonic() - started >= 0.1 + (tokens - 1) / 200


def test_output_tokens_knob(client):
    answer = client.chat.completions.create(
        model="m", messages=MESSAGES, extra_headers={"x-sim-output-tokens": "100"}
    )
    assert answer.usage.completion_tokens == 100
    assert answer.choices[0].finish_reason == "stop"


def test_cached_tokens_knob(client):
    answer = client.chat.completions.create(
        model="m", messages=MESSAGES, extra_headers={"x-sim-cached-tokens": "5"}
    )
    assert answer.usage.prompt_tokens_details.cached_tokens == 5
    assert answer.usage.prompt_tokens == count_message_tokens(MESSAGES)
    chunks = list(
        client.chat.completions.create(
            model="m",
            messages=MESSAGES,
            stream=True,
            stream_options={"include_usage": True},
            extra_headers={"x-sim-cached-tokens": "100000"},
        )
    )
    # No more than the prompt can come from the cache.
    assert chunks[-1].usage.prompt_tokens_details.cached_tokens == answer.usage.prompt_tokens


def test_stream_error_knob_sends_an_error_chunk(sim_url, client):
    received = []
    with pytest.raises(openai.APIError) as caught:
        for chunk in client.chat.completions.create(
            model="m",
            messages=MESSAGES,
            stream=True,
            extra_headers={"x-sim-stream-error-after-chunks": "3", "x-sim-error-status": "429"},
        ):
            received.append(chunk)
    assert len(received) == 3
    assert caught.value.body["code"] == "rate_limit_exceeded"
    assert "x-sim-stream-error-after-chunks" in caught.value.message

    with httpx.stream(
        "POST",
        f"{sim_url}/v1/completions",
        json={"model": "m", "prompt": "Once", "stream": True},
        headers={"x-sim-stream-error-after-chunks": "2"},
    ) as response:
        lines = [line for line in response.iter_lines() if line]
    # Ended cleanly after the error, without [DONE].
    assert len(lines) == 3
    assert json.loads(lines[-1].removeprefix("data: "))["error"]["type"] == "server_error"
    # Whole answers ignore it.
    whole = client.chat.completions.create(
        model="m", messages=MESSAGES, extra_headers={"x-sim-stream-error-after-chunks": "0"}
    )
    assert whole.choices[0].finish_reason == "stop"


def test_error_rate_knob_with_retry_after(sim_url, client):
    for _ in range(3):
        response = httpx.post(
            f"{sim_url}/v1/chat/completions",
            json={"model": "m", "messages": MESSAGES},
            headers={"x-sim-error-rate": "1", "x-sim-error-status": "429"},
        )
        assert response.status_code == 429
        assert response.headers["retry-after"] == "1"
        assert response.json()["error"]["code"] == "rate_limit_exceeded"
    with pytest.raises(openai.InternalServerError):
        client.chat.completions.create(
            model="m", messages=MESSAGES, extra_headers={"x-sim-error-rate": "1"}
        )
    anthropic_error = anthropic_post(
        sim_url,
        {"model": "c", "max_tokens": 5, "messages": [{"role": "user", "content": "Hi"}]},
        **{"x-sim-error-rate": "1", "x-sim-error-status": "529"},
    )
    assert anthropic_error.status_code == 529
    assert anthropic_error.json()["error"]["type"] == "overloaded_error"


def test_partial_error_rate_is_deterministic():
    with running_simulator() as url:
        statuses = [
            httpx.post(
                f"{url}/v1/embeddings",
                json={"model": "e", "input": "x"},
                headers={"x-sim-error-rate": "0.5"},
            ).status_code
            for _ in range(6)
        ]
    assert statuses == [200, 500] * 3


def test_disconnect_after_chunks(sim_url):
    received = []
    with (
        pytest.raises(httpx.RemoteProtocolError),
        httpx.stream(
            "POST",
            f"{sim_url}/v1/chat/completions",
            json={"model": "m", "messages": MESSAGES, "stream": True},
            headers={"x-sim-disconnect-after-chunks": "3"},
        ) as response,
    ):
        for line in response.iter_lines():
            if line:
                received.append(line)
    assert len(received) == 3
    assert "data: [DONE]" not in received


def test_model_knobs_from_app_and_env(monkeypatch):
    monkeypatch.setenv("SIMULATOR_MODEL_KNOBS", json.dumps({"short": {"output_tokens": 7}}))
    app = create_app(model_knobs={"broken": {"error_rate": 1, "error_status": 503}})
    with running_simulator(app) as url:
        client = OpenAI(base_url=f"{url}/v1", api_key="x", max_retries=0)
        with pytest.raises(openai.InternalServerError):
            client.chat.completions.create(model="broken", messages=MESSAGES)
        ok = client.chat.completions.create(model="fine", messages=MESSAGES)
        assert ok.choices[0].finish_reason == "stop"
        # The header wins over the model's default.
        client.chat.completions.create(
            model="broken", messages=MESSAGES, extra_headers={"x-sim-error-rate": "0"}
        )
        assert "broken" in [m.id for m in client.models.list()]
    with running_simulator() as url:
        client = OpenAI(base_url=f"{url}/v1", api_key="x", max_retries=0)
        short = client.chat.completions.create(model="short", messages=MESSAGES)
        assert short.usage.completion_tokens == 7


def test_required_key(monkeypatch):
    with running_simulator(required_key="sk-upstream") as url:
        with pytest.raises(openai.AuthenticationError):
            OpenAI(base_url=f"{url}/v1", api_key="wrong", max_retries=0).models.list()
        OpenAI(base_url=f"{url}/v1", api_key="sk-upstream", max_retries=0).models.list()
        body = {"model": "c", "max_tokens": 5, "messages": [{"role": "user", "content": "Hi"}]}
        rejected = anthropic_post(url, body)
        assert rejected.status_code == 401
        assert rejected.json()["error"]["type"] == "authentication_error"
        assert anthropic_post(url, body, **{"x-api-key": "sk-upstream"}).status_code == 200
    monkeypatch.setenv("SIMULATOR_REQUIRED_KEY", "from-env")
    with running_simulator() as url:
        denied = httpx.get(f"{url}/v1/models", headers={"authorization": "Bearer nope"})
        assert denied.status_code == 401
        allowed = httpx.get(f"{url}/v1/models", headers={"authorization": "Bearer from-env"})
        assert allowed.status_code == 200


def test_prefix_mounted_app():
    with running_simulator(prefix="/simulator") as url:
        client = OpenAI(base_url=f"{url}/simulator/v1", api_key="x", max_retries=0)
        answer = client.chat.completions.create(model="m", messages=MESSAGES)
        assert answer.choices[0].message.content
        assert httpx.post(f"{url}/v1/chat/completions", json={}).status_code == 404
        last = httpx.get(f"{url}/simulator/_sim/last_request").json()
        assert last["path"] == "/v1/chat/completions"
        assert last["full_path"] == "/simulator/v1/chat/completions"


def test_last_request_records_headers_and_body(sim_url, client):
    client.chat.completions.create(
        model="recorded", messages=MESSAGES, extra_headers={"X-Custom-Header": "Value"}
    )
    last = httpx.get(f"{sim_url}/_sim/last_request").json()
    assert last["method"] == "POST"
    assert last["path"] == "/v1/chat/completions"
    assert last["headers"]["authorization"] == "Bearer x"
    assert last["headers"]["x-custom-header"] == "Value"
    assert last["json"]["model"] == "recorded"
    assert last["json"]["messages"] == MESSAGES
    history = httpx.get(f"{sim_url}/_sim/requests").json()["requests"]
    assert history[-1] == last


def test_last_request_before_any_request_and_reset():
    with running_simulator() as url:
        empty = httpx.get(f"{url}/_sim/last_request").json()
        assert empty["path"] is None and empty["json"] is None
        httpx.post(f"{url}/v1/embeddings", json={"model": "e", "input": "x"})
        assert httpx.get(f"{url}/_sim/last_request").json()["path"] == "/v1/embeddings"
        assert httpx.post(f"{url}/_sim/reset").status_code == 200
        assert httpx.get(f"{url}/_sim/requests").json() == {"requests": []}
