"""Anthropic's Messages API (`POST /v1/messages`), answers and SSE events in its wire format."""

import secrets
from collections.abc import Mapping
from typing import Any

from .content import (
    content_text,
    count_message_tokens,
    count_tokens,
    seed_of,
    split_for_stream,
    tool_arguments,
)
from .knobs import Knobs
from .params import (
    cache_counts,
    event_stream,
    non_stream_delay,
    optional_int,
    pick_tool,
    require_str,
    stop_list,
    stream_error,
    text_answer,
)
from .wire import ApiError, ChunkTemplate, Request, Send, dumps, send_json, sse_event

_PING = sse_event("ping", {"type": "ping"})
_MESSAGE_STOP = sse_event("message_stop", {"type": "message_stop"})


def _check(body: Mapping[str, Any]) -> list[Any]:
    require_str(body, "model")
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise ApiError(400, "messages: Field required (a non-empty list)", param="messages")
    for index, message in enumerate(messages):
        if not isinstance(message, Mapping) or message.get("role") not in ("user", "assistant"):
            raise ApiError(400, f"messages.{index}.role: Input should be 'user' or 'assistant'")
    return messages


def _pick_tool(body: Mapping[str, Any], messages: list[Any]) -> Mapping[str, Any] | None:
    """The tool the answer uses, or None for a text answer (`params.pick_tool`'s rule)."""
    tools = body.get("tools")
    if not isinstance(tools, list):
        return None
    named = [t for t in tools if isinstance(t, Mapping) and isinstance(t.get("name"), str)]
    choice = found if isinstance(found := body.get("tool_choice"), Mapping) else {}
    kind = choice.get("type", "auto")
    mode = "named" if kind == "tool" else kind
    try:
        return pick_tool(named, mode, messages[-1], choice.get("name"))
    except LookupError:
        raise ApiError(400, f"tool_choice.name: unknown tool {choice.get('name')!r}") from None


def _usage(knobs: Knobs, prompt_tokens: int, output_tokens: int) -> dict[str, Any]:
    """Anthropic's usage: its input_tokens leave out what was read from or written to the
    cache, which it reports apart."""
    read, written = cache_counts(knobs, prompt_tokens)
    return {
        "input_tokens": prompt_tokens - read - written,
        "cache_creation_input_tokens": written,
        "cache_read_input_tokens": read,
        "cache_creation": {"ephemeral_5m_input_tokens": written, "ephemeral_1h_input_tokens": 0},
        "output_tokens": output_tokens,
        "service_tier": "standard",
    }


async def messages_create(req: Request, body: Mapping[str, Any], knobs: Knobs, send: Send) -> None:
    messages = _check(body)
    model = body["model"]
    if body.get("max_tokens") is None:
        raise ApiError(400, "max_tokens: Field required", param="max_tokens")
    max_tokens = optional_int(body, "max_tokens")
    stops = stop_list(body.get("stop_sequences"), "stop_sequences")
    system = body.get("system")
    input_tokens = count_message_tokens(messages, system=system, tools=body.get("tools"))
    tool = _pick_tool(body, messages)
    message_id = "msg_" + secrets.token_hex(12)
    stop_sequence = None

    if tool is not None:
        prompt = content_text(messages[-1].get("content"))
        tool_input = tool_arguments(tool.get("input_schema"), prompt)
        block: dict[str, Any] = {
            "type": "tool_use",
            "id": "toolu_" + secrets.token_hex(12),
            "name": tool["name"],
            "input": tool_input,
        }
        input_json = dumps(tool_input).decode()
        output_tokens = count_tokens(tool["name"]) + count_tokens(input_json)
        stop_reason = "tool_use"
        pieces: tuple[str, ...] = ()
    else:
        pieces, reason = text_answer(seed_of(messages, system), knobs, max_tokens, stops)
        if reason == "length":
            stop_reason = "max_tokens"
        elif reason.startswith("stop_sequence:"):
            stop_reason, stop_sequence = "stop_sequence", reason.removeprefix("stop_sequence:")
        else:
            stop_reason = "end_turn"
        text = "".join(pieces)
        block = {"type": "text", "text": text}
        output_tokens = count_tokens(text)

    usage = _usage(knobs, input_tokens, output_tokens)
    message: dict[str, Any] = {
        "id": message_id,
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": [block],
        "stop_reason": stop_reason,
        "stop_sequence": stop_sequence,
        "usage": usage,
    }
    if body.get("stream") is not True:
        await non_stream_delay(knobs)
        await send_json(send, 200, message)
        return

    # message_start carries the input tokens; output_tokens there is a placeholder, the
    # cumulative count comes in message_delta (as Anthropic does).
    start = {
        **message,
        "content": [],
        "stop_reason": None,
        "stop_sequence": None,
        "usage": {**usage, "output_tokens": 1},
    }
    if tool is not None:
        empty_block = {**block, "input": {}}
        delta_type, field, deltas = "input_json_delta", "partial_json", split_for_stream(input_json)
    else:
        empty_block = {"type": "text", "text": ""}
        delta_type, field, deltas = "text_delta", "text", list(pieces)
    template = ChunkTemplate(
        {
            "type": "content_block_delta",
            "index": 0,
            "delta": {"type": delta_type, field: ChunkTemplate.slot()},
        },
        prefix=b"event: content_block_delta\ndata: ",
    )
    failure = sse_event("error", stream_error(knobs).anthropic_body())
    stream = event_stream(send, knobs, lambda _sent: failure)
    try:
        if not await stream.start(req.receive, knobs.first_token_delay, opening_first=True):
            return
        opening = (
            sse_event("message_start", {"type": "message_start", "message": start}),
            sse_event(
                "content_block_start",
                {"type": "content_block_start", "index": 0, "content_block": empty_block},
            ),
            _PING,
        )
        for event in opening:
            if not await stream.event(event):
                return
        for delta in deltas:
            if not await stream.event(template.render(delta), paced=True):
                return
        closing = (
            sse_event("content_block_stop", {"type": "content_block_stop", "index": 0}),
            sse_event(
                "message_delta",
                {
                    "type": "message_delta",
                    "delta": {"stop_reason": stop_reason, "stop_sequence": stop_sequence},
                    "usage": {"output_tokens": output_tokens},
                },
            ),
            _MESSAGE_STOP,
        )
        for event in closing:
            if not await stream.event(event):
                return
        await stream.finish()
    finally:
        stream.close()


async def count_tokens_endpoint(
    req: Request, body: Mapping[str, Any], knobs: Knobs, send: Send
) -> None:
    """`POST /v1/messages/count_tokens`: the input tokens a Messages request would bill."""
    messages = _check(body)
    tokens = count_message_tokens(messages, system=body.get("system"), tools=body.get("tools"))
    await send_json(send, 200, {"input_tokens": tokens})
