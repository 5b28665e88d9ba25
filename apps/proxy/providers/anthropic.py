"""Anthropic's Messages API behind OpenAI's chat completions (chat only)."""

import json
import re
import time
from typing import Any

from apps.proxy.providers.base import (
    CHAT,
    DeploymentInfo,
    InvalidAnswer,
    Provider,
    StreamTranslator,
    UnsupportedRequest,
    UpstreamRequest,
    Usage,
)
from apps.usage.capture import sane_token_count

DEFAULT_VERSION = "2023-06-01"
DEFAULT_MAX_TOKENS = 4096

FINISH_REASONS = {
    "end_turn": "stop",
    "stop_sequence": "stop",
    "max_tokens": "length",
    "tool_use": "tool_calls",
    "pause_turn": "stop",
    "refusal": "content_filter",
}

_DATA_URL = re.compile(r"^data:(?P<media>[\w.+-]+/[\w.+-]+);base64,(?P<data>.+)$", re.DOTALL)


def _finish_reason(stop_reason: str | None) -> str:
    return FINISH_REASONS.get(stop_reason or "end_turn", "stop")


def _usage(raw: object) -> Usage:
    """Usage from an Anthropic `usage` object: suspect unless both main counts are believable.

    OpenAI's prompt_tokens include the cache reads and writes; Anthropic's input_tokens
    leave both out, and report them apart.
    """
    if not isinstance(raw, dict):
        return Usage(suspect=True)
    fresh, output = (sane_token_count(raw.get(name)) for name in ("input_tokens", "output_tokens"))
    # Cache counts are left out (or null) when no cache was used: they count as 0.
    cache_read, cache_write = (
        0 if raw.get(name) is None else sane_token_count(raw[name])
        for name in ("cache_read_input_tokens", "cache_creation_input_tokens")
    )
    if fresh is None or output is None or cache_read is None or cache_write is None:
        return Usage(suspect=True)
    return Usage.from_counts(fresh + cache_read + cache_write, output, cache_read, cache_write)


