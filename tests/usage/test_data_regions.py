"""Data residency per record, against real databases: the primary (the suite's PostgreSQL),
a US region database on the same server and an EU region on a PostgreSQL server of its own
(so that it can be stopped), with a 2-worker gateway configured with both regions.

What is checked is where rows physically are (SQL on each database), what a reader of the
usage API gets (the regions merged, or split by region), and that an unreachable region
delays only its own rows.
"""

from __future__ import annotations

import contextlib
import csv
import datetime as dt
import io
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import psycopg
import psycopg.types.json
import pytest
from django.db import connection
from django.test import override_settings
from django.utils import timezone

from apps.accounts.constants import Role
from apps.accounts.models import AuditLog, TeamRegionMove
from apps.accounts.services import customer_region_set, team_region_set
from apps.billing.constants import SubjectType
from apps.billing.models import Subscription, Tier
from apps.proxy.services import model_catalog_apply
from apps.usage.models import UsageRecord
from gateway_portal.data_regions import parse_regions
from tests import factories
from tests.proxy.conftest import (
    GatewayServer,
    free_port,
    gateway_env,
    start_gateway,
    stop_gateway,
)
from tests.proxy.conftest import test_database_url as primary_database_url

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "scripts"))

from run_tests import _initdb, as_postgres_user, pg_bin  # noqa: E402  (scripts/ is no package)

pytestmark = [
    pytest.mark.services,
    pytest.mark.slow,
    pytest.mark.django_db(transaction=True),
    pytest.mark.skipif(
        not connection.vendor == "postgresql", reason="two PostgreSQL region databases"
    ),
]

TABLE = UsageRecord._meta.db_table
# Identifiers from the model only; values are always parameters.
COUNT_TAGGED = f"SELECT count(*) FROM {TABLE} WHERE tags::text LIKE %s"  # noqa: S608
COUNT_IDS = f"SELECT count(*) FROM {TABLE} WHERE request_id = ANY(%s)"  # noqa: S608
DEPLOYMENTS_OF = (
    f"SELECT request_id, deployment, status_code FROM {TABLE} WHERE request_id = ANY(%s)"  # noqa: S608
)


@dataclass
class PgServer:
    """A PostgreSQL server of the test's own, which the test can stop and start again."""

    workdir: Path
    port: int

    @property
    def data(self) -> Path:
        return self.workdir / "pgdata"

    def url(self, database: str) -> str:
        return f"postgres://tollgate@127.0.0.1:{self.port}/{database}"

    def start(self) -> None:
        opts = (
            f"-p {self.port} -k {self.workdir} -c listen_addresses=127.0.0.1 -c fsync=off "
            "-c synchronous_commit=off -c max_connections=100"
        )
        command = [pg_bin("pg_ctl"), "-D", str(self.data), "-o", opts, "-l"]
        command += [str(self.workdir / "pg.log"), "-w", "start"]
        subprocess.run(as_postgres_user(command), check=True, stdout=subprocess.DEVNULL)

    def stop(self) -> None:
        command = [pg_bin("pg_ctl"), "-D", str(self.data), "-m", "immediate", "-w", "stop"]
        subprocess.run(as_postgres_user(command), check=False, stdout=subprocess.DEVNULL)


@contextlib.contextmanager
def pg_server() -> Iterator[PgServer]:
    workdir = Path(tempfile.mkdtemp(prefix="tollgate-eu-pg-"))
    if os.geteuid() == 0:  # the server runs as postgres (`as_postgres_user`)
        shutil.chown(workdir, "postgres")
    _initdb(workdir / "pgdata")
    server = PgServer(workdir, free_port())
    server.start()
    try:
        yield server
    finally:
        server.stop()
        shutil.rmtree(workdir, ignore_errors=True)


def create_database(server_url: str, name: str) -> str:
    """A fresh database `name` on the server of `server_url`; its URL."""
    admin = server_url.rsplit("/", 1)[0] + "/postgres"
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        conn.execute(f'CREATE DATABASE "{name}"')
    return server_url.rsplit("/", 1)[0] + f"/{name}"


def sql(url: str, query: str, *params) -> list[tuple]:
    with psycopg.connect(url, connect_timeout=3) as conn:
        return conn.execute(query, params).fetchall()


@dataclass
class Regions:
    eu_server: PgServer
    eu_url: str
    us_url: str
    primary_url: str
    env: dict[str, str]


