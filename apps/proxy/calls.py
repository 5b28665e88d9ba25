"""The one call pipeline of every /v1 endpoint: admission -> route -> attempt (with
failover) -> relay (JSON or stream) -> settle -> record.

It is endpoint-neutral: what differs between chat, messages, embeddings... (how a request is
built for a deployment, how its answer and usage are read, how errors look) comes from the
call's `Endpoint` and the `Exchange` it gives for each deployment tried (`endpoints/`).

The usage record is put in the durable buffer *before* the last byte of the answer is sent,
so a worker killed after answering cannot lose it; the database write happens later, in
batches, in the usage writer.
"""

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any, cast

import aiohttp
import orjson
from django.conf import settings

from apps.quotas.engine import Admission, get_quota_engine, subject_ids_for
from apps.usage.buffer import get_usage_buffer
from apps.usage.event import UsageEvent

from . import metrics, upstream
from .asgi_types import Receive, Send
from .auth import KeyInfo
from .catalog import ModelEntry, catalog
from .endpoints.base import ClientStream, Endpoint, Exchange
from .errors import BadRequest, GatewayError, UpstreamError
from .first_token import begins_answer
from .health import board as health
from .health import ttft_timeout
from .json_answers import send_json
from .pricing import price_override
from .providers.base import DeploymentInfo, InvalidAnswer, UnsupportedRequest, Usage
from .providers.registry import provider_for
from .regions import is_strict, row_region, serving_region
from .router import deployments_to_try
from .tokens import estimate_text_tokens

logger = logging.getLogger(__name__)

RETRYABLE_STATUSES = frozenset({401, 403, 408, 409, 429})


class ClientGone(Exception):
    """The client went away before we could answer."""


@dataclass(slots=True)
class Call:
    request_id: str
    started: float
    key: KeyInfo
    endpoint: Endpoint
    kind: str
    model: ModelEntry
    body: dict[str, Any]
    tags: dict[str, str]
    end_user: str
    stream: bool
    log_bodies: bool
    # Client headers the endpoint forwards to a native deployment (`Endpoint.passed_headers`).
    passed_headers: dict[str, str] = field(default_factory=dict)
    # The data region of the call's usage row (`regions.row_region`), decided up front
    # because a strict region also decides which deployments may serve the call.
    region: str = ""
    created_at: datetime = field(default_factory=lambda: datetime.now(UTC))
    # Outcome, filled in as the call goes.
    status: int = 0
    error_type: str = ""
    deployment: DeploymentInfo | None = None
    attempts: int = 0
    usage: Usage | None = None
    ttft_ms: float | None = None
    upstream_ms: float | None = None
    upstream_started: float | None = None
    client_disconnected: bool = False
    response_body: dict[str, Any] | None = None
    admission: Admission | None = None
    response_headers: dict[str, str] = field(default_factory=dict)
    # Priced once in `_record`; the quota settle reuses it.
    cost_usd: Decimal | None = None
    # The attempt whose outcome health has not heard yet (released in `run` if never told).
    health_pending: DeploymentInfo | None = None


@dataclass(slots=True)
class _Failure:
    # "timeout", "ttft", "connection", "status"; "invalid_answer" (not the API's shape),
    # "stream_error" (an error event), "broken" (a stream cut off). Health hears the kind.
    kind: str
    # Shown to the client, so it names the deployment by its configured name and never holds
    # an exception's text: those carry the upstream's address (they go to the log instead).
    detail: str
    status: int = 0
    retry_after: str | None = None


# A failure's kind -> what the client is told: (message before the detail, status, code).
_FAILURE_ERRORS: dict[str, tuple[str, int, str]] = {
    "ttft": ("No upstream sent a first token in time", 504, "upstream_timeout"),
    "timeout": ("The upstream timed out", 504, "upstream_timeout"),
    "connection": ("Could not reach the upstream", 502, "upstream_unreachable"),
    "invalid_answer": (
        "The upstream sent an answer that is not valid",
        502,
        "upstream_invalid_answer",
    ),
    "stream_error": ("The upstream reported an error", 502, "upstream_stream_error"),
    "broken": ("The upstream stream broke off", 502, "upstream_stream_error"),
}


