"""Counter stores for the quota tests: in-process always, Redis in the services run."""

import os
import uuid

import pytest
import redis

from apps.quotas.counters import AsyncRedisCounterStore, MemoryCounterStore


def redis_url() -> str:
    url = os.environ.get("REDIS_URL", "")
    # The services run always provides Redis; only embedded-marked tests run without it.
    assert url, "REDIS_URL is not set: run the suite through scripts/run_tests.py"
    return url


@pytest.fixture
def sync_redis():
    client = redis.Redis.from_url(redis_url())
    yield client
    client.close()


@pytest.fixture
def key_prefix() -> str:
    """Counter keys unique to the test, so tests never see each other's counters."""
    return f"test:{uuid.uuid4().hex}:"


def make_store(kind: str, **kwargs):
    if kind == "memory":
        return MemoryCounterStore(**kwargs)
    return AsyncRedisCounterStore(redis_url(), **kwargs)


# The in-process store also runs in embedded mode; the Redis one only with services.
STORE_KINDS = [pytest.param("memory", marks=pytest.mark.embedded), "redis"]


@pytest.fixture(params=STORE_KINDS)
def store_kind(request) -> str:
    return request.param


@pytest.fixture
async def store(store_kind):
    store = make_store(store_kind)
    yield store
    if store_kind == "redis":
        await store.aclose()
