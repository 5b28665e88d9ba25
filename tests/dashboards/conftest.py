"""A small fixed usage data set whose numbers are computed by hand in the tests.

Two teams; in Frontend a developer (alice) and a team admin (tina), in Backend a developer
(bob); finance (fiona) in Backend. All rows on DAY1/DAY2 (long past, whole UTC days).
"""

import datetime as dt
import itertools
from decimal import Decimal

import pytest

from apps.accounts.constants import Role
from apps.usage.models import UsageRecord
from tests import factories

DAY1 = dt.date(2025, 3, 10)
DAY2 = dt.date(2025, 3, 11)
EVIL = "<script>alert(1)</script>"
PASSWORD = "pw-for-tests-123"
_ids = itertools.count(1)


def at(day: dt.date, hour: int, minute: int = 0) -> dt.datetime:
    return dt.datetime.combine(day, dt.time(hour, minute), tzinfo=dt.UTC)


def usage(**fields) -> UsageRecord:
    defaults = {
        "request_id": f"req_t{next(_ids)}",
        "model": "gpt-a",
        "provider": "openai",
        "deployment": "primary",
        "request_type": "chat",
        "status_code": 200,
        "input_tokens": 0,
        "output_tokens": 0,
        "cost_usd": Decimal(0),
        "latency_ms": 100.0,
        "tags": {},
    }
    return UsageRecord.objects.create(**{**defaults, **fields})


@pytest.fixture
def world(db):
    frontend = factories.make_team("Frontend", slug="frontend")
    backend = factories.make_team("Backend", slug="backend")
    alice = factories.make_user("alice", team=frontend, role=Role.DEVELOPER)
    tina = factories.make_user("tina", team=frontend, role=Role.TEAM_ADMIN)
    bob = factories.make_user("bob", team=backend, role=Role.DEVELOPER)
    fiona = factories.make_user("fiona", team=backend, role=Role.FINANCE)
    f, b = frontend.pk, backend.pk
    # alice, Frontend, DAY1: four successful gpt-a requests, two of them streams.
    usage(
        created_at=at(DAY1, 9),
        team_id=f,
        user_id=alice.pk,
        input_tokens=100,
        output_tokens=50,
        cost_usd=Decimal("0.0010"),
        latency_ms=100,
        is_stream=True,
        ttft_ms=20,
        tags={"feature": "search", "customer_id": "c1"},
    )
    usage(
        created_at=at(DAY1, 10),
        team_id=f,
        user_id=alice.pk,
        input_tokens=200,
        output_tokens=100,
        cost_usd=Decimal("0.0020"),
        latency_ms=200,
        is_stream=True,
        ttft_ms=40,
        tags={"feature": "search", "customer_id": "c2"},
    )
    usage(
        created_at=at(DAY1, 11),
        team_id=f,
        user_id=alice.pk,
        input_tokens=300,
        output_tokens=150,
        cost_usd=Decimal("0.0030"),
        latency_ms=300,
        tags={"feature": EVIL, "customer_id": "c1"},
    )
    usage(
        created_at=at(DAY1, 12),
        team_id=f,
        user_id=alice.pk,
        input_tokens=400,
        output_tokens=200,
        cost_usd=Decimal("0.0040"),
        latency_ms=400,
        tags={"feature": "chat"},
    )
    # alice, DAY1: one rate-limited request (errors count, latency percentiles skip it).
    usage(
        created_at=at(DAY1, 13),
        team_id=f,
        user_id=alice.pk,
        status_code=429,
        error_type="rate_limit_error",
        latency_ms=5,
        tags={"feature": "search"},
    )
    # tina (Frontend) DAY2: one claude request.
    usage(
        created_at=at(DAY2, 8),
        team_id=f,
        user_id=tina.pk,
        model="claude-b",
        provider="anthropic",
        input_tokens=1000,
        output_tokens=500,
        cost_usd=Decimal("0.0100"),
        latency_ms=1000,
        tags={"feature": "chat"},
    )
    # bob (Backend) DAY2: one success and one upstream error.
    usage(
        created_at=at(DAY2, 9),
        team_id=b,
        user_id=bob.pk,
        input_tokens=10,
        output_tokens=10,
        cost_usd=Decimal("0.5000"),
        latency_ms=50,
        tags={"feature": "search", "customer_id": "c9"},
    )
    usage(
        created_at=at(DAY2, 10),
        team_id=b,
        user_id=bob.pk,
        model="claude-b",
        provider="anthropic",
        status_code=502,
        error_type="upstream_error",
        latency_ms=9,
    )
    return {"frontend": frontend, "backend": backend, "alice": alice, "tina": tina,
            "bob": bob, "fiona": fiona}  # fmt: skip
