"""Provider adapters: OpenAI-shaped requests and answers to and from each upstream."""

import json

import pytest

from apps.proxy.providers.anthropic import AnthropicProvider
from apps.proxy.providers.azure import AzureOpenAIProvider
from apps.proxy.providers.base import (
    CHAT,
    COMPLETION,
    EMBEDDING,
    RERANK,
    DeploymentInfo,
    UnsupportedRequest,
    Usage,
)
from apps.proxy.providers.cohere import CohereRerankProvider
from apps.proxy.providers.openai import OpenAIProvider
from apps.proxy.providers.registry import UnknownProvider, get_provider, provider_for

pytestmark = pytest.mark.embedded


def deployment(**kwargs) -> DeploymentInfo:
    values = {
        "id": 1,
        "name": "primary",
        "model_name": "gpt-fast",
        "provider": "openai",
        "upstream_model": "gpt-4o-mini-2024-07-18",
        "base_url": "https://api.openai.com/v1/",
        "api_key": "sk-upstream",
    }
    values.update(kwargs)
    return DeploymentInfo(**values)


# --- OpenAI -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kind", "path"),
    [
        (CHAT, "/chat/completions"),
        (COMPLETION, "/completions"),
        (EMBEDDING, "/embeddings"),
        (RERANK, "/rerank"),
    ],
)
def test_openai_build_url_auth_and_model(kind, path):
    body = {"model": "gpt-fast", "input": "hi", "temperature": 0.2}
    request = OpenAIProvider().build(kind, body, deployment())

    assert request.method == "POST"
    assert request.url == "https://api.openai.com/v1" + path
    assert request.headers["Authorization"] == "Bearer sk-upstream"
    assert request.json == {"model": "gpt-4o-mini-2024-07-18", "input": "hi", "temperature": 0.2}
    assert body["model"] == "gpt-fast", "the client's body must not be mutated"


def test_openai_without_key_sends_no_authorization():
    request = OpenAIProvider().build(CHAT, {"model": "m", "messages": []}, deployment(api_key=""))
    assert "Authorization" not in request.headers


@pytest.mark.parametrize("kind", [CHAT, COMPLETION])
def test_openai_stream_forces_include_usage(kind):
    body = {"model": "gpt-fast", "stream": True, "stream_options": {"other": 1}}
    request = OpenAIProvider().build(kind, body, deployment())
    assert request.json["stream_options"] == {"other": 1, "include_usage": True}
    assert body["stream_options"] == {"other": 1}


def test_openai_no_stream_options_without_stream():
    request = OpenAIProvider().build(CHAT, {"model": "gpt-fast", "messages": []}, deployment())
    assert "stream_options" not in request.json


def test_openai_parse_rewrites_model_only():
    provider = OpenAIProvider()
    answer = {
        "id": "chatcmpl-1",
        "object": "chat.completion",
        "model": "gpt-4o-mini-2024-07-18",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": "hi"}}],
        "usage": {
            "prompt_tokens": 10,
            "completion_tokens": 2,
            "total_tokens": 12,
            "prompt_tokens_details": {"cached_tokens": 4},
        },
    }
    parsed = provider.parse(CHAT, answer, deployment())
    assert parsed == {**answer, "model": "gpt-fast"}
    assert provider.usage(CHAT, parsed) == Usage(input_tokens=10, output_tokens=2, cached_tokens=4)


def test_openai_stream_translator_passes_chunks_and_captures_usage():
    translator = OpenAIProvider().stream_translator(deployment())
    chunk = {
        "id": "chatcmpl-9",
        "object": "chat.completion.chunk",
        "created": 1700000000,
        "model": "gpt-4o-mini-2024-07-18",
        "choices": [{"index": 0, "delta": {"content": "Hel"}, "finish_reason": None}],
    }
    usage_chunk = {
        "id": "chatcmpl-9",
        "object": "chat.completion.chunk",
        "created": 1700000000,
        "model": "gpt-4o-mini-2024-07-18",
        "choices": [],
        "usage": {"prompt_tokens": 7, "completion_tokens": 3, "total_tokens": 10},
    }

    assert translator.feed(None, chunk) == [{**chunk, "model": "gpt-fast"}]
    assert translator.usage is None
    assert translator.feed(None, usage_chunk) == [{**usage_chunk, "model": "gpt-fast"}]
    assert translator.usage == Usage(input_tokens=7, output_tokens=3)
    assert translator.usage_chunk() == {
        "id": "chatcmpl-9",
        "object": "chat.completion.chunk",
        "created": 1700000000,
        "model": "gpt-fast",
        "choices": [],
        "usage": {
            "prompt_tokens": 7,
            "completion_tokens": 3,
            "total_tokens": 10,
            "prompt_tokens_details": {"cached_tokens": 0},
        },
    }


