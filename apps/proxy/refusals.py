"""Usage rows for requests the gateway refused itself, after the key was authenticated.

A request turned away before any upstream call (a body, metadata or model check: 400, 403,
404, 413, 415) still belongs to the key that sent it: the team sees its failed calls beside
the good ones and an owner can find the client sending bad bodies. The row has the refusal's
status, its error code as `error_type`, no tokens, no cost and no deployment. Requests
without a valid key (401) record nothing: there is nobody to attribute them to.
"""

import logging
import time
from dataclasses import replace
from datetime import UTC, datetime

from apps.usage.buffer import BUFFER_ERRORS, get_usage_buffer
from apps.usage.capture import clean_text
from apps.usage.event import UsageEvent
from apps.usage.models import UsageRecord

from . import metrics
from .auth import KeyInfo
from .catalog import catalog
from .endpoints.base import Endpoint
from .errors import BadRequest, GatewayError
from .metadata import metadata_header, parse_metadata_header
from .regions import row_region

logger = logging.getLogger(__name__)

MODEL_CHARS = UsageRecord._meta.get_field("model").max_length
END_USER_CHARS = UsageRecord._meta.get_field("end_user").max_length


def _request_tags(headers: dict[bytes, bytes]) -> dict[str, str]:
    """The request's own tags when its metadata header is valid; none when it is the refusal."""
    try:
        return parse_metadata_header(metadata_header(headers))
    except BadRequest:
        return {}


async def record_refusal(
    *,
    error: GatewayError,
    key: KeyInfo,
    endpoint: Endpoint,
    body: object,
    headers: dict[bytes, bytes],
    request_id: str,
    started: float,
) -> None:
    """Put the usage row of a refused request in the usage buffer.

    `body` is the parsed request body, or None when the refusal came before it was parsed
    (415, 413, invalid JSON). Awaited before the error is sent, like every usage row, so an
    answered request is never missing from the ledger.
    """
    fields = body if isinstance(body, dict) else {}
    model = fields.get("model")
    end_user = endpoint.end_user(fields)
    tags = key.tags_with(_request_tags(headers))
    event = UsageEvent(
        request_id=request_id,
        created_at=datetime.now(UTC),
        **key.attribution(),
        end_user=clean_text(end_user, END_USER_CHARS),
        model=clean_text(model, MODEL_CHARS) if isinstance(model, str) else "",
        request_type=endpoint.kind,
        is_stream=fields.get("stream") is True and endpoint.is_stream(fields),
        status_code=error.status,
        error_type=error.code or error.error_type,
        latency_ms=round((time.perf_counter() - started) * 1000, 3),
        # No deployment was tried.
        attempts=0,
        tags=tags,
        region=row_region(key, tags),
    )
    try:
        await get_usage_buffer().put(event)
    except BUFFER_ERRORS:
        # Even the spool failed (disk full): the client still gets its 4xx, not a 500.
        logger.exception("usage row of refused request %s lost", request_id)
        return
    # The requested model name is the client's text: only names the catalog serves become
    # metric labels, so made-up names cannot grow the label set without bound.
    if event.model not in catalog.models:
        event = replace(event, model=metrics.OTHER)
    metrics.observe_usage(event, team=key.team_slug)
