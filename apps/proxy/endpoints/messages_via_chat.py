"""Anthropic Messages served by a deployment that speaks chat completions.

The request is translated to chat completions and handed to the deployment's provider
adapter as any chat request would be; its OpenAI-shaped answer, whole or streamed, is
translated back to a Message. Features chat completions cannot express (server tools,
documents) are an UnsupportedRequest, so failover looks for another deployment and the
client gets a clear 400 when none can serve it. Earlier thinking blocks are dropped: they
mean nothing to another model.
"""

from __future__ import annotations

from typing import Any

import orjson

from ..errors import GatewayError
from ..providers.base import CHAT, UnsupportedRequest, UpstreamRequest, Usage
from ..tokens import estimate_text_tokens
from .anthropic_wire import (
    anthropic_error,
    anthropic_usage,
    content_text,
    estimate_messages_input,
)
from .base import ClientStream, Exchange, event_bytes
from .openai_api import RetoldChunks, parse_openai_answer

# OpenAI finish_reason -> Anthropic stop_reason.
STOP_REASONS = {
    "stop": "end_turn",
    "length": "max_tokens",
    "tool_calls": "tool_use",
    "function_call": "tool_use",
    "content_filter": "refusal",
}
# OpenAI accepts at most this many stop sequences.
MAX_STOPS = 4


def _image_part(block: dict[str, Any]) -> dict[str, Any]:
    source = block["source"]
    if source["type"] == "base64":
        url = f"data:{source['media_type']};base64,{source['data']}"
    else:
        url = source["url"]
    return {"type": "image_url", "image_url": {"url": url}}


def _blocks(content: object) -> list[dict[str, Any]]:
    return [b for b in content if isinstance(b, dict)] if isinstance(content, list) else []


def _user_messages(content: list[Any]) -> list[dict[str, Any]]:
    """One Anthropic user turn -> OpenAI tool messages (first, answering the assistant's
    calls) and a user message with the rest."""
    tools: list[dict[str, Any]] = []
    parts: list[dict[str, Any]] = []
    for block in content:
        kind = block["type"]
        if kind == "tool_result":
            text = content_text(block.get("content"))
            if block.get("is_error"):
                text = f"Error: {text}"
            tools.append({"role": "tool", "tool_call_id": block["tool_use_id"], "content": text})
            # A chat tool message carries text only: the result's images follow in the user
            # message, introduced, rather than being dropped.
            images = [_image_part(b) for b in _blocks(block.get("content")) if b["type"] == "image"]
            if images:
                note = f"Images returned by tool call {block['tool_use_id']}:"
                parts += [{"type": "text", "text": note}, *images]
        elif kind == "text":
            parts.append({"type": "text", "text": block["text"]})
        elif kind == "image":
            parts.append(_image_part(block))
        else:
            raise UnsupportedRequest(f"content blocks of type '{kind}' need an Anthropic model")
    return tools + ([{"role": "user", "content": parts}] if parts else [])


def _assistant_message(content: list[Any]) -> dict[str, Any]:
    texts: list[str] = []
    calls: list[dict[str, Any]] = []
    for block in content:
        kind = block["type"]
        if kind == "text":
            texts.append(block["text"])
        elif kind == "tool_use":
            arguments = orjson.dumps(block["input"]).decode()
            calls.append(
                {
                    "id": block["id"],
                    "type": "function",
                    "function": {"name": block["name"], "arguments": arguments},
                }
            )
        elif kind not in ("thinking", "redacted_thinking"):
            # Earlier thinking means nothing to another model and is dropped.
            raise UnsupportedRequest(f"content blocks of type '{kind}' need an Anthropic model")
    message: dict[str, Any] = {"role": "assistant", "content": "".join(texts) or None}
    if calls:
        message["tool_calls"] = calls
    return message


def _tools(tools: list[Any]) -> list[dict[str, Any]]:
    out = []
    for tool in tools:
        if tool.get("type", "custom") != "custom":
            raise UnsupportedRequest(f"server tools ('{tool['type']}') need an Anthropic model")
        function = {"name": tool["name"], "parameters": tool["input_schema"]}
        if tool.get("description"):
            function["description"] = tool["description"]
        out.append({"type": "function", "function": function})
    return out


