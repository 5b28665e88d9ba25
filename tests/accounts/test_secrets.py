import pytest

from apps.accounts.secrets import generate_secret, hash_secret, verify_secret

pytestmark = pytest.mark.embedded


def test_secret_has_prefix_and_enough_entropy():
    secret = generate_secret("tg_live_")
    body = secret.plaintext.removeprefix("tg_live_")
    assert secret.plaintext.startswith("tg_live_")
    assert len(body) >= 43  # 32 random bytes in base62
    assert secret.prefix == "tg_live_" + body[:8]


def test_secrets_are_unique():
    assert len({generate_secret().plaintext for _ in range(200)}) == 200


def test_hash_and_verify():
    secret = generate_secret()
    assert secret.key_hash == hash_secret(secret.plaintext)
    assert verify_secret(secret.plaintext, secret.key_hash)
    assert not verify_secret(secret.plaintext + "x", secret.key_hash)


def test_repr_never_shows_plaintext():
    secret = generate_secret()
    assert secret.plaintext not in repr(secret)
    assert secret.plaintext not in str(secret)