def test_openai_error_message():
    data = {"error": {"message": "Rate limit reached", "type": "requests"}}
    assert OpenAIProvider().error_message(data) == "Rate limit reached"


# --- Azure ------------------------------------------------------------------------------


def test_azure_url_and_api_key_header():
    dep = deployment(
        provider="azure_openai",
        base_url="https://contoso.openai.azure.com/",
        upstream_model="gpt4o-prod",
        api_version="2024-06-01",
        api_key="azure-secret",
    )
    provider = AzureOpenAIProvider()
    request = provider.build(CHAT, {"model": "gpt-fast", "messages": [], "stream": True}, dep)

    assert request.url == (
        "https://contoso.openai.azure.com/openai/deployments/gpt4o-prod/chat/completions"
        "?api-version=2024-06-01"
    )
    assert request.headers["api-key"] == "azure-secret"
    assert "Authorization" not in request.headers
    assert request.json["stream_options"] == {"include_usage": True}
    assert provider.build(EMBEDDING, {"model": "x", "input": "a"}, dep).url == (
        "https://contoso.openai.azure.com/openai/deployments/gpt4o-prod/embeddings"
        "?api-version=2024-06-01"
    )
    assert "/completions?" in provider.build(COMPLETION, {"model": "x", "prompt": "a"}, dep).url
    with pytest.raises(UnsupportedRequest):
        provider.build(RERANK, {"model": "x", "query": "q", "documents": []}, dep)


def test_azure_default_api_version_and_openai_suffix():
    dep = deployment(base_url="https://contoso.openai.azure.com/openai", upstream_model="d")
    url = AzureOpenAIProvider().build(CHAT, {"model": "x", "messages": []}, dep).url
    assert url.startswith("https://contoso.openai.azure.com/openai/deployments/d/chat/")
    assert "api-version=2024-10-21" in url


# --- Anthropic: requests ----------------------------------------------------------------


def anthropic_deployment(**kwargs) -> DeploymentInfo:
    values = {
        "provider": "anthropic",
        "model_name": "claude-fast",
        "upstream_model": "claude-3-5-haiku-20241022",
        "base_url": "https://api.anthropic.com/v1",
        "api_key": "sk-ant",
    }
    values.update(kwargs)
    return deployment(**values)


def anthropic_build(body: dict, **kwargs) -> dict:
    body = {"model": "claude-fast", **body}
    return AnthropicProvider().build(CHAT, body, anthropic_deployment(**kwargs)).json


def test_anthropic_build_url_headers_and_basics():
    body = {
        "model": "claude-fast",
        "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "system", "content": [{"type": "text", "text": "Answer in French."}]},
            {"role": "user", "content": "Hello"},
        ],
        "temperature": 0.3,
        "top_p": 0.9,
        "stream": True,
        "stream_options": {"include_usage": True},
        "stop": "END",
        "user": "end-user-7",
        "max_completion_tokens": 256,
        "frequency_penalty": 0.5,
    }
    request = AnthropicProvider().build(CHAT, body, anthropic_deployment())

    assert request.url == "https://api.anthropic.com/v1/messages"
    assert request.headers == {
        "content-type": "application/json",
        "anthropic-version": "2023-06-01",
        "x-api-key": "sk-ant",
    }
    assert request.json == {
        "model": "claude-3-5-haiku-20241022",
        "system": "Be brief.\n\nAnswer in French.",
        "messages": [{"role": "user", "content": [{"type": "text", "text": "Hello"}]}],
        "max_tokens": 256,
        "temperature": 0.3,
        "top_p": 0.9,
        "stream": True,
        "stop_sequences": ["END"],
        "metadata": {"user_id": "end-user-7"},
    }


