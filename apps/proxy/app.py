"""The /v1 hot path: a plain ASGI app, served in front of Django by gateway_portal.asgi.

Request flow: refuse ambiguous credentials -> authenticate the key (in-process cache) ->
check the content type -> read and size-check the body -> validate the body and the metadata
header -> resolve the model from the in-memory catalog -> forward through `calls` (failover,
streaming) -> hand the usage record to the buffer. A request refused after authentication
makes no upstream call and still leaves a usage row (`refusals`). No database query happens
here on a warm worker.
"""

import time
from typing import Any

import orjson
from django.conf import settings

from apps.usage.models import UsageRecord

from . import calls
from .asgi_types import Receive, Scope, Send
from .auth import KeyInfo, authenticate, presented_secret
from .catalog import ModelEntry, catalog
from .endpoints import ENDPOINTS
from .endpoints.base import Endpoint
from .endpoints.messages import MESSAGES_ENDPOINT
from .endpoints.messages_validation import validate_count_tokens
from .errors import (
    BadRequest,
    Forbidden,
    GatewayError,
    MethodNotAllowed,
    NotFound,
    PayloadTooLarge,
    Unauthorized,
)
from .json_answers import send_json
from .metadata import LOG_REQUEST_TAG, metadata_header, parse_metadata_header
from .refusals import record_refusal
from .regions import row_region
from .validation import check_content_type

COUNT_TOKENS_PATH = "/v1/messages/count_tokens"


