"""The official openai SDK against a real gateway process, upstream the simulator over HTTP."""

import json
from decimal import Decimal

import httpx
import openai
import pytest
from openai import OpenAI

from tests import factories
from tests.proxy.helpers import declare_model, expected_cost, wait_for_usage

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.embedded]

PRICES = {"input_cost_per_token": "0.000002", "output_cost_per_token": "0.000008"}
MESSAGES = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "Count down from five to one, please."},
]


@pytest.fixture
def setup(gateway, team):
    user = factories.make_user("sdkuser", team=team)
    _, plaintext = factories.make_key(user=user, default_tags={"environment": "test"})
    declare_model("chat-a", gateway.simulator_url, "demo-chat", prices=PRICES)
    declare_model(
        "embed-a",
        gateway.simulator_url,
        "demo-embed",
        mode="embedding",
        prices={"input_cost_per_token": "0.00000002", "output_cost_per_token": "0"},
    )
    gateway.wait_for_model(plaintext, "embed-a")
    gateway.wait_for_model(plaintext, "chat-a")
    client = OpenAI(base_url=f"{gateway.url}/v1", api_key=plaintext, max_retries=0)
    return client, plaintext, user


def test_chat_non_streaming_is_recorded_with_tokens_cost_and_tags(setup, team):
    client, _, user = setup
    raw = client.chat.completions.with_raw_response.create(
        model="chat-a",
        messages=MESSAGES,
        user="end-user-7",
        extra_headers={
            "X-Gateway-Metadata": json.dumps({"customer_id": "acme", "feature": "countdown"})
        },
    )
    completion = raw.parse()
    request_id = raw.headers["x-request-id"]
    assert completion.choices[0].message.content
    assert completion.model == "chat-a"
    row = wait_for_usage(request_id)
    assert (row.input_tokens, row.output_tokens) == (
        completion.usage.prompt_tokens,
        completion.usage.completion_tokens,
    )
    assert not row.tokens_estimated
    assert row.cost_usd == expected_cost(row.input_tokens, row.output_tokens, PRICES)
    assert row.tags == {
        "cost_center": "cc-200",
        "environment": "test",
        "customer_id": "acme",
        "feature": "countdown",
    }
    assert (row.team_id, row.user_id, row.end_user) == (team.id, user.id, "end-user-7")
    assert (row.status_code, row.request_type, row.is_stream) == (200, "chat", False)
    assert row.deployment == "d0-demo-chat" and row.provider == "simulator"
    assert row.latency_ms > 0 and row.upstream_latency_ms is not None


def test_chat_streaming_with_include_usage(setup):
    client, _, _ = setup
    with client.chat.completions.with_streaming_response.create(
        model="chat-a",
        messages=MESSAGES,
        stream=True,
        stream_options={"include_usage": True},
    ) as response:
        request_id = response.headers["x-request-id"]
        chunks = list(response.parse())
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    usage_chunks = [c for c in chunks if c.usage]
    assert text
    assert len(usage_chunks) == 1 and chunks[-1].usage is not None and chunks[-1].choices == []
    whole = client.chat.completions.create(model="chat-a", messages=MESSAGES)
    assert text == whole.choices[0].message.content
    row = wait_for_usage(request_id)
    assert row.is_stream and row.output_tokens == usage_chunks[0].usage.completion_tokens
    assert row.input_tokens == usage_chunks[0].usage.prompt_tokens
    assert row.ttft_ms is not None and row.ttft_ms <= row.latency_ms
    assert row.cost_usd == expected_cost(row.input_tokens, row.output_tokens, PRICES)


def test_stream_without_include_usage_hides_usage_but_records_it(setup):
    client, _, _ = setup
    with client.chat.completions.with_streaming_response.create(
        model="chat-a",
        messages=MESSAGES,
        stream=True,
    ) as response:
        request_id = response.headers["x-request-id"]
        chunks = list(response.parse())
    assert chunks and all(c.usage is None for c in chunks)
    assert all(c.choices for c in chunks)
    row = wait_for_usage(request_id)
    assert row.output_tokens > 0 and not row.tokens_estimated


