"""The simulator: an OpenAI- and Anthropic-compatible upstream as a plain ASGI application.

Used by the demo, the proxy tests and the benchmarks in place of real LLM providers. It
imports nothing from Django so it starts fast and stays a cheap baseline; the gateway mounts
`create_app(prefix="/simulator")`, and `manage.py run_simulator` serves it standalone.

Routes (below the prefix):
    POST /v1/chat/completions, /v1/completions, /v1/embeddings, /v1/rerank (/v2/rerank)
    POST /v1/responses                                    (OpenAI's Responses API)
    POST /v1/messages, /v1/messages/count_tokens          (Anthropic's wire format)
    GET  /v1/models, /v1/models/{id}
    GET  /_sim/last_request, /_sim/requests, /_sim/health; POST /_sim/reset
    POST /_sim/knobs   {"model": {...knobs...} | null}: change a model's knobs at run time
"""

import hmac
import json
import os
from collections import deque
from collections.abc import Awaitable, Callable, Iterable, Mapping
from typing import Any

from . import anthropic, openai_api, responses_api, retrieval
from .knobs import (
    ErrorGate,
    KnobError,
    Knobs,
    apply_knob_changes,
    model_knobs_from_env,
    parse_model_knobs,
    resolve,
)
from .params import non_stream_delay
from .wire import ApiError, Receive, Request, Scope, Send, read_body, send_json

Handler = Callable[[Request, Mapping[str, Any], Knobs, Send], Awaitable[None]]

DEFAULT_MODELS = ("sim-chat", "sim-chat-large", "sim-embed", "sim-rerank", "sim-claude")
MODEL_CREATED = 1_700_000_000
HISTORY_SIZE = 50
# Bodies above this are not kept for /_sim (only their size), so a load test of huge
# prompts cannot pin much memory.
MAX_RECORDED_BODY = 1024 * 1024

_POST_ROUTES: dict[str, Handler] = {
    "/v1/chat/completions": openai_api.chat_completions,
    "/v1/completions": openai_api.completions,
    "/v1/embeddings": retrieval.embeddings,
    "/v1/rerank": retrieval.rerank,
    "/v2/rerank": retrieval.rerank,
    "/v1/messages": anthropic.messages_create,
    "/v1/messages/count_tokens": anthropic.count_tokens_endpoint,
}
_ANTHROPIC_PREFIX = "/v1/messages"


class Simulator:
    """The ASGI application. Build it with `create_app`."""

    def __init__(
        self,
        *,
        prefix: str = "",
        model_knobs: Mapping[str, Knobs] | None = None,
        required_key: str | None = None,
        models: Iterable[str] = DEFAULT_MODELS,
    ) -> None:
        prefix = prefix.strip().rstrip("/")
        self.prefix = "/" + prefix.lstrip("/") if prefix else ""
        self.model_knobs = dict(model_knobs or {})
        self.required_key = required_key or None
        names = [*models, *(m for m in self.model_knobs if m != "*")]
        self.models = list(dict.fromkeys(names))
        self.errors = ErrorGate()
        # The Responses API remembers responses for previous_response_id, so it is per app.
        self.responses = responses_api.ResponsesApi()
        self.routes: dict[str, Handler] = {**_POST_ROUTES, "/v1/responses": self.responses.create}
        # (method, path, full path, query, raw headers, body or its size when too big):
        # decoded only when asked for, so recording costs the hot path one append.
        self.history: deque[tuple[str, str, str, bytes, list[Any], bytes | int]] = deque(
            maxlen=HISTORY_SIZE
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind == "http":
            await self._http(scope, receive, send)
        elif kind == "lifespan":
            await _lifespan(receive, send)
        elif kind == "websocket":
            await send({"type": "websocket.close", "code": 1000})

    def _route_path(self, scope: Scope) -> str | None:
        path: str = scope["path"]
        if not self.prefix:
            root = scope.get("root_path", "")
            return path[len(root) :] if root and path.startswith(root) else path
        if path.startswith(self.prefix + "/"):
            return path[len(self.prefix) :]
        # A router that strips the mount point itself (root_path convention) hands over
        # the path below the prefix.
        if scope.get("root_path", "").endswith(self.prefix):
            return path
        return None

    async def _http(self, scope: Scope, receive: Receive, send: Send) -> None:
        method = scope["method"]
        path = self._route_path(scope)
        if path is None:
            await _not_found(send, method, scope["path"])
            return
        if path.startswith("/_sim/"):
            if path == "/_sim/knobs" and method == "POST":
                await self._set_knobs(await read_body(receive), send)
            else:
                await self._control(method, path, send)
            return
        body = await read_body(receive)
        raw_headers = scope["headers"]
        self.history.append(
            (
                method,
                path,
                scope["path"],
                scope.get("query_string", b""),
                raw_headers,
                body if len(body) <= MAX_RECORDED_BODY else len(body),
            )
        )
        anthropic_style = path.startswith(_ANTHROPIC_PREFIX)
        try:
            await self._dispatch(method, path, raw_headers, body, receive, send)
        except ApiError as error:
            payload = error.anthropic_body() if anthropic_style else error.openai_body()
            await send_json(send, error.status, payload, error.headers())

    async def _dispatch(
        self,
        method: str,
        path: str,
        raw_headers: list[Any],
        body: bytes,
        receive: Receive,
        send: Send,
    ) -> None:
        handler = self.routes.get(path)
        is_models = path == "/v1/models" or path.startswith("/v1/models/")
        if handler is None and not is_models:
            raise ApiError(404, f"Invalid URL ({method} {path})")
        if (method != "POST" and handler is not None) or (method != "GET" and is_models):
            raise ApiError(405, f"Method {method} not allowed for {path}")
        # ASGI servers hand over header names lowercased already.
        headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in raw_headers}
        self._authenticate(headers)
        if is_models:
            parsed: Any = {}
        else:
            try:
                parsed = json.loads(body)
            except (ValueError, UnicodeDecodeError):
                raise ApiError(
                    400, "We could not parse the JSON body of your request. It must be valid JSON."
                ) from None
            if not isinstance(parsed, dict):
                raise ApiError(400, "The request body must be a JSON object.")
        try:
            knobs = resolve(headers, parsed.get("model"), self.model_knobs)
        except KnobError as exc:
            raise ApiError(400, str(exc)) from None
        if self.errors.should_fail(knobs.error_rate):
            raise ApiError(knobs.error_status, _error_message(knobs.error_status))
        if handler is None:
            await non_stream_delay(knobs)
            await self._models(path, send)
            return
        await handler(Request(method, path, headers, body, receive), parsed, knobs, send)

    def _authenticate(self, headers: Mapping[str, str]) -> None:
        if self.required_key is None:
            return
        authorization = headers.get("authorization", "")
        key = authorization[7:] if authorization[:7].lower() == "bearer " else ""
        key = key or headers.get("x-api-key") or headers.get("api-key") or ""
        if not hmac.compare_digest(key.encode(), self.required_key.encode()):
            raise ApiError(401, "Incorrect API key provided.")

    async def _models(self, path: str, send: Send) -> None:
        def entry(name: str) -> dict[str, Any]:
            return {
                "id": name,
                "object": "model",
                "created": MODEL_CREATED,
                "owned_by": "tollgate-simulator",
            }

        if path == "/v1/models":
            await send_json(send, 200, {"object": "list", "data": [entry(m) for m in self.models]})
            return
        # Any model answers, so any id exists.
        await send_json(send, 200, entry(path.removeprefix("/v1/models/")))

    async def _set_knobs(self, body: bytes, send: Send) -> None:
        """Tests flip a model to failing and back while traffic flows."""
        try:
            self.model_knobs = apply_knob_changes(self.model_knobs, json.loads(body or b"{}"))
        except (KnobError, ValueError) as exc:
            await send_json(send, 400, ApiError(400, str(exc)).openai_body())
            return
        await send_json(send, 200, {"status": "ok", "models": sorted(self.model_knobs)})

    async def _control(self, method: str, path: str, send: Send) -> None:
        if path == "/_sim/last_request" and method == "GET":
            last = self.history[-1] if self.history else None
            await send_json(send, 200, _describe(last))
        elif path == "/_sim/requests" and method == "GET":
            await send_json(send, 200, {"requests": [_describe(r) for r in self.history]})
        elif path == "/_sim/reset" and method == "POST":
            self.history.clear()
            self.errors = ErrorGate()
            self.responses.reset()
            await send_json(send, 200, {"status": "reset"})
        elif path == "/_sim/health" and method == "GET":
            await send_json(send, 200, {"status": "ok"})
        else:
            await _not_found(send, method, path)


