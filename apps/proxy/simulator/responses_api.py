"""OpenAI's Responses API (`POST /v1/responses`), whole and streamed.

The input items become chat-shaped messages, so answers, prompt token counts and the tool-call
rule are the chat simulator's: a conversation of plain strings gets the same text here as on
/v1/chat/completions. A kept response (`store`, true by default) can be continued with
`previous_response_id`; only what the next turn needs is kept (a seed, the conversation's
tokens, its call ids), for the last `KEPT_RESPONSES` responses; `/_sim/reset` forgets them.
"""

import secrets
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass
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
    require_str,
    stream_error,
    text_answer,
)
from .responses_input import (
    check_call_ids,
    check_settings,
    conversation,
    function_tools,
    pick_function,
)
from .wire import ApiError, Request, Send, dumps, send_json, sse_event

KEPT_RESPONSES = 1000
# OpenAI refuses a smaller cap.
MIN_OUTPUT_TOKENS = 16


@dataclass(frozen=True, slots=True)
class _Context:
    """What a kept response hands to the turn continuing it."""

    seed: int
    tokens: int  # the whole conversation so far, billed again as input of the next turn
    call_ids: frozenset[str]  # function calls a function_call_output may answer


class ResponsesApi:
    """The endpoint with its memory of kept responses (one per simulator app)."""

    def __init__(self) -> None:
        self._kept: OrderedDict[str, _Context] = OrderedDict()

    def reset(self) -> None:
        self._kept.clear()

    def _keep(self, response_id: str, context: _Context) -> None:
        self._kept[response_id] = context
        if len(self._kept) > KEPT_RESPONSES:
            self._kept.popitem(last=False)

    def _previous(self, body: Mapping[str, Any]) -> _Context | None:
        previous_id = body.get("previous_response_id")
        if previous_id is None:
            return None
        context = self._kept.get(previous_id) if isinstance(previous_id, str) else None
        if context is None:
            raise ApiError(
                400,
                f"Previous response with id '{previous_id}' not found.",
                param="previous_response_id",
                code="previous_response_not_found",
            )
        return context

    async def create(self, req: Request, body: Mapping[str, Any], knobs: Knobs, send: Send) -> None:
        model = require_str(body, "model")
        previous = self._previous(body)
        messages = conversation(body)
        call_ids = check_call_ids(body["input"], previous.call_ids if previous else frozenset())
        functions = function_tools(body)
        max_output = optional_int(body, "max_output_tokens", minimum=MIN_OUTPUT_TOKENS)
        check_settings(body)

        input_tokens = count_message_tokens(messages, tools=body.get("tools"))
        seed = seed_of(messages)
        if previous is not None:
            input_tokens += previous.tokens
            seed = seed_of(previous.seed, messages)
        function = pick_function(body, functions, messages)
        if function is not None:
            name = function["name"]
            prompt = content_text(messages[-1].get("content"))
            arguments = dumps(tool_arguments(function.get("parameters"), prompt)).decode()
            item = {
                "id": "fc_" + secrets.token_hex(12),
                "type": "function_call",
                "status": "completed",
                "arguments": arguments,
                "call_id": "call_" + secrets.token_hex(12),
                "name": name,
            }
            output_tokens = count_tokens(name) + count_tokens(arguments)
            answer, complete = name + arguments, True
            call_ids |= {item["call_id"]}
            deltas = split_for_stream(arguments)
        else:
            pieces, reason = text_answer(seed, knobs, max_output, [])
            answer, complete = "".join(pieces), reason != "length"
            item = {
                "id": "msg_" + secrets.token_hex(12),
                "type": "message",
                "status": "completed" if complete else "incomplete",
                "content": [_text_part(answer)],
                "role": "assistant",
            }
            output_tokens = count_tokens(answer)
            deltas = list(pieces)

        response_id = "resp_" + secrets.token_hex(24)
        created = int(time.time())
        final = _response(body, response_id, model, created)
        final["output"] = [item]
        final["usage"] = _usage(knobs, input_tokens, output_tokens)
        if complete:
            final["status"], final["completed_at"] = "completed", int(time.time())
        else:
            final["status"] = "incomplete"
            final["incomplete_details"] = {"reason": "max_output_tokens"}
        context = _Context(seed_of(seed, answer), input_tokens + output_tokens, call_ids)

        def keep() -> None:
            if body.get("store") is not False:
                self._keep(response_id, context)

        if body.get("stream") is not True:
            await non_stream_delay(knobs)
            await send_json(send, 200, final)
            keep()
            return
        snapshot = _response(body, response_id, model, created)
        if await _stream(req, knobs, send, snapshot, final, deltas):
            keep()


# Answer ----------------------------------------------------------------------------------------


def _text_part(text: str) -> dict[str, Any]:
    return {"type": "output_text", "annotations": [], "logprobs": [], "text": text}


