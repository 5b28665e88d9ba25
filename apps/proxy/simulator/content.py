"""Deterministic content for the simulator: token counting, answer text, tool arguments,
embedding vectors and rerank scores.

`count_tokens` and `count_message_tokens` are the one token estimate of the project: the
simulator bills prompts and completions with them, and the gateway imports them to estimate
usage when an upstream reports none. Everything else here is a pure function of its input,
so a streamed answer and a whole answer to the same request are the same text.
"""

import base64
import hashlib
import json
import re
from array import array
from collections.abc import Iterable, Mapping
from functools import lru_cache
from typing import Any

# A word (letters, digits, underscore) or one punctuation mark.
_PIECE_RE = re.compile(r"\w+|[^\w\s]")
_ASCII_TOKEN_RE = re.compile(r"\w{1,4}|[^\w\s]")
# Splits a string into token-sized pieces whose concatenation is the string itself.
_STREAM_SPLIT_RE = re.compile(r"\s*(?:\w+|[^\w\s])|\s+")
_WORD_RE = re.compile(r"\w+")

# OpenAI's accounting for chat framing: a few tokens per message plus the reply primer.
TOKENS_PER_MESSAGE = 3
TOKENS_REPLY_PRIMER = 3
# What an image part costs, whatever its size (OpenAI's low-detail price).
TOKENS_PER_IMAGE = 85

# Every word is at most four ASCII letters, so each one is exactly one token for
# `count_tokens` and an answer of n pieces counts as n tokens.
WORDS = (
    "the", "gate", "toll", "road", "data", "node", "fast", "slow", "byte", "flow",
    "path", "keep", "send", "each", "time", "move", "over", "into", "with", "from",
    "a", "an", "of", "to", "in", "on", "by", "as", "is", "it",
    "can", "may", "will", "does", "runs", "uses", "sees", "adds", "logs", "maps",
    "rate", "cost", "plan", "team", "user", "key", "bill", "unit", "loop", "test",
    "mode", "line", "page", "call", "hold", "wait", "next", "last", "more", "less",
    "blue", "red", "warm", "cold",
)  # fmt: skip
_MASK64 = (1 << 64) - 1


def count_tokens(text: str) -> int:
    """Estimate the tokens of `text`: about one per four characters of a word, one per
    punctuation mark, one per non-ASCII character (CJK scripts tokenise about that densely).
    """
    if not text:
        return 0
    if text.isascii():
        # One match per started group of four word characters: the same count as the loop
        # below, in C.
        return len(_ASCII_TOKEN_RE.findall(text))
    total = 0
    for piece in _PIECE_RE.findall(text):
        total += (len(piece) + 3) >> 2 if piece.isascii() else len(piece)
    return total


