"""Garbage from an upstream never looks like success, never gives a 500, never bills blindly.

The upstream is `hostile_upstream`, a real HTTP server answering each upstream model name
with one bad shape; the gateway is a real process whose breaker opens on the first failure
(HEALTH_BREAKER_FAILURES=1), so `/metrics` shows whether the health board was told.
"""

import socket
import time
from collections.abc import Iterator

import httpx
import orjson
import pytest
from openai import OpenAI
from prometheus_client.parser import text_string_to_metric_families

from apps.proxy.services import model_catalog_apply
from apps.quotas.services import quota_config_apply
from apps.usage.models import UsageRecord
from tests import factories
from tests.proxy.conftest import GatewayServer, purge_usage_rows, start_gateway, stop_gateway
from tests.proxy.helpers import wait_for_usage
from tests.proxy.hostile_upstream import (
    BAD_SHAPES,
    BAD_USAGE,
    BROKEN_BODIES,
    GOOD_USAGE,
    start_hostile_upstream,
)

pytestmark = pytest.mark.django_db(transaction=True)

MESSAGES = [{"role": "user", "content": "Name three colours."}]
ERROR_KEYS = {"message", "type", "param", "code"}
# The gateway's own count of MESSAGES (tokens.estimate_messages_tokens), for an estimate.
ESTIMATED_INPUT = 3 + 4 + 5
ESTIMATED_OUTPUT = 4  # "red green blue" (14 characters), however it is split into chunks


@pytest.fixture(scope="module")
def hostile() -> Iterator[str]:
    base_url, stop = start_hostile_upstream()
    yield base_url
    stop()


@pytest.fixture(scope="module")
def strict_gateway(django_db_setup, django_db_blocker) -> Iterator[GatewayServer]:
    server = start_gateway({"HEALTH_BREAKER_FAILURES": "1"})
    yield server
    stop_gateway(server)
    with django_db_blocker.unblock():
        purge_usage_rows()


@pytest.fixture
def secret(strict_gateway, user) -> str:
    return factories.make_key(user=user)[1]


def deployment(hostile: str, provider: str, upstream: str, **extra) -> dict:
    return {
        "name": f"{provider}-{upstream}",
        "provider": provider,
        "upstream_model": upstream,
        "base_url": hostile if provider == "azure_openai" else f"{hostile}/v1",
        "timeout_seconds": 5,
        **extra,
    }


def declare(
    gateway: GatewayServer, secret: str, hostile: str, provider: str, *upstreams: str, mode="chat"
) -> list[str]:
    """One model per upstream behaviour, named `{provider}-{behaviour}`; returns the names."""
    names = [f"{provider}-{upstream}" for upstream in upstreams]
    models = [
        {"name": name, "mode": mode, "deployments": [deployment(hostile, provider, upstream)]}
        for name, upstream in zip(names, upstreams, strict=True)
    ]
    model_catalog_apply(spec={"models": models})
    for name in names:
        gateway.wait_for_model(secret, name)
    return names


def post(gateway: GatewayServer, secret: str, body: dict, path="/v1/chat/completions"):
    return httpx.post(
        f"{gateway.url}{path}",
        content=orjson.dumps(body),
        headers={"Authorization": f"Bearer {secret}", "content-type": "application/json"},
        timeout=30,
    )


def chat(model: str, *, stream=False, include_usage=None) -> dict:
    body: dict = {"model": model, "messages": MESSAGES, "stream": stream}
    if include_usage is not None:
        body["stream_options"] = {"include_usage": include_usage}
    return body


def sse_data(response: httpx.Response) -> list[str]:
    return [line[6:] for line in response.text.split("\n") if line.startswith("data: ")]


def assert_error_shape(error_json: dict, code: str) -> dict:
    error = error_json["error"]
    assert set(error) >= ERROR_KEYS, error
    assert error["code"] == code, error
    return error


def metric_samples(gateway: GatewayServer, name: str) -> list:
    response = httpx.get(f"{gateway.url}/metrics", timeout=10)
    assert response.status_code == 200
    return [
        sample
        for family in text_string_to_metric_families(response.text)
        for sample in family.samples
        if sample.name == name
    ]


def breaker_state(gateway: GatewayServer, deployment_name: str) -> float:
    for sample in metric_samples(gateway, "tollgate_deployment_breaker_state"):
        if sample.labels["deployment"] == deployment_name:
            return sample.value
    raise AssertionError(f"no breaker state for {deployment_name}")


def wait_for_open_breaker(gateway: GatewayServer, deployment_name: str) -> None:
    deadline = time.monotonic() + 5
    while breaker_state(gateway, deployment_name) != 2:
        assert time.monotonic() < deadline, f"the breaker of {deployment_name} never opened"
        time.sleep(0.1)


