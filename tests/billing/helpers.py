"""Usage rows for billing tests: small sets through the ORM, large ones through COPY."""

import datetime as dt
import itertools
import json
import random
from decimal import Decimal

from django.db import connection

from apps.usage.models import UsageRecord

_seq = itertools.count(1)


def usage_row(**fields) -> UsageRecord:
    n = next(_seq)
    defaults = {
        "request_id": f"req_test_{n}",
        "created_at": dt.datetime(2026, 10, 5, 12, 0, tzinfo=dt.UTC),
        "model": "gpt-test",
        "request_type": "chat",
        "status_code": 200,
        "input_tokens": 100,
        "output_tokens": 50,
        "cost_usd": Decimal("0.0012345678"),
        "latency_ms": 100.0,
        "tags": {},
    }
    defaults.update(fields)
    return UsageRecord(**defaults)


def add_usage(rows: list[UsageRecord], *, inserted_at: dt.datetime | None = None) -> None:
    created = UsageRecord.objects.bulk_create(rows, batch_size=5000)
    if inserted_at is not None:
        # auto_now_add always stamps "now"; tests move the watermark explicitly.
        UsageRecord.objects.filter(pk__in=[r.pk for r in created]).update(inserted_at=inserted_at)


COPY_COLUMNS = (
    "request_id", "created_at", "inserted_at", "team_id", "user_id", "virtual_account_id",
    "end_user", "model", "deployment", "provider", "request_type", "is_stream", "status_code",
    "error_type", "input_tokens", "output_tokens", "cached_tokens", "tokens_estimated",
    "usage_suspect", "cost_usd", "latency_ms", "attempts", "client_disconnected", "tags",
)  # fmt: skip

CUSTOMERS = ["acme", "globex", "initech", None]
FEATURES = ["search", "chat", "summarise"]
MODELS = ["gpt-4o", "gpt-4o-mini", "claude-sonnet", "embed-small"]


def copy_usage(
    *,
    count: int,
    start: dt.datetime,
    span: dt.timedelta,
    team_ids: list[int],
    seed: int,
    prefix: str,
    inserted_at: dt.datetime | None = None,
) -> None:
    """COPY `count` random rows created in [start, start + span) into the usage table."""
    rng = random.Random(seed)
    inserted = inserted_at or dt.datetime.now(dt.UTC)
    seconds = int(span.total_seconds())
    table = UsageRecord._meta.db_table
    sql = f"COPY {table} ({', '.join(COPY_COLUMNS)}) FROM STDIN"
    with connection.cursor() as cursor, cursor.cursor.copy(sql) as copy:
        for i in range(count):
            team = rng.choice(team_ids)
            customer = rng.choice(CUSTOMERS)
            tags = {"feature": rng.choice(FEATURES), "environment": "prod"}
            if customer:
                tags["customer_id"] = customer
            copy.write_row(
                (
                    f"{prefix}{i}",
                    start + dt.timedelta(seconds=rng.randrange(seconds)),
                    inserted,
                    team,
                    team * 10 + rng.randrange(3),
                    None,
                    "",
                    rng.choice(MODELS),
                    "",
                    "openai",
                    "chat",
                    False,
                    rng.choice((200, 200, 200, 200, 429, 500)),
                    "",
                    rng.randrange(5000),
                    rng.randrange(2000),
                    0,
                    False,
                    False,
                    Decimal(rng.randrange(10**9)).scaleb(-10),
                    rng.random() * 2000,
                    1,
                    False,
                    json.dumps(tags),
                )
            )
