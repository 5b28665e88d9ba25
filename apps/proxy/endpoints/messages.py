"""Anthropic's Messages API, inbound: `POST /v1/messages` and its token count.

An Anthropic deployment gets the request as it came (the model renamed, `anthropic-version`
and `anthropic-beta` passed through) and its answer, whole or streamed, is relayed as it
came. Any other deployment is reached through chat completions (`messages_via_chat`).
Errors take Anthropic's shape, so the official SDK raises the class a user expects.
"""

from __future__ import annotations

from typing import Any

import orjson

from ..errors import GatewayError
from ..providers.anthropic import DEFAULT_VERSION, AnthropicStreamTranslator, _usage
from ..providers.base import DeploymentInfo, InvalidAnswer, Provider, UpstreamRequest, Usage
from ..tokens import estimate_text_tokens
from .anthropic_wire import (
    anthropic_error,
    anthropic_usage,
    content_text,
    estimate_messages_input,
)
from .base import ClientStream, Endpoint, Exchange, event_bytes
from .messages_validation import validate_messages
from .messages_via_chat import MessagesViaChat
from .openai_api import chunk_text

MESSAGES = "messages"


class NativeMessagesStream(ClientStream):
    """An Anthropic event stream relayed as it came; the model renamed in `message_start`.

    Usage and produced text are read by the chat translator of the same events, so the
    native relay and the translated chat stream bill alike.
    """

    def __init__(self, deployment: DeploymentInfo) -> None:
        super().__init__()
        self.reader = AnthropicStreamTranslator(deployment)
        self.model = deployment.model_name
        self.rename = deployment.upstream_model != deployment.model_name
        # The closing `message_delta` (and what follows it), held back for `tail` to add the
        # cost to its usage.
        self.closing: list[tuple[str, dict[str, Any]]] = []

    def feed(self, event: str | None, parsed: dict[str, Any], raw: bytes) -> list[bytes]:
        for chunk in self.reader.feed(event, parsed):
            self.produced.extend(chunk_text(chunk))
        self.usage = self.reader.usage
        name = event or str(parsed.get("type") or "")
        if self.rename and name == "message_start" and isinstance(parsed.get("message"), dict):
            parsed["message"]["model"] = self.model
            raw = orjson.dumps(parsed)
        if name == "message_delta" or self.closing:
            self.closing.append((name, parsed))
            return []
        return [b"event: " + name.encode() + b"\ndata: " + raw + b"\n\n"]

    def tail(self, usage: Usage, error: GatewayError | None, client_gone: bool) -> bytes:
        out = b""
        for name, data in self.closing:
            if name == "message_delta":
                # The counts billed, where the upstream's claim was not believed.
                billed = anthropic_usage(usage)
                claimed = data.get("usage")
                if not isinstance(claimed, dict):
                    claimed = data["usage"] = {}
                claimed.update({k: v for k, v in billed.items() if k in claimed})
                claimed["output_tokens"] = billed["output_tokens"]
                self.with_cost(claimed)
            out += event_bytes(name, data)
        if error is not None:
            out += event_bytes("error", anthropic_error(error))
        return out


class NativeMessagesExchange(Exchange):
    """Messages to an Anthropic deployment, as they came."""

    def build(self, body: dict[str, Any], headers: dict[str, str]) -> UpstreamRequest:
        out = dict(body)
        out["model"] = self.deployment.upstream_model
        upstream_headers = {
            "content-type": "application/json",
            "anthropic-version": headers.get("anthropic-version")
            or self.deployment.api_version
            or DEFAULT_VERSION,
        }
        if headers.get("anthropic-beta"):
            upstream_headers["anthropic-beta"] = headers["anthropic-beta"]
        if self.deployment.api_key:
            upstream_headers["x-api-key"] = self.deployment.api_key
        url = self.deployment.base_url.rstrip("/") + "/messages"
        return UpstreamRequest(method="POST", url=url, headers=upstream_headers, json=out)

    def answer(self, payload: dict[str, Any]) -> tuple[dict[str, Any], Usage | None]:
        content = payload.get("content")
        if not isinstance(content, list) or not all(isinstance(b, dict) for b in content):
            raise InvalidAnswer("the answer has no 'content' list of blocks")
        answer = dict(payload)
        answer["model"] = self.deployment.model_name
        raw = payload.get("usage")
        return answer, _usage(raw) if raw else None

    def estimate_output(self, answer: dict[str, Any]) -> int:
        return estimate_text_tokens(content_text(answer.get("content")))

    def bill(self, answer: dict[str, Any], usage: Usage) -> None:
        answer["usage"] = anthropic_usage(usage)

    def stream(self) -> ClientStream:
        return NativeMessagesStream(self.deployment)


class MessagesEndpoint(Endpoint):
    kind = MESSAGES
    path = "/v1/messages"
    modes = ("chat",)
    passed_headers = (b"anthropic-version", b"anthropic-beta")

    def validate(self, body: object) -> dict[str, Any]:
        return validate_messages(body)

    def is_stream(self, body: dict[str, Any]) -> bool:
        return body.get("stream") is True

    def end_user(self, body: dict[str, Any]) -> str:
        metadata = body.get("metadata")
        user = metadata.get("user_id") if isinstance(metadata, dict) else None
        return user if isinstance(user, str) else ""

    def max_output_tokens(self, body: dict[str, Any]) -> int | None:
        max_tokens: int = body["max_tokens"]  # required, and checked an int, by validation
        return max_tokens

    def estimate_input(self, body: dict[str, Any]) -> int:
        return estimate_messages_input(body)

    def error_body(self, error: GatewayError) -> bytes:
        return orjson.dumps(anthropic_error(error))

    def exchange(self, provider: Provider, deployment: DeploymentInfo) -> Exchange:
        if provider.name == "anthropic":
            return NativeMessagesExchange(provider, deployment)
        return MessagesViaChat(provider, deployment)


MESSAGES_ENDPOINT = MessagesEndpoint()
