"""A scheduled rotation's new secret: emailed, and kept encrypted for one reveal in the
portal by its owner only; never stored in plaintext, gone after the reveal or its expiry."""

import io
import re
from datetime import timedelta

import pytest
from django.core.management import call_command
from django.urls import reverse
from django.utils import timezone

from apps.accounts.constants import PENDING_SECRET_TTL_DAYS, Role
from apps.accounts.exceptions import SecretRevealError
from apps.accounts.models import ApiKey, AuditLog, PendingSecret
from apps.accounts.secrets import hash_secret
from apps.accounts.services import (
    api_key_revoke,
    api_keys_rotate_due,
    pending_secret_reveal,
    pending_secrets_purge,
    rotation_policy_set,
)
from apps.accounts.tasks import retire_expired_keys
from apps.proxy.crypto import decrypt_secret
from tests import factories

pytestmark = [pytest.mark.django_db, pytest.mark.embedded]

SECRET_RE = re.compile(r'data-testid="secret">([^<]+)<')


@pytest.fixture(autouse=True)
def fast_passwords(settings):
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


def rotate_by_schedule(key: ApiKey, mailoutbox) -> tuple[ApiKey, str]:
    """Make `key` due under its team's policy, run the beat job, return the successor and
    the secret from the email."""
    rotation_policy_set(team=key.team, every_days=30, grace_hours=12, actor=None)
    ApiKey.objects.filter(pk=key.pk).update(created_at=timezone.now() - timedelta(days=31))
    mailoutbox.clear()
    [new_id] = api_keys_rotate_due()
    [mail] = mailoutbox
    secret = next(line.strip() for line in mail.body.splitlines() if line.startswith("tg_"))
    return ApiKey.objects.get(pk=new_id), secret


def database_dump() -> str:
    out = io.StringIO()
    call_command("dumpdata", stdout=out)
    return out.getvalue()


def test_the_secret_is_stored_only_encrypted(user, api_key, mailoutbox):
    key, _ = api_key
    new_key, secret = rotate_by_schedule(key, mailoutbox)
    assert hash_secret(secret) == new_key.key_hash
    pending = PendingSecret.objects.get(key=new_key)
    assert secret not in pending.ciphertext
    assert decrypt_secret(pending.ciphertext) == secret
    expected_expiry = timezone.now() + timedelta(days=PENDING_SECRET_TTL_DAYS)
    assert abs(pending.expires_at - expected_expiry) < timedelta(minutes=1)
    assert secret not in database_dump()
    assert "reveal this secret once" in mailoutbox[0].body


def test_the_owner_reveals_the_secret_exactly_once(client, user, api_key, mailoutbox):
    key, _ = api_key
    new_key, secret = rotate_by_schedule(key, mailoutbox)
    client.force_login(user)
    reveal_url = reverse("key_reveal_secret", args=[new_key.pk])

    # Both the old key's page and the new one's point at the waiting secret.
    for pk in (key.pk, new_key.pk):
        page = client.get(reverse("key_detail", args=[pk])).content.decode()
        assert "A scheduled rotation created a new secret" in page and reveal_url in page
    confirm = client.get(reveal_url)
    assert confirm.status_code == 200 and secret not in confirm.content.decode()

    shown = client.post(reveal_url)
    assert shown.status_code == 200 and shown["Cache-Control"] == "no-store"
    assert SECRET_RE.search(shown.content.decode()).group(1).strip() == secret

    pending = PendingSecret.objects.get(key=new_key)
    assert pending.ciphertext == "" and pending.revealed_at is not None
    assert pending.revealed_by == user
    [entry] = AuditLog.objects.filter(action="key.secret_revealed")
    assert entry.actor == user and entry.object_id == str(new_key.pk)
    assert secret not in database_dump()

    again = client.post(reveal_url)
    assert again.status_code == 410 and secret not in again.content.decode()
    assert client.get(reveal_url).status_code == 410
    page = client.get(reverse("key_detail", args=[new_key.pk])).content.decode()
    assert "A scheduled rotation created a new secret" not in page
    assert AuditLog.objects.filter(action="key.secret_revealed").count() == 1
    with pytest.raises(SecretRevealError):
        pending_secret_reveal(key=new_key, actor=user)


def test_nobody_but_the_owner_can_reveal(client, team, other_team, user, api_key, mailoutbox):
    key, _ = api_key
    new_key, secret = rotate_by_schedule(key, mailoutbox)
    reveal_url = reverse("key_reveal_secret", args=[new_key.pk])
    others = [
        factories.make_user("peer", team=team),
        factories.make_user("lead", team=team, role=Role.TEAM_ADMIN),  # sees the key
        factories.make_user("root", team=team, role=Role.ADMIN),  # sees every key
        factories.make_user("stranger", team=other_team, role=Role.TEAM_ADMIN),
    ]
    for other in others:
        client.force_login(other)
        assert client.get(reveal_url).status_code == 404, other
        assert client.post(reveal_url).status_code == 404, other
        page = client.get(reverse("key_detail", args=[new_key.pk]))
        assert b"A scheduled rotation created a new secret" not in page.content
    assert not AuditLog.objects.filter(action="key.secret_revealed").exists()

    client.force_login(user)
    shown = client.post(reveal_url)
    assert SECRET_RE.search(shown.content.decode()).group(1).strip() == secret


def test_a_virtual_account_keys_secret_goes_to_its_team_admins(
    client, team, other_team, virtual_account, mailoutbox
):
    lead = factories.make_user("lead", team=team, role=Role.TEAM_ADMIN)
    other_lead = factories.make_user("other-lead", team=other_team, role=Role.TEAM_ADMIN)
    key, _ = factories.make_key(virtual_account=virtual_account)
    new_key, secret = rotate_by_schedule(key, mailoutbox)
    reveal_url = reverse("key_reveal_secret", args=[new_key.pk])

    client.force_login(other_lead)
    assert client.post(reveal_url).status_code == 404
    client.force_login(lead)
    shown = client.post(reveal_url)
    assert SECRET_RE.search(shown.content.decode()).group(1).strip() == secret
    assert client.post(reveal_url).status_code == 410


def test_expired_or_revoked_secrets_cannot_be_revealed_and_are_purged(user, api_key, mailoutbox):
    key, _ = api_key
    new_key, _ = rotate_by_schedule(key, mailoutbox)
    PendingSecret.objects.filter(key=new_key).update(expires_at=timezone.now())
    with pytest.raises(SecretRevealError):
        pending_secret_reveal(key=new_key, actor=user)
    assert retire_expired_keys() == 0  # the beat task also purges pending secrets
    assert not PendingSecret.objects.exists()

    newer, _ = rotate_by_schedule(new_key, mailoutbox)
    assert PendingSecret.objects.filter(key=newer).exists()
    api_key_revoke(key=newer, actor=user)
    assert not PendingSecret.objects.filter(key=newer).exists()
    assert pending_secrets_purge() == 0
