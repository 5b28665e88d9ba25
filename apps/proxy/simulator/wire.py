"""Plain-ASGI plumbing for the simulator: the parsed request, JSON answers and SSE streams."""

import asyncio
import json
import time
from collections.abc import Awaitable, Callable, MutableMapping
from dataclasses import dataclass
from typing import Any

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]


OPENAI_ERROR_TYPES = {
    400: "invalid_request_error",
    401: "invalid_request_error",
    403: "permission_error",
    404: "invalid_request_error",
    405: "invalid_request_error",
    413: "invalid_request_error",
    429: "requests",
}
OPENAI_ERROR_CODES = {401: "invalid_api_key", 429: "rate_limit_exceeded"}
ANTHROPIC_ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    405: "invalid_request_error",
    413: "request_too_large",
    429: "rate_limit_error",
    529: "overloaded_error",
}


class ApiError(Exception):
    """An error answer; rendered in OpenAI's or Anthropic's shape depending on the endpoint."""

    def __init__(
        self, status: int, message: str, *, param: str | None = None, code: str | None = None
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param
        self.code = code

    def openai_body(self) -> dict[str, Any]:
        error_type = OPENAI_ERROR_TYPES.get(self.status, "server_error")
        code = self.code or OPENAI_ERROR_CODES.get(self.status)
        return {
            "error": {
                "message": self.message,
                "type": error_type,
                "param": self.param,
                "code": code,
            }
        }

    def anthropic_body(self) -> dict[str, Any]:
        error_type = ANTHROPIC_ERROR_TYPES.get(self.status, "api_error")
        return {"type": "error", "error": {"type": error_type, "message": self.message}}

    def headers(self) -> list[tuple[bytes, bytes]]:
        # Clients (the openai SDK, the gateway's retry logic) read retry-after on a 429.
        return [(b"retry-after", b"1")] if self.status in (429, 503, 529) else []


def dumps(value: Any) -> bytes:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode()


@dataclass(slots=True)
class Request:
    method: str
    path: str  # below the app's prefix, e.g. "/v1/chat/completions"
    headers: dict[str, str]  # names lowercased
    body: bytes
    receive: Receive


async def read_body(receive: Receive) -> bytes:
    message = await receive()
    body: bytes = message.get("body", b"")
    if not message.get("more_body"):
        return body
    chunks = [body]
    while message.get("more_body"):
        message = await receive()
        chunks.append(message.get("body", b""))
    return b"".join(chunks)


async def send_json(
    send: Send,
    status: int,
    value: Any,
    headers: list[tuple[bytes, bytes]] | None = None,
) -> None:
    body = dumps(value)
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                *(headers or ()),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


class EventStream:
    """Writes server-sent events, paced, and obeys the disconnect and stream-error knobs.

    `event()` returns False when the handler must stop: the client went away, or a knob
    asked to drop the connection or fail the stream. Returning from the ASGI call without the
    final body message makes the server close the connection mid-stream, which is what a
    broken upstream does; a failed stream instead sends `failure(events_sent)`, the API's own
    error event, and ends the body cleanly, as an upstream reporting an error mid-answer does.
    """

    __slots__ = (
        "_deadline",
        "_fail_after",
        "_failure",
        "_gone",
        "_interval",
        "_limit",
        "_send",
        "_sent",
        "_token_delay",
        "_watcher",
    )

    def __init__(
        self,
        send: Send,
        *,
        disconnect_after: int | None,
        tokens_per_second: float,
        fail_after: int | None = None,
        failure: Callable[[int], bytes] | None = None,
    ) -> None:
        self._send = send
        self._limit = disconnect_after
        self._fail_after = fail_after
        self._failure = failure
        self._sent = 0
        self._interval = 1.0 / tokens_per_second if tokens_per_second > 0 else 0.0
        self._deadline = 0.0
        self._token_delay = 0.0  # still to wait before the first paced event
        self._gone = False
        self._watcher: asyncio.Task[None] | None = None

    async def start(
        self, receive: Receive, first_token_delay: float, *, opening_first: bool = False
    ) -> bool:
        """Send the headers, then wait the time to first token; with `opening_first` the
        wait comes before the first paced (token) event instead, after the opening events,
        as Anthropic's `message_start` and the Responses API's `response.created` arrive at
        once and the tokens later."""
        await self._send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [
                    (b"content-type", b"text/event-stream; charset=utf-8"),
                    (b"cache-control", b"no-cache"),
                    (b"x-accel-buffering", b"no"),
                ],
            }
        )
        if first_token_delay > 0 or self._interval > 0:
            # A slow stream watches for the client leaving so it stops producing; a fast one
            # finishes before that matters and skips the extra task.
            self._watcher = asyncio.create_task(self._watch(receive))
        if opening_first:
            self._token_delay = first_token_delay
        elif first_token_delay > 0:
            await asyncio.sleep(first_token_delay)
        # The first paced token goes out at once, the next one interval later.
        self._deadline = time.monotonic() - self._interval
        return self._may_send()

    async def _watch(self, receive: Receive) -> None:
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                self._gone = True
                return

    @property
    def sent(self) -> int:
        """Events sent so far: the index of the next one (the Responses API numbers them)."""
        return self._sent

    def _may_send(self) -> bool:
        return not self._gone and (self._limit is None or self._sent < self._limit)

    async def event(self, data: bytes, *, paced: bool = False) -> bool:
        """Send one pre-encoded event; `paced` events wait for their turn at the token rate."""
        if not self._may_send():
            return False
        if self._sent == self._fail_after and self._failure is not None:
            # The error event is the last of a body that ends normally.
            body = self._failure(self._sent)
            await self._send({"type": "http.response.body", "body": body, "more_body": False})
            self._sent += 1
            self._gone = True
            return False
        if paced and self._token_delay > 0:
            await asyncio.sleep(self._token_delay)
            self._token_delay = 0.0
            self._deadline = time.monotonic() - self._interval
            if self._gone:
                return False
        if paced and self._interval:
            # Pace against an absolute schedule so sleep overshoot does not accumulate.
            self._deadline += self._interval
            delay = self._deadline - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            if self._gone:
                return False
        await self._send({"type": "http.response.body", "body": data, "more_body": True})
        self._sent += 1
        return True

    async def finish(self) -> None:
        """End the response normally (only after every event was accepted)."""
        if not self._gone:
            await self._send({"type": "http.response.body", "body": b"", "more_body": False})

    def close(self) -> None:
        """Stop watching the client; call in a `finally` whether or not the stream finished."""
        if self._watcher is not None:
            self._watcher.cancel()


def sse_data(value: Any) -> bytes:
    return b"data: " + dumps(value) + b"\n\n"


def sse_event(name: str, value: Any) -> bytes:
    return b"event: " + name.encode() + b"\ndata: " + dumps(value) + b"\n\n"


class ChunkTemplate:
    """A JSON document with one string slot, pre-encoded: streaming a token costs one
    `json.dumps` of the token instead of one of the whole chunk.
    """

    _SLOT = "\x00slot\x00"

    __slots__ = ("_head", "_tail")

    def __init__(self, value: Any, prefix: bytes = b"data: ", suffix: bytes = b"\n\n") -> None:
        encoded = dumps(value)
        head, tail = encoded.split(dumps(self._SLOT), 1)
        self._head = prefix + head
        self._tail = tail + suffix

    @classmethod
    def slot(cls) -> str:
        return cls._SLOT

    def render(self, text: str) -> bytes:
        return self._head + dumps(text) + self._tail