# --- answers that are not answers -------------------------------------------------------------

WHOLE_GARBAGE = [*BROKEN_BODIES, *BAD_SHAPES]


@pytest.mark.parametrize("provider", ["openai", "anthropic"])
def test_a_whole_answer_that_is_not_valid_is_a_502(strict_gateway, secret, hostile, provider):
    names = declare(strict_gateway, secret, hostile, provider, *WHOLE_GARBAGE)
    for name in names:
        response = post(strict_gateway, secret, chat(name))
        assert response.status_code == 502, (name, response.text)
        error = assert_error_shape(response.json(), "upstream_invalid_answer")
        assert name in error["message"], error  # the deployment, by its configured name
        row = wait_for_usage(response.headers["x-request-id"])
        assert (row.status_code, row.error_type) == (502, "upstream_invalid_answer"), name
        wait_for_open_breaker(strict_gateway, name)


@pytest.mark.parametrize("provider", ["openai", "anthropic"])
def test_a_stream_that_is_not_an_event_stream_fails_over_then_502(
    strict_gateway, secret, hostile, provider
):
    names = declare(strict_gateway, secret, hostile, provider, *BROKEN_BODIES)
    for name in names:
        response = post(strict_gateway, secret, chat(name, stream=True, include_usage=True))
        # Nothing was sent yet, so the gateway may fail over; with no deployment left the
        # client gets the same error JSON as for any other failed attempt.
        assert response.status_code == 502, (name, response.text)
        assert_error_shape(response.json(), "upstream_invalid_answer")
        row = wait_for_usage(response.headers["x-request-id"])
        assert (row.status_code, row.error_type) == (502, "upstream_invalid_answer"), name
        wait_for_open_breaker(strict_gateway, name)


def test_a_garbage_stream_fails_over_to_the_next_deployment(strict_gateway, secret, hostile):
    model_catalog_apply(
        spec={
            "models": [
                {
                    "name": "html-then-good",
                    "deployments": [
                        deployment(hostile, "openai", "html", priority=0),
                        deployment(hostile, "openai", "good", priority=1),
                    ],
                }
            ]
        }
    )
    strict_gateway.wait_for_model(secret, "html-then-good")
    response = post(strict_gateway, secret, chat("html-then-good", stream=True))
    assert response.status_code == 200
    data = sse_data(response)
    assert data[-1] == "[DONE]"
    text = "".join(
        choice["delta"].get("content") or ""
        for chunk in map(orjson.loads, data[:-1])
        for choice in chunk["choices"]
    )
    assert text == "red green blue "
    row = wait_for_usage(response.headers["x-request-id"])
    assert (row.status_code, row.error_type, row.attempts) == (200, "", 2)
    assert (row.deployment, row.input_tokens, row.output_tokens) == ("openai-good", 7, 3)
    wait_for_open_breaker(strict_gateway, "openai-html")


@pytest.mark.parametrize("provider", ["openai", "anthropic"])
@pytest.mark.parametrize(
    ("behaviour", "code"),
    [("mid-garbage", "upstream_invalid_answer"), ("mid-error", "upstream_stream_error")],
)
def test_a_stream_breaking_after_its_first_chunk_ends_with_an_error_event(
    strict_gateway, secret, hostile, provider, behaviour, code
):
    (name,) = declare(strict_gateway, secret, hostile, provider, behaviour)
    response = post(strict_gateway, secret, chat(name, stream=True))
    assert response.status_code == 200
    data = sse_data(response)
    assert data[-1] == "[DONE]"
    assert_error_shape(orjson.loads(data[-2]), code)
    chunks = [orjson.loads(item) for item in data[:-2]]
    assert any(c["choices"] and c["choices"][0]["delta"].get("content") for c in chunks)
    row = wait_for_usage(response.headers["x-request-id"])
    assert (row.status_code, row.error_type) == (200, code)
    assert row.output_tokens > 0  # what was produced before the break is still billed
    wait_for_open_breaker(strict_gateway, name)


# --- usage that is not believed -------------------------------------------------------------


def assert_estimated(row: UsageRecord, *, suspect: bool, name: str) -> None:
    assert row.status_code == 200 and row.error_type == "", name
    assert (row.tokens_estimated, row.usage_suspect) == (True, suspect), name
    assert (row.input_tokens, row.output_tokens) == (ESTIMATED_INPUT, ESTIMATED_OUTPUT), name


