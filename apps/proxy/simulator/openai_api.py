"""OpenAI's chat completions and legacy completions, whole and streamed."""

import secrets
import time
from collections.abc import Callable, Mapping
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
from .wire import ApiError, ChunkTemplate, EventStream, Request, Send, dumps, send_json, sse_data

SYSTEM_FINGERPRINT = "fp_tollgate_sim"
_DONE = b"data: [DONE]\n\n"


def _usage(prompt_tokens: int, completion_tokens: int, cached_tokens: int) -> dict[str, Any]:
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
        "prompt_tokens_details": {"cached_tokens": cached_tokens, "audio_tokens": 0},
        "completion_tokens_details": {
            "reasoning_tokens": 0,
            "audio_tokens": 0,
            "accepted_prediction_tokens": 0,
            "rejected_prediction_tokens": 0,
        },
    }


def _finish_reason(reason: str) -> str:
    """OpenAI's finish_reason for `text_answer`'s reason (a stop sequence is a plain stop)."""
    return "length" if reason == "length" else "stop"


def _include_usage(body: Mapping[str, Any]) -> bool:
    options = body.get("stream_options")
    return isinstance(options, Mapping) and options.get("include_usage") is True


def _stream_failure(knobs: Knobs) -> Callable[[int], bytes]:
    """The chunk an OpenAI stream fails with mid-answer: an error body as a data event."""
    chunk = sse_data(stream_error(knobs).openai_body())
    return lambda _sent: chunk


async def _end_stream(stream: EventStream, usage_chunk: dict[str, Any] | None) -> None:
    """The usage chunk (when the client asked for one), then [DONE] and the end of the body."""
    if usage_chunk is not None and not await stream.event(sse_data(usage_chunk)):
        return
    if await stream.event(_DONE):
        await stream.finish()


# Tools ---------------------------------------------------------------------------------------


def tool_mode(choice: Any) -> str:
    """`params.pick_tool`'s mode for an OpenAI tool_choice string ("auto" for anything else)."""
    if choice == "required":
        return "any"
    return "none" if choice == "none" else "auto"


def _pick_function(body: Mapping[str, Any], messages: list[Any]) -> Mapping[str, Any] | None:
    """The function the answer calls, or None for a text answer (`params.pick_tool`'s rule)."""
    tools = body.get("tools")
    if not isinstance(tools, list):
        return None
    functions = [
        t["function"]
        for t in tools
        if isinstance(t, Mapping)
        and isinstance(t.get("function"), Mapping)
        and isinstance(t["function"].get("name"), str)
    ]
    choice = body.get("tool_choice")
    forced = None
    if isinstance(choice, Mapping):
        function_choice = choice.get("function")
        forced = function_choice.get("name") if isinstance(function_choice, Mapping) else None
        mode = "named"
    else:
        mode = tool_mode(choice)
    try:
        return pick_tool(functions, mode, messages[-1], forced)
    except LookupError:
        raise ApiError(
            400, f"tool_choice names an unknown function: {forced!r}.", param="tool_choice"
        ) from None


# Chat completions ----------------------------------------------------------------------------