def content_text(content: Any) -> str:
    """The text of a message's content: a string, or a list of OpenAI/Anthropic parts."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        texts = []
        for part in content:
            if isinstance(part, str):
                texts.append(part)
            elif isinstance(part, Mapping):
                if isinstance(part.get("text"), str):
                    texts.append(part["text"])
                elif part.get("type") == "tool_result":
                    texts.append(content_text(part.get("content")))
        return "\n".join(texts)
    return str(content)


def _content_tokens(content: Any) -> int:
    if content is None:
        return 0
    if isinstance(content, str):
        return count_tokens(content)
    if not isinstance(content, list):
        return count_tokens(str(content))
    total = 0
    for part in content:
        if isinstance(part, str):
            total += count_tokens(part)
            continue
        if not isinstance(part, Mapping):
            continue
        kind = part.get("type")
        if isinstance(part.get("text"), str):
            total += count_tokens(part["text"])
        elif kind in ("image_url", "image", "input_image"):
            total += TOKENS_PER_IMAGE
        elif kind == "tool_use":
            total += count_tokens(str(part.get("name", ""))) + count_tokens(
                _compact(part.get("input"))
            )
        elif kind == "tool_result":
            total += _content_tokens(part.get("content"))
    return total


def count_message_tokens(
    messages: Iterable[Mapping[str, Any]],
    *,
    system: Any = None,
    tools: Any = None,
) -> int:
    """Estimate the prompt tokens of a chat request (OpenAI or Anthropic message shapes).

    `system` is Anthropic's top-level system prompt (string or text blocks) and `tools` the
    request's tool definitions; both count towards the prompt as they do upstream.
    """
    total = TOKENS_REPLY_PRIMER
    if system:
        total += TOKENS_PER_MESSAGE + _content_tokens(system)
    for message in messages:
        if not isinstance(message, Mapping):
            continue
        total += TOKENS_PER_MESSAGE + _content_tokens(message.get("content"))
        name = message.get("name")
        if isinstance(name, str):
            total += count_tokens(name)
        for call in message.get("tool_calls") or ():
            function = (call.get("function") if isinstance(call, Mapping) else None) or {}
            total += count_tokens(str(function.get("name", "")))
            total += count_tokens(str(function.get("arguments", "")))
    if tools:
        total += count_tokens(_compact(tools))
    return total


def _compact(value: Any) -> str:
    if isinstance(value, str):
        return value
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False, default=str)


def seed_of(*parts: Any) -> int:
    """A stable 64-bit seed from JSON-able values (the same across processes and runs)."""
    digest = hashlib.blake2b(_compact(parts).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little")


def default_length(seed: int) -> int:
    """The natural answer length for a prompt: 20 to 60 tokens."""
    return 20 + seed % 41


@lru_cache(maxsize=4096)
def answer_pieces(seed: int, n_tokens: int) -> tuple[str, ...]:
    """`n_tokens` one-token pieces of sentence-shaped text; joined they are the answer.

    The text for n tokens is a prefix of the text for more, like a model cut short by
    max_tokens. A complete answer ends with a full stop.
    """
    pieces: list[str] = []
    state = seed or 1
    remaining = n_tokens
    while remaining > 0:
        state = (state * 6364136223846793005 + 1442695040888963407) & _MASK64
        if remaining == 1:
            words = 1
        else:
            words = min(4 + (state >> 40) % 9, remaining - 1)
            if 0 < remaining - words - 1 < 4:
                # A stub sentence at the end reads badly: lengthen this one to the end.
                words = remaining - 1
        for index in range(words):
            state = (state * 6364136223846793005 + 1442695040888963407) & _MASK64
            word = WORDS[(state >> 33) % len(WORDS)]
            if index == 0:
                word = word.capitalize()
            pieces.append(word if not pieces else " " + word)
        remaining -= words
        if remaining > 0:
            pieces.append(".")
            remaining -= 1
    return tuple(pieces)


def apply_stop(pieces: tuple[str, ...], stops: list[str]) -> tuple[tuple[str, ...], str | None]:
    """Cut the answer before the first stop sequence; returns the pieces and the matched stop."""
    if not stops:
        return pieces, None
    text = "".join(pieces)
    cut, matched = -1, None
    for stop in stops:
        if stop:
            found = text.find(stop)
            if found != -1 and (cut == -1 or found < cut):
                cut, matched = found, stop
    if matched is None:
        return pieces, None
    kept: list[str] = []
    length = 0
    for piece in pieces:
        if length + len(piece) > cut:
            if cut > length:
                kept.append(piece[: cut - length])
            break
        kept.append(piece)
        length += len(piece)
    return tuple(kept), matched


def split_for_stream(text: str) -> list[str]:
    """Token-sized pieces of `text` (for streaming tool arguments); they join back to it."""
    return _STREAM_SPLIT_RE.findall(text) or [text]


def tool_arguments(tool_parameters: Any, prompt: str) -> dict[str, Any]:
    """Arguments for a tool call that satisfy the tool's JSON schema, derived from the prompt.

    String parameters that look like a place take the last capitalised word of the prompt
    ("weather in Paris" gives "Paris"), so a demo reads naturally.
    """
    schema = tool_parameters if isinstance(tool_parameters, Mapping) else {}
    properties = schema.get("properties") or {}
    if not isinstance(properties, Mapping):
        return {}
    required = schema.get("required")
    names = [n for n in required if n in properties] if isinstance(required, list) else []
    names = names or list(properties)
    capitalised = [w for w in _WORD_RE.findall(prompt) if w[:1].isupper() and w.isalpha()]
    place = capitalised[-1] if capitalised else "Paris"
    return {name: _example_value(name, properties[name], place) for name in names}


def _example_value(name: str, spec: Any, place: str) -> Any:
    spec = spec if isinstance(spec, Mapping) else {}
    if isinstance(spec.get("enum"), list) and spec["enum"]:
        return spec["enum"][0]
    kind = spec.get("type")
    if isinstance(kind, list):
        kind = next((k for k in kind if k != "null"), "string")
    if kind in ("integer", "number"):
        return 1
    if kind == "boolean":
        return True
    if kind == "array":
        return [_example_value(name, spec.get("items"), place)]
    if kind == "object":
        return tool_arguments(spec, place)
    lowered = name.lower()
    if any(hint in lowered for hint in ("location", "city", "place", "where")):
        return place
    return "sim"


@lru_cache(maxsize=256)  # small: a vector of 8192 dimensions weighs a few hundred KB
def embedding(text: str, dimensions: int) -> tuple[list[float], str]:
    """A unit vector for `text` as floats and as base64 of little-endian float32.

    The floats are rounded to float32, so both encodings decode to exactly the same values.
    """
    raw = array("h", hashlib.shake_256(text.encode()).digest(dimensions * 2))
    norm = sum(v * v for v in raw) ** 0.5 or 1.0
    vector = array("f", [v / norm for v in raw])
    packed = vector.tobytes() if _LITTLE_ENDIAN else _swapped(vector)
    return vector.tolist(), base64.b64encode(packed).decode()


def _swapped(vector: "array[float]") -> bytes:
    copy = array("f", vector)
    copy.byteswap()
    return copy.tobytes()


_LITTLE_ENDIAN = array("H", [1]).tobytes() == b"\x01\x00"


def rerank_scores(query: str, documents: list[str]) -> list[float]:
    """Relevance in [0, 1]: word overlap with the query, with a tiny hash-based tie-break."""
    query_words = {w.lower() for w in _WORD_RE.findall(query)}
    scores = []
    for document in documents:
        words = {w.lower() for w in _WORD_RE.findall(document)}
        overlap = len(query_words & words)
        base = overlap / ((len(query_words) * len(words)) ** 0.5) if overlap else 0.0
        jitter = (seed_of(query, document) % 1000) / 1_000_000
        scores.append(round(min(1.0, base * 0.99 + jitter), 6))
    return scores