def _tool_choice(choice: dict[str, Any]) -> object:
    kind = choice["type"]
    if kind == "tool":
        return {"type": "function", "function": {"name": choice.get("name")}}
    return {"auto": "auto", "any": "required", "none": "none"}[kind]


def to_chat(body: dict[str, Any]) -> dict[str, Any]:
    """A Messages request as a chat completions request."""
    messages: list[dict[str, Any]] = []
    system = content_text(body.get("system"))
    if system:
        messages.append({"role": "system", "content": system})
    for message in body["messages"]:
        content = message["content"]
        if isinstance(content, str):
            messages.append({"role": message["role"], "content": content})
        elif message["role"] == "user":
            messages.extend(_user_messages(content))
        else:
            messages.append(_assistant_message(content))
    out: dict[str, Any] = {
        "model": body["model"],
        "messages": messages,
        "max_tokens": body["max_tokens"],
    }
    for name in ("temperature", "top_p", "stream"):
        if body.get(name) is not None:
            out[name] = body[name]
    stops = body.get("stop_sequences")
    if stops:
        if len(stops) > MAX_STOPS:
            raise UnsupportedRequest(f"at most {MAX_STOPS} stop_sequences reach this model")
        out["stop"] = stops
    if body.get("tools"):
        out["tools"] = _tools(body["tools"])
    choice = body.get("tool_choice")
    if choice and out.get("tools"):
        out["tool_choice"] = _tool_choice(choice)
        if choice.get("disable_parallel_tool_use"):
            out["parallel_tool_calls"] = False
    user_id = (body.get("metadata") or {}).get("user_id")
    if user_id:
        out["user"] = user_id
    return out


def _tool_input(arguments: object) -> dict[str, Any]:
    try:
        value = orjson.loads(arguments) if isinstance(arguments, str) else arguments
    except orjson.JSONDecodeError:
        return {}
    return value if isinstance(value, dict) else {}


def to_message(answer: dict[str, Any], usage: Usage) -> dict[str, Any]:
    """A chat completion answer (checked by `check_answer`) as a Message."""
    choice = answer["choices"][0] if answer["choices"] else {"message": {}}
    message = choice["message"]
    content: list[dict[str, Any]] = []
    text = message.get("content")
    if isinstance(text, list):
        text = "".join(str(p.get("text") or "") for p in text if isinstance(p, dict))
    if text:
        content.append({"type": "text", "text": text})
    for call in message.get("tool_calls") or ():
        function = call.get("function") or {}
        content.append(
            {
                "type": "tool_use",
                "id": call.get("id"),
                "name": function.get("name"),
                "input": _tool_input(function.get("arguments")),
            }
        )
    return {
        "id": "msg_" + str(answer.get("id") or "").removeprefix("chatcmpl-"),
        "type": "message",
        "role": "assistant",
        "model": answer.get("model"),
        "content": content,
        "stop_reason": STOP_REASONS.get(choice.get("finish_reason") or "stop", "end_turn"),
        "stop_sequence": None,
        "usage": anthropic_usage(usage),
    }