def test_anthropic_version_and_default_max_tokens_from_deployment():
    dep = anthropic_deployment(api_version="2024-01-01", extra={"default_max_tokens": 1000})
    request = AnthropicProvider().build(
        CHAT, {"model": "claude-fast", "messages": [{"role": "user", "content": "x"}]}, dep
    )
    assert request.headers["anthropic-version"] == "2024-01-01"
    assert request.json["max_tokens"] == 1000
    assert "system" not in request.json
    assert anthropic_build({"messages": []})["max_tokens"] == 4096
    assert anthropic_build({"messages": [], "max_tokens": 50})["max_tokens"] == 50
    assert anthropic_build({"messages": [], "stop": ["a", "b"]})["stop_sequences"] == ["a", "b"]


def test_anthropic_user_parts_and_images():
    messages = [
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "What is this?"},
                {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}},
                {"type": "image_url", "image_url": {"url": "https://example.com/cat.jpg"}},
            ],
        }
    ]
    content = anthropic_build({"messages": messages})["messages"][0]["content"]
    assert content == [
        {"type": "text", "text": "What is this?"},
        {
            "type": "image",
            "source": {"type": "base64", "media_type": "image/png", "data": "iVBORw0KGgo="},
        },
        {"type": "image", "source": {"type": "url", "url": "https://example.com/cat.jpg"}},
    ]


@pytest.mark.parametrize(
    "messages",
    [
        [{"role": "user", "content": [{"type": "input_audio", "input_audio": {}}]}],
        [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "ftp://x"}}]}],
        [{"role": "function", "name": "f", "content": "x"}],
        [{"role": "system", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}],
        [
            {
                "role": "assistant",
                "tool_calls": [
                    {"id": "c", "type": "function", "function": {"name": "f", "arguments": "{"}}
                ],
            }
        ],
    ],
)
def test_anthropic_rejects_what_it_cannot_express(messages):
    with pytest.raises(UnsupportedRequest):
        anthropic_build({"messages": messages})


@pytest.mark.parametrize("kind", [COMPLETION, EMBEDDING, RERANK])
def test_anthropic_chat_only(kind):
    with pytest.raises(UnsupportedRequest):
        AnthropicProvider().build(kind, {"model": "x"}, anthropic_deployment())


def test_anthropic_rejects_n_and_response_format():
    with pytest.raises(UnsupportedRequest):
        anthropic_build({"messages": [], "n": 2})
    with pytest.raises(UnsupportedRequest):
        anthropic_build({"messages": [], "response_format": {"type": "json_object"}})
    assert anthropic_build({"messages": [], "n": 1, "response_format": {"type": "text"}})


def test_anthropic_tool_conversation():
    body = {
        "messages": [
            {"role": "user", "content": "Weather in Paris and Rome?"},
            {
                "role": "assistant",
                "content": "Checking.",
                "tool_calls": [
                    {
                        "id": "toolu_1",
                        "type": "function",
                        "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'},
                    },
                    {
                        "id": "toolu_2",
                        "type": "function",
                        "function": {"name": "get_weather", "arguments": '{"city": "Rome"}'},
                    },
                ],
            },
            {"role": "tool", "tool_call_id": "toolu_1", "content": "18C"},
            {
                "role": "tool",
                "tool_call_id": "toolu_2",
                "content": [{"type": "text", "text": "25C"}],
            },
            {"role": "user", "content": "Thanks, which is warmer?"},
        ],
        "tools": [
            {
                "type": "function",
                "function": {
                    "name": "get_weather",
                    "description": "Current weather",
                    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
                },
            },
            {"type": "function", "function": {"name": "now"}},
        ],
        "tool_choice": "required",
    }
    out = anthropic_build(body)

    assert out["messages"] == [
        {"role": "user", "content": [{"type": "text", "text": "Weather in Paris and Rome?"}]},
        {
            "role": "assistant",
            "content": [
                {"type": "text", "text": "Checking."},
                {
                    "type": "tool_use",
                    "id": "toolu_1",
                    "name": "get_weather",
                    "input": {"city": "Paris"},
                },
                {
                    "type": "tool_use",
                    "id": "toolu_2",
                    "name": "get_weather",
                    "input": {"city": "Rome"},
                },
            ],
        },
        {
            "role": "user",
            "content": [
                {"type": "tool_result", "tool_use_id": "toolu_1", "content": "18C"},
                {"type": "tool_result", "tool_use_id": "toolu_2", "content": "25C"},
                {"type": "text", "text": "Thanks, which is warmer?"},
            ],
        },
    ]
    assert out["tools"] == [
        {
            "name": "get_weather",
            "description": "Current weather",
            "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}},
        },
        {"name": "now", "input_schema": {"type": "object", "properties": {}}},
    ]
    assert out["tool_choice"] == {"type": "any"}


