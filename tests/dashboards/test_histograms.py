"""Log-scale histograms: every value reads back within the relative error, and percentiles
follow `percentile_cont` on the same values within that error."""

import random

import pytest

from apps.usage import histograms
from apps.usage.query import percentile

pytestmark = pytest.mark.embedded


@pytest.mark.parametrize("value", [0.3, 1, 7.5, 99.9, 100, 101, 2_345.6, 60_000, 599_999])
def test_a_value_reads_back_within_the_relative_error(value):
    estimate = histograms.bucket_value(histograms.bucket_of(value))
    # Inclusive bound: a value on a bucket edge (1 ms is one) is exactly that far off.
    assert abs(estimate - value) <= histograms.RELATIVE_ERROR * value * (1 + 1e-9)


def test_percentiles_are_within_the_relative_error_of_percentile_cont():
    rng = random.Random(11)
    values = sorted(rng.lognormvariate(6, 0.8) for _ in range(5000))
    histogram: histograms.Histogram = {}
    for value in values:
        bucket = histograms.bucket_of(value)
        histogram[bucket] = histogram.get(bucket, 0) + 1
    for fraction, estimate in zip(
        (0.5, 0.9, 0.99), histograms.percentiles(histogram, (0.5, 0.9, 0.99)), strict=True
    ):
        exact = percentile(values, fraction)
        assert abs(estimate - exact) <= histograms.RELATIVE_ERROR * exact


def test_merging_adds_counts_and_accepts_json_keys():
    merged: histograms.Histogram = {}
    histograms.merge_into(merged, {"5": 2, "7": 1})
    histograms.merge_into(merged, {5: 1})
    assert merged == {5: 3, 7: 1}
    assert histograms.total(merged) == 4
    assert histograms.percentiles({}, (0.5,)) == [None]
    # One value: every percentile is that value's bucket.
    [p50, p99] = histograms.percentiles({7: 1}, (0.5, 0.99))
    assert p50 == p99 == pytest.approx(histograms.bucket_value(7))
