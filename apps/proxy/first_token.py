"""Whether an upstream stream event begins the answer: the time-to-first-token rule.

A deployment may open its stream at once with events that hold no token yet (Anthropic's
`message_start` and `ping`, the Responses API's `response.created`, a chat chunk with only the
role) and then stall. The TTFT limit waits for the first event that carries answer content,
or ends the answer, whatever the upstream's wire: OpenAI chunks, Anthropic or Responses
events.
"""

from __future__ import annotations

from typing import Any

# Typed events sent before any token; every other typed event begins (or ends) the answer.
PREAMBLE_TYPES = frozenset(
    {
        "message_start",
        "content_block_start",
        "ping",
        "response.created",
        "response.in_progress",
        "response.queued",
        "response.output_item.added",
        "response.content_part.added",
    }
)
_DELTA_CONTENT = ("content", "tool_calls", "function_call", "reasoning_content", "refusal")


def begins_answer(event: dict[str, Any]) -> bool:
    kind = event.get("type")
    if isinstance(kind, str) and "choices" not in event:
        return kind not in PREAMBLE_TYPES
    choices = event.get("choices")
    if not isinstance(choices, list) or not choices:
        return True  # a usage-only chunk, or a shape the gateway does not hold back
    for choice in choices:
        if not isinstance(choice, dict):
            return True
        delta = choice.get("delta")
        if choice.get("finish_reason") or choice.get("text"):
            return True
        if isinstance(delta, dict) and any(delta.get(name) for name in _DELTA_CONTENT):
            return True
    return False
