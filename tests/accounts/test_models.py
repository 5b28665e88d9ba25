import pytest
from django.db import IntegrityError, transaction

from apps.accounts.exceptions import OwnerError
from apps.accounts.models import ApiKey
from apps.accounts.services import api_key_issue
from tests import factories

pytestmark = [pytest.mark.django_db, pytest.mark.embedded]


def test_key_needs_exactly_one_owner_at_database_level(user, virtual_account, team):
    key, _ = factories.make_key(user=user)
    key.virtual_account = virtual_account
    with pytest.raises(IntegrityError), transaction.atomic():
        key.save()
    key.refresh_from_db()
    key.user = None
    key.virtual_account = None
    with pytest.raises(IntegrityError), transaction.atomic():
        key.save()


def test_service_refuses_both_or_no_owner(user, virtual_account):
    with pytest.raises(OwnerError):
        api_key_issue(name="x", user=user, virtual_account=virtual_account)
    with pytest.raises(OwnerError):
        api_key_issue(name="x")


def test_user_key_must_be_billed_to_a_team_the_user_belongs_to(user, other_team):
    with pytest.raises(OwnerError):
        api_key_issue(name="x", user=user, team=other_team)


def test_virtual_account_key_is_billed_to_its_team(virtual_account):
    key, _ = factories.make_key(virtual_account=virtual_account)
    assert key.team_id == virtual_account.team_id
    assert key.owner_label == "virtualaccount:countdown-bot"


def test_key_fields_and_lineage(api_key):
    key, plaintext = api_key
    assert key.prefix.startswith("tg_live_") and plaintext.startswith(key.prefix)
    assert len(key.key_hash) == 64 and key.key_hash != plaintext
    assert key.lineage_id is not None
    assert key.allowed_models == [] and key.revoked_at is None


def test_prefix_and_hash_are_unique(api_key):
    key, _ = api_key
    with pytest.raises(IntegrityError), transaction.atomic():
        ApiKey.objects.create(
            name="dup", prefix="other", key_hash=key.key_hash, team=key.team, user=key.user
        )


def test_membership_unique_per_team(user, team):
    from apps.accounts.models import Membership

    with pytest.raises(IntegrityError), transaction.atomic():
        Membership.objects.create(user=user, team=team, role="developer")
