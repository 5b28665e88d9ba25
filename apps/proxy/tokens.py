"""Token estimates for when an upstream reports no usage (rows are then marked estimated).

About four characters a token, the usual rule of thumb for English with BPE tokenizers.
"""

from typing import Any


def estimate_text_tokens(text: str) -> int:
    return (len(text) + 3) // 4 if text else 0


def _content_text(content: object) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        texts = [part.get("text") for part in content if isinstance(part, dict)]
        return " ".join(text for text in texts if isinstance(text, str))
    return ""


def estimate_content_tokens(content: object) -> int:
    """Tokens of a message content (text, or a list of parts); anything else counts 0."""
    return estimate_text_tokens(_content_text(content))


def estimate_messages_tokens(messages: list[Any]) -> int:
    total = 3  # priming of the assistant's reply
    for message in messages:
        if isinstance(message, dict):
            total += 4 + estimate_text_tokens(_content_text(message.get("content")))
    return total


def estimate_input_tokens(kind: str, body: dict[str, Any]) -> int:
    if kind == "chat":
        return estimate_messages_tokens(body.get("messages") or [])
    if kind == "completion":
        prompt = body.get("prompt")
        texts = prompt if isinstance(prompt, list) else [prompt]
        return sum(estimate_text_tokens(t) for t in texts if isinstance(t, str))
    if kind == "embedding":
        value = body.get("input")
        texts = value if isinstance(value, list) else [value]
        return sum(estimate_text_tokens(t) for t in texts if isinstance(t, str))
    if kind == "rerank":
        docs = body.get("documents") or []
        texts = [d if isinstance(d, str) else (d or {}).get("text", "") for d in docs]
        query_tokens = estimate_text_tokens(body.get("query") or "")
        return sum(query_tokens + estimate_text_tokens(t) for t in texts)
    return 0
