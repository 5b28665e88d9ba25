"""The time-to-first-token rule over each upstream wire: which events begin the answer."""

import pytest

from apps.proxy.first_token import begins_answer

pytestmark = pytest.mark.embedded


@pytest.mark.parametrize(
    "event",
    [
        {"type": "message_start", "message": {"usage": {"output_tokens": 1}}},
        {"type": "content_block_start", "index": 0, "content_block": {"type": "text"}},
        {"type": "ping"},
        {"type": "response.created", "response": {}},
        {"type": "response.in_progress", "response": {}},
        {"type": "response.output_item.added", "item": {}},
        {"choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}}]},
        {"choices": [{"index": 0, "delta": {"role": "assistant"}, "finish_reason": None}]},
    ],
)
def test_opening_events_hold_no_token(event):
    assert not begins_answer(event)


@pytest.mark.parametrize(
    "event",
    [
        {"type": "content_block_delta", "delta": {"type": "text_delta", "text": "Hi"}},
        {"type": "message_delta", "delta": {"stop_reason": "end_turn"}},
        {"type": "message_stop"},
        {"type": "response.output_text.delta", "delta": "Hi"},
        {"type": "response.function_call_arguments.delta", "delta": "{"},
        {"type": "response.completed", "response": {}},
        {"type": "error", "error": {"type": "overloaded_error"}},
        {"choices": [{"index": 0, "delta": {"content": "Hi"}}]},
        {"choices": [{"index": 0, "delta": {"tool_calls": [{"index": 0}]}}]},
        {"choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]},
        {"choices": [{"index": 0, "text": "Hi"}]},  # completions
        {"choices": [], "usage": {"prompt_tokens": 3}},
        {"id": "an unknown shape is not held back"},
    ],
)
def test_content_or_an_end_begins_the_answer(event):
    assert begins_answer(event)
