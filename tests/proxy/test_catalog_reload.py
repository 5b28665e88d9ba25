"""A catalog reload reads one committed state, whatever commits while it reads."""

import datetime as dt
import threading
from decimal import Decimal

import pytest
from django.db import connection, connections

from apps.billing.models import ModelPrice
from apps.proxy.catalog import Catalog
from tests.proxy.helpers import declare_model

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.embedded]

UPSTREAM = "http://127.0.0.1:9/v1"


def declare_from_another_connection(name: str) -> None:
    """`models apply` in another process: its own connection, committed when it returns."""

    def apply() -> None:
        try:
            declare_model(name, UPSTREAM, "demo-chat")
        finally:
            connections.close_all()

    thread = threading.Thread(target=apply)
    thread.start()
    thread.join()


def test_a_model_committed_during_a_reload_never_appears_without_its_deployments():
    declare_model("steady-chat", UPSTREAM, "demo-chat")
    catalog = Catalog()
    committed = []

    def commit_after_the_deployments_are_read(execute, sql, params, many, context):
        result = execute(sql, params, many, context)
        # The moment a reload read statement by statement would be split by a commit.
        if not committed and '"proxy_deployment"' in sql and "INNER JOIN" in sql:
            committed.append(True)
            declare_from_another_connection("late-chat")
        return result

    with connection.execute_wrapper(commit_after_the_deployments_are_read):
        assert catalog.load_sync(force=True)
    assert committed
    assert all(entry.deployments for entry in catalog.models.values()), catalog.models
    assert set(catalog.models) == {"steady-chat"}

    # The fingerprint kept is that of the state installed, so the next refresh sees the change.
    assert catalog.load_sync()
    assert set(catalog.models) == {"steady-chat", "late-chat"}
    assert [d.upstream_model for d in catalog.models["late-chat"].deployments] == ["demo-chat"]


@pytest.mark.django_db
def test_a_reload_inside_a_transaction_reads_what_that_transaction_sees():
    # The test's own transaction is open: the reload must not try to set its isolation.
    declare_model("uncommitted-chat", UPSTREAM, "demo-chat")
    catalog = Catalog()
    assert catalog.load_sync(force=True)
    assert [d.name for d in catalog.models["uncommitted-chat"].deployments] == ["d0-demo-chat"]


@pytest.mark.django_db
def test_an_edited_price_reaches_the_catalog():
    declare_model("priced-chat", UPSTREAM, "demo-chat")
    price = ModelPrice.objects.create(
        model_name="demo-chat",
        input_cost_per_token=Decimal("0.000001"),
        effective_from=dt.date(2020, 1, 1),
    )
    catalog = Catalog()
    assert catalog.load_sync(force=True)
    now = dt.datetime.now(dt.UTC)
    assert catalog.prices.price_at("demo-chat", now).input == Decimal("0.000001")
    # The same rows, one of them edited (no row added or removed): the refresh sees it.
    price.input_cost_per_token = Decimal("0.000003")
    price.save()
    assert catalog.load_sync()
    assert catalog.prices.price_at("demo-chat", now).input == Decimal("0.000003")
