"""OpenAI's Responses API, inbound: `POST /v1/responses`.

A deployment of OpenAI's own API shape gets the request as it came (the model renamed) and
its answer, whole or streamed, is relayed as it came; so does what only a stateful server
can do (`previous_response_id`, `store`). A deployment whose server has no Responses API
(`extra.responses_api: false`, Anthropic, Azure, Cohere) is reached through chat
completions (`responses_via_chat`): the stateless subset.
"""

from __future__ import annotations

from typing import Any

import orjson

from ..errors import GatewayError
from ..providers.base import DeploymentInfo, InvalidAnswer, Provider, UpstreamRequest, Usage
from ..providers.openai import OpenAIProvider
from ..tokens import estimate_text_tokens
from .base import ClientStream, Endpoint, Exchange, event_bytes
from .responses_validation import validate_responses
from .responses_via_chat import ResponsesViaChat
from .responses_wire import (
    error_event,
    input_text,
    output_text,
    responses_usage,
    usage_from_responses,
)

RESPONSES = "responses"
# Events whose `response` names the model.
_RESPONSE_EVENTS = frozenset(
    {
        "response.created",
        "response.in_progress",
        "response.completed",
        "response.incomplete",
        "response.failed",
    }
)


# The events a finished response ends with; held back so its usage can carry the cost.
_TERMINAL_EVENTS = frozenset({"response.completed", "response.incomplete"})


class NativeResponsesStream(ClientStream):
    """Responses events relayed as they came; usage read from `response.completed`."""

    def __init__(self, deployment: DeploymentInfo) -> None:
        super().__init__()
        self.model = deployment.model_name
        self.rename = deployment.upstream_model != deployment.model_name
        self.sequence = 0
        # `response.completed`, held back for `tail` to add the cost to its usage.
        self.completed: dict[str, Any] | None = None

    def feed(self, event: str | None, parsed: dict[str, Any], raw: bytes) -> list[bytes]:
        name = str(parsed.get("type") or event or "")
        self.sequence = max(self.sequence, int(parsed.get("sequence_number") or 0))
        if name in ("response.output_text.delta", "response.function_call_arguments.delta"):
            delta = parsed.get("delta")
            if isinstance(delta, str) and delta:
                self.produced.append(delta)
        response = parsed.get("response")
        if name in _RESPONSE_EVENTS and isinstance(response, dict):
            if response.get("usage"):
                self.usage = usage_from_responses(response["usage"])
            if self.rename:
                response["model"] = self.model
                raw = orjson.dumps(parsed)
            if name in _TERMINAL_EVENTS and self.completed is None:
                self.completed = parsed
                return []
        return [b"event: " + name.encode() + b"\ndata: " + raw + b"\n\n"]

    def tail(self, usage: Usage, error: GatewayError | None, client_gone: bool) -> bytes:
        out = b""
        if self.completed is not None:
            response = self.completed["response"]
            if isinstance(response, dict):
                # The counts billed, where the upstream's claim was not believed; its
                # details (reasoning tokens) are kept.
                claimed = response.get("usage")
                if not isinstance(claimed, dict):
                    claimed = response["usage"] = {}
                billed = responses_usage(usage)
                for key in ("input_tokens", "output_tokens", "total_tokens"):
                    claimed[key] = billed[key]
                details = claimed.get("input_tokens_details")
                if isinstance(details, dict):
                    details["cached_tokens"] = usage.cached_tokens
                self.with_cost(claimed)
            out = event_bytes(str(self.completed["type"]), self.completed)
        if error is not None:
            out += error_event(error, self.sequence + 1)
        return out


class NativeResponsesExchange(Exchange):
    """Responses to a server that speaks them, as they came."""

    provider: OpenAIProvider

    def build(self, body: dict[str, Any], headers: dict[str, str]) -> UpstreamRequest:
        out = dict(body)
        out["model"] = self.deployment.upstream_model
        url = self.deployment.base_url.rstrip("/") + "/responses"
        return UpstreamRequest(
            method="POST", url=url, headers=self.provider.headers(self.deployment), json=out
        )

    def answer(self, payload: dict[str, Any]) -> tuple[dict[str, Any], Usage | None]:
        output = payload.get("output")
        if not isinstance(output, list) or not all(isinstance(i, dict) for i in output):
            raise InvalidAnswer("the answer has no 'output' list of items")
        answer = dict(payload)
        answer["model"] = self.deployment.model_name
        raw = payload.get("usage")
        return answer, usage_from_responses(raw) if raw else None

    def estimate_output(self, answer: dict[str, Any]) -> int:
        return estimate_text_tokens(output_text(answer.get("output")))

    def bill(self, answer: dict[str, Any], usage: Usage) -> None:
        answer["usage"] = responses_usage(usage)

    def stream(self) -> ClientStream:
        return NativeResponsesStream(self.deployment)

    def stream_failure(self, event: dict[str, Any]) -> str | None:
        kind = event.get("type")
        if kind == "error":
            return str(event.get("message") or "upstream stream error")
        if kind == "response.failed":
            response = event.get("response")
            error = response.get("error") if isinstance(response, dict) else None
            message = error.get("message") if isinstance(error, dict) else None
            return str(message or "the response failed")
        return None


class ResponsesEndpoint(Endpoint):
    kind = RESPONSES
    path = "/v1/responses"
    modes = ("chat",)

    def validate(self, body: object) -> dict[str, Any]:
        return validate_responses(body)

    def is_stream(self, body: dict[str, Any]) -> bool:
        return body.get("stream") is True

    def max_output_tokens(self, body: dict[str, Any]) -> int | None:
        return body.get("max_output_tokens")

    def estimate_input(self, body: dict[str, Any]) -> int:
        text = input_text(body.get("input"))
        tools = orjson.dumps(body.get("tools") or []).decode() if body.get("tools") else ""
        return 3 + estimate_text_tokens(str(body.get("instructions") or "") + text + tools)

    def exchange(self, provider: Provider, deployment: DeploymentInfo) -> Exchange:
        speaks_responses = isinstance(provider, OpenAIProvider) and provider.name == "openai"
        if speaks_responses and deployment.extra.get("responses_api", True):
            return NativeResponsesExchange(provider, deployment)
        return ResponsesViaChat(provider, deployment)


RESPONSES_ENDPOINT = ResponsesEndpoint()
