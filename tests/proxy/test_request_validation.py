"""Bodies and credentials are checked before any upstream call, and refusals are recorded.

End to end against a real gateway process; the upstream is a simulator of this module's own
(a real HTTP server), so its request history shows exactly which calls reached it. Every
refusal after authentication must leave a 4xx usage row with no tokens and no cost.
"""

from decimal import Decimal

import httpx
import openai
import orjson
import pytest
from openai import OpenAI

from apps.proxy.app import check_one_credential
from apps.proxy.errors import BadRequest, Unauthorized
from apps.proxy.providers.base import CHAT, COMPLETION, EMBEDDING, RERANK
from apps.proxy.validation import UnsupportedMediaType, check_content_type, validate_body
from apps.usage.models import UsageRecord
from tests import factories
from tests.proxy.helpers import declare_model, wait_for_usage
from tests.proxy.simulator_server import start_simulator

MESSAGES = [{"role": "user", "content": "Count down from three."}]
CHAT_URL = "/v1/chat/completions"


@pytest.fixture(scope="module")
def upstream():
    """A simulator only this module's models call: its history is the upstream call count."""
    base_url, stop = start_simulator()
    yield base_url
    stop()


class Setup:
    def __init__(self, gateway, upstream: str, key, secret: str) -> None:
        self.gateway = gateway
        self.upstream = upstream
        self.key = key
        self.secret = secret

    def post(self, path: str, body=None, *, headers=None, content=None) -> httpx.Response:
        sent = [("Authorization", f"Bearer {self.secret}")] if headers is None else headers
        kwargs = {"json": body} if content is None else {"content": content}
        return httpx.post(f"{self.gateway.url}{path}", headers=sent, timeout=30, **kwargs)

    def upstream_calls(self) -> int:
        return len(httpx.get(f"{self.upstream}/_sim/requests").json()["requests"])

    def assert_refused(
        self, response: httpx.Response, status: int, param: str | None, code: str, model: str
    ) -> UsageRecord:
        """The error is in OpenAI's shape, nothing went upstream, and the ledger has the row."""
        assert response.status_code == status, response.text
        error = response.json()["error"]
        assert set(error) >= {"message", "type", "param", "code"}
        assert error["type"] == "invalid_request_error"
        assert (error["param"], error["code"]) == (param, code)
        assert self.upstream_calls() == 0
        row = wait_for_usage(response.headers["x-request-id"])
        assert (row.status_code, row.error_type, row.model) == (status, code, model)
        assert (row.input_tokens, row.output_tokens, row.cached_tokens) == (0, 0, 0)
        assert row.cost_usd == Decimal(0)
        assert (row.api_key_id, row.team_id, row.user_id) == (
            self.key.id,
            self.key.team_id,
            self.key.user_id,
        )
        assert (row.deployment, row.attempts) == ("", 0)
        return row


@pytest.fixture
def setup(gateway, upstream, api_key):
    key, secret = api_key
    declare_model("val-chat", f"{upstream}/v1", "sim-chat")
    declare_model("val-embed", f"{upstream}/v1", "sim-embed", mode="embedding")
    declare_model("val-rerank", f"{upstream}/v1", "sim-rerank", mode="rerank")
    for name in ("val-chat", "val-embed", "val-rerank"):
        gateway.wait_for_model(secret, name)
    assert httpx.post(f"{upstream}/_sim/reset").status_code == 200
    return Setup(gateway, upstream, key, secret)


def chat(**fields) -> dict:
    return {"model": "val-chat", "messages": MESSAGES, **fields}


# --- end to end: refusals --------------------------------------------------------------------


@pytest.mark.django_db(transaction=True)
def test_the_simulator_history_counts_calls_the_gateway_forwards(setup):
    response = setup.post(CHAT_URL, chat(temperature=2, max_tokens=1))
    assert response.status_code == 200, response.text
    assert setup.upstream_calls() == 1
    row = wait_for_usage(response.headers["x-request-id"])
    assert row.status_code == 200 and row.attempts == 1


