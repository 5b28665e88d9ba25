"""Django admin: tiers and subscriptions read-mostly (actions call services), statements and
the usage rollup read-only."""

import datetime as dt
from decimal import Decimal

import pytest
from django.contrib.admin.sites import site

from apps.billing.constants import SubjectType
from apps.billing.models import Statement, Subscription, Tier
from apps.billing.services import subscription_change
from apps.billing.subjects import BillingSubject
from apps.usage.models import UsageCubeDaily
from tests import factories

pytestmark = [pytest.mark.django_db, pytest.mark.embedded]


@pytest.fixture
def superuser(db):
    return factories.make_user("root", superuser=True)


def test_changelists_load(client, superuser, team):
    tier = Tier.objects.create(
        name="Pro",
        monthly_token_allowance=1000,
        monthly_price=Decimal(1),
        overage_price_per_1k_tokens=Decimal(1),
    )
    subscription_change(subject=BillingSubject(type=SubjectType.TEAM, team=team), tier=tier)
    client.force_login(superuser)
    for name in (
        "billing/tier",
        "billing/subscription",
        "billing/statement",
        "usage/usagecubedaily",
    ):
        assert client.get(f"/admin/{name}/").status_code == 200, name
    assert client.get(f"/admin/billing/tier/{tier.pk}/change/").status_code == 200


def test_permissions(rf, superuser):
    request = rf.get("/admin/")
    request.user = superuser
    for model in (UsageCubeDaily, Statement):
        admin = site._registry[model]
        assert not admin.has_add_permission(request)
        assert not admin.has_change_permission(request)
        assert not admin.has_delete_permission(request)
    for model in (Tier, Subscription):
        admin = site._registry[model]
        assert not admin.has_add_permission(request)
        assert not admin.has_delete_permission(request)


def test_actions_go_through_services(client, superuser, team):
    tier = Tier.objects.create(
        name="Pro",
        monthly_token_allowance=1000,
        monthly_price=Decimal(1),
        overage_price_per_1k_tokens=Decimal(1),
    )
    sub = subscription_change(
        subject=BillingSubject(type=SubjectType.TEAM, team=team),
        tier=tier,
        at=dt.datetime(2026, 1, 1, tzinfo=dt.UTC),
    )
    client.force_login(superuser)
    response = client.post(
        "/admin/billing/subscription/",
        {"action": "end_now", "_selected_action": [sub.pk]},
    )
    assert response.status_code == 302
    sub.refresh_from_db()
    assert sub.ends_at is not None
    response = client.post(
        "/admin/billing/tier/", {"action": "deactivate", "_selected_action": [tier.pk]}
    )
    assert response.status_code == 302
    tier.refresh_from_db()
    assert not tier.is_active