@pytest.fixture(scope="module")
def regions(django_db_setup, django_db_blocker) -> Iterator[Regions]:
    with django_db_blocker.unblock(), pg_server() as eu_server:
        primary_url = primary_database_url()
        eu_url = create_database(eu_server.url("postgres"), "tollgate_eu")
        us_url = create_database(primary_url, "tollgate_us_region")
        env = {"DATA_REGIONS": f"eu={eu_url},us={us_url}", "DATA_REGION_DEFAULT": "us"}
        # `migrate` migrates the primary (already done: nothing to do) and both regions.
        migrate = [sys.executable, "manage.py", "migrate", "--noinput", "-v0"]
        subprocess.run(migrate, cwd=ROOT, env=gateway_env(free_port(), env), check=True)
        yield Regions(eu_server, eu_url, us_url, primary_url, env)
        with contextlib.suppress(psycopg.Error):
            create_database(primary_url, "tollgate_us_region")  # emptied for the next run


@pytest.fixture(scope="module")
def regional_gateway(regions) -> Iterator[GatewayServer]:
    # Rows are exported at once (no settle wait), so the test can page through them.
    extra = {
        "USAGE_FLUSH_INTERVAL": "0.1",
        "DATA_REGIONS_STRICT": "eu",
        "BILLING_EXPORT_SETTLE_SECONDS": "0",
    }
    server = start_gateway(regions.env | extra, workers=2)
    yield server
    stop_gateway(server)


def gateway_regions(regions: Regions):
    """This process's settings made the gateway's, for services that check region names."""
    specs, default = parse_regions(regions.env["DATA_REGIONS"], default="us", strict="eu")
    return override_settings(DATA_REGIONS=specs, DATA_REGION_DEFAULT=default)


def declare(regions: Regions, gateway: GatewayServer, name: str, *served: list[str]) -> None:
    """A model with one simulator deployment per entry of `served` (its regions), in order."""
    deployments = [
        {
            "name": f"d{index}-{'-'.join(names)}",
            "provider": "simulator",
            "upstream_model": "demo-chat",
            "base_url": gateway.simulator_url,
            "priority": index,
            "regions": names,
        }
        for index, names in enumerate(served)
    ]
    with gateway_regions(regions):
        model_catalog_apply(spec={"models": [{"name": name, "deployments": deployments}]})


def people(regions: Regions):
    eu = factories.make_team("Kontor EU", slug="kontor-eu")
    us = factories.make_team("Ranch US", slug="ranch-us")
    saas = factories.make_team("SaaS", slug="saas")
    # The services check names against the gateway's regions (this process has one).
    with gateway_regions(regions):
        team_region_set(team=eu, region="eu", actor=None)
        team_region_set(team=us, region="us", actor=None)
        # SaaS is a US team, but its customer "zeiss" is kept in the EU.
        team_region_set(team=saas, region="us", actor=None)
        customer_region_set(customer_id="zeiss", region="eu", actor=None)
        # "acme" is a US customer (of SaaS, a US team anyway): a tag any client may send.
        customer_region_set(customer_id="acme", region="us", actor=None)
    finance = factories.make_user("fin", team=us, role=Role.FINANCE)
    saas_admin = factories.make_user("sue", team=saas, role=Role.TEAM_ADMIN)
    keys = {
        "eu": factories.make_key(user=factories.make_user("anna", team=eu))[1],
        "us": factories.make_key(user=factories.make_user("bill", team=us))[1],
        "saas": factories.make_key(user=factories.make_user("sam", team=saas))[1],
        "reader": factories.make_key(user=finance, scopes=["usage:read"])[1],
        "saas_admin": factories.make_key(user=saas_admin, scopes=["usage:read"])[1],
    }
    return {"eu": eu, "us": us, "saas": saas}, keys


def post(gateway: GatewayServer, secret: str, tags: dict, model: str, stream: bool = False):
    body = {
        "model": model,
        "messages": [{"role": "user", "content": "Where am I kept?"}],
        "stream": stream,
    }
    headers = {"Authorization": f"Bearer {secret}", "X-Gateway-Metadata": json.dumps(tags)}
    return httpx.post(f"{gateway.url}/v1/chat/completions", json=body, headers=headers, timeout=30)


def send(gateway: GatewayServer, secret: str, tags: dict, *, stream: bool = False) -> str:
    response = post(gateway, secret, tags, "rg-chat", stream)
    assert response.status_code == 200, response.text
    return response.headers["x-request-id"]