@pytest.mark.django_db(transaction=True)
def test_a_body_not_declared_as_json_is_415(setup):
    refused = [
        "text/plain",
        "application/x-www-form-urlencoded",
        "application/jsonx",
        "application/json; charset=latin-1",
        "",
    ]
    for content_type in refused:
        headers = [("Authorization", f"Bearer {setup.secret}"), ("Content-Type", content_type)]
        response = setup.post(CHAT_URL, headers=headers, content=orjson.dumps(chat()))
        # Decided on the header: the body is not read as JSON, so the row has no model.
        setup.assert_refused(response, 415, "Content-Type", "unsupported_media_type", "")


@pytest.mark.django_db(transaction=True)
def test_json_content_types_and_a_missing_header_are_served(setup):
    served = ["application/json", "Application/JSON; charset=UTF-8", "application/vnd.api+json"]
    for content_type in [*served, None]:
        headers = [("Authorization", f"Bearer {setup.secret}")]
        if content_type is not None:
            headers.append(("Content-Type", content_type))
        response = setup.post(CHAT_URL, headers=headers, content=orjson.dumps(chat()))
        assert response.status_code == 200, (content_type, response.text)
    assert setup.upstream_calls() == len(served) + 1


@pytest.mark.django_db(transaction=True)
def test_a_415_leaves_the_connection_usable(setup):
    # The refused body is never read; the next request on the same connection still works.
    with httpx.Client(base_url=setup.gateway.url, timeout=30) as client:
        auth = {"Authorization": f"Bearer {setup.secret}"}
        refused = client.post(
            CHAT_URL,
            content=orjson.dumps(chat()) * 200,
            headers={**auth, "Content-Type": "text/plain"},
        )
        served = client.post(CHAT_URL, json=chat(), headers=auth)
    assert (refused.status_code, served.status_code) == (415, 200)
    assert setup.upstream_calls() == 1


MALFORMED_MESSAGES = [
    ([{"role": "wizard", "content": "hi"}], "messages[0].role", "invalid_value"),
    ([{"role": "user", "content": 5}], "messages[0].content", "invalid_type"),
    ([{"role": "user"}], "messages[0].content", "missing_required_parameter"),
    ([{"role": "user", "content": []}], "messages[0].content", "empty_array"),
    (
        [{"role": "user", "content": [{"type": "text", "text": 7}]}],
        "messages[0].content[0].text",
        "invalid_type",
    ),
    (
        [{"role": "user", "content": [{"type": "video", "video": {}}]}],
        "messages[0].content[0].type",
        "invalid_value",
    ),
    (
        [{"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "image_url"}]}],
        "messages[0].content[1].image_url",
        "missing_required_parameter",
    ),
    (
        [{"role": "user", "content": [{"type": "image_url", "image_url": {"detail": "low"}}]}],
        "messages[0].content[0].image_url.url",
        "missing_required_parameter",
    ),
    (
        [{"role": "user", "content": [{"type": "refusal", "refusal": "no"}]}],
        "messages[0].content[0].type",
        "invalid_value",
    ),
    (
        [{"role": "system", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}],
        "messages[0].content[0].type",
        "invalid_value",
    ),
    (
        [*MESSAGES, {"role": "assistant", "content": None}],
        "messages[1].content",
        "missing_required_parameter",
    ),
    (
        [*MESSAGES, {"role": "tool", "content": "18C"}],
        "messages[1].tool_call_id",
        "missing_required_parameter",
    ),
    (
        [*MESSAGES, {"role": "tool", "tool_call_id": 3, "content": "18C"}],
        "messages[1].tool_call_id",
        "invalid_type",
    ),
    ([{"role": "user", "content": "hi", "name": 3}], "messages[0].name", "invalid_type"),
    ([{"role": "function", "content": "x"}], "messages[0].name", "missing_required_parameter"),
    (
        [*MESSAGES, {"role": "assistant", "content": None, "tool_calls": {"id": "c"}}],
        "messages[1].tool_calls",
        "invalid_type",
    ),
]


@pytest.mark.django_db(transaction=True)
def test_malformed_messages_are_400_naming_the_field(setup):
    for messages, param, code in MALFORMED_MESSAGES:
        print("case:", messages)  # shown with a failure
        response = setup.post(CHAT_URL, chat(messages=messages))
        setup.assert_refused(response, 400, param, code, "val-chat")


@pytest.mark.django_db(transaction=True)
def test_every_role_and_part_type_openai_accepts_is_served(setup):
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "developer", "content": [{"type": "text", "text": "Answer in English."}]},
        {
            "role": "user",
            "name": "ann",
            "content": [
                {"type": "text", "text": "What is the weather here?"},
                {"type": "image_url", "image_url": {"url": "https://example.com/a.png"}},
                {"type": "input_audio", "input_audio": {"data": "UklGRg==", "format": "wav"}},
                {"type": "file", "file": {"file_id": "file-1"}},
            ],
        },
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": "call_1",
                    "type": "function",
                    "function": {"name": "weather", "arguments": "{}"},
                }
            ],
        },
        {"role": "tool", "tool_call_id": "call_1", "content": [{"type": "text", "text": "18C"}]},
        {"role": "assistant", "content": [{"type": "refusal", "refusal": "No forecasts."}]},
        {"role": "function", "name": "weather", "content": None},
        {"role": "user", "content": "Thanks."},
    ]
    response = setup.post(CHAT_URL, chat(messages=messages))
    assert response.status_code == 200, response.text
    assert setup.upstream_calls() == 1