@pytest.mark.embedded
@pytest.mark.parametrize("provider", ["openai", "azure_openai", "anthropic"])
def test_unbelievable_usage_is_replaced_by_the_estimate_and_flagged(
    strict_gateway, secret, hostile, provider
):
    behaviours = list(BAD_USAGE)
    names = declare(strict_gateway, secret, hostile, provider, *behaviours)
    requests = 0
    for name in names:
        response = post(strict_gateway, secret, chat(name))
        requests += 1
        assert response.status_code == 200, (name, response.text)
        usage = response.json()["usage"]
        row = wait_for_usage(response.headers["x-request-id"])
        assert_estimated(row, suspect=True, name=name)
        # The client is told what it is billed, not the upstream's garbage.
        assert (usage["prompt_tokens"], usage["completion_tokens"]) == (
            ESTIMATED_INPUT,
            ESTIMATED_OUTPUT,
        ), name
        response = post(strict_gateway, secret, chat(name, stream=True, include_usage=True))
        requests += 1
        assert response.status_code == 200, (name, response.text)
        data = sse_data(response)
        usage_chunks = [c for c in map(orjson.loads, data[:-1]) if c.get("usage")]
        assert len(usage_chunks) == 1 and usage_chunks[0]["choices"] == [], name
        assert orjson.loads(data[-2]) == usage_chunks[0], name  # last before [DONE]
        row = wait_for_usage(response.headers["x-request-id"])
        assert_estimated(row, suspect=True, name=name)
        assert usage_chunks[0]["usage"]["prompt_tokens"] == row.input_tokens, name
        assert usage_chunks[0]["usage"]["completion_tokens"] == row.output_tokens, name
    assert UsageRecord.objects.filter(model__in=names).count() == requests
    for name in ("tollgate_input_tokens_total", "tollgate_output_tokens_total"):
        values = [s.value for s in metric_samples(strict_gateway, name)]
        assert values and min(values) >= 0, name


@pytest.mark.embedded
def test_a_native_messages_stream_tells_the_client_what_it_is_billed(
    strict_gateway, secret, hostile
):
    names = declare(strict_gateway, secret, hostile, "anthropic", *BAD_USAGE)
    for name in names:
        body = {"model": name, "max_tokens": 64, "messages": MESSAGES, "stream": True}
        response = post(strict_gateway, secret, body, path="/v1/messages")
        assert response.status_code == 200, (name, response.text)
        events = [orjson.loads(data) for data in sse_data(response)]
        closing = [e for e in events if e.get("type") == "message_delta"]
        row = wait_for_usage(response.headers["x-request-id"])
        assert_estimated(row, suspect=True, name=name)
        # The closing usage is the count billed, not the upstream's garbage.
        assert closing, (name, events)
        assert closing[-1]["usage"]["output_tokens"] == row.output_tokens, name


@pytest.mark.parametrize(
    ("mode", "path", "body"),
    [
        ("completion", "/v1/completions", {"prompt": "Name three colours."}),
        ("embedding", "/v1/embeddings", {"input": "Name three colours."}),
        ("rerank", "/v1/rerank", {"query": "colours", "documents": ["red", "green"]}),
    ],
)
def test_unbelievable_usage_of_other_endpoints_is_flagged(
    strict_gateway, secret, hostile, mode, path, body
):
    behaviours = [
        "usage-negative",
        "usage-string",
        "usage-huge",
        "usage-nested",
        "usage-not-an-object",
    ]
    model_catalog_apply(
        spec={
            "models": [
                {
                    "name": f"{mode}-{behaviour}",
                    "mode": mode,
                    "deployments": [deployment(hostile, "openai", behaviour)],
                }
                for behaviour in behaviours
            ]
        }
    )
    for behaviour in behaviours:
        name = f"{mode}-{behaviour}"
        strict_gateway.wait_for_model(secret, name)
        response = post(strict_gateway, secret, {"model": name, **body}, path=path)
        assert response.status_code == 200, (name, response.text)
        row = wait_for_usage(response.headers["x-request-id"])
        assert (row.status_code, row.usage_suspect, row.tokens_estimated) == (200, True, True)
        assert 0 < row.input_tokens < 100, name
        assert response.json()["usage"]["prompt_tokens"] == row.input_tokens, name


@pytest.mark.embedded
def test_unbelievable_usage_is_not_charged_to_the_quota(strict_gateway, secret, hostile, team):
    (name,) = declare(strict_gateway, secret, hostile, "openai", "usage-huge")
    limit = 1_000_000
    quota_config_apply(
        yaml_text=f"""
name: test
type: gateway-rate-limiting-config
rules:
  - id: hostile-tokens-{time.monotonic_ns()}
    when: {{subjects: ["team:{team.slug}"], models: ["{name}"]}}
    limit_to: {limit}
    unit: tokens_per_day
"""
    )
    time.sleep(0.8)  # the test gateway reloads quota configs every 0.2 s
    for stream in (False, True, False):
        response = post(strict_gateway, secret, {**chat(name, stream=stream), "max_tokens": 50})
        assert response.status_code == 200, response.text
    # The last answer's header counts the two before it as settled, and itself as reserved.
    remaining = int(response.headers["x-ratelimit-remaining-tokens"])
    assert limit - remaining < 1_000, remaining