def test_embeddings_base64_and_float_agree(setup):
    client, _, _ = setup
    default = client.embeddings.create(model="embed-a", input=["hello world", "bye"])
    as_float = client.embeddings.create(
        model="embed-a", input=["hello world", "bye"], encoding_format="float"
    )
    assert len(default.data) == 2
    assert default.data[0].embedding == pytest.approx(as_float.data[0].embedding, abs=1e-6)
    assert default.usage.prompt_tokens > 0


def test_embedding_usage_row(setup):
    client, _, _ = setup
    raw = client.embeddings.with_raw_response.create(model="embed-a", input="some text to embed")
    result = raw.parse()
    row = wait_for_usage(raw.headers["x-request-id"])
    assert row.request_type == "embedding" and row.input_tokens == result.usage.prompt_tokens
    assert row.cost_usd == Decimal(row.input_tokens) * Decimal("0.00000002")


def test_models_list_shows_only_allowed_models(setup, gateway, user):
    client, _, _ = setup
    ids = {m.id for m in client.models.list()}
    assert {"chat-a", "embed-a"} <= ids
    _, limited = factories.make_key(user=user, allowed_models=["embed-a"])
    limited_client = OpenAI(base_url=f"{gateway.url}/v1", api_key=limited, max_retries=0)
    assert {m.id for m in limited_client.models.list()} == {"embed-a"}
    assert limited_client.models.retrieve("embed-a").id == "embed-a"
    with pytest.raises(openai.PermissionDeniedError):
        limited_client.chat.completions.create(model="chat-a", messages=MESSAGES)


def test_authentication_errors(setup, gateway, user):
    from django.utils import timezone

    bad = OpenAI(base_url=f"{gateway.url}/v1", api_key="tg_live_notarealkey", max_retries=0)
    with pytest.raises(openai.AuthenticationError) as caught:
        bad.models.list()
    assert "tg_live_notarealkey" not in caught.value.response.text
    response = httpx.get(f"{gateway.url}/v1/models")
    assert response.status_code == 401 and response.json()["error"]["code"] == "missing_api_key"
    revoked_key, revoked = factories.make_key(user=user)
    revoked_key.revoked_at = timezone.now()
    revoked_key.save()
    expired_key, expired = factories.make_key(user=user)
    expired_key.expires_at = timezone.now()
    expired_key.save()
    for secret, code in ((revoked, "api_key_revoked"), (expired, "api_key_expired")):
        client = OpenAI(base_url=f"{gateway.url}/v1", api_key=secret, max_retries=0)
        with pytest.raises(openai.AuthenticationError) as caught:
            client.chat.completions.create(model="chat-a", messages=MESSAGES)
        assert caught.value.code == code
    via_header = httpx.get(f"{gateway.url}/v1/models", headers={"x-api-key": setup[1]})
    assert via_header.status_code == 200


def test_unknown_model_is_404_model_not_found(setup):
    client, _, _ = setup
    with pytest.raises(openai.NotFoundError) as caught:
        client.chat.completions.create(model="no-such-model", messages=MESSAGES)
    assert caught.value.code == "model_not_found"


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"model": "chat-a"}, "messages"),
        ({"model": "chat-a", "messages": "hi"}, "messages"),
        ({"model": 5, "messages": []}, "model"),
        ({"model": "chat-a", "messages": [{"content": "x"}]}, "messages[0]"),
        ({"model": "chat-a", "messages": MESSAGES, "stream": "yes"}, "stream"),
        ({"model": "chat-a", "messages": MESSAGES, "max_tokens": "ten"}, "max_tokens"),
    ],
)
def test_wrong_types_are_400_naming_the_field(setup, gateway, body, param):
    response = httpx.post(
        f"{gateway.url}/v1/chat/completions",
        json=body,
        headers={"Authorization": f"Bearer {setup[1]}"},
    )
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["param"] == param and error["type"] == "invalid_request_error"
    assert "x-request-id" in response.headers