BAD_PARAMETERS = [
    ({"max_tokens": -5}, "max_tokens", "integer_below_min_value"),
    ({"max_tokens": 0}, "max_tokens", "integer_below_min_value"),
    ({"max_tokens": 1.5}, "max_tokens", "invalid_type"),
    ({"max_tokens": 2.0}, "max_tokens", "invalid_type"),
    ({"max_tokens": True}, "max_tokens", "invalid_type"),
    ({"max_completion_tokens": 0}, "max_completion_tokens", "integer_below_min_value"),
    ({"temperature": 99}, "temperature", "decimal_above_max_value"),
    ({"temperature": -0.1}, "temperature", "decimal_below_min_value"),
    ({"temperature": "hot"}, "temperature", "invalid_type"),
    ({"top_p": 1.01}, "top_p", "decimal_above_max_value"),
    ({"n": 0}, "n", "integer_below_min_value"),
    ({"n": 129}, "n", "integer_above_max_value"),
    ({"presence_penalty": -2.5}, "presence_penalty", "decimal_below_min_value"),
    ({"frequency_penalty": 3}, "frequency_penalty", "decimal_above_max_value"),
    ({"logprobs": 1}, "logprobs", "invalid_type"),
    ({"top_logprobs": 21}, "top_logprobs", "integer_above_max_value"),
    ({"seed": 1.5}, "seed", "invalid_type"),
    ({"stop": ["a", "b", "c", "d", "e"]}, "stop", "array_above_max_length"),
    ({"stop": ["a", 1]}, "stop[1]", "invalid_type"),
    ({"stop": 4}, "stop", "invalid_type"),
    ({"stream": "yes"}, "stream", "invalid_type"),
]


@pytest.mark.django_db(transaction=True)
def test_out_of_range_chat_parameters_are_400_without_an_upstream_call(setup):
    for fields, param, code in BAD_PARAMETERS:
        print("case:", fields)  # shown with a failure
        response = setup.post(CHAT_URL, chat(**fields))
        setup.assert_refused(response, 400, param, code, "val-chat")