@contextlib.contextmanager
def portal_session(gateway: GatewayServer, username: str) -> Iterator[httpx.Client]:
    """A portal login on the served gateway, as a browser makes it."""
    with httpx.Client(base_url=gateway.url, timeout=30) as client:
        client.get("/login/")
        form = {
            "username": username,
            "password": "pw-for-tests-123",
            "csrfmiddlewaretoken": client.cookies["csrftoken"],
        }
        response = client.post("/login/", data=form, headers={"Referer": f"{gateway.url}/login/"})
        assert response.status_code in (302, 303), response.text[-500:]
        yield client


def _kpi_sub(html: str, label: str) -> str:
    match = re.search(
        rf'<div class="label">{re.escape(label)}</div>.*?<div class="sub">(.*?)</div>', html, re.S
    )
    assert match, f"no KPI tile {label!r}"
    return match.group(1)


def _figure(html: str, name: str) -> dict:
    match = re.search(
        rf'<script id="figure-{name}" type="application/json">(.*?)</script>', html, re.S
    )
    assert match, f"figure {name} not on the page"
    return json.loads(match.group(1))


def rows_in(url: str, ids: list[str]) -> dict[str, tuple]:
    found = sql(
        url,
        f"SELECT request_id, team_id, region, tags::text, request_body IS NOT NULL, "  # noqa: S608
        f"input_tokens, output_tokens FROM {TABLE} WHERE request_id = ANY(%s)",
        ids,
    )
    return {row[0]: row[1:] for row in found}


def wait_rows(url: str, ids: list[str], timeout: float = 40) -> dict[str, tuple]:
    deadline = time.monotonic() + timeout
    while True:
        found = rows_in(url, ids)
        if len(found) == len(ids) or time.monotonic() > deadline:
            return found
        time.sleep(0.3)


