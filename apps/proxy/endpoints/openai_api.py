"""OpenAI's endpoints: chat completions, completions, embeddings and rerank.

Every provider adapter speaks OpenAI's shape to the proxy (`providers/`), so these exchanges
are thin: the provider builds and parses, and the stream is relayed as the upstream's bytes
when it is OpenAI-native, or as the provider's translated chunks.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import orjson

from ..errors import GatewayError
from ..providers.base import (
    CHAT,
    COMPLETION,
    EMBEDDING,
    RERANK,
    DeploymentInfo,
    InvalidAnswer,
    Provider,
    StreamTranslator,
    UpstreamRequest,
    Usage,
    check_answer,
)
from ..providers.openai import OpenAIStreamRelay
from ..tokens import estimate_content_tokens, estimate_input_tokens, estimate_text_tokens
from ..validation import validate_body
from .base import ClientStream, Endpoint, Exchange


def sse(data: bytes) -> bytes:
    return b"data: " + data + b"\n\n"


def tool_arguments(tool_calls: object) -> Iterator[str]:
    """The argument strings of OpenAI tool calls (whole or streamed), skipping odd entries."""
    for tool_call in tool_calls if isinstance(tool_calls, list) else ():
        function = tool_call.get("function") if isinstance(tool_call, dict) else None
        arguments = function.get("arguments") if isinstance(function, dict) else None
        if isinstance(arguments, str):
            yield arguments


def chunk_text(chunk: dict[str, Any]) -> list[str]:
    """The text an OpenAI chunk generates: content, legacy completion text, tool arguments."""
    out: list[str] = []
    for choice in chunk.get("choices") or ():
        if not isinstance(choice, dict):
            continue
        delta = choice.get("delta")
        delta = delta if isinstance(delta, dict) else {}
        text = delta.get("content") or choice.get("text") or ""
        text = text if isinstance(text, str) else ""
        tool_calls = delta.get("tool_calls")
        tool_calls = tool_calls if isinstance(tool_calls, list) else ()
        if text or tool_calls:
            out.append(text)
            out.extend(tool_arguments(tool_calls))
    return out


def answer_output_tokens(data: dict[str, Any]) -> int:
    """The gateway's count of the output of an OpenAI chat or completion answer."""
    output = 0
    for choice in data.get("choices") or ():
        message = choice.get("message") or {}
        output += estimate_content_tokens(message.get("content") or choice.get("text"))
        output += sum(map(estimate_text_tokens, tool_arguments(message.get("tool_calls"))))
    return output


def parse_openai_answer(
    kind: str, provider: Provider, deployment: DeploymentInfo, payload: dict[str, Any]
) -> dict[str, Any]:
    """The OpenAI-shaped answer of `payload`; InvalidAnswer for anything else."""
    try:
        data = provider.parse(kind, payload, deployment)
    except (AttributeError, KeyError, TypeError, ValueError) as exc:
        # The adapter tripped over a field of the wrong type: the answer's fault.
        raise InvalidAnswer("a field of the answer has the wrong type") from exc
    check_answer(kind, data)
    return data


class RelayedChunks(ClientStream):
    """An OpenAI-native chunk stream, relayed as the upstream's bytes when unchanged.

    The upstream is always asked for usage; the client gets exactly one usage chunk, of the
    counts billed, when and only when it asked for one (`stream_options.include_usage`).
    """

    def __init__(self, deployment: DeploymentInfo, wants_usage: bool) -> None:
        super().__init__()
        self.wants_usage = wants_usage
        self.relay = OpenAIStreamRelay(deployment)

    def feed(self, event: str | None, parsed: dict[str, Any], raw: bytes) -> list[bytes]:
        self.produced.extend(chunk_text(parsed))
        out = self.relay.feed(parsed, raw)
        self.usage = self.relay.usage
        return [out] if out is not None else []

    def usage_chunk(self, usage: Usage) -> dict[str, Any]:
        return self.relay.usage_chunk(usage)

    def tail(self, usage: Usage, error: GatewayError | None, client_gone: bool) -> bytes:
        out = b""
        if self.wants_usage and not client_gone:
            chunk = self.usage_chunk(usage)
            chunk["usage"] = self.with_cost(dict(chunk["usage"]))
            out += sse(orjson.dumps(chunk))
        if error is not None:
            out += sse(error.body())
        return out + sse(b"[DONE]")


class TranslatedChunks(RelayedChunks):
    """Another provider's stream, as the OpenAI chunks its adapter translates it to."""

    def __init__(self, provider: Provider, deployment: DeploymentInfo, wants_usage: bool) -> None:
        super().__init__(deployment, wants_usage)
        self.translator: StreamTranslator = provider.stream_translator(deployment)

    def feed(self, event: str | None, parsed: dict[str, Any], raw: bytes) -> list[bytes]:
        chunks = self.translator.feed(event, parsed)
        self.usage = self.translator.usage
        for chunk in chunks:
            self.produced.extend(chunk_text(chunk))
        return [sse(orjson.dumps(chunk)) for chunk in chunks]

    def usage_chunk(self, usage: Usage) -> dict[str, Any]:
        return self.translator.usage_chunk(usage)