@pytest.mark.django_db(transaction=True)
def test_in_range_boundaries_are_served(setup):
    fields = {
        "max_tokens": 1,
        "temperature": 0,
        "top_p": 1,
        "n": 1,
        "presence_penalty": -2,
        "frequency_penalty": 2.0,
        "logprobs": True,
        "top_logprobs": 20,
        "seed": -7,
        "stop": ["a", "b", "c", "d"],
    }
    response = setup.post(CHAT_URL, chat(**fields))
    assert response.status_code == 200, response.text
    assert setup.upstream_calls() == 1


@pytest.mark.django_db(transaction=True)
def test_embedding_dimensions_and_rerank_top_n_must_be_positive(setup):
    embed = setup.post("/v1/embeddings", {"model": "val-embed", "input": "x", "dimensions": 0})
    setup.assert_refused(embed, 400, "dimensions", "integer_below_min_value", "val-embed")
    rerank = setup.post(
        "/v1/rerank", {"model": "val-rerank", "query": "q", "documents": ["a"], "top_n": 0}
    )
    setup.assert_refused(rerank, 400, "top_n", "integer_below_min_value", "val-rerank")
    served = setup.post("/v1/embeddings", {"model": "val-embed", "input": "x", "dimensions": 8})
    assert served.status_code == 200 and setup.upstream_calls() == 1


@pytest.mark.django_db(transaction=True)
def test_model_and_metadata_refusals_are_recorded_for_the_key(setup, user):
    unknown = setup.post(CHAT_URL, chat(model="no-such-model"))
    setup.assert_refused(unknown, 404, "model", "model_not_found", "no-such-model")
    wrong_mode = setup.post(CHAT_URL, chat(model="val-embed"))
    setup.assert_refused(wrong_mode, 400, "model", "wrong_model_mode", "val-embed")
    headers = [
        ("Authorization", f"Bearer {setup.secret}"),
        ("X-Gateway-Metadata", '{"feature": 5}'),
    ]
    bad_tags = setup.post(CHAT_URL, headers=headers, content=orjson.dumps(chat()))
    row = setup.assert_refused(bad_tags, 400, "X-Gateway-Metadata", "invalid_metadata", "val-chat")
    # The key's and team's default tags still attribute the row.
    assert row.tags == {"cost_center": "cc-200", "environment": "test"}
    long_name = "m" * 300
    too_long = setup.post(CHAT_URL, chat(model=long_name))
    setup.assert_refused(too_long, 404, "model", "model_not_found", long_name[:200])


@pytest.mark.django_db(transaction=True)
def test_a_key_refused_its_model_is_recorded_as_403(gateway, upstream, user):
    key, secret = factories.make_key(user=user, allowed_models=["val-embed"])
    declare_model("val-chat", f"{upstream}/v1", "sim-chat")
    declare_model("val-embed", f"{upstream}/v1", "sim-embed", mode="embedding")
    gateway.wait_for_model(secret, "val-embed")
    httpx.post(f"{upstream}/_sim/reset")
    limited = Setup(gateway, upstream, key, secret)
    response = limited.post(CHAT_URL, chat(user="end-user-9"))
    row = limited.assert_refused(response, 403, "model", "model_not_allowed", "val-chat")
    assert row.end_user == "end-user-9"


@pytest.mark.django_db(transaction=True)
def test_unparsable_and_oversized_bodies_are_recorded(setup):
    headers = [("Authorization", f"Bearer {setup.secret}"), ("Content-Type", "application/json")]
    broken = setup.post(CHAT_URL, headers=headers, content=b'{"model": "val-chat", ')
    setup.assert_refused(broken, 400, None, "invalid_json", "")
    not_an_object = setup.post(CHAT_URL, headers=headers, content=b'["val-chat"]')
    setup.assert_refused(not_an_object, 400, None, "invalid_body", "")
    huge = b'{"model": "val-chat", "messages": [{"role": "user", "content": "'
    huge += b"x" * (11 * 1024 * 1024) + b'"}]}'
    oversized = setup.post(CHAT_URL, headers=headers, content=huge)
    setup.assert_refused(oversized, 413, None, "request_too_large", "")