def test_each_row_its_tags_and_bodies_live_only_in_its_regions_database(regions, regional_gateway):
    teams, keys = people(regions)
    declare(regions, regional_gateway, "rg-chat", ["eu", "us"])
    regional_gateway.wait_for_model(keys["eu"], "rg-chat")

    logged = {"log_request": "true"}
    eu_ids = [send(regional_gateway, keys["eu"], {"site": "berlin", **logged}) for _ in range(6)]
    eu_ids += [send(regional_gateway, keys["eu"], {"site": "berlin"}, stream=True)]
    us_ids = [send(regional_gateway, keys["us"], {"site": "austin", **logged}) for _ in range(5)]
    zeiss = [send(regional_gateway, keys["saas"], {"customer_id": "zeiss"}) for _ in range(3)]
    acme = [send(regional_gateway, keys["saas"], {"customer_id": "acme"}) for _ in range(2)]
    every = eu_ids + us_ids + zeiss + acme

    in_eu = wait_rows(regions.eu_url, eu_ids + zeiss)
    in_us = wait_rows(regions.us_url, us_ids + acme)
    assert set(in_eu) == set(eu_ids + zeiss)
    assert set(in_us) == set(us_ids + acme)
    # Nowhere else: not in the other region, not in the primary.
    assert not rows_in(regions.eu_url, us_ids + acme)
    assert not rows_in(regions.us_url, eu_ids + zeiss)
    assert not rows_in(regions.primary_url, every)
    assert {row[1] for row in in_eu.values()} == {"eu"}
    assert {row[1] for row in in_us.values()} == {"us"}
    # Tag values and logged bodies went with their rows, and only there.
    assert all("berlin" in in_eu[rid][2] and in_eu[rid][3] for rid in eu_ids[:6])
    assert all("austin" in in_us[rid][2] and in_us[rid][3] for rid in us_ids)
    for url, foreign in ((regions.eu_url, "austin"), (regions.us_url, "berlin")):
        (count,) = sql(url, COUNT_TAGGED, f"%{foreign}%")[0]
        assert count == 0

    # The usage API merges the regions: its totals are the sum of both databases'.
    reader = {"Authorization": f"Bearer {keys['reader']}"}
    api = f"{regional_gateway.url}/api/usage/"
    merged = httpx.get(api, params={"group_by": "team"}, headers=reader, timeout=30).json()
    by_team = {item["team_id"]: item for item in merged["data"]}
    expected = {}
    for rows in (in_eu, in_us):
        for team_id, _region, _tags, _body, input_tokens, output_tokens in rows.values():
            totals = expected.setdefault(team_id, [0, 0, 0])
            totals[0] += 1
            totals[1] += input_tokens
            totals[2] += output_tokens
    assert {
        team_id: [item["requests"], item["input_tokens"], item["output_tokens"]]
        for team_id, item in by_team.items()
    } == expected
    assert by_team[teams["saas"].pk]["requests"] == 5  # three EU rows and two US rows

    # Split by region, in the CSV a warehouse loads: every line names its region.
    split = httpx.get(
        api, params={"group_by": "team,region", "format": "csv"}, headers=reader, timeout=30
    )
    lines = list(csv.DictReader(io.StringIO(split.text)))
    assert {(line["team"], line["region"], int(line["requests"])) for line in lines} == {
        ("kontor-eu", "eu", 7),
        ("ranch-us", "us", 5),
        ("saas", "eu", 3),
        ("saas", "us", 2),
    }
    # The chargeback CSV, with several regions, has a line per team and region.
    charge = httpx.get(f"{api}chargeback.csv", headers=reader, timeout=30)
    assert charge.status_code == 200, charge.text
    charged = list(csv.DictReader(io.StringIO(charge.text)))
    assert {
        (line["team"], line["region"], int(line["requests"]))
        for line in charged
        if line["team"] != "TOTAL"
    } == {("kontor-eu", "eu", 7), ("ranch-us", "us", 5), ("saas", "eu", 3), ("saas", "us", 2)}
    assert int(charged[-1]["requests"]) == 17 and charged[-1]["team"] == "TOTAL"
    # One region alone, as a filter.
    eu_only = httpx.get(
        api, params={"group_by": "team", "region": "eu"}, headers=reader, timeout=30
    ).json()
    assert {item["team"]: item["requests"] for item in eu_only["data"]} == {
        "kontor-eu": 7,
        "saas": 3,
    }
    unknown = httpx.get(api, params={"region": "mars"}, headers=reader, timeout=30)
    assert unknown.status_code == 400 and "mars" in unknown.text

    # Raw rows across both regions, paged with the cursor: each row once, with its region.
    exported: dict[str, str] = {}
    cursor = None
    params = {"mode": "rows", "limit": 4, "updated_since": "2000-01-01T00:00:00Z"}
    for _ in range(20):
        page = httpx.get(
            api, params={**params, **({"cursor": cursor} if cursor else {})}, headers=reader,
            timeout=30,
        ).json()  # fmt: skip
        for row in page["data"]:
            if row["request_id"] in every:
                assert row["request_id"] not in exported, "a row exported twice"
                exported[row["request_id"]] = row["region"]
        cursor = page["next_cursor"]
        if not page["has_more"]:
            break
    assert exported == {rid: "eu" for rid in in_eu} | {rid: "us" for rid in in_us}
    as_csv = httpx.get(api, params={**params, "limit": 1000, "format": "csv"}, headers=reader)
    csv_regions = {
        line["request_id"]: line["region"] for line in csv.DictReader(io.StringIO(as_csv.text))
    }
    assert {rid: csv_regions[rid] for rid in every} == exported

    # A team admin reads their team's region only: SaaS is a US team, so the rows its EU
    # customer left in the EU are not theirs to read, and asking for that region is a 403.
    admin = {"Authorization": f"Bearer {keys['saas_admin']}"}
    theirs = httpx.get(api, params={"group_by": "team,region"}, headers=admin, timeout=30).json()
    assert [(item["team"], item["region"], item["requests"]) for item in theirs["data"]] == [
        ("saas", "us", 2)
    ]
    denied = httpx.get(api, params={"region": "eu"}, headers=admin, timeout=30)
    assert denied.status_code == 403 and "data regions" in denied.text

    # The dashboards as finance sees them: one figure for both regions.
    total_requests = sum(t[0] for t in expected.values())
    total_tokens = sum(t[1] + t[2] for t in expected.values())
    with portal_session(regional_gateway, "fin") as portal:
        html = portal.get("/dashboards/").text
        assert _kpi_sub(html, "Requests today") == f"{total_requests:,} month to date"
        assert _kpi_sub(html, "Tokens today") == f"{total_tokens:,} month to date"
        # Latency percentiles merged from both regions' histograms.
        traces = _figure(html, "latency")["data"]
        assert any(v is not None for trace in traces for v in trace["y"]), traces
        assert portal.get("/dashboards/latency/", params={"group": "team"}).status_code == 200
        # One region as a filter: the EU database's rows alone.
        eu_page = portal.get("/dashboards/", params={"region": "eu"}).text
        assert 'name="region"' in eu_page
        assert _kpi_sub(eu_page, "Requests today") == f"{len(in_eu):,} month to date"
        # A chart's CSV names the regions its figures were read from.
        for params, regions_read, requests in (
            ({}, "eu+us", total_requests),
            ({"region": "eu"}, "eu", len(in_eu)),
        ):
            trend = portal.get("/dashboards/csv/trend/", params=params)
            lines = list(csv.DictReader(io.StringIO(trend.text)))
            assert {line["region"] for line in lines} == {regions_read}
            assert sum(int(line["requests"]) for line in lines) == requests

        # SaaS's statement bills its rows of both regions and names them.
        Subscription.objects.create(
            tier=Tier.objects.get_or_create(
                name="Standard",
                defaults={
                    "monthly_token_allowance": 200_000,
                    "monthly_price": 49,
                    "hard_cap": True,
                },
            )[0],
            subject_type=SubjectType.TEAM,
            subject_key=f"team:{teams['saas'].pk}",
            team=teams["saas"],
            starts_at=dt.datetime.now(dt.UTC).replace(day=1, hour=0, minute=0, second=0),
        )
        saas_tokens = sum(
            row[4] + row[5]
            for rows in (in_eu, in_us)
            for row in rows.values()
            if row[0] == teams["saas"].pk
        )
        statements = portal.get("/billing/").text
        assert f"<td>team saas</td><td>Standard</td><td>200,000</td><td>{saas_tokens:,}</td>" in (
            statements
        )
        as_csv = portal.get("/billing/statements.csv").text
        (line,) = list(csv.DictReader(io.StringIO(as_csv)))
        assert (int(line["used_tokens"]), line["regions"]) == (saas_tokens, "eu+us")