def _describe(record: tuple[Any, ...] | None) -> dict[str, Any]:
    if record is None:
        return {
            "method": None,
            "path": None,
            "full_path": None,
            "query": None,
            "headers": {},
            "json": None,
            "body_size": 0,
        }
    method, path, full_path, query, raw_headers, body = record
    headers: dict[str, str] = {}
    for name, value in raw_headers:
        key = name.decode("latin-1").lower()
        text = value.decode("latin-1")
        headers[key] = f"{headers[key]}, {text}" if key in headers else text
    size = body if isinstance(body, int) else len(body)
    try:
        parsed = json.loads(body) if isinstance(body, bytes) and body else None
    except (ValueError, UnicodeDecodeError):
        parsed = None
    return {
        "method": method,
        "path": path,
        "full_path": full_path,
        "query": query.decode("latin-1"),
        "headers": headers,
        "json": parsed,
        "body_size": size,
    }


def _error_message(status: int) -> str:
    if status == 429:
        return "Rate limit reached (simulated by x-sim-error-rate)."
    return f"The simulator failed this request on purpose (x-sim-error-rate, status {status})."


async def _not_found(send: Send, method: str, path: str) -> None:
    error = ApiError(404, f"Invalid URL ({method} {path})")
    await send_json(send, 404, error.openai_body())


async def _lifespan(receive: Receive, send: Send) -> None:
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return


def create_app(
    prefix: str = "",
    *,
    model_knobs: Mapping[str, Mapping[str, Any]] | str | None = None,
    required_key: str | None = None,
    models: Iterable[str] = DEFAULT_MODELS,
) -> Simulator:
    """Build a simulator serving its routes below `prefix` (e.g. "/simulator").

    `model_knobs` maps model names to default knobs (`{"slow-chat": {"latency_ms": 200}}`,
    "*" for every model), as a mapping or JSON text; `required_key` makes every other API key
    a 401. Either one left as None is read from `SIMULATOR_MODEL_KNOBS` /
    `SIMULATOR_REQUIRED_KEY`.
    """
    knobs = model_knobs_from_env() if model_knobs is None else parse_model_knobs(model_knobs)
    if required_key is None:
        required_key = os.environ.get("SIMULATOR_REQUIRED_KEY") or None
    return Simulator(prefix=prefix, model_knobs=knobs, required_key=required_key, models=models)


def create_app_from_env() -> Simulator:
    """A factory for `uvicorn --factory`: everything from the environment, including
    `SIMULATOR_PREFIX`."""
    return create_app(os.environ.get("SIMULATOR_PREFIX", ""))


app = create_app()