def _failure_error(failure: _Failure | None) -> UpstreamError:
    if failure is None:
        return UpstreamError(
            "No deployment is configured for this model.", status=503, code="no_deployment"
        )
    if failure.kind == "status" and failure.status == 429:
        headers = {"retry-after": failure.retry_after} if failure.retry_after else None
        return UpstreamError(
            "Every upstream deployment is rate limited; retry later.",
            status=503,
            code="upstream_rate_limited",
            headers=headers,
        )
    message, status, code = _FAILURE_ERRORS.get(
        failure.kind, ("The upstream failed", 502, "upstream_error")
    )
    return UpstreamError(f"{message}: {failure.detail}", status=status, code=code)


def _invalid_answer(deployment: DeploymentInfo, reason: str) -> _Failure:
    return _Failure("invalid_answer", f"deployment '{deployment.name}': {reason}")


def _client_error_from_upstream(exchange: Exchange, status: int, raw: bytes) -> GatewayError:
    """An upstream 4xx caused by the request itself, passed on in the endpoint's shape."""
    try:
        message = exchange.error_message(orjson.loads(raw))
    except (orjson.JSONDecodeError, AttributeError, TypeError, KeyError):
        message = raw[:500].decode("utf-8", "replace") or f"upstream answered {status}"
    error = GatewayError(message, status=status, code="upstream_rejected_request")
    error.error_type = "invalid_request_error"
    return error


def _started(call: Call) -> float:
    # Set by `_open` before any upstream answer is read; None here is a bug, not a state.
    if call.upstream_started is None:
        raise RuntimeError("upstream_started is read before the upstream was opened")
    return call.upstream_started


async def _backoff(attempt: int) -> None:
    if attempt > 1:
        await asyncio.sleep(min(settings.PROXY_RETRY_BACKOFF * (2 ** (attempt - 2)), 1.0))


async def _open(
    call: Call, stream: bool, tried: set[int] | None = None, failure: _Failure | None = None
) -> tuple[DeploymentInfo, Exchange, aiohttp.ClientResponse]:
    """Try deployments in router order; return (deployment, exchange, open response).

    Failover on connection errors, timeouts, 429, 5xx and credential errors; a 4xx caused by
    the request is returned to the client at once. `tried` (ids, filled in) and `failure`
    continue the walk after a stream was abandoned for its time to first token.
    """
    unsupported = 0
    tried = set() if tried is None else tried
    candidates = [d for d in deployments_to_try(call.model, call.body) if d.id not in tried]
    if is_strict(call.region):
        candidates = serving_region(call, candidates)
    candidates = candidates[: max(settings.PROXY_MAX_ATTEMPTS - call.attempts, 0)]
    for attempt, deployment in enumerate(candidates, call.attempts + 1):
        exchange = call.endpoint.exchange(provider_for(deployment), deployment)
        try:
            request = exchange.build(call.body, call.passed_headers)
        except UnsupportedRequest as exc:
            unsupported += 1
            failure = failure or _Failure("status", str(exc), 400)
            continue
        await _backoff(attempt)
        tried.add(deployment.id)
        call.attempts = attempt
        call.deployment = deployment
        call.upstream_started = time.perf_counter()
        health.attempt_started(call, deployment)
        opening = upstream.open_response(
            request,
            orjson.dumps(request.json),
            timeout_seconds=deployment.timeout_seconds,
            stream=stream,
        )
        first_token_limit = ttft_timeout(deployment) if stream else None
        try:
            if first_token_limit is not None:
                response = await asyncio.wait_for(opening, first_token_limit)
            else:
                response = await opening
        except upstream.UpstreamTimeout as exc:
            logger.warning("deployment %s timed out: %s", deployment.name, exc)
            failure = _Failure("timeout", f"deployment '{deployment.name}'")
            health.attempt_failed(call, "timeout")
            continue
        except upstream.UpstreamConnectionError as exc:
            logger.warning("deployment %s unreachable: %s", deployment.name, exc)
            reason = type(exc.__cause__ or exc).__name__
            failure = _Failure("connection", f"deployment '{deployment.name}' ({reason})")
            health.attempt_failed(call, "connection")
            continue
        except TimeoutError:
            failure = _Failure("ttft", f"{deployment.name}: no answer in {first_token_limit}s")
            health.attempt_failed(call, "ttft")
            continue
        status = response.status
        if status == 200:
            return deployment, exchange, response
        raw = await upstream.read_body(response)
        if status >= 500 or status in RETRYABLE_STATUSES:
            failure = _Failure(
                "status",
                f"{deployment.name} answered {status}",
                status,
                response.headers.get("retry-after"),
            )
            health.attempt_failed(call, "status", status=status, retry_after=failure.retry_after)
            logger.warning("deployment %s answered %s; trying the next", deployment.name, status)
            continue
        call.upstream_ms = (time.perf_counter() - _started(call)) * 1000
        health.attempt_answered(call)
        raise _client_error_from_upstream(exchange, status, raw)
    if unsupported and unsupported == len(candidates):
        reason = failure.detail if failure is not None else "not supported"
        raise BadRequest(
            f"The model '{call.model.name}' cannot serve this request: {reason}.",
            code="unsupported_request",
        )
    raise _failure_error(failure)


