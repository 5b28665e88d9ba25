"""What an endpoint gives the call pipeline: its dialect, request to answer.

The pipeline (`apps.proxy.calls`) is endpoint-neutral: admission, routing, failover, the
relay, settling and recording are the same for every /v1 path. An `Endpoint` says how its
requests are checked and estimated and how its errors look; for each deployment tried it
hands out an `Exchange`, which builds the upstream request and turns the upstream's answer,
whole or streamed, into the client's dialect, reading the usage on the way.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import orjson

from ..errors import GatewayError
from ..providers.base import DeploymentInfo, Provider, UpstreamRequest, Usage


def event_bytes(name: str, data: dict[str, Any]) -> bytes:
    """One named server-sent event (`event:` and `data:` lines), as Messages and Responses
    streams frame theirs."""
    return b"event: " + name.encode() + b"\ndata: " + orjson.dumps(data) + b"\n\n"


class ClientStream:
    """One streamed answer in the client's dialect.

    `feed` takes one upstream SSE event (its name, parsed JSON object and raw data bytes) and
    returns the bytes to send; `produced` collects the generated text (for estimates and
    logged bodies), so the pipeline sees the first token when it first grows. `tail` ends
    the stream with the usage billed and, when the stream failed, the error.
    """

    content_type = b"text/event-stream; charset=utf-8"

    def __init__(self) -> None:
        self.usage: Usage | None = None
        self.produced: list[str] = []
        # Set by the pipeline before `tail` when PROXY_COST_IN_USAGE is on.
        self.cost_usd: Decimal | None = None

    def with_cost(self, usage: dict[str, Any]) -> dict[str, Any]:
        """`usage` with the call's cost, when the client is told it (`PROXY_COST_IN_USAGE`)."""
        if self.cost_usd is not None:
            usage["cost"] = float(self.cost_usd)
        return usage

    def feed(self, event: str | None, parsed: dict[str, Any], raw: bytes) -> list[bytes]:
        raise NotImplementedError

    def tail(self, usage: Usage, error: GatewayError | None, client_gone: bool) -> bytes:
        raise NotImplementedError


class Exchange:
    """One attempt's translation between the client's dialect and a deployment's."""

    def __init__(self, provider: Provider, deployment: DeploymentInfo) -> None:
        self.provider = provider
        self.deployment = deployment

    def build(self, body: dict[str, Any], headers: dict[str, str]) -> UpstreamRequest:
        """The upstream request; UnsupportedRequest when this deployment cannot serve it.

        `headers` are the client headers the endpoint passes through (`passed_headers`).
        """
        raise NotImplementedError

    def answer(self, payload: dict[str, Any]) -> tuple[dict[str, Any], Usage | None]:
        """(the client's answer, the usage the upstream reported or None); InvalidAnswer
        when `payload` is not of the shape the upstream's API promises."""
        raise NotImplementedError

    def estimate_output(self, answer: dict[str, Any]) -> int:
        """The gateway's own count of the output tokens in `answer`."""
        raise NotImplementedError

    def bill(self, answer: dict[str, Any], usage: Usage) -> None:
        """Write the counts billed into `answer`, replacing what the upstream claimed."""
        raise NotImplementedError

    def stream(self) -> ClientStream:
        raise NotImplementedError

    def error_message(self, payload: dict[str, Any]) -> str:
        return self.provider.error_message(payload)

    def stream_failure(self, event: dict[str, Any]) -> str | None:
        """The message of a stream event that reports a failure, else None.

        How OpenAI chunk streams and Anthropic's events report one: an `error` member.
        """
        if event.get("error") and "choices" not in event:
            return self.error_message(event)
        return None


class Endpoint:
    """A /v1 path: its request kind (the ledger's `request_type`) and its dialect."""

    kind: str = ""
    path: str = ""
    # The catalog model modes that can serve it.
    modes: tuple[str, ...] = ()
    # Client headers forwarded upstream by a native exchange (lowercase names).
    passed_headers: tuple[bytes, ...] = ()

    def validate(self, body: object) -> dict[str, Any]:
        """`body` if valid, else BadRequest naming the field (before any upstream call)."""
        raise NotImplementedError

    def is_stream(self, body: dict[str, Any]) -> bool:
        return False

    def end_user(self, body: dict[str, Any]) -> str:
        user = body.get("user")
        return user if isinstance(user, str) else ""

    def max_output_tokens(self, body: dict[str, Any]) -> int | None:
        """The output the request allows itself (None: the quota engine's default)."""
        return 0

    def estimate_input(self, body: dict[str, Any]) -> int:
        raise NotImplementedError

    def error_body(self, error: GatewayError) -> bytes:
        """The error JSON in this endpoint's dialect."""
        return error.body()

    def exchange(self, provider: Provider, deployment: DeploymentInfo) -> Exchange:
        raise NotImplementedError