@pytest.mark.parametrize(
    ("choice", "parallel", "expected"),
    [
        ("auto", None, {"type": "auto"}),
        ("none", None, {"type": "none"}),
        ("required", None, {"type": "any"}),
        (
            {"type": "function", "function": {"name": "get_weather"}},
            None,
            {"type": "tool", "name": "get_weather"},
        ),
        (None, False, {"type": "auto", "disable_parallel_tool_use": True}),
        ("required", False, {"type": "any", "disable_parallel_tool_use": True}),
        (None, None, None),
    ],
)
def test_anthropic_tool_choice(choice, parallel, expected):
    body = {
        "messages": [{"role": "user", "content": "x"}],
        "tools": [{"type": "function", "function": {"name": "get_weather"}}],
    }
    if choice is not None:
        body["tool_choice"] = choice
    if parallel is not None:
        body["parallel_tool_calls"] = parallel
    assert anthropic_build(body).get("tool_choice") == expected


def test_anthropic_rejects_non_function_tools():
    with pytest.raises(UnsupportedRequest):
        anthropic_build({"messages": [], "tools": [{"type": "web_search"}]})


# --- Anthropic: answers -----------------------------------------------------------------


def test_anthropic_parse_text_tool_use_and_usage():
    answer = {
        "id": "msg_01XYZ",
        "type": "message",
        "role": "assistant",
        "model": "claude-3-5-haiku-20241022",
        "content": [
            {"type": "text", "text": "Let me check "},
            {"type": "text", "text": "the weather."},
            {
                "type": "tool_use",
                "id": "toolu_9",
                "name": "get_weather",
                "input": {"city": "Paris", "unit": "c"},
            },
        ],
        "stop_reason": "tool_use",
        "stop_sequence": None,
        "usage": {
            "input_tokens": 100,
            "output_tokens": 40,
            "cache_read_input_tokens": 30,
            "cache_creation_input_tokens": 20,
        },
    }
    provider = AnthropicProvider()
    parsed = provider.parse(CHAT, answer, anthropic_deployment())

    assert parsed["id"] == "chatcmpl-msg_01XYZ"
    assert parsed["object"] == "chat.completion"
    assert parsed["model"] == "claude-fast"
    assert isinstance(parsed["created"], int)
    (choice,) = parsed["choices"]
    assert choice["finish_reason"] == "tool_calls"
    assert choice["message"]["role"] == "assistant"
    assert choice["message"]["content"] == "Let me check the weather."
    (call,) = choice["message"]["tool_calls"]
    assert call["id"] == "toolu_9"
    assert call["type"] == "function"
    assert call["function"]["name"] == "get_weather"
    assert json.loads(call["function"]["arguments"]) == {"city": "Paris", "unit": "c"}
    assert parsed["usage"] == {
        "prompt_tokens": 150,
        "completion_tokens": 40,
        "total_tokens": 190,
        "prompt_tokens_details": {"cached_tokens": 30},
    }
    assert provider.usage(CHAT, parsed) == Usage(
        input_tokens=150, output_tokens=40, cached_tokens=30
    )
    # From the Messages answer itself (as the proxy reads it) the cache writes are kept
    # apart, still counted in the input: 100 fresh + 30 read + 20 written.
    assert provider.usage(CHAT, parsed, answer) == Usage(
        input_tokens=150, output_tokens=40, cached_tokens=30, cache_write_tokens=20
    )


@pytest.mark.parametrize(
    ("stop_reason", "finish_reason"),
    [
        ("end_turn", "stop"),
        ("stop_sequence", "stop"),
        ("max_tokens", "length"),
        ("tool_use", "tool_calls"),
    ],
)
def test_anthropic_finish_reasons(stop_reason, finish_reason):
    answer = {
        "id": "msg_1",
        "content": [{"type": "text", "text": "ok"}],
        "stop_reason": stop_reason,
        "usage": {"input_tokens": 1, "output_tokens": 1},
    }
    parsed = AnthropicProvider().parse(CHAT, answer, anthropic_deployment())
    assert parsed["choices"][0]["finish_reason"] == finish_reason
    assert "tool_calls" not in parsed["choices"][0]["message"]


