"""Shared by the OpenAI and Anthropic endpoints: checks, answer text, tool pick, cache counts,
streams."""

import asyncio
from collections.abc import Callable, Mapping
from typing import Any

from .content import answer_pieces, apply_stop, content_text, default_length
from .knobs import Knobs
from .wire import ApiError, EventStream, Send

# Under tool_choice auto, a last user message mentioning this word gets a tool call, and a
# tool whose name has it is the one called.
_TOOL_TRIGGER = "weather"


def require_str(body: Mapping[str, Any], name: str) -> str:
    value = body.get(name)
    if not isinstance(value, str) or not value:
        raise ApiError(400, f"Missing required parameter: '{name}'.", param=name)
    return value


def optional_int(body: Mapping[str, Any], *names: str, minimum: int = 1) -> int | None:
    """The first of `names` present in the body, as an int no lower than `minimum`."""
    for name in names:
        value = body.get(name)
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
            raise ApiError(400, f"Invalid '{name}': expected an integer >= {minimum}.", param=name)
        return int(value)
    return None


def stop_list(value: Any, name: str = "stop") -> list[str]:
    if value is None:
        return []
    if isinstance(value, str):
        return [value]
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return value
    raise ApiError(400, f"Invalid '{name}': expected a string or a list of strings.", param=name)


def text_answer(
    seed: int, knobs: Knobs, max_tokens: int | None, stops: list[str]
) -> tuple[tuple[str, ...], str]:
    """The answer's pieces and why it ended: "stop", "length" or the matched stop sequence
    (as `"stop_sequence:" + stop`, which each wire format renders its own way).
    """
    length = knobs.output_tokens if knobs.output_tokens is not None else default_length(seed)
    pieces = answer_pieces(seed, length)
    reason = "stop"
    if max_tokens is not None and length > max_tokens:
        pieces, reason = pieces[:max_tokens], "length"
    pieces, matched = apply_stop(pieces, stops)
    if matched is not None:
        reason = "stop_sequence:" + matched
    return pieces, reason


async def non_stream_delay(knobs: Knobs) -> None:
    if knobs.latency_ms > 0:
        await asyncio.sleep(knobs.latency_ms / 1000.0)


def event_stream(send: Send, knobs: Knobs, failure: Callable[[int], bytes]) -> EventStream:
    """An SSE writer paced, broken and cut off as the request's knobs say.

    `failure(events_sent)` renders the API's own mid-stream error event, sent when the
    stream-error knob fires.
    """
    return EventStream(
        send,
        disconnect_after=knobs.disconnect_after_chunks,
        tokens_per_second=knobs.tokens_per_second,
        fail_after=knobs.stream_error_after_chunks,
        failure=failure,
    )


def stream_error(knobs: Knobs) -> ApiError:
    """The error a stream reports when the stream-error knob fires (status from error_status)."""
    return ApiError(
        knobs.error_status,
        "The simulator broke this stream on purpose (x-sim-stream-error-after-chunks).",
    )


def cache_counts(knobs: Knobs, prompt_tokens: int) -> tuple[int, int]:
    """The prompt tokens read from and written to the cache, as the knobs ask, within the
    prompt (reads first): an upstream cannot cache more than it was sent."""
    read = min(knobs.cached_tokens, prompt_tokens)
    written = min(knobs.cache_creation_tokens, prompt_tokens - read)
    return read, written


def _asks_for_tool(content: Any) -> bool:
    """Whether a user message's content prompts a tool call when the model may choose."""
    return _TOOL_TRIGGER in content_text(content).lower()


def pick_tool(
    tools: list[Mapping[str, Any]], mode: str, last: Any, forced: str | None = None
) -> Mapping[str, Any] | None:
    """The tool an answer calls, or None for a text answer: one rule for every API.

    `tools` each have a "name". `mode` is "none", "any" (a call is required), "named"
    (`forced`, which must be among `tools`, else LookupError) or anything else for auto:
    a call when the conversation's `last` message is a user's mentioning "weather" and
    carrying no tool result. After a tool result the model answers in text.
    """
    if not tools or mode == "none":
        return None
    if mode == "named":
        for tool in tools:
            if tool["name"] == forced:
                return tool
        raise LookupError(forced)
    if mode != "any":
        last = last if isinstance(last, Mapping) else {}
        content = last.get("content")
        has_result = isinstance(content, list) and any(
            isinstance(b, Mapping) and b.get("type") == "tool_result" for b in content
        )
        if last.get("role") != "user" or has_result or not _asks_for_tool(content):
            return None
    # The first weather tool, else the first tool.
    return next((tool for tool in tools if _TOOL_TRIGGER in tool["name"].lower()), tools[0])