def test_a_stopped_region_delays_only_its_own_rows_and_loses_none(regions, regional_gateway):
    _teams, keys = people(regions)
    declare(regions, regional_gateway, "rg-chat", ["eu", "us"])
    regional_gateway.wait_for_model(keys["eu"], "rg-chat")

    regions.eu_server.stop()
    try:
        # Requests are answered as ever: the region's database is off the request path.
        eu_ids = [send(regional_gateway, keys["eu"], {"phase": "outage"}) for _ in range(8)]
        us_ids = [send(regional_gateway, keys["us"], {"phase": "outage"}) for _ in range(8)]
        # The US region keeps writing while the EU one is down.
        assert set(wait_rows(regions.us_url, us_ids, timeout=20)) == set(us_ids)
        # ...while the EU rows wait in the writer's spool for their own database.
        deadline = time.monotonic() + 20
        while "region eu unreachable, rows held back" not in regional_gateway.log():
            assert time.monotonic() < deadline, regional_gateway.log()[-3000:]
            time.sleep(0.2)
        # ...and the held rows are on the metrics page, by region.
        assert held_rows(regional_gateway, "eu", deadline=time.monotonic() + 10) > 0
        # Readiness says so without waiting on the stopped database: degraded, not down.
        ready = httpx.get(f"{regional_gateway.url}/readyz", timeout=10)
        assert ready.status_code == 200, ready.text
        assert ready.json()["status"] == "degraded" and "held for region eu" in ready.text
    finally:
        regions.eu_server.start()
    # The held EU rows arrive once their database is back, each once.
    in_eu = wait_rows(regions.eu_url, eu_ids, timeout=60)
    assert set(in_eu) == set(eu_ids)
    (count,) = sql(regions.eu_url, COUNT_IDS, eu_ids)[0]
    assert count == len(eu_ids)
    assert not rows_in(regions.us_url, eu_ids)
    assert not rows_in(regions.primary_url, eu_ids + us_ids)
    assert held_rows(regional_gateway, "eu", deadline=time.monotonic() + 10, want=0) == 0


