"""The `X-Gateway-Metadata` header: validation and merging with default tags."""

import orjson

from apps.usage.tags import tags_problem

from .errors import BadRequest

MAX_HEADER_BYTES = 8 * 1024
MAX_KEYS = 32
LOG_REQUEST_TAG = "log_request"
HEADER_NAMES = (b"x-gateway-metadata", b"x-tfy-metadata")


def _invalid(message: str) -> BadRequest:
    return BadRequest(message, param="X-Gateway-Metadata", code="invalid_metadata")


def parse_metadata_header(raw: bytes | None) -> dict[str, str]:
    """Parse and validate a metadata header value; raise BadRequest naming the problem."""
    if raw is None or not raw.strip():
        return {}
    if len(raw) > MAX_HEADER_BYTES:
        raise _invalid(f"X-Gateway-Metadata is {len(raw)} bytes; the limit is {MAX_HEADER_BYTES}")
    try:
        # orjson decodes the bytes as UTF-8 itself and refuses lone surrogates.
        tags = orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise _invalid(f"X-Gateway-Metadata is not {_what_is_wrong(raw)}") from None
    if not isinstance(tags, dict):
        raise _invalid("X-Gateway-Metadata must be a JSON object of string keys to string values")
    if len(tags) > MAX_KEYS:
        raise _invalid(f"X-Gateway-Metadata has {len(tags)} keys; the limit is {MAX_KEYS}")
    problem = tags_problem(tags, what="metadata", json_text=raw)
    if problem:
        raise _invalid(f"X-Gateway-Metadata: {problem}")
    return tags


def metadata_header(headers: dict[bytes, bytes]) -> bytes | None:
    """The request's metadata header value (either of its names), or None."""
    for name in HEADER_NAMES:
        if name in headers:
            return headers[name]
    return None


def _what_is_wrong(raw: bytes) -> str:
    """Only on the error path: tell bytes that are not text from text that is not JSON."""
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError:
        return "UTF-8 text"
    return "valid JSON"


def merge_tags(
    *,
    team_defaults: dict[str, str],
    owner_defaults: dict[str, str],
    key_defaults: dict[str, str],
    request_tags: dict[str, str],
    enforced_keys: frozenset[str],
) -> dict[str, str]:
    """Team defaults, then virtual account, then key, then the request; enforced keys win."""
    merged = {**team_defaults, **owner_defaults, **key_defaults, **request_tags}
    for key in enforced_keys:
        for source in (key_defaults, owner_defaults, team_defaults):
            if key in source:
                merged[key] = source[key]
                break
    return merged
