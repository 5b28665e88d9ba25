"""OpenAI Responses served by a deployment through chat completions: the stateless subset.

`previous_response_id` and `store: true` need the server that keeps responses; here they
are an UnsupportedRequest, so failover looks for a deployment that speaks Responses and the
client gets a clear 400 when none can.
"""

from __future__ import annotations

import time
import uuid
from typing import Any

from ..errors import GatewayError
from ..providers.base import CHAT, UnsupportedRequest, UpstreamRequest, Usage
from ..tokens import estimate_text_tokens
from .base import ClientStream, Exchange, event_bytes
from .openai_api import RetoldChunks, parse_openai_answer
from .responses_wire import error_event, output_text, responses_usage

_PART_TYPES = {"input_text": "text", "output_text": "text"}


def _content(content: object) -> object:
    if isinstance(content, str):
        return content
    parts: list[dict[str, Any]] = []
    for part in content if isinstance(content, list) else ():
        kind = part["type"]
        if kind in _PART_TYPES:
            parts.append({"type": "text", "text": part["text"]})
        elif kind == "input_image" and part.get("image_url"):
            parts.append({"type": "image_url", "image_url": {"url": part["image_url"]}})
        else:
            raise UnsupportedRequest(f"content parts of type '{kind}' need a Responses server")
    return parts


def _messages(body: dict[str, Any]) -> list[dict[str, Any]]:
    messages: list[dict[str, Any]] = []
    if body.get("instructions"):
        messages.append({"role": "system", "content": body["instructions"]})
    items = body["input"]
    if isinstance(items, str):
        return [*messages, {"role": "user", "content": items}]
    for item in items:
        kind = item.get("type", "message")
        if kind == "message":
            messages.append({"role": item["role"], "content": _content(item["content"])})
        elif kind == "function_call":
            call = {
                "id": item["call_id"],
                "type": "function",
                "function": {"name": item["name"], "arguments": item["arguments"]},
            }
            last = messages[-1] if messages else None
            if last and last["role"] == "assistant" and "tool_calls" in last:
                last["tool_calls"].append(call)  # parallel calls are one assistant turn
            else:
                messages.append({"role": "assistant", "content": None, "tool_calls": [call]})
        elif kind == "function_call_output":
            output = item["output"]
            if not isinstance(output, str):
                output = " ".join(str(p.get("text") or "") for p in output if isinstance(p, dict))
            messages.append({"role": "tool", "tool_call_id": item["call_id"], "content": output})
        elif kind != "reasoning":
            raise UnsupportedRequest(f"input items of type '{kind}' need a Responses server")
    return messages


def _tools(tools: list[Any]) -> list[dict[str, Any]]:
    out = []
    for tool in tools:
        if tool["type"] != "function":
            raise UnsupportedRequest(f"'{tool['type']}' tools need a Responses server")
        function = {"name": tool["name"], "parameters": tool.get("parameters") or {}}
        if tool.get("description"):
            function["description"] = tool["description"]
        if tool.get("strict") is not None:
            function["strict"] = tool["strict"]
        out.append({"type": "function", "function": function})
    return out


def to_chat(body: dict[str, Any]) -> dict[str, Any]:
    """A Responses request as a chat completions request."""
    if body.get("previous_response_id"):
        raise UnsupportedRequest("previous_response_id needs a deployment that keeps responses")
    if body.get("store") is True:
        raise UnsupportedRequest("store: true needs a deployment that keeps responses")
    # Dropping these would answer a different request with a 200: refused instead.
    text_format = (
        (body.get("text") or {}).get("format") if isinstance(body.get("text"), dict) else None
    )
    if isinstance(text_format, dict) and text_format.get("type", "text") != "text":
        raise UnsupportedRequest("text.format other than text needs a Responses server")
    if body.get("reasoning"):
        raise UnsupportedRequest("reasoning settings need a Responses server")
    choice = body.get("tool_choice")
    if isinstance(choice, dict) and choice.get("type") != "function":
        raise UnsupportedRequest(
            f"tool_choice of type {choice.get('type')!r} needs a Responses server"
        )
    out: dict[str, Any] = {"model": body["model"], "messages": _messages(body)}
    if body.get("max_output_tokens"):
        out["max_tokens"] = body["max_output_tokens"]
    for name in ("temperature", "top_p", "stream", "parallel_tool_calls", "user"):
        if body.get(name) is not None:
            out[name] = body[name]
    if body.get("tools"):
        out["tools"] = _tools(body["tools"])
        choice = body.get("tool_choice")
        if isinstance(choice, dict) and choice.get("type") == "function":
            out["tool_choice"] = {"type": "function", "function": {"name": choice.get("name")}}
        elif isinstance(choice, str):
            out["tool_choice"] = choice
    return out