class QuotaRefused(GatewayError):
    error_type = "rate_limit_error"


async def _admit(call: Call) -> None:
    """Check every matching quota rule (one Redis round trip); raise when one is broken."""
    engine = get_quota_engine()
    max_output = call.endpoint.max_output_tokens(call.body)
    input_estimate = call.endpoint.estimate_input(call.body)

    def cost_estimate() -> Decimal:
        # Priced only if a budget rule matches: most requests never need it.
        if not call.model.deployments:
            return Decimal(0)
        first = call.model.deployments[0]
        return catalog.prices.cost_for(
            first.price_model_name,
            input_estimate,
            max_output if max_output is not None else engine.default_max_output_tokens,
            0,
            call.created_at,
            override=price_override(first),
        )

    admission = await engine.check(
        subject_ids=subject_ids_for(call.key),
        model=call.model.name,
        tags=call.tags,
        request_tokens_estimate=input_estimate,
        max_output_tokens=max_output,
        cost_estimate_usd=cost_estimate,
    )
    if not admission.allowed:
        raise QuotaRefused(
            admission.message,
            status=admission.status,
            code=admission.code,
            headers=admission.headers,
            extra=admission.error_extra(),
        )
    call.admission = admission
    call.response_headers = admission.headers


async def run(call: Call, receive: Receive, send: Send) -> None:
    try:
        await _admit(call)
        if call.stream:
            await _run_stream(call, receive, send)
        else:
            await _run_json(call, send)
    except GatewayError as error:
        if isinstance(error, QuotaRefused):
            metrics.observe_quota_refusal(error.extra)
            # Which rules refused it: the quota page and its audit trail read it from the row.
            call.response_body = error.extra
        call.status = error.status
        call.error_type = error.code or error.error_type
        await _record(call)
        headers = {**_answer_headers(call), **error.headers}
        await send_json(
            send, error.status, call.endpoint.error_body(error), call.request_id, headers
        )
    finally:
        health.attempt_released(call)  # an attempt cut short (cancelled, crashed) says nothing
        await _settle(call)  # a call cut short before its record still gives its reservation back


async def _settle(call: Call) -> None:
    """Replace the call's quota reservation by what it used, once.

    Runs before the usage row is handed to the buffer: a counter seeded from the ledger
    (`quota_counters_seed`) then never holds a reservation for a row the ledger already has,
    which would count that request twice.
    """
    if call.admission is None or call.admission.reservation is None:
        return  # nothing reserved, or settled already (the engine settles once)
    usage = call.usage or Usage()
    await get_quota_engine().settle(
        call.admission,
        input_tokens=usage.input_tokens,
        output_tokens=usage.output_tokens,
        cost_usd=call.cost_usd if call.cost_usd is not None else _cost(call),
    )


async def _run_json(call: Call, send: Send) -> None:
    deployment, exchange, response = await _open(call, stream=False)
    try:
        raw = await upstream.read_body(response)
    except (upstream.UpstreamTimeout, upstream.UpstreamConnectionError) as exc:
        health.attempt_failed(call, "read")
        logger.warning("deployment %s failed mid-answer: %s", deployment.name, exc)
        raise UpstreamError(
            f"The upstream failed mid-answer: deployment '{deployment.name}'"
        ) from exc
    call.upstream_ms = (time.perf_counter() - _started(call)) * 1000
    try:
        data, reported = _parse_answer(exchange, raw)
    except InvalidAnswer as exc:
        health.attempt_failed(call, "invalid_answer")
        logger.warning("deployment %s sent an invalid answer: %s", deployment.name, exc)
        raise _failure_error(_invalid_answer(deployment, str(exc))) from exc
    if reported is None or reported.suspect:
        # The gateway's own count; the client is told the counts it is billed, not what the
        # upstream claimed.
        try:
            output = exchange.estimate_output(data)
        except (AttributeError, KeyError, TypeError, ValueError):
            health.attempt_failed(call, "invalid_answer")
            reason = "the answer's content has fields of the wrong type"
            raise _failure_error(_invalid_answer(deployment, reason)) from None
        call.usage = Usage(
            call.endpoint.estimate_input(call.body),
            output,
            0,
            estimated=True,
            suspect=reported is not None,
        )
        exchange.bill(data, call.usage)
    else:
        call.usage = reported
    health.attempt_succeeded(call, call.upstream_ms)
    call.status = 200
    if settings.PROXY_COST_IN_USAGE and isinstance(data.get("usage"), dict):
        call.cost_usd = _cost(call)
        data["usage"]["cost"] = float(call.cost_usd)
    if call.log_bodies:
        call.response_body = data
    body = orjson.dumps(data)
    await _record(call)
    await send_json(send, 200, body, call.request_id, _answer_headers(call))


