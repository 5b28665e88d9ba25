"""Shared by the OpenAI and Anthropic endpoints: checks, answer text, tool pick, streams."""

import asyncio
from collections.abc import Mapping
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
        return value
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


def event_stream(send: Send, knobs: Knobs) -> EventStream:
    """An SSE writer paced and cut off as the request's knobs say."""
    return EventStream(
        send,
        disconnect_after=knobs.disconnect_after_chunks,
        tokens_per_second=knobs.tokens_per_second,
    )


def asks_for_tool(content: Any) -> bool:
    """Whether a user message's content prompts a tool call when the model may choose."""
    return _TOOL_TRIGGER in content_text(content).lower()


def preferred_tool(tools: list[Mapping[str, Any]]) -> Mapping[str, Any]:
    """The tool a call uses when none is named: the first weather tool, else the first tool."""
    return next((tool for tool in tools if _TOOL_TRIGGER in tool["name"].lower()), tools[0])