def _new_id(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex}"


def response_object(
    body: dict[str, Any],
    model: str,
    output: list[dict[str, Any]],
    usage: Usage | None,
    status: str = "completed",
) -> dict[str, Any]:
    """The Responses `response` object around `output`."""
    incomplete = {"reason": "max_output_tokens"} if status == "incomplete" else None
    return {
        "id": _new_id("resp"),
        "object": "response",
        "created_at": int(time.time()),
        "status": status,
        "error": None,
        "incomplete_details": incomplete,
        "instructions": body.get("instructions"),
        "max_output_tokens": body.get("max_output_tokens"),
        "model": model,
        "output": output,
        "parallel_tool_calls": body.get("parallel_tool_calls", True),
        "previous_response_id": None,
        "temperature": body.get("temperature"),
        "text": {"format": {"type": "text"}},
        "tool_choice": body.get("tool_choice", "auto"),
        "tools": body.get("tools") or [],
        "top_p": body.get("top_p"),
        "metadata": body.get("metadata") or {},
        "usage": responses_usage(usage) if usage is not None else None,
    }


def message_item(item_id: str, text: str, status: str = "completed") -> dict[str, Any]:
    content = [{"type": "output_text", "text": text, "annotations": []}]
    return {
        "type": "message",
        "id": item_id,
        "status": status,
        "role": "assistant",
        "content": content if status == "completed" else [],
    }


def function_item(
    call_id: str, name: str, arguments: str, status: str = "completed"
) -> dict[str, Any]:
    return {
        "type": "function_call",
        "id": "fc_" + call_id,
        "call_id": call_id,
        "name": name,
        "arguments": arguments,
        "status": status,
    }


def to_output(answer: dict[str, Any]) -> tuple[list[dict[str, Any]], str]:
    """(output items, response status) of a chat completion answer."""
    choice = answer["choices"][0] if answer["choices"] else {"message": {}}
    message = choice["message"]
    output: list[dict[str, Any]] = []
    text = message.get("content")
    if isinstance(text, list):
        text = "".join(str(p.get("text") or "") for p in text if isinstance(p, dict))
    if text:
        output.append(message_item(_new_id("msg"), text))
    for call in message.get("tool_calls") or ():
        function = call.get("function") or {}
        output.append(
            function_item(
                str(call.get("id") or _new_id("call")),
                str(function.get("name") or ""),
                str(function.get("arguments") or ""),
            )
        )
    status = "incomplete" if choice.get("finish_reason") == "length" else "completed"
    return output, status