def _usage(knobs: Knobs, input_tokens: int, output_tokens: int) -> dict[str, Any]:
    read, written = cache_counts(knobs, input_tokens)
    return {
        "input_tokens": input_tokens,
        "input_tokens_details": {"cached_tokens": read, "cache_write_tokens": written},
        "output_tokens": output_tokens,
        "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": input_tokens + output_tokens,
    }


def _response(
    body: Mapping[str, Any], response_id: str, model: str, created: int
) -> dict[str, Any]:
    """The response object as it starts: in progress, no output, no usage; the request's
    settings echoed with OpenAI's defaults."""
    return {
        "id": response_id,
        "object": "response",
        "created_at": created,
        "status": "in_progress",
        "background": False,
        "completed_at": None,
        "error": None,
        "incomplete_details": None,
        "instructions": body.get("instructions"),
        "max_output_tokens": body.get("max_output_tokens"),
        "max_tool_calls": None,
        "model": model,
        "output": [],
        "parallel_tool_calls": body.get("parallel_tool_calls", True),
        "previous_response_id": body.get("previous_response_id"),
        "reasoning": {"effort": None, "summary": None},
        "service_tier": "default",
        "store": body.get("store", True),
        "temperature": body.get("temperature", 1.0),
        "text": body.get("text") or {"format": {"type": "text"}},
        "tool_choice": body.get("tool_choice", "auto"),
        "tools": body.get("tools") or [],
        "top_logprobs": 0,
        "top_p": body.get("top_p", 1.0),
        "truncation": "disabled",
        "usage": None,
        "user": body.get("user"),
        "metadata": body.get("metadata") or {},
    }


# Stream ----------------------------------------------------------------------------------------


def _delta_renderer(kind: str, fields: Mapping[str, Any]) -> Callable[[int, str], bytes]:
    """A delta event pre-encoded but for its number and text: one `dumps` per token."""
    head = b"event: " + kind.encode() + b"\ndata: " + dumps({"type": kind, **fields})[:-1]

    def render(number: int, delta: str) -> bytes:
        return head + b',"sequence_number":%d,"delta":%b}\n\n' % (number, dumps(delta))

    return render


async def _stream(
    req: Request,
    knobs: Knobs,
    send: Send,
    snapshot: dict[str, Any],
    final: dict[str, Any],
    deltas: list[str],
) -> bool:
    """Stream the answer (`final`'s one output item, in `deltas`) in OpenAI's event order;
    True when it went out whole."""

    def failure(number: int) -> bytes:
        error = stream_error(knobs)
        code = "rate_limit_exceeded" if error.status == 429 else "server_error"
        failed = {**snapshot, "status": "failed", "error": {"code": code, "message": error.message}}
        return _event(number, "response.failed", response=failed)

    stream = event_stream(send, knobs, failure)
    item = final["output"][0]
    where = {"item_id": item["id"], "output_index": 0}
    if item["type"] == "function_call":
        opening: list[tuple[str, dict[str, Any]]] = [
            (
                "response.output_item.added",
                {"output_index": 0, "item": {**item, "status": "in_progress", "arguments": ""}},
            )
        ]
        render = _delta_renderer("response.function_call_arguments.delta", where)
        closing = [
            ("response.function_call_arguments.done", {**where, "arguments": item["arguments"]})
        ]
    else:
        text = item["content"][0]["text"]
        part = {**where, "content_index": 0}
        opening = [
            (
                "response.output_item.added",
                {"output_index": 0, "item": {**item, "status": "in_progress", "content": []}},
            ),
            ("response.content_part.added", {**part, "part": _text_part("")}),
        ]
        render = _delta_renderer("response.output_text.delta", {**part, "logprobs": []})
        closing = [
            ("response.output_text.done", {**part, "text": text, "logprobs": []}),
            ("response.content_part.done", {**part, "part": item["content"][0]}),
        ]
    last = "response.completed" if final["status"] == "completed" else "response.incomplete"
    closing += [
        ("response.output_item.done", {"output_index": 0, "item": item}),
        (last, {"response": final}),
    ]
    try:
        if not await stream.start(req.receive, knobs.first_token_delay, opening_first=True):
            return False
        for kind, fields in [
            ("response.created", {"response": snapshot}),
            ("response.in_progress", {"response": snapshot}),
            *opening,
        ]:
            if not await stream.event(_event(stream.sent, kind, **fields)):
                return False
        for delta in deltas:
            if not await stream.event(render(stream.sent, delta), paced=True):
                return False
        for kind, fields in closing:
            if not await stream.event(_event(stream.sent, kind, **fields)):
                return False
        await stream.finish()
        return True
    finally:
        stream.close()


def _event(number: int, kind: str, **fields: Any) -> bytes:
    return sse_event(kind, {"type": kind, "sequence_number": number, **fields})