def _answer_headers(call: Call) -> dict[str, str]:
    """The quota headers, and what the call cost and what the gateway added to its time."""
    headers = dict(call.response_headers)
    if call.cost_usd is not None:
        headers["x-gateway-cost-usd"] = format(call.cost_usd.normalize(), "f")
    if call.upstream_ms is not None:
        overhead = (time.perf_counter() - call.started) * 1000 - call.upstream_ms
        headers["x-gateway-overhead-ms"] = f"{max(overhead, 0.0):.3f}"
    return headers


def _parse_answer(exchange: Exchange, raw: bytes) -> tuple[dict[str, Any], Usage | None]:
    """(the client's answer, the usage reported); InvalidAnswer for anything else."""
    try:
        payload = orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise InvalidAnswer("the answer is not JSON") from None
    if not isinstance(payload, dict):
        raise InvalidAnswer("the answer is not a JSON object")
    try:
        return exchange.answer(payload)
    except (AttributeError, KeyError, TypeError, ValueError) as exc:
        # The adapter tripped over a field of the wrong type: the answer's fault.
        raise InvalidAnswer("a field of the answer has the wrong type") from exc


async def _watch_disconnect(receive: Receive, gone: asyncio.Event) -> None:
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            gone.set()
            return


async def _sse_events(
    content: aiohttp.StreamReader,
) -> AsyncIterator[tuple[str | None, bytes]]:
    """Yield (event name, data bytes) from an upstream SSE body, as they arrive."""
    event: str | None = None
    data_lines: list[bytes] = []
    async for raw_line in content:
        line = raw_line.rstrip(b"\r\n")
        if not line:
            if data_lines:
                yield event, b"\n".join(data_lines)
            event, data_lines = None, []
            continue
        if line.startswith(b"data:"):
            data_lines.append(line[5:].lstrip())
        elif line.startswith(b"event:"):
            event = line[6:].strip().decode()
    if data_lines:
        yield event, b"\n".join(data_lines)


def _read_event(
    exchange: Exchange, deployment: DeploymentInfo, data: bytes
) -> tuple[dict[str, Any], None] | tuple[None, _Failure]:
    """An upstream stream event's JSON object, or the failure it is instead."""
    try:
        parsed = orjson.loads(data)
    except orjson.JSONDecodeError:
        return None, _invalid_answer(deployment, "a stream event is not JSON")
    if not isinstance(parsed, dict):
        return None, _invalid_answer(deployment, "a stream event is not a JSON object")
    try:
        message = exchange.stream_failure(parsed)
    except (AttributeError, KeyError, TypeError, ValueError):
        # An error event whose fields have the wrong types is still not a valid answer.
        return None, _invalid_answer(deployment, "a stream event has fields of the wrong type")
    if message is not None:
        return None, _Failure("stream_error", f"deployment '{deployment.name}': {message[:500]}")
    return parsed, None


async def _open_stream(
    call: Call,
) -> tuple[
    DeploymentInfo,
    Exchange,
    aiohttp.ClientResponse,
    AsyncIterator[tuple[str | None, bytes]],
]:
    """Open a stream and wait for its first token before anything is sent to the client, so
    a deployment silent past its time-to-first-token limit, or answering something that is
    not an event stream, is abandoned for the next one.

    Returns (deployment, exchange, response, events) with the events read so far put back in
    front.
    """
    tried: set[int] = set()
    failure: _Failure | None = None
    while True:
        deployment, exchange, response = await _open(
            call, stream=True, tried=tried, failure=failure
        )
        events = _sse_events(response.content)
        try:
            held, failure = await _until_first_token(call, exchange, deployment, events)
        except TimeoutError:
            response.release()
            health.attempt_failed(call, "ttft")
            logger.warning(
                "deployment %s sent no first token in time; trying the next", deployment.name
            )
            failure = _Failure("ttft", f"{deployment.name}: no first token in time")
            continue
        except Exception as exc:  # broken before anything reached the client: fail over
            response.release()
            health.attempt_failed(call, "stream")
            failure = _Failure("connection", f"{deployment.name}: {exc.__class__.__name__}")
            continue
        if failure is None:
            return deployment, exchange, response, _prepend(held, events)
        response.release()
        health.attempt_failed(call, failure.kind)
        logger.warning("%s; trying the next deployment", failure.detail)


