"""What a call cost, told to the caller: the headers always, `usage.cost` when opted in."""

import json
from decimal import Decimal

import httpx
import pytest

from tests import factories
from tests.proxy.conftest import purge_usage_rows, start_gateway, stop_gateway
from tests.proxy.helpers import declare_model, wait_for_usage

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.embedded]

PRICES = {"input_cost_per_token": "0.000003", "output_cost_per_token": "0.000015"}


@pytest.fixture(scope="module")
def costed_gateway(django_db_setup, django_db_blocker):
    server = start_gateway({"PROXY_COST_IN_USAGE": "true"})
    yield server
    stop_gateway(server)
    with django_db_blocker.unblock():
        purge_usage_rows()


@pytest.fixture
def secret(costed_gateway, user):
    secret = factories.make_key(user=user)[1]
    declare_model("cost-chat", costed_gateway.simulator_url, "demo-chat", prices=PRICES)
    costed_gateway.wait_for_model(secret, "cost-chat")
    return secret


def sse_data(response: httpx.Response) -> list[dict]:
    return [
        json.loads(line[6:])
        for line in response.iter_lines()
        if line.startswith("data: ") and line != "data: [DONE]"
    ]


def test_whole_answers_carry_the_ledgers_cost(costed_gateway, secret):
    url = costed_gateway.url
    headers = {"authorization": f"Bearer {secret}"}
    hello = [{"role": "user", "content": "Name three colours."}]
    calls = [
        ("/v1/chat/completions", {"model": "cost-chat", "messages": hello}),
        ("/v1/messages", {"model": "cost-chat", "max_tokens": 32, "messages": hello}),
        ("/v1/responses", {"model": "cost-chat", "input": "Name three colours."}),
    ]
    for path, body in calls:
        response = httpx.post(url + path, json=body, headers=headers)
        assert response.status_code == 200, response.text
        row = wait_for_usage(response.headers["x-request-id"])
        assert row.cost_usd > 0
        assert Decimal(response.headers["x-gateway-cost-usd"]) == row.cost_usd
        assert response.json()["usage"]["cost"] == pytest.approx(float(row.cost_usd))


def test_streams_end_with_the_ledgers_cost(costed_gateway, secret):
    url = costed_gateway.url
    headers = {"authorization": f"Bearer {secret}"}
    hello = [{"role": "user", "content": "Tell me a short story."}]
    calls = [
        (
            "/v1/chat/completions",
            {
                "model": "cost-chat",
                "messages": hello,
                "stream": True,
                "stream_options": {"include_usage": True},
            },
            lambda events: events[-1]["usage"],
        ),
        (
            "/v1/messages",
            {"model": "cost-chat", "max_tokens": 32, "messages": hello, "stream": True},
            lambda events: next(e for e in events if e["type"] == "message_delta")["usage"],
        ),
        (
            "/v1/responses",
            {"model": "cost-chat", "input": "Tell me a short story.", "stream": True},
            lambda events: events[-1]["response"]["usage"],
        ),
    ]
    for path, body, usage_of in calls:
        with httpx.stream("POST", url + path, json=body, headers=headers) as response:
            assert response.status_code == 200
            assert float(response.headers["x-gateway-overhead-ms"]) >= 0
            events = sse_data(response)
        row = wait_for_usage(response.headers["x-request-id"])
        usage = usage_of(events)
        assert row.cost_usd > 0
        assert usage["cost"] == pytest.approx(float(row.cost_usd)), path
