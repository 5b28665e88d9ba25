import io
import json

import pytest
from django.contrib.auth import get_user_model
from django.core.management import CommandError, call_command
from django.db import connection
from django.test import override_settings

from apps.accounts.models import ApiKey, Membership, Team, VirtualAccount
from apps.accounts.secrets import hash_secret

pytestmark = [pytest.mark.django_db, pytest.mark.embedded]


def run(*args) -> str:
    out = io.StringIO()
    call_command(*args, stdout=out)
    return out.getvalue()


def dump_every_table() -> str:
    """Every row of every table as text, to search for leaked secrets."""
    chunks = []
    with connection.cursor() as cursor:
        for table in connection.introspection.table_names():
            cursor.execute(f"SELECT * FROM {connection.ops.quote_name(table)}")  # noqa: S608
            chunks.extend(repr(row) for row in cursor.fetchall())
    return "\n".join(chunks)


@override_settings(DEBUG=True)
def test_seed_demo_is_idempotent():
    run("seed_demo")
    counts = (
        Team.objects.count(),
        get_user_model().objects.count(),
        Membership.objects.count(),
        VirtualAccount.objects.count(),
    )
    run("seed_demo")
    assert counts == (
        Team.objects.count(),
        get_user_model().objects.count(),
        Membership.objects.count(),
        VirtualAccount.objects.count(),
    )
    assert counts[0] >= 2 and counts[3] >= 1
    roles = dict(Membership.objects.values_list("user__username", "role"))
    assert (
        roles["admin"] == "admin" and roles["finance"] == "finance" and roles["dev"] == "developer"
    )


@override_settings(DEBUG=False)
def test_seed_demo_refuses_without_debug_unless_forced():
    with pytest.raises(CommandError):
        run("seed_demo")
    run("seed_demo", "--force")
    assert get_user_model().objects.filter(username="admin").exists()


@override_settings(DEBUG=True)
def test_issue_key_prints_key_last_and_stores_only_its_hash():
    run("seed_demo")
    output = run(
        "issue_key",
        "--user",
        "dev",
        "--name",
        "laptop",
        "--tags",
        json.dumps({"feature": "chat"}),
        "--expires-in-days",
        "30",
    )
    plaintext = output.strip().splitlines()[-1]
    assert plaintext.startswith("tg_live_")
    key = ApiKey.objects.get(key_hash=hash_secret(plaintext))
    assert key.name == "laptop" and key.default_tags == {"feature": "chat"}
    assert key.expires_at is not None
    dump = dump_every_table()
    assert key.prefix in dump
    assert plaintext not in dump
    assert plaintext[len(key.prefix) :] not in dump


@override_settings(DEBUG=True)
def test_issue_key_for_virtual_account_and_by_email():
    run("seed_demo")
    out = run("issue_key", "--virtual-account", "countdown-bot")
    key = ApiKey.objects.get(key_hash=hash_secret(out.strip().splitlines()[-1]))
    assert key.virtual_account.name == "countdown-bot"
    out = run("issue_key", "--user", "dev@example.com")
    assert (
        ApiKey.objects.get(key_hash=hash_secret(out.strip().splitlines()[-1])).user.username
        == "dev"
    )


@pytest.mark.parametrize(
    "args",
    [
        ["--user", "nobody"],
        ["--virtual-account", "nope"],
        ["--user", "dev", "--tags", "{not json"],
        ["--user", "dev", "--tags", '{"a": 1}'],
        ["--user", "dev", "--expires-in-days", "0"],
    ],
)
@override_settings(DEBUG=True)
def test_issue_key_errors(args):
    run("seed_demo")
    with pytest.raises(CommandError):
        run("issue_key", *args)
