"""Capture-side normalisation: what every usage value must look like before it is a row.

One bad value must never stop other rows from being written, so values are made safe
where they are captured rather than discovered bad by the database:

- strings carry no control characters (PostgreSQL refuses NUL in text and jsonb; CR/LF in
  a tag would forge lines in logs and CSVs) and fit their column;
- token counts are non-negative integers no larger than `MAX_TOKENS_PER_REQUEST`. A count
  an upstream reports outside that bound is not believed: the proxy replaces it with its
  own estimate and flags the row `usage_suspect` (see `sane_token_count`).
"""

from __future__ import annotations

from typing import Any

from .tags import CONTROL_CHARACTER

# No model takes or produces ten million tokens in one request: anything above is a broken
# upstream, and charging it would lock the caller out of their quota for the month.
MAX_TOKENS_PER_REQUEST = 10_000_000

# The characters the metadata header refuses (C0 controls and DEL), removed from anything
# that reached capture another way. Any other Unicode is kept, as sent.
_CONTROL = CONTROL_CHARACTER


def sane_token_count(value: object) -> int | None:
    """`value` as a token count if it is one we believe, else None.

    Whole numbers only (an integral float or a digit string is accepted, since some
    upstreams serialise counts that way); booleans, negatives and values above the bound
    are not counts.
    """
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        count = value
    elif isinstance(value, float) and value.is_integer():
        count = int(value)
    elif isinstance(value, str) and value.isascii() and value.strip().isdigit():
        count = int(value)
    else:
        return None
    return count if 0 <= count <= MAX_TOKENS_PER_REQUEST else None


def clamp_token_count(value: object) -> tuple[int, bool]:
    """A count safe to store, and whether it had to be changed (the row is then suspect).

    The last line of defence, in the writer: the proxy already replaced unbelievable
    upstream counts by estimates, but an event buffered by an older version may not be.
    """
    count = sane_token_count(value)
    if count is not None:
        return count, False
    try:
        number = int(value)  # type: ignore[call-overload]
    except (TypeError, ValueError, OverflowError):
        return 0, True
    return min(max(number, 0), MAX_TOKENS_PER_REQUEST), True


def clean_text(value: object, max_length: int | None = None) -> str:
    """`value` as a string without control characters, cut to `max_length`."""
    text = value if isinstance(value, str) else ("" if value is None else str(value))
    if _CONTROL.search(text):
        text = _CONTROL.sub("", text)
    # Lone surrogates cannot be encoded as UTF-8, so the database would refuse them too.
    if not text.isascii():
        text = text.encode("utf-8", "replace").decode("utf-8")
    return text[:max_length] if max_length is not None else text


def clean_tags(tags: object) -> dict[str, Any]:
    """Tags as a flat dict of clean strings; keys that are empty once cleaned are dropped."""
    if not isinstance(tags, dict):
        return {}
    cleaned: dict[str, Any] = {}
    for key, value in tags.items():
        name = clean_text(key, 128)
        if not name:
            continue
        if isinstance(value, str):
            cleaned[name] = clean_text(value, 512)
        elif value is None or isinstance(value, bool | int | float):
            cleaned[name] = value
        else:
            cleaned[name] = clean_json(value)
    return cleaned


def clean_json(value: Any) -> Any:
    """A JSON value (a logged body) without the NULs and lone surrogates jsonb refuses.

    Newlines and tabs stay: prompts are made of them. Bodies are logged only for teams that
    asked for it, and this runs in the writer, off the request path.
    """
    if isinstance(value, str):
        return _clean_body_text(value)
    if isinstance(value, dict):
        return {_clean_body_text(str(k)): clean_json(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [clean_json(item) for item in value]
    return value


def _clean_body_text(text: str) -> str:
    if "\x00" in text:
        text = text.replace("\x00", "")
    if not text.isascii():
        text = text.encode("utf-8", "replace").decode("utf-8")
    return text