def test_anthropic_error_message():
    data = {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}
    assert AnthropicProvider().error_message(data) == "Overloaded"


# --- Anthropic: streams -----------------------------------------------------------------

ANTHROPIC_STREAM = [
    (
        "message_start",
        {
            "type": "message_start",
            "message": {
                "id": "msg_stream1",
                "type": "message",
                "role": "assistant",
                "model": "claude-3-5-haiku-20241022",
                "content": [],
                "stop_reason": None,
                "usage": {"input_tokens": 472, "output_tokens": 2, "cache_read_input_tokens": 100},
            },
        },
    ),
    (
        "content_block_start",
        {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}},
    ),
    ("ping", {"type": "ping"}),
    (
        "content_block_delta",
        {
            "type": "content_block_delta",
            "index": 0,
            "delta": {"type": "text_delta", "text": "Okay"},
        },
    ),
    (
        "content_block_delta",
        {
            "type": "content_block_delta",
            "index": 0,
            "delta": {"type": "text_delta", "text": ", let me check the weather."},
        },
    ),
    ("content_block_stop", {"type": "content_block_stop", "index": 0}),
    (
        "content_block_start",
        {
            "type": "content_block_start",
            "index": 1,
            "content_block": {
                "type": "tool_use",
                "id": "toolu_01T",
                "name": "get_weather",
                "input": {},
            },
        },
    ),
    (
        "content_block_delta",
        {
            "type": "content_block_delta",
            "index": 1,
            "delta": {"type": "input_json_delta", "partial_json": ""},
        },
    ),
    (
        "content_block_delta",
        {
            "type": "content_block_delta",
            "index": 1,
            "delta": {"type": "input_json_delta", "partial_json": '{"location": "San Fra'},
        },
    ),
    (
        "content_block_delta",
        {
            "type": "content_block_delta",
            "index": 1,
            "delta": {"type": "input_json_delta", "partial_json": 'ncisco, CA"}'},
        },
    ),
    ("content_block_stop", {"type": "content_block_stop", "index": 1}),
    (
        "message_delta",
        {
            "type": "message_delta",
            "delta": {"stop_reason": "tool_use", "stop_sequence": None},
            "usage": {"output_tokens": 89},
        },
    ),
    ("message_stop", {"type": "message_stop"}),
]


def translate(events) -> tuple[list[dict], object]:
    translator = AnthropicProvider().stream_translator(anthropic_deployment())
    chunks = []
    for name, data in events:
        chunks.extend(translator.feed(name, data))
    return chunks, translator


def test_anthropic_stream_transcript():
    chunks, translator = translate(ANTHROPIC_STREAM)

    assert all(c["object"] == "chat.completion.chunk" for c in chunks)
    assert {c["id"] for c in chunks} == {"chatcmpl-msg_stream1"}
    assert {c["model"] for c in chunks} == {"claude-fast"}
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}

    deltas = [c["choices"][0]["delta"] for c in chunks]
    content = "".join(d.get("content") or "" for d in deltas)
    assert content == "Okay, let me check the weather."

    tool_deltas = [tc for d in deltas for tc in d.get("tool_calls", [])]
    first = tool_deltas[0]
    assert first == {
        "index": 0,
        "id": "toolu_01T",
        "type": "function",
        "function": {"name": "get_weather", "arguments": ""},
    }
    assert all(tc["index"] == 0 and "id" not in tc for tc in tool_deltas[1:])
    arguments = "".join(tc["function"]["arguments"] for tc in tool_deltas)
    assert json.loads(arguments) == {"location": "San Francisco, CA"}

    finishes = [c["choices"][0]["finish_reason"] for c in chunks]
    assert finishes[-1] == "tool_calls"
    assert finishes.count("tool_calls") == 1
    assert all(f is None for f in finishes[:-1])
    assert chunks[-1]["choices"][0]["delta"] == {}

    assert translator.usage == Usage(input_tokens=572, output_tokens=89, cached_tokens=100)
    usage_chunk = translator.usage_chunk()
    assert usage_chunk["id"] == "chatcmpl-msg_stream1"
    assert usage_chunk["object"] == "chat.completion.chunk"
    assert usage_chunk["model"] == "claude-fast"
    assert usage_chunk["created"] == chunks[0]["created"]
    assert usage_chunk["choices"] == []
    assert usage_chunk["usage"] == {
        "prompt_tokens": 572,
        "completion_tokens": 89,
        "total_tokens": 661,
        "prompt_tokens_details": {"cached_tokens": 100},
    }
    assert (
        translator.usage_chunk(Usage(input_tokens=1, output_tokens=2))["usage"]["total_tokens"] == 3
    )


