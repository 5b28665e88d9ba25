"""GET /metrics: Prometheus text that prometheus-client parses, counters that match the usage
rows of the same run (summed across two worker processes), access control, bounded labels."""

import os
import tempfile
import time
from collections import Counter

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from apps.proxy import metrics
from apps.usage.models import UsageRecord
from tests import factories
from tests.proxy.conftest import start_gateway, stop_gateway
from tests.proxy.helpers import declare_model

MESSAGES = [{"role": "user", "content": "Count me."}]


def samples(text: str, name: str) -> list:
    return [
        sample
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == name
    ]


@pytest.fixture(scope="module")
def metered(django_db_setup, django_db_blocker):
    directory = tempfile.mkdtemp(prefix="tollgate-prom-")
    server = start_gateway(
        {"PROMETHEUS_MULTIPROC_DIR": directory, "METRICS_TAG_KEYS": "feature"}, workers=2
    )
    yield server
    stop_gateway(server)
    with django_db_blocker.unblock():
        UsageRecord.objects.all().delete()


@pytest.mark.django_db(transaction=True)
@pytest.mark.embedded
def test_counters_match_the_usage_rows_of_the_run(metered, user):
    secret = factories.make_key(user=user)[1]
    declare_model("mx-chat", metered.simulator_url, "demo-chat")
    declare_model("mx-bad", metered.simulator_url, "always-500")
    for model in ("mx-chat", "mx-bad"):
        metered.wait_for_model(secret, model)
    headers = {"Authorization": f"Bearer {secret}", "X-Gateway-Metadata": '{"feature": "f1"}'}
    ids = []
    with httpx.Client(base_url=metered.url, headers=headers, timeout=30) as client:
        for index in range(30):
            body = {"model": "mx-chat", "messages": MESSAGES, "stream": index % 3 == 0}
            ids.append(client.post("/v1/chat/completions", json=body).headers["x-request-id"])
        for _ in range(4):
            ids.append(
                client.post(
                    "/v1/chat/completions", json={"model": "mx-bad", "messages": MESSAGES}
                ).headers["x-request-id"]
            )
    deadline = time.monotonic() + 15
    while UsageRecord.objects.filter(request_id__in=ids).count() < len(ids):
        assert time.monotonic() < deadline, "usage rows missing"
        time.sleep(0.1)
    rows = list(UsageRecord.objects.filter(model__startswith="mx-"))

    text = httpx.get(f"{metered.url}/metrics", timeout=10).text
    counted = Counter()
    for sample in samples(text, "tollgate_requests_total"):
        if sample.labels["model"].startswith("mx-"):
            counted[(sample.labels["model"], int(sample.labels["status"]))] += sample.value
    expected = Counter((row.model, row.status_code) for row in rows)
    assert counted == expected
    tokens = sum(
        s.value
        for s in samples(text, "tollgate_output_tokens_total")
        if s.labels["model"] == "mx-chat"
    )
    assert tokens == sum(row.output_tokens for row in rows if row.model == "mx-chat")
    latency = [
        s
        for s in samples(text, "tollgate_request_latency_seconds_count")
        if s.labels["model"] == "mx-chat"
    ]
    assert sum(s.value for s in latency) == 30
    ttft = samples(text, "tollgate_time_to_first_token_seconds_count")
    assert sum(s.value for s in ttft if s.labels["model"] == "mx-chat") == 10
    tagged = samples(text, "tollgate_requests_by_tag_total")
    assert {(s.labels["tag_key"], s.labels["tag_value"]) for s in tagged} >= {("feature", "f1")}
    # Live gauges: breaker state and share per deployment, usage buffer figures.
    assert samples(text, "tollgate_deployment_breaker_state")
    assert samples(text, "tollgate_deployment_traffic_share")
    assert samples(text, "tollgate_usage_buffer_depth")
    assert samples(text, "tollgate_usage_write_lag_seconds")


@pytest.mark.embedded
def test_access_needs_a_token_or_an_allowed_network(settings):
    settings.METRICS_TOKEN = "s3cret"
    settings.METRICS_ALLOWED_NETWORKS = ["10.0.0.0/8"]
    outside = {"client": ("192.0.2.1", 5000), "headers": []}
    assert not metrics.allowed(outside)
    assert not metrics.allowed({**outside, "headers": [(b"authorization", b"Bearer nope")]})
    assert metrics.allowed({**outside, "headers": [(b"authorization", b"Bearer s3cret")]})
    # With a token configured the network list no longer admits anyone without it.
    assert not metrics.allowed({"client": ("10.1.2.3", 5000), "headers": []})
    settings.METRICS_TOKEN = ""
    settings.METRICS_ALLOWED_NETWORKS = ["127.0.0.0/8", "::1/128"]
    assert metrics.allowed({"client": ("127.0.0.1", 1), "headers": []})
    assert not metrics.allowed({"client": ("192.0.2.1", 1), "headers": []})


@pytest.mark.embedded
def test_tag_label_values_are_capped(settings):
    settings.METRICS_TAG_VALUES_MAX = 3
    metrics._tag_values.pop("cap-test", None)
    seen = [metrics._tag_value("cap-test", f"v{i}") for i in range(10)]
    assert seen[:3] == ["v0", "v1", "v2"]
    assert set(seen[3:]) == {metrics.OTHER}
    assert metrics._tag_value("cap-test", "v1") == "v1"


@pytest.mark.django_db(transaction=True)
@pytest.mark.skipif(not os.environ.get("REDIS_URL"), reason="workers share health via Redis")
def test_traffic_share_is_the_fleets_whichever_worker_answers_the_scrape(metered, user):
    secret = factories.make_key(user=user)[1]
    declare_model("mx-share", metered.simulator_url, "demo-chat", "sim-chat")
    metered.wait_for_model(secret, "mx-share")
    with httpx.Client(
        base_url=metered.url, headers={"Authorization": f"Bearer {secret}"}, timeout=30
    ) as client:
        for _ in range(10):
            body = {"model": "mx-share", "messages": MESSAGES}
            assert client.post("/v1/chat/completions", json=body).status_code == 200
    deadline = time.monotonic() + 5  # a few health sync periods
    while True:
        # A new connection each time: any of the two workers may answer.
        text = httpx.get(f"{metered.url}/metrics", timeout=10).text
        shares = {
            s.labels["deployment"]: s.value
            for s in samples(text, "tollgate_deployment_traffic_share")
            if s.labels["model"] == "mx-share"
        }
        if shares == {"d0-demo-chat": 1.0, "d1-sim-chat": 0.0}:
            break
        assert time.monotonic() < deadline, shares
        time.sleep(0.2)
