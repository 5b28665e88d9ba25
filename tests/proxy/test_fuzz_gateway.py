"""Property-based fuzzing of request bodies and metadata headers against a real gateway.

Hypothesis builds hostile bodies (wrong types, out-of-range numbers, unknown roles, odd
content parts, broken JSON, wrong content types) and metadata headers (control characters,
non-ASCII, non-objects). The invariants, for every example: never a 500, every refusal is
error JSON in OpenAI's shape, and every authenticated request leaves exactly one usage row,
so the writer keeps writing whatever it was fed.
"""

import json
import time

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from apps.usage.models import UsageRecord
from tests import factories
from tests.proxy.helpers import declare_model

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.embedded]

PATHS = ["/v1/chat/completions", "/v1/completions", "/v1/embeddings", "/v1/rerank"]
ROLES = ["system", "developer", "user", "assistant", "tool", "function", "wizard", "", "USER"]
PARAMS = [
    "max_tokens",
    "max_completion_tokens",
    "temperature",
    "top_p",
    "n",
    "presence_penalty",
    "frequency_penalty",
    "logprobs",
    "top_logprobs",
    "seed",
    "stop",
    "stream",
    "stream_options",
    "user",
    "dimensions",
    "encoding_format",
    "top_n",
]
FUZZ = settings(
    max_examples=120,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(10**15), max_value=10**15),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=20),
)
json_values = st.recursive(
    scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)
content_parts = st.fixed_dictionaries(
    {"type": st.sampled_from(["text", "image_url", "input_audio", "file", "refusal", "video"])},
    optional={"text": json_values, "image_url": json_values},
)
messages = st.fixed_dictionaries(
    {"role": st.one_of(st.sampled_from(ROLES), json_values)},
    optional={
        "content": st.one_of(
            json_values, st.text(max_size=40), st.lists(content_parts, max_size=3)
        ),
        "tool_call_id": json_values,
        "name": json_values,
    },
)


@st.composite
def bodies(draw) -> dict:
    body: dict = {"model": draw(st.one_of(st.just("fuzz-chat"), st.just("fuzz-embed"), scalars))}
    body["messages"] = draw(st.one_of(st.lists(messages, max_size=3), json_values))
    body["prompt"] = draw(st.one_of(st.text(max_size=30), json_values))
    body["input"] = draw(st.one_of(st.text(max_size=30), json_values))
    body["query"] = draw(st.one_of(st.text(max_size=30), json_values))
    body["documents"] = draw(st.one_of(st.lists(st.text(max_size=10), max_size=3), json_values))
    for name in draw(st.lists(st.sampled_from(PARAMS), max_size=4, unique=True)):
        body[name] = draw(json_values)
    return body


header_text = st.text(
    alphabet=st.characters(blacklist_categories=("Cs",)), max_size=12
)  # any code point a JSON string may carry, control characters included


def _header_json(tags: dict) -> bytes:
    # Raw UTF-8 for everything HTTP allows in a header; json.dumps escapes C0 controls, and
    # DEL is escaped here, since a raw DEL is refused by the HTTP server itself (not JSON).
    return json.dumps(tags, ensure_ascii=False).replace("\x7f", "\\u007f").encode()


metadata_headers = st.one_of(
    st.dictionaries(header_text, header_text, max_size=5).map(_header_json),
    st.dictionaries(header_text, json_values, max_size=3).map(_header_json),
    # Not JSON at all, but a legal header value (visible ASCII, no surrounding whitespace).
    st.text(
        alphabet=st.characters(min_codepoint=0x21, max_codepoint=0x7E), min_size=1, max_size=30
    ).map(str.encode),
)


class Sent:
    """How many requests the examples sent with the key, to compare with the ledger."""

    def __init__(self) -> None:
        self.count = 0


@pytest.fixture
def fuzz_target(gateway, team):
    user = factories.make_user("fuzzer", team=team)
    key, plaintext = factories.make_key(user=user)
    declare_model("fuzz-chat", gateway.simulator_url, "demo-chat")
    declare_model("fuzz-embed", gateway.simulator_url, "demo-embed", mode="embedding")
    gateway.wait_for_model(plaintext, "fuzz-chat")
    gateway.wait_for_model(plaintext, "fuzz-embed")
    with httpx.Client(base_url=gateway.url, timeout=30) as client:
        yield client, plaintext, key, Sent()


def _assert_answer_is_sound(response: httpx.Response) -> None:
    assert response.status_code != 500, response.text[:500]
    kind = response.headers.get("content-type", "")
    if response.status_code == 200 and kind.startswith("text/event-stream"):
        assert response.text.rstrip().endswith("data: [DONE]")
        return
    payload = response.json()  # every answer, refusals included, is JSON
    if response.status_code >= 400:
        error = payload["error"]
        assert isinstance(error["message"], str) and error["message"]
        assert isinstance(error["type"], str) and "param" in error and "code" in error


def _assert_every_request_has_one_row(key, sent: Sent) -> None:
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        rows = UsageRecord.objects.filter(api_key_id=key.id).count()
        if rows >= sent.count:
            break
        time.sleep(0.1)
    assert UsageRecord.objects.filter(api_key_id=key.id).count() == sent.count
    assert not UsageRecord.objects.filter(api_key_id=key.id, status_code=500).exists()


def test_fuzzed_bodies_never_get_a_500_and_are_always_recorded(fuzz_target):
    client, plaintext, key, sent = fuzz_target

    @FUZZ
    @given(
        path=st.sampled_from(PATHS),
        body=bodies(),
        content_type=st.sampled_from(
            ["application/json", "application/json; charset=utf-8", "text/plain", None]
        ),
        raw_suffix=st.sampled_from([b"", b"", b"", b"}", b"\x00", b"\xff\xfe"]),
    )
    def probe(path, body, content_type, raw_suffix) -> None:
        headers = {"Authorization": f"Bearer {plaintext}"}
        if content_type:
            headers["Content-Type"] = content_type
        raw = json.dumps(body).encode() + raw_suffix
        response = client.post(path, content=raw, headers=headers)
        sent.count += 1
        _assert_answer_is_sound(response)

    probe()
    _assert_every_request_has_one_row(key, sent)


def test_fuzzed_metadata_headers_never_get_a_500_and_are_always_recorded(fuzz_target):
    client, plaintext, key, sent = fuzz_target
    body = {"model": "fuzz-chat", "messages": [{"role": "user", "content": "hi"}]}

    @FUZZ
    @given(header=metadata_headers)
    def probe(header: bytes) -> None:
        response = client.post(
            "/v1/chat/completions",
            json=body,
            headers={"Authorization": f"Bearer {plaintext}", "X-Gateway-Metadata": header},
        )
        sent.count += 1
        _assert_answer_is_sound(response)
        if response.status_code == 400:
            assert response.json()["error"]["param"] == "X-Gateway-Metadata"

    probe()
    _assert_every_request_has_one_row(key, sent)
    # Whatever was accepted was stored as sent: no control character reached the ledger.
    for tags in UsageRecord.objects.filter(api_key_id=key.id).values_list("tags", flat=True):
        for name, value in tags.items():
            assert not any(ord(c) < 0x20 or ord(c) == 0x7F for c in name + str(value))