def test_anthropic_stream_reports_cache_writes():
    start = {
        "type": "message_start",
        "message": {
            "id": "msg_cache",
            "type": "message",
            "role": "assistant",
            "model": "claude-sonnet-4-5",
            "content": [],
            "usage": {
                "input_tokens": 12,
                "output_tokens": 1,
                "cache_read_input_tokens": 0,
                "cache_creation_input_tokens": 2048,
            },
        },
    }
    delta = {
        "type": "message_delta",
        "delta": {"stop_reason": "end_turn"},
        "usage": {"output_tokens": 7},
    }
    _, translator = translate([("message_start", start), ("message_delta", delta)])
    assert translator.usage == Usage(
        input_tokens=2060, output_tokens=7, cached_tokens=0, cache_write_tokens=2048
    )
    # OpenAI's usage shape has no cache write count: writes are in prompt_tokens only.
    assert translator.usage_chunk()["usage"] == {
        "prompt_tokens": 2060,
        "completion_tokens": 7,
        "total_tokens": 2067,
        "prompt_tokens_details": {"cached_tokens": 0},
    }
    # Newer API versions repeat the cumulative input counts in message_delta.
    repeated = {
        **delta,
        "usage": {
            "input_tokens": 12,
            "output_tokens": 7,
            "cache_read_input_tokens": 1024,
            "cache_creation_input_tokens": 2048,
        },
    }
    _, translator = translate([("message_start", start), ("message_delta", repeated)])
    assert translator.usage == Usage(
        input_tokens=3084, output_tokens=7, cached_tokens=1024, cache_write_tokens=2048
    )


def test_cache_reads_and_writes_beyond_the_input_are_suspect():
    assert Usage.from_counts(100, 5, 60, 40) == Usage(100, 5, 60, 40)
    assert Usage.from_counts(100, 5, 60, 41).suspect
    assert Usage.from_counts(100, 5, None, 100) == Usage(100, 5, 0, 100)
    assert Usage.from_counts(100, 5, 0, -1).suspect


def test_anthropic_stream_two_tools_get_separate_indexes():
    events = [
        ANTHROPIC_STREAM[0],
        *[
            (
                "content_block_start",
                {
                    "type": "content_block_start",
                    "index": i,
                    "content_block": {"type": "tool_use", "id": f"toolu_{i}", "name": "f"},
                },
            )
            for i in range(2)
        ],
    ]
    chunks, _ = translate(events)
    indexes = [c["choices"][0]["delta"]["tool_calls"][0]["index"] for c in chunks[1:]]
    assert indexes == [0, 1]


def test_anthropic_stream_text_only_ends_with_stop_and_event_name_optional():
    events = [
        ANTHROPIC_STREAM[0],
        ANTHROPIC_STREAM[3],
        (
            None,
            {
                "type": "message_delta",
                "delta": {"stop_reason": "end_turn"},
                "usage": {"output_tokens": 5},
            },
        ),
        (None, {"type": "message_stop"}),
    ]
    chunks, translator = translate(events)
    assert [c["choices"][0]["finish_reason"] for c in chunks] == [None, None, "stop"]
    assert translator.usage.output_tokens == 5


def test_anthropic_stream_error_event():
    events = [
        ANTHROPIC_STREAM[0],
        (
            "error",
            {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}},
        ),
    ]
    chunks, translator = translate(events)
    assert chunks[-1] == {"error": {"message": "Overloaded", "type": "overloaded_error"}}
    assert translator.error == {"message": "Overloaded", "type": "overloaded_error"}


# --- Cohere-style rerank ----------------------------------------------------------------