# --- stream_options.include_usage -------------------------------------------------------------


@pytest.mark.embedded
@pytest.mark.parametrize("provider", ["openai", "azure_openai", "anthropic"])
def test_a_client_asking_for_usage_gets_exactly_one_usage_chunk(
    strict_gateway, secret, hostile, provider
):
    names = declare(strict_gateway, secret, hostile, provider, "good", "no-usage")
    client = OpenAI(base_url=f"{strict_gateway.url}/v1", api_key=secret, max_retries=0)
    for name in names:
        raw = client.chat.completions.with_raw_response.create(
            model=name, messages=MESSAGES, stream=True, stream_options={"include_usage": True}
        )
        chunks = list(raw.parse())
        usage_chunks = [c for c in chunks if c.usage is not None]
        assert len(usage_chunks) == 1 and chunks[-1] is usage_chunks[0], name
        assert chunks[-1].choices == [], name
        row = wait_for_usage(raw.headers["x-request-id"])
        assert chunks[-1].usage.prompt_tokens == row.input_tokens, name
        assert chunks[-1].usage.completion_tokens == row.output_tokens, name
        if name.endswith("-good"):
            assert (row.input_tokens, row.output_tokens) == (
                GOOD_USAGE["prompt_tokens"],
                GOOD_USAGE["completion_tokens"],
            ), name
            assert not row.tokens_estimated and not row.usage_suspect, name
        else:
            assert_estimated(row, suspect=False, name=name)

        raw = client.chat.completions.with_raw_response.create(
            model=name, messages=MESSAGES, stream=True
        )
        chunks = list(raw.parse())
        assert chunks and all(c.usage is None for c in chunks), name
        assert all(c.choices for c in chunks), name


def test_legacy_completions_stream_gets_one_usage_chunk(strict_gateway, secret, hostile):
    model_catalog_apply(
        spec={
            "models": [
                {
                    "name": f"completion-{behaviour}",
                    "mode": "completion",
                    "deployments": [deployment(hostile, "openai", behaviour)],
                }
                for behaviour in ("good", "no-usage")
            ]
        }
    )
    for behaviour in ("good", "no-usage"):
        name = f"completion-{behaviour}"
        strict_gateway.wait_for_model(secret, name)
        body = {"model": name, "prompt": "Name three colours.", "stream": True}
        body["stream_options"] = {"include_usage": True}
        response = post(strict_gateway, secret, body, path="/v1/completions")
        data = sse_data(response)
        usage_chunks = [c for c in map(orjson.loads, data[:-1]) if c.get("usage")]
        assert len(usage_chunks) == 1 and orjson.loads(data[-2]) == usage_chunks[0], name
        row = wait_for_usage(response.headers["x-request-id"])
        assert usage_chunks[0]["usage"]["completion_tokens"] == row.output_tokens > 0, name


# --- failures name the deployment, never its address ----------------------------------------


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_failures_name_the_deployment_not_its_address(strict_gateway, secret, hostile):
    port = closed_port()
    model_catalog_apply(
        spec={
            "models": [
                {
                    "name": "unreachable",
                    "deployments": [
                        {
                            "name": "dead-end",
                            "provider": "openai",
                            "upstream_model": "x",
                            "base_url": f"http://127.0.0.1:{port}/v1",
                            "timeout_seconds": 2,
                        }
                    ],
                },
                {
                    "name": "too-quiet",
                    "deployments": [deployment(hostile, "openai", "silent", timeout_seconds=0.5)],
                },
            ]
        }
    )
    hostile_port = hostile.rsplit(":", 1)[1]
    cases = [("unreachable", 502, "upstream_unreachable", "dead-end", str(port))]
    cases.append(("too-quiet", 504, "upstream_timeout", "openai-silent", hostile_port))
    for model, status, code, deployment_name, address_port in cases:
        strict_gateway.wait_for_model(secret, model)
        for stream in (False, True):
            response = post(strict_gateway, secret, chat(model, stream=stream))
            assert response.status_code == status, (model, response.text)
            error = assert_error_shape(response.json(), code)
            assert deployment_name in error["message"], error
            assert "127.0.0.1" not in response.text and address_port not in response.text
            row = wait_for_usage(response.headers["x-request-id"])
            assert (row.status_code, row.error_type) == (status, code)
