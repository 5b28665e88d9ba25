"""The hot path's promises: no database query on a warm request, no portal code loaded."""

import asyncio
import json
import os
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
from asgiref.sync import sync_to_async
from django.db import connections
from django.db.backends import utils as db_utils

from apps.proxy import upstream
from apps.proxy.app import app as proxy_app
from apps.proxy.catalog import catalog
from apps.usage.buffer import reset_usage_buffer
from tests import factories
from tests.proxy.helpers import declare_model
from tests.proxy.simulator_server import running_simulator

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.embedded

# Modules the /v1 path must never pull in (portal views, forms, DRF views, charts).
FORBIDDEN_PREFIXES = (
    "apps.accounts.views",
    "apps.accounts.forms",
    "apps.accounts.selectors",
    "rest_framework.views",
    "rest_framework.viewsets",
    "plotly",
    "pandas",
    "django.contrib.admin.sites",
    "ninja.main",
    "requests",
)


def test_importing_the_proxy_loads_no_portal_code():
    script = (
        "import os, sys, json, django\n"
        "os.environ.setdefault('DJANGO_SETTINGS_MODULE', 'gateway_portal.settings')\n"
        "django.setup()\n"
        "before = set(sys.modules)\n"
        "import apps.proxy.app\n"
        "print(json.dumps(sorted(set(sys.modules) - before)))\n"
    )
    env = {**os.environ, "DEBUG": "true"}
    output = subprocess.run(
        [sys.executable, "-c", script],
        cwd=ROOT,
        env=env,
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    loaded = json.loads(output.strip().splitlines()[-1])
    assert "apps.proxy.calls" in loaded
    offenders = [m for m in loaded if m.startswith(FORBIDDEN_PREFIXES)]
    assert offenders == []


class QueryCounter:
    """Counts SQL statements from every thread (async ORM calls run in worker threads)."""

    def __init__(self, monkeypatch) -> None:
        self.count = 0
        original = db_utils.CursorWrapper._execute_with_wrappers

        def counting(wrapper, sql, *args, **kwargs):
            self.count += 1
            return original(wrapper, sql, *args, **kwargs)

        monkeypatch.setattr(db_utils.CursorWrapper, "_execute_with_wrappers", counting)


@pytest.mark.django_db(transaction=True)
def test_warm_request_makes_no_database_query(user, monkeypatch):
    _, secret = factories.make_key(user=user)
    with running_simulator() as simulator_url:
        declare_model("warm-chat", f"{simulator_url}/v1", "demo-chat")
        counter = QueryCounter(monkeypatch)

        async def scenario() -> list[int]:
            reset_usage_buffer()
            await catalog.refresh(force=True)
            transport = httpx.ASGITransport(app=proxy_app)
            statuses, counts = [], []
            async with httpx.AsyncClient(transport=transport, base_url="http://gw") as client:
                for _ in range(3):
                    before = counter.count
                    response = await client.post(
                        "/v1/chat/completions",
                        json={
                            "model": "warm-chat",
                            "messages": [{"role": "user", "content": "hi"}],
                        },
                        headers={
                            "Authorization": f"Bearer {secret}",
                            "X-Gateway-Metadata": '{"feature": "warm"}',
                        },
                    )
                    statuses.append(response.status_code)
                    counts.append(counter.count - before)
            await upstream.close()
            reset_usage_buffer()
            # The async ORM's worker thread holds a connection; the test database must drop.
            await sync_to_async(connections.close_all)()
            assert statuses == [200, 200, 200]
            return counts

        counts = asyncio.run(scenario())
    assert counts[0] >= 1  # the cold request looks the key up once
    assert counts[1:] == [0, 0]
