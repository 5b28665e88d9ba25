"""The GIN index on UsageRecord.tags exists on PostgreSQL."""

import pytest
from django.db import connection

pytestmark = pytest.mark.django_db


def test_tags_gin_index_on_postgresql():
    if connection.vendor != "postgresql":
        pytest.skip("PostgreSQL only")
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT indexdef FROM pg_indexes WHERE indexname = 'proxy_usagerecord_tags_gin'"
        )
        (indexdef,) = cursor.fetchone()
    assert "gin" in indexdef and "jsonb_path_ops" in indexdef