async def _until_first_token(
    call: Call,
    exchange: Exchange,
    deployment: DeploymentInfo,
    events: AsyncIterator[tuple[str | None, bytes]],
) -> tuple[list[tuple[str | None, bytes]], _Failure | None]:
    """The stream's events up to the first that begins the answer
    (`first_token.begins_answer`: Anthropic's `message_start` or a role-only chunk does not),
    read within what is left of the TTFT limit (TimeoutError past it); or the failure an
    event reports. Nothing has reached the client yet, so either still fails over."""
    held: list[tuple[str | None, bytes]] = []
    limit = ttft_timeout(deployment)
    while True:
        left = None
        if limit is not None:
            left = max(limit - (time.perf_counter() - _started(call)), 0.001)
        try:
            item = await asyncio.wait_for(anext(events), left)
        except StopAsyncIteration:
            item = None
        if item is None or item[1] == b"[DONE]":
            if not held:
                # An HTML page, a JSON body or broken lines hold no event, or no JSON one.
                return held, _invalid_answer(deployment, "the stream ended before its first event")
            return held + ([item] if item else []), None
        held.append(item)
        parsed, failure = _read_event(exchange, deployment, item[1])
        if failure is not None:
            return held, failure
        if begins_answer(cast(dict[str, Any], parsed)):
            return held, None


async def _prepend(
    held: list[tuple[str | None, bytes]], events: AsyncIterator[tuple[str | None, bytes]]
) -> AsyncIterator[tuple[str | None, bytes]]:
    for item in held:
        yield item
    async for item in events:
        yield item


async def _run_stream(call: Call, receive: Receive, send: Send) -> None:
    deployment, exchange, response, events = await _open_stream(call)
    gone = asyncio.Event()
    watcher = asyncio.get_running_loop().create_task(_watch_disconnect(receive, gone))
    stream = exchange.stream()
    call.status = 200
    headers = [
        (b"content-type", stream.content_type),
        (b"cache-control", b"no-cache"),
        (b"x-request-id", call.request_id.encode()),
    ]
    # A stream's cost is known only at its end (the ledger has it); what the gateway added
    # before the answering attempt began is known now.
    overhead = ((call.upstream_started or call.started) - call.started) * 1000
    headers.append((b"x-gateway-overhead-ms", f"{overhead:.3f}".encode()))
    headers.extend((k.encode(), v.encode()) for k, v in call.response_headers.items())
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    failure: _Failure | None = None
    cancelled = False
    try:
        async for event, data in events:
            if gone.is_set():
                call.client_disconnected = True
                break
            if data == b"[DONE]":
                break
            parsed, failure = _read_event(exchange, deployment, data)
            if failure is not None:
                logger.warning("stream from %s: %s", deployment.name, failure.kind)
                break
            # No failure means `_read_event` returned the parsed object.
            out_chunks = stream.feed(event, cast(dict[str, Any], parsed), data)
            if call.ttft_ms is None and stream.produced:
                call.ttft_ms = (time.perf_counter() - call.started) * 1000
            for chunk in out_chunks:
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
    except asyncio.CancelledError:
        # The server stopped waiting (its drain limit at shutdown ran out): what the client
        # received is still billed below, before the cancellation goes on.
        cancelled = True
    except Exception as exc:
        # Anything may break mid-stream (the connection, a translator on an odd event); the
        # client already has a 200, so it gets an error event, and what was produced is billed.
        failure = _Failure("broken", f"deployment '{deployment.name}'")
        logger.warning("stream from %s broke: %s", deployment.name, exc.__class__.__name__)
    finally:
        response.release()
        watcher.cancel()
    call.upstream_ms = (time.perf_counter() - _started(call)) * 1000
    if gone.is_set():
        call.client_disconnected = True
    error = _failure_error(failure) if failure is not None else None
    if error is not None:
        call.error_type = error.code
    if cancelled:
        health.attempt_released(call)  # cut by us, not by the deployment: says nothing of it
    else:
        _report_stream(call, failure)
    complete = failure is None and not cancelled and not call.client_disconnected
    call.usage = _stream_usage(call, stream, complete)
    if call.log_bodies:
        call.response_body = {"streamed_content": "".join(stream.produced)}
    if cancelled:
        call.error_type = "stream_cancelled"
        await _record(call)
        raise asyncio.CancelledError
    if settings.PROXY_COST_IN_USAGE:
        stream.cost_usd = _cost(call)
    tail = stream.tail(call.usage, error, call.client_disconnected)
    await _record(call)
    await send({"type": "http.response.body", "body": tail, "more_body": False})