async def chat_completions(req: Request, body: Mapping[str, Any], knobs: Knobs, send: Send) -> None:
    model = require_str(body, "model")
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise ApiError(400, "'messages' must be a non-empty array.", param="messages")
    max_tokens = optional_int(body, "max_completion_tokens", "max_tokens")
    stops = stop_list(body.get("stop"))
    prompt_tokens = count_message_tokens(messages, tools=body.get("tools"))
    function = _pick_function(body, messages)

    if function is not None:
        prompt = (
            content_text(messages[-1].get("content")) if isinstance(messages[-1], Mapping) else ""
        )
        name = function["name"]
        arguments = dumps(tool_arguments(function.get("parameters"), prompt)).decode()
        call_id = "call_" + secrets.token_hex(12)
        completion_tokens = count_tokens(name) + count_tokens(arguments)
        finish_reason = "tool_calls"
        pieces: tuple[str, ...] = ()
    else:
        pieces, reason = text_answer(seed_of(messages), knobs, max_tokens, stops)
        finish_reason = _finish_reason(reason)
        completion_tokens = count_tokens("".join(pieces))

    completion_id = "chatcmpl-" + secrets.token_hex(12)
    created = int(time.time())
    usage = _usage(prompt_tokens, completion_tokens, cache_counts(knobs, prompt_tokens)[0])

    if body.get("stream") is not True:
        await non_stream_delay(knobs)
        if function is not None:
            message: dict[str, Any] = {
                "role": "assistant",
                "content": None,
                "tool_calls": [
                    {
                        "id": call_id,
                        "type": "function",
                        "function": {"name": name, "arguments": arguments},
                    }
                ],
                "refusal": None,
                "annotations": [],
            }
        else:
            message = {
                "role": "assistant",
                "content": "".join(pieces),
                "refusal": None,
                "annotations": [],
            }
        answer = {
            "id": completion_id,
            "object": "chat.completion",
            "created": created,
            "model": model,
            "choices": [
                {"index": 0, "message": message, "logprobs": None, "finish_reason": finish_reason}
            ],
            "usage": usage,
            "service_tier": "default",
            "system_fingerprint": SYSTEM_FINGERPRINT,
        }
        await send_json(send, 200, answer)
        return

    include_usage = _include_usage(body)

    def chunk(delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
        value: dict[str, Any] = {
            "id": completion_id,
            "object": "chat.completion.chunk",
            "created": created,
            "model": model,
            "service_tier": "default",
            "system_fingerprint": SYSTEM_FINGERPRINT,
            "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}],
        }
        if include_usage:
            value["usage"] = None
        return value

    stream = event_stream(send, knobs, _stream_failure(knobs))
    try:
        if not await stream.start(req.receive, knobs.first_token_delay):
            return
        if function is not None:
            head = {
                "role": "assistant",
                "content": None,
                "tool_calls": [
                    {
                        "index": 0,
                        "id": call_id,
                        "type": "function",
                        "function": {"name": name, "arguments": ""},
                    }
                ],
                "refusal": None,
            }
            if not await stream.event(sse_data(chunk(head))):
                return
            template = ChunkTemplate(
                chunk(
                    {"tool_calls": [{"index": 0, "function": {"arguments": ChunkTemplate.slot()}}]}
                )
            )
            deltas = split_for_stream(arguments)
        else:
            head = {"role": "assistant", "content": "", "refusal": None}
            if not await stream.event(sse_data(chunk(head))):
                return
            template = ChunkTemplate(chunk({"content": ChunkTemplate.slot()}))
            deltas = list(pieces)
        for delta in deltas:
            if not await stream.event(template.render(delta), paced=True):
                return
        if not await stream.event(sse_data(chunk({}, finish_reason))):
            return
        tail = {**chunk({}), "choices": [], "usage": usage} if include_usage else None
        await _end_stream(stream, tail)
    finally:
        stream.close()


# Legacy completions --------------------------------------------------------------------------


async def completions(req: Request, body: Mapping[str, Any], knobs: Knobs, send: Send) -> None:
    model = require_str(body, "model")
    prompt = body.get("prompt")
    prompts = [prompt] if isinstance(prompt, str) else prompt
    if not isinstance(prompts, list) or not prompts or not all(isinstance(p, str) for p in prompts):
        raise ApiError(
            400,
            "'prompt' must be a string or an array of strings (the simulator takes no token arrays).",
            param="prompt",
        )
    max_tokens = optional_int(body, "max_tokens")
    stops = stop_list(body.get("stop"))
    answers = [text_answer(seed_of(p), knobs, max_tokens, stops) for p in prompts]
    prompt_tokens = sum(count_tokens(p) for p in prompts)
    completion_tokens = sum(count_tokens("".join(pieces)) for pieces, _ in answers)
    usage = {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }
    completion_id = "cmpl-" + secrets.token_hex(12)
    created = int(time.time())

    if body.get("stream") is not True:
        await non_stream_delay(knobs)
        choices = [
            {
                "text": "".join(pieces),
                "index": i,
                "logprobs": None,
                "finish_reason": _finish_reason(reason),
            }
            for i, (pieces, reason) in enumerate(answers)
        ]
        answer = {
            "id": completion_id,
            "object": "text_completion",
            "created": created,
            "model": model,
            "system_fingerprint": SYSTEM_FINGERPRINT,
            "choices": choices,
            "usage": usage,
        }
        await send_json(send, 200, answer)
        return

    include_usage = _include_usage(body)

    def chunk(index: int, text: str, finish_reason: str | None) -> dict[str, Any]:
        value: dict[str, Any] = {
            "id": completion_id,
            "object": "text_completion",
            "created": created,
            "model": model,
            "system_fingerprint": SYSTEM_FINGERPRINT,
            "choices": [
                {"text": text, "index": index, "logprobs": None, "finish_reason": finish_reason}
            ],
        }
        if include_usage:
            value["usage"] = None
        return value

    stream = event_stream(send, knobs, _stream_failure(knobs))
    try:
        if not await stream.start(req.receive, knobs.first_token_delay):
            return
        for index, (pieces, reason) in enumerate(answers):
            template = ChunkTemplate(chunk(index, ChunkTemplate.slot(), None))
            for piece in pieces:
                if not await stream.event(template.render(piece), paced=True):
                    return
            if not await stream.event(sse_data(chunk(index, "", _finish_reason(reason)))):
                return
        tail = {**chunk(0, "", None), "choices": [], "usage": usage} if include_usage else None
        await _end_stream(stream, tail)
    finally:
        stream.close()