@pytest.mark.django_db(transaction=True)
def test_the_openai_sdk_gets_bad_request_for_an_unknown_role(setup):
    client = OpenAI(base_url=f"{setup.gateway.url}/v1", api_key=setup.secret, max_retries=0)
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(
            model="val-chat", messages=[{"role": "wizard", "content": "Abracadabra"}]
        )
    assert (caught.value.param, caught.value.code) == ("messages[0].role", "invalid_value")
    setup.assert_refused(
        caught.value.response, 400, "messages[0].role", "invalid_value", "val-chat"
    )


# --- end to end: credentials ------------------------------------------------------------------


@pytest.mark.django_db(transaction=True)
def test_ambiguous_credentials_are_401_and_record_nothing(setup, user):
    _, other = factories.make_key(user=user)
    bearer, other_bearer = f"Bearer {setup.secret}", f"Bearer {other}"
    cases = [
        [("Authorization", bearer), ("Authorization", other_bearer)],
        [("Authorization", bearer), ("Authorization", bearer)],
        [("x-api-key", setup.secret), ("x-api-key", other)],
        [("Authorization", bearer), ("x-api-key", other)],
        [("Authorization", "Basic dXNlcjpwYXNz"), ("x-api-key", setup.secret)],
    ]
    refused_ids = []
    for headers in cases:
        response = setup.post(CHAT_URL, chat(), headers=headers)
        assert response.status_code == 401, headers
        error = response.json()["error"]
        assert error["code"] == "ambiguous_credentials"
        assert error["type"] == "invalid_request_error" and error["param"] is None
        assert setup.secret not in response.text and other not in response.text
        refused_ids.append(response.headers["x-request-id"])
    assert setup.upstream_calls() == 0
    # The same key in both headers is one credential.
    same = setup.post(
        CHAT_URL, chat(), headers=[("Authorization", bearer), ("x-api-key", setup.secret)]
    )
    assert same.status_code == 200, same.text
    # Rows are written in order: once the later request's row is in, earlier ones would be.
    wait_for_usage(same.headers["x-request-id"])
    assert not UsageRecord.objects.filter(request_id__in=refused_ids).exists()


@pytest.mark.django_db(transaction=True)
def test_header_forms_accepted_today(setup):
    accepted = [
        [("Authorization", f"bearer {setup.secret}")],
        [("Authorization", f"BEARER   {setup.secret}")],
        [("X-Api-Key", setup.secret)],
    ]
    for headers in accepted:
        assert setup.post(CHAT_URL, chat(), headers=headers).status_code == 200, headers
    refused = [
        [("Authorization", setup.secret)],  # no scheme
        [("Authorization", f"Token {setup.secret}")],
        [("x-api-key", f"Bearer {setup.secret}")],  # x-api-key takes the bare key
    ]
    for headers in refused:
        response = setup.post(CHAT_URL, chat(), headers=headers)
        assert response.status_code == 401, headers
    assert setup.upstream_calls() == len(accepted)


# --- unit: the checks themselves ---------------------------------------------------------------


@pytest.mark.embedded
@pytest.mark.parametrize(
    "value",
    [
        None,
        b"application/json",
        b"application/json; charset=utf-8",
        b'application/json;charset="UTF-8"',
        b"APPLICATION/JSON",
        b"application/merge-patch+json",
        b"application/json; charset=us-ascii; foo=bar",
    ],
)
def test_json_content_types_pass(value):
    check_content_type(value)


