"""Prompt-cache tokens priced at their own rates, through the gateway, on every endpoint.

The simulator reports cache reads and writes (its `cached_tokens` and
`cache_creation_tokens` knobs); the ledger row keeps all four token classes and its cost
is fresh input, cache reads, cache writes and output, each at its price.
"""

from decimal import Decimal

import httpx
import pytest

from apps.proxy.services import model_catalog_apply
from tests import factories
from tests.proxy.helpers import wait_for_usage

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.embedded]

PRICES = {
    "input_cost_per_token": "0.000003",
    "output_cost_per_token": "0.000015",
    "cached_input_cost_per_token": "0.0000003",
    "cache_write_cost_per_token": "0.00000375",
}
UPSTREAM = "claude-cache-test"
READS, WRITES = 40, 100


def expected_cost(row) -> Decimal:
    fresh = row.input_tokens - row.cached_tokens - row.cache_write_tokens
    return (
        fresh * Decimal(PRICES["input_cost_per_token"])
        + row.cached_tokens * Decimal(PRICES["cached_input_cost_per_token"])
        + row.cache_write_tokens * Decimal(PRICES["cache_write_cost_per_token"])
        + row.output_tokens * Decimal(PRICES["output_cost_per_token"])
    )


@pytest.fixture
def secret(gateway, user):
    secret = factories.make_key(user=user)[1]
    deployment = {"base_url": gateway.simulator_url, "upstream_model": UPSTREAM, "prices": PRICES}
    model_catalog_apply(
        spec={
            "models": [
                {
                    "name": "cached-claude",
                    "deployments": [
                        {"name": "cc-anthropic", "provider": "anthropic", **deployment}
                    ],
                },
                {
                    "name": "cached-gpt",
                    "deployments": [{"name": "cc-openai", "provider": "openai", **deployment}],
                },
            ]
        }
    )
    knobs = f"{gateway.simulator_url.removesuffix('/v1')}/_sim/knobs"
    cache = {"cached_tokens": READS, "cache_creation_tokens": WRITES}
    assert httpx.post(knobs, json={UPSTREAM: cache}).status_code == 200
    gateway.wait_for_model(secret, "cached-claude")
    gateway.wait_for_model(secret, "cached-gpt")
    yield secret
    httpx.post(knobs, json={UPSTREAM: None})


LONG_PROMPT = "Summarise the attached design document in one line. " * 20


@pytest.mark.parametrize(
    ("path", "body", "writes"),
    [
        # Anthropic reports reads and writes; both reach the ledger, natively and translated.
        ("/v1/messages", {"model": "cached-claude", "max_tokens": 16}, WRITES),
        ("/v1/chat/completions", {"model": "cached-claude", "max_tokens": 16}, WRITES),
        # OpenAI's chat completions report cache reads only.
        ("/v1/chat/completions", {"model": "cached-gpt", "max_tokens": 16}, 0),
    ],
)
def test_cache_reads_and_writes_are_priced_at_their_rates(gateway, secret, path, body, writes):
    body = {**body, "messages": [{"role": "user", "content": LONG_PROMPT}]}
    response = httpx.post(gateway.url + path, json=body, headers={"x-api-key": secret})
    assert response.status_code == 200, response.text
    row = wait_for_usage(response.headers["x-request-id"])
    assert (row.cached_tokens, row.cache_write_tokens) == (READS, writes)
    assert row.input_tokens > READS + writes and not row.tokens_estimated
    assert row.cost_usd == expected_cost(row)
    assert Decimal(response.headers["x-gateway-cost-usd"]) == row.cost_usd
    usage = response.json()["usage"]
    if path == "/v1/messages":
        # The client sees Anthropic's own split: input_tokens without the cache.
        assert usage["cache_read_input_tokens"] == READS
        assert usage["cache_creation_input_tokens"] == WRITES
        assert usage["input_tokens"] == row.input_tokens - READS - WRITES
    else:
        assert usage["prompt_tokens_details"]["cached_tokens"] == READS
        assert usage["prompt_tokens"] == row.input_tokens


def test_a_streamed_message_bills_its_cache_writes(gateway, secret):
    body = {
        "model": "cached-claude",
        "max_tokens": 16,
        "stream": True,
        "messages": [{"role": "user", "content": LONG_PROMPT}],
    }
    with httpx.stream(
        "POST", gateway.url + "/v1/messages", json=body, headers={"x-api-key": secret}
    ) as response:
        assert response.status_code == 200
        lines = list(response.iter_lines())
    assert any('"cache_creation_input_tokens":100' in line for line in lines)
    row = wait_for_usage(response.headers["x-request-id"])
    assert (row.cached_tokens, row.cache_write_tokens) == (READS, WRITES)
    assert row.cost_usd == expected_cost(row)