async def read_body(receive: Receive, headers: dict[bytes, bytes]) -> bytes:
    limit = settings.PROXY_MAX_BODY_BYTES
    declared = headers.get(b"content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise PayloadTooLarge(f"Request body is {int(declared)} bytes; the limit is {limit}.")
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise calls.ClientGone()
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise PayloadTooLarge(f"Request body exceeds the limit of {limit} bytes.")
        chunks.append(chunk)
        if not message.get("more_body"):
            return b"".join(chunks)


def _model_object(entry: ModelEntry) -> dict[str, Any]:
    return {
        "id": entry.name,
        "object": "model",
        "created": entry.created_ts,
        "owned_by": "tollgate",
    }


def _models_list(key: KeyInfo) -> bytes:
    data = [_model_object(entry) for entry in catalog.models.values() if key.may_use(entry.name)]
    return orjson.dumps({"object": "list", "data": data})


def _model_detail(key: KeyInfo, name: str) -> bytes:
    entry = catalog.models.get(name)
    if entry is None or not key.may_use(name):
        raise NotFound(f"The model '{name}' does not exist", param="model", code="model_not_found")
    return orjson.dumps(_model_object(entry))


def check_one_credential(raw_headers: list[tuple[bytes, bytes]]) -> None:
    """Refuse a request whose credentials disagree, before anyone picks one of them.

    `dict(scope["headers"])` keeps the last of repeated headers, so two Authorization
    headers would silently authenticate as the second: the raw list is read instead. The
    same key sent both as `Authorization: Bearer` and as `x-api-key` is not ambiguous.
    """
    authorization = api_key = None
    for name, value in raw_headers:
        if name == b"authorization":
            if authorization is not None:
                raise _ambiguous("more than one Authorization header")
            authorization = value
        elif name == b"x-api-key":
            if api_key is not None:
                raise _ambiguous("more than one x-api-key header")
            api_key = value
    if authorization is not None and api_key is not None:
        # Compared as authentication reads them (scheme, case, whitespace): see auth.py.
        if presented_secret({b"authorization": authorization}) != presented_secret(
            {b"x-api-key": api_key}
        ):
            raise _ambiguous("an Authorization header and a different x-api-key header")


def _ambiguous(what: str) -> Unauthorized:
    return Unauthorized(
        f"Ambiguous credentials: the request has {what}. Send one API key, once.",
        code="ambiguous_credentials",
    )


async def app(scope: Scope, receive: Receive, send: Send) -> None:
    """ASGI entry for every /v1 path."""
    started = time.perf_counter()
    request_id = UsageRecord.new_request_id()
    raw_headers = scope["headers"]
    headers = dict(raw_headers)
    path = scope["path"]
    method = scope["method"]
    endpoint = ENDPOINTS.get(path)
    # Errors are worded in the dialect of the API the path belongs to.
    dialect = MESSAGES_ENDPOINT if path == COUNT_TOKENS_PATH else endpoint
    key: KeyInfo | None = None
    body: object = None
    try:
        if dialect is None and not path.startswith("/v1/models"):
            raise NotFound(f"Unknown path {path}.", code="unknown_url")
        if dialect is not None and method != "POST":
            raise MethodNotAllowed(f"{method} is not allowed on {path}; use POST.")
        check_one_credential(raw_headers)
        key = await authenticate(headers)
        await catalog.ensure_loaded()
        if dialect is None:
            if method != "GET":
                raise MethodNotAllowed(f"{method} is not allowed on {path}; use GET.")
            name = path.removeprefix("/v1/models").strip("/")
            listing = _model_detail(key, name) if name else _models_list(key)
            await send_json(send, 200, listing, request_id)
            return
        # Decided on the header alone: a body not declared as JSON is not read as JSON.
        check_content_type(headers.get(b"content-type"))
        body = parse_body(await read_body(receive, headers))
        if endpoint is None:
            await send_json(send, 200, _count_tokens(key, body), request_id)
            return
        call = _prepare_call(
            endpoint=endpoint,
            body=body,
            key=key,
            headers=headers,
            request_id=request_id,
            started=started,
        )
    except calls.ClientGone:
        return
    except GatewayError as error:
        # Refused after authentication, before any upstream call: the key's ledger shows it.
        # Model listing and token counts are not calls and are not recorded, nor are
        # server-side failures.
        if key is not None and endpoint is not None and 400 <= error.status < 500:
            await record_refusal(
                error=error,
                key=key,
                endpoint=endpoint,
                body=body,
                headers=headers,
                request_id=request_id,
                started=started,
            )
        error_body = dialect.error_body(error) if dialect is not None else error.body()
        await send_json(send, error.status, error_body, request_id, error.headers)
        return
    await calls.run(call, receive, send)


def _count_tokens(key: KeyInfo, body: object) -> bytes:
    """Anthropic's token count, as the gateway estimates it: no upstream call, no cost."""
    body = validate_count_tokens(body)
    _served_model(key, MESSAGES_ENDPOINT, body["model"])
    return orjson.dumps({"input_tokens": MESSAGES_ENDPOINT.estimate_input(body)})


def parse_body(raw: bytes) -> object:
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise BadRequest(
            "We could not parse the JSON body of your request.", code="invalid_json"
        ) from None


def _served_model(key: KeyInfo, endpoint: Endpoint, model_name: str) -> ModelEntry:
    entry = catalog.models.get(model_name)
    if entry is None:
        raise NotFound(
            f"The model '{model_name}' does not exist or is not served here.",
            param="model",
            code="model_not_found",
        )
    if not key.may_use(model_name):
        raise Forbidden(f"This API key may not use the model '{model_name}'.", param="model")
    if entry.mode not in endpoint.modes:
        raise BadRequest(
            f"The model '{model_name}' is a {entry.mode} model and cannot serve {endpoint.path}.",
            param="model",
            code="wrong_model_mode",
        )
    return entry


def _prepare_call(
    *,
    endpoint: Endpoint,
    body: object,
    key: KeyInfo,
    headers: dict[bytes, bytes],
    request_id: str,
    started: float,
) -> "calls.Call":
    body = endpoint.validate(body)
    request_tags = parse_metadata_header(metadata_header(headers))
    entry = _served_model(key, endpoint, body["model"])
    tags = key.tags_with(request_tags)
    for required in key.required_tag_keys:
        if not tags.get(required):
            raise BadRequest(
                f"The team requires the tag '{required}' on every request: send it in "
                "X-Gateway-Metadata or set it as a default tag.",
                param="X-Gateway-Metadata",
                code="missing_required_tag",
            )
    log_bodies = tags.get(LOG_REQUEST_TAG) == "true" and key.allow_request_logging
    passed = {
        name.decode(): headers[name].decode("latin-1")
        for name in endpoint.passed_headers
        if name in headers
    }
    return calls.Call(
        request_id=request_id,
        started=started,
        key=key,
        endpoint=endpoint,
        kind=endpoint.kind,
        model=entry,
        body=body,
        tags=tags,
        end_user=endpoint.end_user(body),
        stream=endpoint.is_stream(body),
        log_bodies=log_bodies,
        passed_headers=passed,
        region=row_region(key, tags),
    )