def test_malformed_and_oversized_bodies(setup, gateway):
    headers = {"Authorization": f"Bearer {setup[1]}", "content-type": "application/json"}
    response = httpx.post(
        f"{gateway.url}/v1/chat/completions", content=b"{not json", headers=headers
    )
    assert response.status_code == 400 and response.json()["error"]["code"] == "invalid_json"
    response = httpx.post(f"{gateway.url}/v1/chat/completions", content=b"[1, 2]", headers=headers)
    assert response.status_code == 400
    huge = (
        b'{"model": "chat-a", "messages": [{"role": "user", "content": "'
        + b"x" * (11 * 1024 * 1024)
        + b'"}]}'
    )
    response = httpx.post(
        f"{gateway.url}/v1/chat/completions", content=huge, headers=headers, timeout=30
    )
    assert response.status_code == 413
    assert response.json()["error"]["code"] == "request_too_large"
    client = setup[0]
    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(model="chat-a", messages=[])


@pytest.mark.parametrize(
    ("header", "fragment"),
    [
        ("{not json", "not valid JSON"),
        ('["a"]', "JSON object"),
        ('{"a": 1}', "must be a string"),
        ('{"a": null}', "must be a string"),
        (json.dumps({f"k{i}": "v" for i in range(33)}), "limit is 32"),
        (json.dumps({"k" * 65: "v"}), "1 to 64 characters"),
        (json.dumps({"k": "v" * 257}), "longer than 256"),
        (json.dumps({f"key{i}": "v" * 250 for i in range(32)}), "bytes; the limit"),
    ],
)
def test_bad_metadata_is_400_naming_the_problem(setup, gateway, header, fragment):
    response = httpx.post(
        f"{gateway.url}/v1/chat/completions",
        json={"model": "chat-a", "messages": MESSAGES},
        headers={"Authorization": f"Bearer {setup[1]}", "X-Gateway-Metadata": header},
    )
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["code"] == "invalid_metadata" and fragment in error["message"]


def test_tfy_metadata_header_and_attribution_from_key(setup, team):
    client, _, user = setup
    raw = client.chat.completions.with_raw_response.create(
        model="chat-a",
        messages=MESSAGES,
        extra_headers={
            "X-TFY-METADATA": json.dumps(
                {"team": "someone-else", "user": "mallory", "environment": "prod"}
            )
        },
    )
    row = wait_for_usage(raw.headers["x-request-id"])
    assert row.team_id == team.id and row.user_id == user.id
    assert row.tags["team"] == "someone-else" and row.tags["environment"] == "prod"


def test_enforced_tags_win_over_request(gateway, team, user):
    _, secret = factories.make_key(user=user, default_tags={"environment": "staging"})
    from apps.accounts.models import ApiKey
    from apps.accounts.secrets import hash_secret

    ApiKey.objects.filter(key_hash=hash_secret(secret)).update(enforced_tag_keys=["environment"])
    declare_model("chat-b", gateway.simulator_url, "demo-chat")
    gateway.wait_for_model(secret, "chat-b")
    client = OpenAI(base_url=f"{gateway.url}/v1", api_key=secret, max_retries=0)
    raw = client.chat.completions.with_raw_response.create(
        model="chat-b",
        messages=MESSAGES,
        extra_headers={
            "X-Gateway-Metadata": '{"environment": "production", "log_request": "true"}'
        },
    )
    row = wait_for_usage(raw.headers["x-request-id"])
    assert row.tags["environment"] == "staging"
    assert row.request_body["messages"] == MESSAGES
    assert row.response_body["choices"][0]["message"]["content"]


def test_completions_and_rerank(setup, gateway):
    client, secret, _ = setup
    completion = client.completions.create(model="chat-a", prompt="Once upon a time")
    assert completion.choices[0].text
    declare_model("rerank-a", gateway.simulator_url, "demo-rerank", mode="rerank")
    gateway.wait_for_model(secret, "rerank-a")
    response = httpx.post(
        f"{gateway.url}/v1/rerank",
        json={
            "model": "rerank-a",
            "query": "red fruit",
            "documents": ["an apple is red", "the sky is blue", "cherries"],
            "top_n": 2,
        },
        headers={"Authorization": f"Bearer {secret}"},
    )
    assert response.status_code == 200
    results = response.json()["results"]
    assert len(results) == 2 and results[0]["relevance_score"] >= results[1]["relevance_score"]
    row = wait_for_usage(response.headers["x-request-id"])
    assert row.request_type == "rerank" and row.input_tokens > 0