def cohere_deployment() -> DeploymentInfo:
    return deployment(
        provider="cohere",
        model_name="rerank",
        upstream_model="rerank-v3.5",
        base_url="https://api.cohere.com/v2/",
        api_key="co-key",
    )


def test_cohere_build():
    body = {
        "model": "rerank",
        "query": "capital of France",
        "documents": ["Paris", "Berlin"],
        "top_n": 1,
        "return_documents": True,
        "user": "u1",
    }
    request = CohereRerankProvider().build(RERANK, body, cohere_deployment())
    assert request.url == "https://api.cohere.com/v2/rerank"
    assert request.headers["Authorization"] == "Bearer co-key"
    assert request.json == {
        "model": "rerank-v3.5",
        "query": "capital of France",
        "documents": ["Paris", "Berlin"],
        "top_n": 1,
        "return_documents": True,
    }


@pytest.mark.parametrize("kind", [CHAT, COMPLETION, EMBEDDING])
def test_cohere_rerank_only(kind):
    with pytest.raises(UnsupportedRequest):
        CohereRerankProvider().build(kind, {"model": "x"}, cohere_deployment())


def test_cohere_parse():
    answer = {
        "id": "07734bd2-2473-4f07-94e1-0d9f0e6843cf",
        "results": [
            {"index": 1, "relevance_score": 0.9, "document": {"text": "Paris"}},
            {"index": 0, "relevance_score": 0.1},
        ],
        "meta": {
            "api_version": {"version": "2"},
            "billed_units": {"search_units": 1, "input_tokens": 12},
        },
    }
    provider = CohereRerankProvider()
    parsed = provider.parse(RERANK, answer, cohere_deployment())
    assert parsed == {
        "id": "07734bd2-2473-4f07-94e1-0d9f0e6843cf",
        "object": "list",
        "model": "rerank",
        "results": [
            {"index": 1, "relevance_score": 0.9, "document": {"text": "Paris"}},
            {"index": 0, "relevance_score": 0.1},
        ],
        "usage": {"prompt_tokens": 12, "total_tokens": 12, "search_units": 1},
    }
    assert provider.usage(RERANK, parsed) == Usage(input_tokens=12)


def test_cohere_parse_search_units_only():
    answer = {"id": "r", "results": [], "meta": {"billed_units": {"search_units": 2}}}
    parsed = CohereRerankProvider().parse(RERANK, answer, cohere_deployment())
    assert parsed["usage"] == {"prompt_tokens": 0, "total_tokens": 0, "search_units": 2}


def test_jina_and_voyage_style_answers():
    jina = {
        "model": "jina-reranker-v2",
        "usage": {"total_tokens": 33},
        "results": [{"index": 0, "relevance_score": 0.7, "document": {"text": "a"}}],
    }
    parsed = CohereRerankProvider().parse(RERANK, jina, cohere_deployment())
    assert parsed["usage"] == {"prompt_tokens": 33, "total_tokens": 33}
    assert parsed["results"] == [{"index": 0, "relevance_score": 0.7, "document": {"text": "a"}}]

    voyage = {
        "object": "list",
        "data": [{"index": 0, "relevance_score": 0.5, "document": "b"}],
        "usage": {"total_tokens": 9},
    }
    parsed = OpenAIProvider().parse(RERANK, voyage, cohere_deployment())
    assert parsed["results"] == [{"index": 0, "relevance_score": 0.5, "document": {"text": "b"}}]
    assert parsed["model"] == "rerank"
    assert parsed["usage"]["total_tokens"] == 9


# --- Registry ---------------------------------------------------------------------------


def test_registry():
    assert isinstance(get_provider("openai"), OpenAIProvider)
    assert get_provider("openai") is get_provider("openai")
    assert isinstance(get_provider("azure_openai"), AzureOpenAIProvider)
    assert isinstance(get_provider("anthropic"), AnthropicProvider)
    assert isinstance(get_provider("cohere"), CohereRerankProvider)
    assert type(get_provider("simulator")) is OpenAIProvider
    assert isinstance(get_provider("simulator", {"simulator_mode": "anthropic"}), AnthropicProvider)
    assert isinstance(provider_for(anthropic_deployment()), AnthropicProvider)
    with pytest.raises(UnknownProvider) as excinfo:
        get_provider("bedrock")
    assert isinstance(excinfo.value, KeyError)
    assert "bedrock" in str(excinfo.value)