@pytest.mark.embedded
@pytest.mark.parametrize(
    "value",
    [
        b"",
        b"text/plain",
        b"text/json",
        b"application/jsonl",
        b"multipart/form-data; boundary=x",
        b"application/json; charset=utf-16",
        b"text/plain+json",
    ],
)
def test_other_content_types_are_415(value):
    with pytest.raises(UnsupportedMediaType) as caught:
        check_content_type(value)
    assert caught.value.status == 415 and caught.value.param == "Content-Type"


@pytest.mark.embedded
@pytest.mark.parametrize(
    ("kind", "body", "param", "code"),
    [
        (COMPLETION, {"model": "m", "prompt": "p", "logprobs": 6}, "logprobs", "integer_above_max_value"),
        (COMPLETION, {"model": "m", "prompt": "p", "logprobs": True}, "logprobs", "invalid_type"),
        (COMPLETION, {"model": "m", "prompt": "p", "max_tokens": 0}, "max_tokens", "integer_below_min_value"),
        (EMBEDDING, {"model": "m", "input": "x", "dimensions": 1.5}, "dimensions", "invalid_type"),
        (EMBEDDING, {"model": "m", "input": ["a", {"b": 1}]}, "input[1]", "invalid_type"),
        (EMBEDDING, {"model": "m", "input": "x", "encoding_format": "hex"}, "encoding_format", "invalid_value"),
        (RERANK, {"model": "m", "query": "q", "documents": [], "top_n": True}, "top_n", "invalid_type"),
        (CHAT, {"model": "m", "messages": [{"role": ["user"], "content": "x"}]}, "messages[0]", "invalid_type"),
        (CHAT, {"model": "m", "messages": [{"role": "user", "content": [{"type": ["text"]}]}]}, "messages[0].content[0].type", "invalid_type"),
        (CHAT, {"model": "m", "messages": [{"role": "user", "content": [{"type": "input_audio", "input_audio": {"data": "x"}}]}]}, "messages[0].content[0].input_audio.format", "missing_required_parameter"),
    ],
)  # fmt: skip
def test_validate_body_names_the_field(kind, body, param, code):
    with pytest.raises(BadRequest) as caught:
        validate_body(kind, body)
    assert (caught.value.param, caught.value.code, caught.value.status) == (param, code, 400)


@pytest.mark.embedded
def test_validate_body_keeps_valid_bodies_and_unknown_fields():
    body = {
        "model": "m",
        "messages": [{"role": "user", "content": "x"}],
        "temperature": None,
        "response_format": {"type": "json_object"},
        "vendor_extension": [1, 2],
    }
    assert validate_body(CHAT, body) is body
    legacy = {"model": "m", "prompt": ["a", "b"], "logprobs": 5, "n": 128}
    assert validate_body(COMPLETION, legacy) is legacy
    tokens = {"model": "m", "input": [[1, 2], [3]], "dimensions": 256}
    assert validate_body(EMBEDDING, tokens) is tokens


@pytest.mark.embedded
@pytest.mark.parametrize(
    "headers",
    [
        [(b"authorization", b"Bearer a"), (b"authorization", b"Bearer a")],
        [(b"x-api-key", b"a"), (b"x-api-key", b"b")],
        [(b"authorization", b"Bearer a"), (b"x-api-key", b"b")],
        [(b"x-api-key", b"a"), (b"authorization", b"Token a")],
    ],
)
def test_more_than_one_credential_is_refused(headers):
    with pytest.raises(Unauthorized) as caught:
        check_one_credential([(b"host", b"gw"), *headers])
    assert caught.value.code == "ambiguous_credentials"


@pytest.mark.embedded
@pytest.mark.parametrize(
    "headers",
    [
        [],
        [(b"authorization", b"Bearer a")],
        [(b"x-api-key", b"a")],
        [(b"authorization", b"bearer  a "), (b"x-api-key", b" a")],
    ],
)
def test_one_credential_passes(headers):
    check_one_credential([(b"host", b"gw"), (b"content-type", b"application/json"), *headers])