def held_rows(gateway: GatewayServer, region: str, *, deadline: float, want: int | None = None):
    """`tollgate_usage_held_rows` of `region` on the gateway's metrics page (0 when absent),
    polled until it is `want` (or, with None, above 0) or the deadline passes."""
    pattern = re.compile(rf'^tollgate_usage_held_rows{{region="{region}"}} (\S+)$', re.M)
    while True:
        found = pattern.search(httpx.get(f"{gateway.url}/metrics", timeout=10).text)
        value = float(found.group(1)) if found else 0.0
        if (value > 0 if want is None else value == want) or time.monotonic() > deadline:
            return value
        time.sleep(0.3)


def test_a_strict_region_is_served_only_by_its_deployments_and_fails_closed(
    regions, regional_gateway
):
    _teams, keys = people(regions)
    # The US deployment comes first: without the policy, EU calls would go there.
    declare(regions, regional_gateway, "rg-mixed", ["us"], ["eu"])
    declare(regions, regional_gateway, "rg-us-only", ["us"])
    for model in ("rg-mixed", "rg-us-only"):
        regional_gateway.wait_for_model(keys["eu"], model)

    eu_ids = []
    for _ in range(4):
        response = post(regional_gateway, keys["eu"], {}, "rg-mixed")
        assert response.status_code == 200, response.text
        eu_ids.append(response.headers["x-request-id"])
    assert {row[0] for row in deployments_of(regions.eu_url, eu_ids).values()} == {"d1-eu"}
    # A customer tag naming a US customer does not take a strict EU team's call, or its
    # row, out of the EU.
    tagged = post(regional_gateway, keys["eu"], {"customer_id": "acme"}, "rg-mixed")
    assert tagged.status_code == 200, tagged.text
    tagged_id = tagged.headers["x-request-id"]
    assert deployments_of(wait_and(regions.eu_url, tagged_id), [tagged_id])[tagged_id][0] == "d1-eu"
    assert not rows_in(regions.us_url, [tagged_id])

    refused = post(regional_gateway, keys["eu"], {}, "rg-us-only")
    assert refused.status_code == 503
    error = refused.json()["error"]
    assert error["code"] == "residency_unavailable"
    assert "Data residency policy" in error["message"] and "'eu' is strict" in error["message"]
    # The refusal is in the EU ledger too, with no deployment tried.
    refusal = refused.headers["x-request-id"]
    assert wait_rows(regions.eu_url, [refusal])
    assert deployments_of(regions.eu_url, [refusal])[refusal] == ["", 503]
    # The US region is not strict: its tenants use any deployment.
    assert post(regional_gateway, keys["us"], {}, "rg-us-only").status_code == 200


def wait_and(url: str, request_id: str) -> str:
    """`url`, once the row of `request_id` is in its database."""
    assert wait_rows(url, [request_id]), f"{request_id} never reached {url}"
    return url


def deployments_of(url: str, ids: list[str]) -> dict[str, tuple]:
    found = sql(url, DEPLOYMENTS_OF, ids)
    return {request_id: rest for request_id, *rest in found}


COLUMNS = [f.column for f in UsageRecord._meta.concrete_fields if not f.primary_key]


def copy_rows(source_url: str, target_url: str, ids: list[str], suffix: str = "") -> None:
    """Rows of `ids` copied as they are: the state a move interrupted between its insert
    into the target and its delete from the source leaves behind. With `suffix`, copies
    under new request ids (`<id><suffix>`): rows that landed in the target of their own."""
    names = ", ".join(COLUMNS)
    at = COLUMNS.index("request_id")
    with psycopg.connect(source_url) as source, psycopg.connect(target_url) as target:
        select = f"SELECT {names} FROM {TABLE} WHERE request_id = ANY(%s)"  # noqa: S608
        rows = source.execute(select, (ids,)).fetchall()
        marks = ", ".join(["%s"] * len(COLUMNS))
        insert = f"INSERT INTO {TABLE} ({names}) VALUES ({marks})"  # noqa: S608
        with target.cursor() as cursor:
            cursor.executemany(
                insert,
                [
                    [_cell(v, f"{v}{suffix}" if i == at else v) for i, v in enumerate(row)]
                    for row in rows
                ],
            )


def _cell(value: object, renamed: object) -> object:
    return psycopg.types.json.Jsonb(value) if isinstance(value, dict) else renamed