class ChunksToResponsesEvents(RetoldChunks):
    """OpenAI chunks (as the provider's translator gives them) -> Responses stream events."""

    def __init__(self, exchange: ResponsesViaChat) -> None:
        super().__init__(exchange.provider, exchange.deployment)
        self.body = exchange.body
        self.model = exchange.deployment.model_name
        self.sequence = 0
        self.response: dict[str, Any] | None = None
        self.output: list[dict[str, Any]] = []
        self.open_item: dict[str, Any] | None = None
        self.text = ""
        self.tool_items: dict[int, dict[str, Any]] = {}  # OpenAI tool call index -> its item
        self.status = "completed"

    def _event(self, name: str, **data: object) -> bytes:
        self.sequence += 1
        return event_bytes(name, {"type": name, "sequence_number": self.sequence, **data})

    def _start(self) -> list[bytes]:
        self.response = response_object(self.body, self.model, [], None, status="in_progress")
        return [
            self._event("response.created", response=self.response),
            self._event("response.in_progress", response=self.response),
        ]

    def _close(self) -> list[bytes]:
        item, self.open_item = self.open_item, None
        if item is None:
            return []
        index = self.output.index(item)
        if item["type"] == "message":
            part = {"type": "output_text", "text": self.text, "annotations": []}
            done = message_item(item["id"], self.text)
            self.output[index] = done
            return [
                self._event(
                    "response.output_text.done",
                    item_id=item["id"],
                    output_index=index,
                    content_index=0,
                    text=self.text,
                ),
                self._event(
                    "response.content_part.done",
                    item_id=item["id"],
                    output_index=index,
                    content_index=0,
                    part=part,
                ),
                self._event("response.output_item.done", output_index=index, item=done),
            ]
        item["status"] = "completed"
        return [
            self._event(
                "response.function_call_arguments.done",
                item_id=item["id"],
                output_index=index,
                arguments=item["arguments"],
            ),
            self._event("response.output_item.done", output_index=index, item=dict(item)),
        ]

    def on_text(self, delta: str) -> list[bytes]:
        out: list[bytes] = []
        if self.open_item is None or self.open_item["type"] != "message":
            out += self._close()
            item = message_item(_new_id("msg"), "", status="in_progress")
            self.output.append(item)
            self.open_item, self.text = item, ""
            index = len(self.output) - 1
            part = {"type": "output_text", "text": "", "annotations": []}
            out += [
                self._event("response.output_item.added", output_index=index, item=dict(item)),
                self._event(
                    "response.content_part.added",
                    item_id=item["id"],
                    output_index=index,
                    content_index=0,
                    part=part,
                ),
            ]
        self.text += delta
        item = self.open_item
        out.append(
            self._event(
                "response.output_text.delta",
                item_id=item["id"],
                output_index=self.output.index(item),
                content_index=0,
                delta=delta,
            )
        )
        return out

    def on_tool_call(self, call: dict[str, Any]) -> list[bytes]:
        out: list[bytes] = []
        index = call.get("index", 0)
        function = call.get("function") or {}
        if self.begins_tool_call(call):
            out += self._close()
            call_id = str(call.get("id") or _new_id("call"))
            begun = function_item(call_id, str(function.get("name") or ""), "", "in_progress")
            self.tool_items[index] = begun
            self.output.append(begun)
            self.open_item = begun
            out.append(
                self._event(
                    "response.output_item.added",
                    output_index=len(self.output) - 1,
                    item=dict(begun),
                )
            )
        item = self.tool_items[index]
        arguments = function.get("arguments")
        if isinstance(arguments, str) and arguments and item is self.open_item:
            item["arguments"] += arguments
            out.append(
                self._event(
                    "response.function_call_arguments.delta",
                    item_id=item["id"],
                    output_index=self.output.index(item),
                    delta=arguments,
                )
            )
        return out

    def on_chunk(self, chunk: dict[str, Any]) -> list[bytes]:
        return self._start() if self.response is None else []

    def on_finish(self, reason: str) -> None:
        if reason == "length":
            self.status = "incomplete"

    def tail(self, usage: Usage, error: GatewayError | None, client_gone: bool) -> bytes:
        if error is not None:
            return error_event(error, self.sequence + 1)
        out = b"".join(self._start()) if self.response is None else b""
        out += b"".join(self._close())
        assert self.response is not None  # noqa: S101 - set by _start above
        final = {
            **self.response,
            "status": self.status,
            "output": self.output,
            "usage": self.with_cost(responses_usage(usage)),
        }
        if self.status == "incomplete":
            final["incomplete_details"] = {"reason": "max_output_tokens"}
        name = "response.incomplete" if self.status == "incomplete" else "response.completed"
        return out + self._event(name, response=final)


class ResponsesViaChat(Exchange):
    body: dict[str, Any]

    def build(self, body: dict[str, Any], headers: dict[str, str]) -> UpstreamRequest:
        self.body = body
        return self.provider.build(CHAT, to_chat(body), self.deployment)

    def answer(self, payload: dict[str, Any]) -> tuple[dict[str, Any], Usage | None]:
        chat = parse_openai_answer(CHAT, self.provider, self.deployment, payload)
        usage = self.provider.usage(CHAT, chat, payload)
        output, status = to_output(chat)
        return response_object(self.body, self.deployment.model_name, output, usage, status), usage

    def estimate_output(self, answer: dict[str, Any]) -> int:
        return estimate_text_tokens(output_text(answer.get("output")))

    def bill(self, answer: dict[str, Any], usage: Usage) -> None:
        answer["usage"] = responses_usage(usage)

    def stream(self) -> ClientStream:
        return ChunksToResponsesEvents(self)
