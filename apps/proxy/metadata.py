"""The `X-Gateway-Metadata` header: validation and merging with default tags."""

import orjson

from .errors import BadRequest

MAX_HEADER_BYTES = 8 * 1024
MAX_KEYS = 32
MAX_KEY_CHARS = 64
MAX_VALUE_CHARS = 256
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
        tags = orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise _invalid("X-Gateway-Metadata is not valid JSON") from None
    if not isinstance(tags, dict):
        raise _invalid("X-Gateway-Metadata must be a JSON object of string keys to string values")
    if len(tags) > MAX_KEYS:
        raise _invalid(f"X-Gateway-Metadata has {len(tags)} keys; the limit is {MAX_KEYS}")
    for key, value in tags.items():
        if not key or len(key) > MAX_KEY_CHARS:
            raise _invalid(f"metadata key {key[:80]!r} must be 1 to {MAX_KEY_CHARS} characters")
        if not isinstance(value, str):
            raise _invalid(
                f"metadata value for {key!r} must be a string, not {type(value).__name__}"
            )
        if len(value) > MAX_VALUE_CHARS:
            raise _invalid(
                f"metadata value for {key!r} is longer than {MAX_VALUE_CHARS} characters"
            )
    return tags


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
