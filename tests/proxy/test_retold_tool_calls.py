"""Chat tool call deltas retold as Messages blocks and Responses items: one rule for both.

Servers differ in how they number streamed tool calls: OpenAI gives the id on a call's first
delta only; some repeat it on every delta; some number every call 0 and tell calls apart by
their ids. Each retelling must make one block (item) per call, whichever the server.
"""

import orjson
import pytest

from apps.proxy.endpoints.messages_via_chat import MessagesViaChat
from apps.proxy.endpoints.responses_via_chat import ResponsesViaChat
from apps.proxy.providers.registry import provider_for
from tests.proxy.helpers import deployment_info

pytestmark = pytest.mark.embedded

DEPLOYMENT = deployment_info(name="chat", api_key="")


def delta(index: int, call_id: str | None, name: str | None, arguments: str) -> dict:
    function = {"arguments": arguments, **({"name": name} if name else {})}
    call = {"index": index, "function": function, **({"id": call_id} if call_id else {})}
    return {"id": "c1", "choices": [{"index": 0, "delta": {"tool_calls": [call]}}]}


OPENAI_WAY = [
    delta(0, "call_a", "weather", '{"city":'),
    delta(0, None, None, '"Oslo"}'),
    delta(1, "call_b", "time", '{"tz":'),
    delta(1, None, None, '"CET"}'),
]
ID_ON_EVERY_DELTA = [
    delta(0, "call_a", "weather", '{"city":'),
    delta(0, "call_a", None, '"Oslo"}'),
    delta(1, "call_b", "time", '{"tz":'),
    delta(1, "call_b", None, '"CET"}'),
]
EVERY_CALL_AT_ZERO = [
    delta(0, "call_a", "weather", '{"city":'),
    delta(0, None, None, '"Oslo"}'),
    delta(0, "call_b", "time", '{"tz":'),
    delta(0, None, None, '"CET"}'),
]
WAYS = [OPENAI_WAY, ID_ON_EVERY_DELTA, EVERY_CALL_AT_ZERO]


def joined(events: list[dict], kind: str, key: str, piece) -> list[str]:
    """The pieces of the `kind` events, joined per `key` value, in first-seen order."""
    found: dict[object, str] = {}
    for event in events:
        if event["type"] == kind:
            found[event[key]] = found.get(event[key], "") + piece(event)
    return list(found.values())


def events(stream, chunks: list[dict]) -> list[dict]:
    raw = b"".join(b for chunk in chunks for b in stream.feed(None, chunk, orjson.dumps(chunk)))
    return [orjson.loads(line[6:]) for line in raw.split(b"\n") if line.startswith(b"data: ")]


@pytest.mark.parametrize("chunks", WAYS)
def test_messages_get_one_tool_use_block_per_call(chunks):
    exchange = MessagesViaChat(provider_for(DEPLOYMENT), DEPLOYMENT)
    found = events(exchange.stream(), chunks)
    starts = [e["content_block"] for e in found if e["type"] == "content_block_start"]
    assert [(b["id"], b["name"]) for b in starts] == [("call_a", "weather"), ("call_b", "time")]
    arguments = joined(found, "content_block_delta", "index", lambda e: e["delta"]["partial_json"])
    assert arguments == ['{"city":"Oslo"}', '{"tz":"CET"}']


@pytest.mark.parametrize("chunks", WAYS)
def test_responses_get_one_function_call_item_per_call(chunks):
    exchange = ResponsesViaChat(provider_for(DEPLOYMENT), DEPLOYMENT)
    exchange.build({"model": "m", "input": "Weather and time in Oslo?", "stream": True}, {})
    found = events(exchange.stream(), chunks)
    added = [e["item"] for e in found if e["type"] == "response.output_item.added"]
    assert [(i["call_id"], i["name"]) for i in added] == [("call_a", "weather"), ("call_b", "time")]
    kind = "response.function_call_arguments.delta"
    arguments = joined(found, kind, "item_id", lambda e: e["delta"])
    assert arguments == ['{"city":"Oslo"}', '{"tz":"CET"}']
