"""Fixtures for usage-capture tests: the test set-up's Redis and a private stream."""

import asyncio
import os
import uuid
from collections.abc import Iterator

import pytest
import redis
from asgiref.sync import sync_to_async
from django.db import connections


@pytest.fixture
def redis_url() -> str:
    url = os.environ.get("REDIS_URL")
    if not url:
        pytest.skip("needs the Redis started by the test set-up")
    return url


@pytest.fixture
def stream(redis_url) -> Iterator[str]:
    """A stream private to the test, deleted afterwards."""
    name = f"test:usage:{uuid.uuid4().hex[:10]}"
    yield name
    client = redis.Redis.from_url(redis_url)
    client.delete(name)
    client.close()


@pytest.fixture(autouse=True)
def _close_async_orm_connection() -> Iterator[None]:
    yield
    # The async ORM runs in asgiref's shared thread; close its connection there so the
    # test database can be dropped at the end of the session.
    asyncio.run(sync_to_async(connections.close_all)())