def _text_of(content: object, where: str) -> str:
    """Plain text of a string-or-text-parts content (system and tool messages)."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        texts = []
        for part in content:
            if not isinstance(part, dict) or part.get("type") != "text":
                raise UnsupportedRequest(f"{where} content supports text parts only")
            texts.append(str(part.get("text") or ""))
        return "\n".join(texts)
    raise UnsupportedRequest(f"{where} content must be a string or a list of parts")


def _image_block(part: dict[str, Any]) -> dict[str, Any]:
    image = part.get("image_url")
    url = image.get("url") if isinstance(image, dict) else image
    if not isinstance(url, str) or not url:
        raise UnsupportedRequest("image_url part without a url")
    match = _DATA_URL.match(url)
    if match:
        source = {"type": "base64", "media_type": match["media"], "data": match["data"]}
    elif url.startswith(("https://", "http://")):
        source = {"type": "url", "url": url}
    else:
        raise UnsupportedRequest("image_url must be a base64 data URL or an http(s) URL")
    return {"type": "image", "source": source}


def _content_blocks(content: object, role: str) -> list[dict[str, Any]]:
    if content is None:
        return []
    if isinstance(content, str):
        return [{"type": "text", "text": content}] if content else []
    if not isinstance(content, list):
        raise UnsupportedRequest(f"{role} content must be a string or a list of parts")
    blocks = []
    for part in content:
        kind = part.get("type") if isinstance(part, dict) else None
        if kind == "text":
            if part.get("text"):
                blocks.append({"type": "text", "text": str(part["text"])})
        elif kind == "image_url" and role == "user":
            blocks.append(_image_block(part))
        else:
            raise UnsupportedRequest(f"{role} content part of type {kind!r} is not supported")
    return blocks


def _tool_use_blocks(tool_calls: list[Any]) -> list[dict[str, Any]]:
    blocks = []
    for call in tool_calls or []:
        function = call.get("function") or {}
        arguments = function.get("arguments") or "{}"
        try:
            tool_input = json.loads(arguments) if isinstance(arguments, str) else arguments
        except ValueError:
            raise UnsupportedRequest("tool call arguments must be a JSON object") from None
        if not isinstance(tool_input, dict):
            raise UnsupportedRequest("tool call arguments must be a JSON object")
        blocks.append(
            {
                "type": "tool_use",
                "id": call.get("id"),
                "name": function.get("name"),
                "input": tool_input,
            }
        )
    return blocks


def convert_messages(messages: list[dict[str, Any]]) -> tuple[str, list[dict[str, Any]]]:
    """OpenAI messages -> (Anthropic system text, Anthropic messages).

    Anthropic wants user and assistant turns to alternate, with tool results in a user turn,
    so consecutive turns of one role (several tool results, a result then a user remark)
    are merged into one message.
    """
    system_parts: list[str] = []
    out: list[dict[str, Any]] = []
    for message in messages:
        role = message.get("role")
        if role in ("system", "developer"):
            text = _text_of(message.get("content"), "system")
            if text:
                system_parts.append(text)
            continue
        if role == "user":
            blocks = _content_blocks(message.get("content"), "user")
        elif role == "assistant":
            blocks = _content_blocks(message.get("content"), "assistant")
            blocks += _tool_use_blocks(message.get("tool_calls") or [])
        elif role == "tool":
            role = "user"
            blocks = [
                {
                    "type": "tool_result",
                    "tool_use_id": message.get("tool_call_id"),
                    "content": _text_of(message.get("content"), "tool"),
                }
            ]
        else:
            raise UnsupportedRequest(f"messages with role {role!r} are not supported")
        if not blocks:
            # Anthropic rejects empty turns; an empty assistant turn carries nothing anyway.
            continue
        if out and out[-1]["role"] == role:
            out[-1]["content"].extend(blocks)
        else:
            out.append({"role": role, "content": blocks})
    return "\n\n".join(system_parts), out


def convert_tools(tools: list[dict[str, Any]]) -> list[dict[str, Any]]:
    out = []
    for tool in tools:
        if tool.get("type", "function") != "function":
            raise UnsupportedRequest(f"tools of type {tool.get('type')!r} are not supported")
        function = tool.get("function") or {}
        converted = {
            "name": function.get("name"),
            "input_schema": function.get("parameters") or {"type": "object", "properties": {}},
        }
        if function.get("description"):
            converted["description"] = function["description"]
        out.append(converted)
    return out


def convert_tool_choice(choice: object, parallel_tool_calls: object) -> dict[str, Any] | None:
    converted: dict[str, Any] | None
    if choice is None:
        converted = None
    elif choice == "auto":
        converted = {"type": "auto"}
    elif choice == "required":
        converted = {"type": "any"}
    elif choice == "none":
        converted = {"type": "none"}
    elif isinstance(choice, dict) and (choice.get("function") or {}).get("name"):
        converted = {"type": "tool", "name": choice["function"]["name"]}
    else:
        raise UnsupportedRequest("tool_choice must be auto, none, required or a named function")
    if parallel_tool_calls is False:
        converted = converted or {"type": "auto"}
        if converted["type"] != "none":
            converted["disable_parallel_tool_use"] = True
    return converted


class AnthropicStreamTranslator(StreamTranslator):
    """Anthropic SSE events -> OpenAI chat.completion.chunk dicts.

    An `error` event becomes an OpenAI-style `{"error": {...}}` data chunk (what OpenAI
    itself sends when a stream fails) and is kept in `self.error`.
    """

    def __init__(self, deployment: DeploymentInfo) -> None:
        self.usage = None
        self.model = deployment.model_name
        self.chunk_id = ""
        self.created = int(time.time())
        self.error: dict[str, Any] | None = None
        self.finish_reason: str | None = None
        self._finished = False
        # Anthropic content block index -> OpenAI tool call index.
        self._tool_index: dict[int, int] = {}

    def _chunk(self, delta: dict[str, Any], finish_reason: str | None = None) -> dict[str, Any]:
        return {
            "id": self.chunk_id,
            "object": "chat.completion.chunk",
            "created": self.created,
            "model": self.model,
            "choices": [
                {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}
            ],
        }

    def _finish(self) -> list[dict[str, Any]]:
        if self._finished:
            return []
        self._finished = True
        return [self._chunk({}, self.finish_reason or "stop")]

    def feed(self, event: str | None, data: dict[str, Any]) -> list[dict[str, Any]]:
        kind = (data.get("type") if isinstance(data, dict) else None) or event
        if kind == "message_start":
            message = data.get("message") or {}
            self.chunk_id = "chatcmpl-" + str(message.get("id") or "")
            raw = message.get("usage")
            self.usage = _usage(raw) if raw else None
            return [self._chunk({"role": "assistant", "content": ""})]
        if kind == "content_block_start":
            block = data.get("content_block") or {}
            if block.get("type") == "tool_use":
                tool_index = len(self._tool_index)
                self._tool_index[int(data.get("index", 0))] = tool_index
                call = {
                    "index": tool_index,
                    "id": block.get("id"),
                    "type": "function",
                    "function": {"name": block.get("name"), "arguments": ""},
                }
                return [self._chunk({"tool_calls": [call]})]
            if block.get("type") == "text" and block.get("text"):
                return [self._chunk({"content": block["text"]})]
            return []
        if kind == "content_block_delta":
            delta = data.get("delta") or {}
            if delta.get("type") == "text_delta" and delta.get("text"):
                return [self._chunk({"content": delta["text"]})]
            if delta.get("type") == "input_json_delta" and delta.get("partial_json"):
                known_index = self._tool_index.get(int(data.get("index", 0)))
                if known_index is None:
                    return []
                call = {"index": known_index, "function": {"arguments": delta["partial_json"]}}
                return [self._chunk({"tool_calls": [call]})]
            # thinking and signature deltas have no OpenAI counterpart.
            return []
        if kind == "message_delta":
            raw = data.get("usage")
            if raw and not isinstance(raw, dict):
                self.usage = Usage(suspect=True)
            elif raw:
                # Counts given here but none at the start: the input count is unknown.
                usage = self.usage or Usage(suspect=raw.get("input_tokens") is None)
                if raw.get("output_tokens") is not None:
                    output = sane_token_count(raw["output_tokens"])
                    usage.suspect = usage.suspect or output is None
                    usage.output_tokens = output or 0
                if raw.get("input_tokens") is not None:
                    # Newer API versions repeat the (cumulative) input counts here.
                    fresh = _usage(raw)
                    usage.suspect = usage.suspect or fresh.suspect
                    usage.input_tokens = fresh.input_tokens
                    usage.cached_tokens = fresh.cached_tokens
                    usage.cache_write_tokens = fresh.cache_write_tokens
                self.usage = usage
            stop_reason = (data.get("delta") or {}).get("stop_reason")
            if stop_reason:
                self.finish_reason = _finish_reason(stop_reason)
                return self._finish()
            return []
        if kind == "message_stop":
            return self._finish()
        if kind == "error":
            error = data.get("error") or {}
            self.error = {
                "message": str(error.get("message") or "upstream stream error"),
                "type": str(error.get("type") or "api_error"),
            }
            return [{"error": dict(self.error)}]
        # ping, content_block_stop and unknown events carry nothing for the client.
        return []


class AnthropicProvider(Provider):
    """Chat completions over the Messages API.

    Anthropic's error answers (`{"type": "error", "error": {"type", "message"}}`) nest the
    message as OpenAI does, so the inherited `error_message` reads them.
    """

    name = "anthropic"
    openai_native_stream = False

    def build(self, kind: str, body: dict[str, Any], deployment: DeploymentInfo) -> UpstreamRequest:
        if kind != CHAT:
            raise UnsupportedRequest("Anthropic deployments serve chat completions only")
        if int(body.get("n") or 1) != 1:
            raise UnsupportedRequest("Anthropic deployments do not support n > 1")
        response_format = body.get("response_format") or {}
        if response_format.get("type", "text") != "text":
            raise UnsupportedRequest("Anthropic deployments do not support response_format")

        system, messages = convert_messages(body.get("messages") or [])
        max_tokens = body.get("max_completion_tokens") or body.get("max_tokens")
        if not max_tokens:
            # Anthropic requires max_tokens where OpenAI makes it optional.
            max_tokens = deployment.extra.get("default_max_tokens", DEFAULT_MAX_TOKENS)
        out: dict[str, Any] = {
            "model": deployment.upstream_model,
            "messages": messages,
            "max_tokens": int(max_tokens),
        }
        if system:
            out["system"] = system
        for name in ("temperature", "top_p", "stream"):
            if body.get(name) is not None:
                out[name] = body[name]
        stop = body.get("stop")
        if stop:
            out["stop_sequences"] = [stop] if isinstance(stop, str) else list(stop)
        if body.get("tools"):
            out["tools"] = convert_tools(body["tools"])
        tool_choice = convert_tool_choice(body.get("tool_choice"), body.get("parallel_tool_calls"))
        if tool_choice and out.get("tools"):
            out["tool_choice"] = tool_choice
        if body.get("user"):
            out["metadata"] = {"user_id": str(body["user"])}

        headers = {
            "content-type": "application/json",
            "anthropic-version": deployment.api_version or DEFAULT_VERSION,
        }
        if deployment.api_key:
            headers["x-api-key"] = deployment.api_key
        url = deployment.base_url.rstrip("/") + "/messages"
        return UpstreamRequest(method="POST", url=url, headers=headers, json=out)

    def parse(self, kind: str, data: dict[str, Any], deployment: DeploymentInfo) -> dict[str, Any]:
        texts: list[str] = []
        tool_calls: list[dict[str, Any]] = []
        content = data.get("content")
        if not isinstance(content, list):
            raise InvalidAnswer("the answer has no 'content' list")
        for block in content:
            if not isinstance(block, dict):
                raise InvalidAnswer("a content block is not an object")
            if block.get("type") == "text":
                text = block.get("text") or ""
                if not isinstance(text, str):
                    raise InvalidAnswer("a text block's text is not a string")
                texts.append(text)
            elif block.get("type") == "tool_use":
                tool_calls.append(
                    {
                        "id": block.get("id"),
                        "type": "function",
                        "function": {
                            "name": block.get("name"),
                            "arguments": json.dumps(block.get("input") or {}),
                        },
                    }
                )
        message: dict[str, Any] = {
            "role": "assistant",
            "content": "".join(texts) if texts else None,
        }
        if tool_calls:
            message["tool_calls"] = tool_calls
        # Unbelievable or missing counts read as zeros here; `usage` tells the proxy why.
        raw_usage = data.get("usage")
        usage = _usage(raw_usage) if raw_usage else Usage()
        return {
            "id": "chatcmpl-" + str(data.get("id") or ""),
            "object": "chat.completion",
            "created": int(time.time()),
            "model": deployment.model_name,
            "choices": [
                {
                    "index": 0,
                    "message": message,
                    "logprobs": None,
                    "finish_reason": _finish_reason(data.get("stop_reason")),
                }
            ],
            "usage": usage.to_openai(),
        }

    def usage(
        self, kind: str, openai_data: dict[str, Any], upstream_data: dict[str, Any] | None = None
    ) -> Usage | None:
        # `parse` cannot put unbelievable counts in OpenAI's shape, so they are read from the
        # Messages answer itself when the proxy has it.
        if upstream_data is None:
            return super().usage(kind, openai_data)
        raw = upstream_data.get("usage")
        return _usage(raw) if raw else None

    def stream_translator(self, deployment: DeploymentInfo) -> StreamTranslator:
        return AnthropicStreamTranslator(deployment)