class RetoldChunks(ClientStream):
    """Base of the streams that retell chat chunks as another API's events.

    The provider's translator gives OpenAI chunks; this walks their choices and hands the
    text, the tool call pieces and the finish reason to the subclass's `on_*` methods.
    """

    def __init__(self, provider: Provider, deployment: DeploymentInfo) -> None:
        super().__init__()
        self.translator: StreamTranslator = provider.stream_translator(deployment)
        # OpenAI tool call index -> the id of the call begun last at that index.
        self.tool_call_ids: dict[int, str | None] = {}

    def begins_tool_call(self, call: dict[str, Any]) -> bool:
        """Whether a tool call delta begins a new call, the one rule of both retellings: its
        index is new, or it names an id other than that index's call (servers that number
        every call 0). An id repeated on every delta, as some servers send, continues it."""
        index = call.get("index", 0)
        call_id = call.get("id") or None
        if index not in self.tool_call_ids:
            self.tool_call_ids[index] = call_id
            return True
        known = self.tool_call_ids[index]
        if call_id is None or call_id == known:
            return False
        self.tool_call_ids[index] = call_id
        # An id first given on a later delta names the call already begun.
        return known is not None

    def feed(self, event: str | None, parsed: dict[str, Any], raw: bytes) -> list[bytes]:
        out: list[bytes] = []
        for chunk in self.translator.feed(event, parsed):
            self.produced.extend(chunk_text(chunk))
            out += self.on_chunk(chunk)
            for choice in chunk.get("choices") or ():
                if not isinstance(choice, dict):
                    continue
                delta = found if isinstance(found := choice.get("delta"), dict) else {}
                text = delta.get("content")
                if isinstance(text, str) and text:
                    out += self.on_text(text)
                for call in delta.get("tool_calls") or ():
                    if isinstance(call, dict):
                        out += self.on_tool_call(call)
                if isinstance(choice.get("finish_reason"), str):
                    self.on_finish(choice["finish_reason"])
        self.usage = self.translator.usage
        return out

    def on_chunk(self, chunk: dict[str, Any]) -> list[bytes]:
        """Events before a chunk's content (the stream's opening ones, once)."""
        return []

    def on_text(self, text: str) -> list[bytes]:
        raise NotImplementedError

    def on_tool_call(self, call: dict[str, Any]) -> list[bytes]:
        raise NotImplementedError

    def on_finish(self, reason: str) -> None:
        """Note a choice's OpenAI finish_reason."""


class OpenAIExchange(Exchange):
    def __init__(self, kind: str, provider: Provider, deployment: DeploymentInfo) -> None:
        super().__init__(provider, deployment)
        self.kind = kind
        self.wants_usage = False

    def build(self, body: dict[str, Any], headers: dict[str, str]) -> UpstreamRequest:
        self.wants_usage = bool((body.get("stream_options") or {}).get("include_usage"))
        return self.provider.build(self.kind, body, self.deployment)

    def answer(self, payload: dict[str, Any]) -> tuple[dict[str, Any], Usage | None]:
        data = parse_openai_answer(self.kind, self.provider, self.deployment, payload)
        return data, self.provider.usage(self.kind, data, payload)

    def estimate_output(self, answer: dict[str, Any]) -> int:
        return answer_output_tokens(answer)

    def bill(self, answer: dict[str, Any], usage: Usage) -> None:
        answer["usage"] = usage.to_openai()

    def stream(self) -> ClientStream:
        if self.provider.openai_native_stream:
            return RelayedChunks(self.deployment, self.wants_usage)
        return TranslatedChunks(self.provider, self.deployment, self.wants_usage)


class OpenAIEndpoint(Endpoint):
    def __init__(self, kind: str, path: str, modes: tuple[str, ...]) -> None:
        self.kind = kind
        self.path = path
        self.modes = modes

    def validate(self, body: object) -> dict[str, Any]:
        return validate_body(self.kind, body)

    def is_stream(self, body: dict[str, Any]) -> bool:
        return bool(body.get("stream")) and self.kind in (CHAT, COMPLETION)

    def max_output_tokens(self, body: dict[str, Any]) -> int | None:
        if self.kind not in (CHAT, COMPLETION):
            return 0
        return body.get("max_completion_tokens") or body.get("max_tokens")

    def estimate_input(self, body: dict[str, Any]) -> int:
        return estimate_input_tokens(self.kind, body)

    def exchange(self, provider: Provider, deployment: DeploymentInfo) -> Exchange:
        return OpenAIExchange(self.kind, provider, deployment)


CHAT_COMPLETIONS = OpenAIEndpoint(CHAT, "/v1/chat/completions", ("chat",))
COMPLETIONS = OpenAIEndpoint(COMPLETION, "/v1/completions", ("completion", "chat"))
EMBEDDINGS = OpenAIEndpoint(EMBEDDING, "/v1/embeddings", ("embedding",))
RERANKING = OpenAIEndpoint(RERANK, "/v1/rerank", ("rerank",))