def manage(regions: Regions, *args: str) -> str:
    """`manage.py` with the gateway's regions, in a process of its own; its output."""
    done = subprocess.run(
        [sys.executable, "manage.py", *args], cwd=ROOT, env=gateway_env(free_port(), regions.env),
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    return done.stdout


def move(regions: Regions, team: str, to: str) -> str:
    return manage(regions, "usage", "move-region", "--team", team, "--to", to)


def test_moving_a_team_moves_its_history_once_and_can_be_rerun(regions, regional_gateway):
    teams, keys = people(regions)
    declare(regions, regional_gateway, "rg-chat", ["eu", "us"])
    regional_gateway.wait_for_model(keys["us"], "rg-chat")
    ids = [send(regional_gateway, keys["us"], {"site": "austin"}) for _ in range(6)]
    before = wait_rows(regions.us_url, ids)
    assert len(before) == 6

    assert "6 rows moved (6 from us)" in move(regions, "ranch-us", "eu")
    after = rows_in(regions.eu_url, ids)
    assert set(after) == set(ids) and not rows_in(regions.us_url, ids)
    # The same rows, counts and all, now in the EU database.
    assert {rid: row[3:] for rid, row in after.items()} == {
        rid: row[3:] for rid, row in before.items()
    }
    teams["us"].refresh_from_db()
    assert teams["us"].data_region == "eu"

    # Interrupted after its insert, before its delete: both databases hold three rows.
    copy_rows(regions.eu_url, regions.us_url, ids[:3])
    assert "3 rows moved (3 from us)" in move(regions, "ranch-us", "eu")
    (count,) = sql(regions.eu_url, COUNT_IDS, ids)[0]
    assert count == 6 and not rows_in(regions.us_url, ids)
    assert "0 rows moved" in move(regions, "ranch-us", "eu")

    # A move killed between an insert and its delete, and never re-run: once nobody has
    # touched it for a while, the scheduled sweep finishes it; no row stays in both.
    copy_rows(regions.eu_url, regions.us_url, ids[3:5])
    journal = TeamRegionMove.objects.filter(team=teams["us"]).latest("started_at")
    idle = timezone.now() - dt.timedelta(hours=1)
    TeamRegionMove.objects.filter(pk=journal.pk).update(finished_at=None, touched_at=idle)
    swept = manage(regions, "usage", "sweep-moves")
    assert "moves finished: ranch-us" in swept, swept
    (count,) = sql(regions.eu_url, COUNT_IDS, ids)[0]
    assert count == 6 and not rows_in(regions.us_url, ids)
    journal.refresh_from_db()
    assert journal.finished_at is not None
    # A row that still landed in the old region after the move (an event in flight at the
    # change): the sweep of the day after the move moves it.
    copy_rows(regions.eu_url, regions.us_url, ids[:1], suffix="-late")
    late = f"{ids[0]}-late"
    swept = manage(regions, "usage", "sweep-moves")
    assert "stragglers moved: ranch-us: 1" in swept, swept
    assert set(rows_in(regions.eu_url, [late])) == {late} and not rows_in(regions.us_url, [late])
    assert "stragglers moved: none" in manage(regions, "usage", "sweep-moves")

    # New rows of the team go to its new region at once (its keys were re-read).
    new = send(regional_gateway, keys["us"], {"site": "austin"})
    assert set(wait_rows(regions.eu_url, [new])) == {new}

    # Moving back leaves the rows of a customer kept in the EU (zeiss) where they are.
    zeiss = [send(regional_gateway, keys["us"], {"customer_id": "zeiss"}) for _ in range(2)]
    assert set(wait_rows(regions.eu_url, zeiss)) == set(zeiss)
    assert "8 rows moved (8 from eu)" in move(regions, "ranch-us", "us")
    assert set(rows_in(regions.us_url, [*ids, late, new])) == {*ids, late, new}
    assert set(rows_in(regions.eu_url, zeiss)) == set(zeiss)
    assert not rows_in(regions.us_url, zeiss)

    # The audit log has the region changes and each move.
    actions = list(
        AuditLog.objects.filter(object_id=str(teams["us"].pk)).values_list("action", flat=True)
    )
    # The operations commands go over every region unless told one.
    rolled = manage(regions, "rollup", "--days", "1")
    assert "region eu: " in rolled and "region us: " in rolled
    assert manage(regions, "usage_partitions", "--region", "eu").startswith("== region eu")

    # Three changes: the explicit "us" (the default, stored all the same), eu, us again.
    assert actions.count("team.region_changed") == 3 and actions.count("usage.region_moved") == 4
    assert actions.count("usage.region_move_swept") == 2