def _stream_usage(call: Call, stream: ClientStream, complete: bool) -> Usage:
    """The usage the stream reported, or the gateway's count of what it produced.

    A stream cut short (by the upstream, the client or a shutdown) may have reported only
    its opening counts (Anthropic's `message_start` says 1 output token): it is billed at
    least what the client received, and flagged estimated when that is more.
    """
    usage = stream.usage
    if usage is None or usage.suspect:
        return Usage(
            call.endpoint.estimate_input(call.body),
            estimate_text_tokens("".join(stream.produced)),
            0,
            estimated=True,
            suspect=usage is not None,
        )
    if complete:
        return usage
    produced = estimate_text_tokens("".join(stream.produced))
    if produced <= usage.output_tokens and usage.input_tokens:
        return usage
    return Usage(
        usage.input_tokens or call.endpoint.estimate_input(call.body),
        max(usage.output_tokens, produced),
        usage.cached_tokens,
        usage.cache_write_tokens,
        estimated=True,
    )


def _report_stream(call: Call, failure: _Failure | None) -> None:
    if failure is not None:
        health.attempt_failed(call, failure.kind)
    elif call.client_disconnected:
        health.attempt_released(call)
    else:
        ttft = None
        if call.ttft_ms is not None and call.upstream_started is not None:
            # Measured from this attempt's start, not the client's, for the deployment's EWMA.
            ttft = call.ttft_ms - (call.upstream_started - call.started) * 1000
        health.attempt_succeeded(call, call.upstream_ms, ttft)


def _cost(call: Call) -> Decimal:
    deployment = call.deployment
    usage = call.usage
    if deployment is None or usage is None:
        return Decimal(0)
    return catalog.prices.cost_for(
        deployment.price_model_name,
        usage.input_tokens,
        usage.output_tokens,
        usage.cached_tokens,
        call.created_at,
        override=price_override(deployment),
        cache_write_tokens=usage.cache_write_tokens,
    )


async def _record(call: Call) -> None:
    now = time.perf_counter()
    latency_ms = (now - call.started) * 1000
    usage = call.usage or Usage()
    deployment = call.deployment
    if call.cost_usd is None:  # priced already when the client is told the cost
        call.cost_usd = _cost(call)
    event = UsageEvent(
        request_id=call.request_id,
        created_at=call.created_at,
        **call.key.attribution(),
        end_user=call.end_user[:256],
        model=call.model.name,
        deployment=deployment.name if deployment else "",
        provider=deployment.provider if deployment else "",
        request_type=call.kind,
        is_stream=call.stream,
        status_code=call.status,
        error_type=call.error_type,
        input_tokens=usage.input_tokens,
        output_tokens=usage.output_tokens,
        cached_tokens=usage.cached_tokens,
        cache_write_tokens=usage.cache_write_tokens,
        tokens_estimated=usage.estimated,
        usage_suspect=usage.suspect,
        cost_usd=call.cost_usd,
        latency_ms=round(latency_ms, 3),
        ttft_ms=round(call.ttft_ms, 3) if call.ttft_ms is not None else None,
        upstream_latency_ms=round(call.upstream_ms, 3) if call.upstream_ms is not None else None,
        overhead_ms=(
            round(latency_ms - call.upstream_ms, 3) if call.upstream_ms is not None else None
        ),
        attempts=max(call.attempts, 1),
        client_disconnected=call.client_disconnected,
        tags=call.tags,
        request_body=call.body if call.log_bodies else None,
        response_body=call.response_body,
        region=call.region or row_region(call.key, call.tags),
    )
    await _settle(call)
    await get_usage_buffer().put(event)
    metrics.observe_usage(event, team=call.key.team_slug)
