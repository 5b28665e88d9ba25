"""Region fan-out (apps/usage/region_reads.py): side by side in a portal request, one after
the other elsewhere, results in region order, nothing left running or connected after."""

import threading

import pytest
from django.db import connections, transaction

from apps.usage.region_reads import parallel_region_reads, read_each_region
from apps.usage.regions import current_region, ledger_db
from gateway_portal.data_regions import RegionSpec

pytestmark = pytest.mark.embedded


@pytest.fixture(autouse=True)
def two_regions(settings):
    # Both kept in the primary: the fan-out is the same whichever database a region names.
    settings.DATA_REGIONS = [RegionSpec("a", "", False), RegionSpec("b", "", False)]
    settings.DATA_REGION_DEFAULT = "a"


def where_read() -> tuple[str, str]:
    return current_region(), threading.current_thread().name


def test_outside_a_block_every_region_is_read_on_the_calling_thread():
    here = threading.current_thread().name
    assert read_each_region(["b", "a"], where_read) == [("b", here), ("a", here)]


def test_inside_a_block_the_other_regions_have_threads_of_their_own():
    here = threading.current_thread().name
    with parallel_region_reads():
        first, second = read_each_region(["a", "b"], where_read)
        again = read_each_region(["a", "b"], where_read)
    assert first == ("a", here)
    assert second[0] == "b" and second[1].startswith("region-read-b")
    assert again[1][1] == second[1]  # the same thread for the block's length
    assert not any(t.name.startswith("region-read-") for t in threading.enumerate())


def test_a_failing_region_is_raised_after_the_others_finished():
    finished = []

    def read() -> str:
        if current_region() == "b":
            raise ValueError("region b is down")
        finished.append(current_region())
        return current_region()

    with parallel_region_reads(), pytest.raises(ValueError, match="region b is down"):
        read_each_region(["a", "b"], read)
    assert finished == ["a"]


@pytest.mark.django_db(transaction=True)
def test_threads_close_their_connections_when_the_block_ends():
    opened = []

    def read() -> int:
        with ledger_db.cursor() as cursor:
            cursor.execute("SELECT 1")
            (value,) = cursor.fetchone()
        opened.append(connections["default"])
        return value

    with parallel_region_reads():
        assert read_each_region(["a", "b"], read) == [1, 1]
    thread_connection = next(c for c in opened if c is not connections["default"])
    assert thread_connection.connection is None


@pytest.mark.django_db(transaction=True)
def test_inside_a_transaction_the_regions_are_read_on_its_connection():
    here = threading.current_thread().name
    with parallel_region_reads(), transaction.atomic():
        assert read_each_region(["a", "b"], where_read) == [("a", here), ("b", here)]