class ChunksToMessagesEvents(RetoldChunks):
    """OpenAI chunks (as the provider's translator gives them) -> Anthropic stream events."""

    def __init__(self, exchange: MessagesViaChat) -> None:
        super().__init__(exchange.provider, exchange.deployment)
        self.model = exchange.deployment.model_name
        self.input_estimate = exchange.input_estimate
        self.started = False
        self.block: int | None = None  # index of the open content block
        self.block_kind = ""
        self.blocks = 0
        self.tool_blocks: dict[int, int] = {}  # OpenAI tool call index -> block index
        self.stop_reason = "end_turn"

    def _start(self, chunk: dict[str, Any]) -> list[bytes]:
        self.started = True
        message: dict[str, Any] = {
            "id": "msg_" + str(chunk.get("id") or "").removeprefix("chatcmpl-"),
            "type": "message",
            "role": "assistant",
            "model": self.model,
            "content": [],
            "stop_reason": None,
            "stop_sequence": None,
            # Chat streams report usage at their end: the input here is the gateway's
            # estimate, and the counts billed come in message_delta.
            "usage": {"input_tokens": self.input_estimate, "output_tokens": 0},
        }
        return [
            event_bytes("message_start", {"type": "message_start", "message": message}),
            event_bytes("ping", {"type": "ping"}),
        ]

    def _close(self) -> list[bytes]:
        if self.block is None:
            return []
        index, self.block = self.block, None
        return [event_bytes("content_block_stop", {"type": "content_block_stop", "index": index})]

    def _open(self, kind: str, block: dict[str, Any]) -> list[bytes]:
        out = self._close()
        self.block, self.block_kind = self.blocks, kind
        self.blocks += 1
        start = {"type": "content_block_start", "index": self.block, "content_block": block}
        return [*out, event_bytes("content_block_start", start)]

    def _delta(self, delta: dict[str, Any]) -> bytes:
        data = {"type": "content_block_delta", "index": self.block, "delta": delta}
        return event_bytes("content_block_delta", data)

    def on_text(self, text: str) -> list[bytes]:
        out: list[bytes] | None = (
            [] if self.block_kind == "text" and self.block is not None else None
        )
        if out is None:
            out = self._open("text", {"type": "text", "text": ""})
        return [*out, self._delta({"type": "text_delta", "text": text})]

    def on_tool_call(self, call: dict[str, Any]) -> list[bytes]:
        out: list[bytes] = []
        index = call.get("index", 0)
        function = call.get("function") or {}
        if self.begins_tool_call(call):
            block: dict[str, Any] = {
                "type": "tool_use",
                "id": call.get("id"),
                "name": function.get("name"),
                "input": {},
            }
            out = self._open("tool_use", block)
            self.tool_blocks[index] = self.block  # type: ignore[assignment]
        arguments = function.get("arguments")
        if isinstance(arguments, str) and arguments:
            if self.block != self.tool_blocks[index]:
                return out  # arguments of an earlier call after a later one began: rare, kept out
            out.append(self._delta({"type": "input_json_delta", "partial_json": arguments}))
        return out

    def on_chunk(self, chunk: dict[str, Any]) -> list[bytes]:
        return [] if self.started else self._start(chunk)

    def on_finish(self, reason: str) -> None:
        self.stop_reason = STOP_REASONS.get(reason, "end_turn")

    def tail(self, usage: Usage, error: GatewayError | None, client_gone: bool) -> bytes:
        if error is not None:
            return event_bytes("error", anthropic_error(error))
        out = b"" if self.started else b"".join(self._start({}))
        out += b"".join(self._close())
        delta = {
            "type": "message_delta",
            "delta": {"stop_reason": self.stop_reason, "stop_sequence": None},
            "usage": self.with_cost(anthropic_usage(usage)),
        }
        out += event_bytes("message_delta", delta)
        return out + event_bytes("message_stop", {"type": "message_stop"})


class MessagesViaChat(Exchange):
    input_estimate = 0

    def build(self, body: dict[str, Any], headers: dict[str, str]) -> UpstreamRequest:
        self.input_estimate = estimate_messages_input(body)
        return self.provider.build(CHAT, to_chat(body), self.deployment)

    def answer(self, payload: dict[str, Any]) -> tuple[dict[str, Any], Usage | None]:
        chat = parse_openai_answer(CHAT, self.provider, self.deployment, payload)
        usage = self.provider.usage(CHAT, chat, payload)
        # Written with zero counts here; the pipeline bills the counts it believes (`bill`).
        return to_message(chat, usage or Usage()), usage

    def estimate_output(self, answer: dict[str, Any]) -> int:
        return estimate_text_tokens(content_text(answer["content"]))

    def bill(self, answer: dict[str, Any], usage: Usage) -> None:
        answer["usage"] = anthropic_usage(usage)

    def stream(self) -> ClientStream:
        return ChunksToMessagesEvents(self)
