"""Each worker reports how late its event loop runs (`tollgate_event_loop_lag_seconds`)."""

import time

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.embedded]


def lag_samples(url: str) -> dict[str, float]:
    text = httpx.get(f"{url}/metrics", timeout=10).text
    for family in text_string_to_metric_families(text):
        if family.name == "tollgate_event_loop_lag_seconds":
            return {
                sample.name: sample.value
                for sample in family.samples
                if not sample.labels.get("le")
            }
    return {}


def test_the_loop_lag_histogram_fills(gateway):
    deadline = time.monotonic() + 5
    samples = lag_samples(gateway.url)
    while (
        samples.get("tollgate_event_loop_lag_seconds_count", 0) < 2 and time.monotonic() < deadline
    ):
        time.sleep(0.3)
        samples = lag_samples(gateway.url)
    assert samples["tollgate_event_loop_lag_seconds_count"] >= 2
    # An idle worker wakes nearly on time: its mean lag is far below a second.
    mean = (
        samples["tollgate_event_loop_lag_seconds_sum"]
        / samples["tollgate_event_loop_lag_seconds_count"]
    )
    assert 0 <= mean < 0.5
