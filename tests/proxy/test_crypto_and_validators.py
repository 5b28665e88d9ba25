"""Upstream secrets encrypted at rest, and which environment variables may hold them.

The base URL guard moved to apps.outbound (tests/outbound/test_guard.py)."""

import logging

import pytest
from django.core.exceptions import ValidationError

from apps.proxy import crypto
from apps.proxy.crypto import (
    SecretDecryptionError,
    check_api_key_env,
    decrypt_secret,
    encrypt_secret,
    resolve_deployment_api_key,
    settings_env_names,
)

pytestmark = pytest.mark.embedded

SECRET = "sk-live-0123456789abcdef"


# --- Encryption -------------------------------------------------------------------------


def test_round_trip(settings):
    settings.UPSTREAM_SECRET_KEY = "upstream-key-one"
    token = encrypt_secret(SECRET)
    assert SECRET not in token
    assert token != encrypt_secret(SECRET), "tokens are salted with a random IV"
    assert decrypt_secret(token) == SECRET


def test_falls_back_to_secret_key(settings):
    settings.UPSTREAM_SECRET_KEY = ""
    settings.SECRET_KEY = "django-secret-key-for-tests"
    token = encrypt_secret(SECRET)
    assert decrypt_secret(token) == SECRET


def test_wrong_key_raises_clear_error(settings):
    settings.UPSTREAM_SECRET_KEY = "upstream-key-one"
    token = encrypt_secret(SECRET)
    settings.UPSTREAM_SECRET_KEY = "upstream-key-two"
    with pytest.raises(SecretDecryptionError, match="UPSTREAM_SECRET_KEY") as excinfo:
        decrypt_secret(token)
    assert SECRET not in str(excinfo.value)


@pytest.mark.parametrize("token", ["not-a-token", "", "gAAAAA-ünicode"])
def test_garbage_token_raises(settings, token):
    settings.UPSTREAM_SECRET_KEY = "upstream-key-one"
    with pytest.raises(SecretDecryptionError):
        decrypt_secret(token)


def test_resolve_api_key(settings, monkeypatch, caplog):
    settings.UPSTREAM_SECRET_KEY = "upstream-key-one"
    token = encrypt_secret(SECRET)
    monkeypatch.setenv("TOLLGATE_UPSTREAM_TEST_KEY", "from-env")
    monkeypatch.delenv("TOLLGATE_UPSTREAM_MISSING_KEY", raising=False)

    assert resolve_deployment_api_key("TOLLGATE_UPSTREAM_TEST_KEY", token) == "from-env"
    assert resolve_deployment_api_key("", token) == SECRET
    assert resolve_deployment_api_key("", "") == ""
    with caplog.at_level(logging.WARNING):
        assert resolve_deployment_api_key("TOLLGATE_UPSTREAM_MISSING_KEY", token) == SECRET
        assert resolve_deployment_api_key("TOLLGATE_UPSTREAM_MISSING_KEY", "") == ""
    assert "TOLLGATE_UPSTREAM_MISSING_KEY" in caplog.text
    assert SECRET not in caplog.text


# --- Which variables api_key_env may name ----------------------------------------------


@pytest.mark.parametrize("name", ["TOLLGATE_UPSTREAM_OPENAI", "TOLLGATE_UPSTREAM_A_B_1", ""])
def test_api_key_env_with_the_prefix_is_accepted(name):
    check_api_key_env(name)


@pytest.mark.parametrize(
    "name",
    ["PATH", "HOME", "OPENAI_API_KEY", "AWS_SECRET_ACCESS_KEY", "tollgate_upstream_lower"],
)
def test_api_key_env_without_the_prefix_is_refused(name):
    with pytest.raises(ValidationError, match="UPSTREAM_API_KEY_ENV_PREFIXES") as excinfo:
        check_api_key_env(name)
    assert excinfo.value.code == "api_key_env"


@pytest.mark.parametrize("name", ["X-KEY", "A B", "1ABC", "$HOME", "K=V"])
def test_api_key_env_must_be_a_variable_name(name):
    with pytest.raises(ValidationError, match="not an environment variable name"):
        check_api_key_env(name)


def test_explicit_names_are_accepted(settings):
    settings.UPSTREAM_API_KEY_ENV_NAMES = ["OPENAI_API_KEY"]
    check_api_key_env("OPENAI_API_KEY")
    with pytest.raises(ValidationError):
        check_api_key_env("ANTHROPIC_API_KEY")


def test_settings_env_names_are_what_settings_py_reads():
    names = settings_env_names()
    for secret in ("DATABASE_URL", "REDIS_URL", "SECRET_KEY", "UPSTREAM_SECRET_KEY", "METRICS_TOKEN",
                   "CELERY_BROKER_URL", "CELERY_RESULT_BACKEND", "SIMULATOR_BASE_URL"):  # fmt: skip
        assert secret in names
    assert "PATH" not in names and "HOME" not in names


def test_gateway_settings_are_refused_whatever_the_lists_say(settings):
    # An operator who widens the lists still cannot point a deployment at the gateway's own
    # configuration.
    for name in settings_env_names():
        settings.UPSTREAM_API_KEY_ENV_PREFIXES = ["", name[:1]]
        settings.UPSTREAM_API_KEY_ENV_NAMES = [name]
        with pytest.raises(ValidationError, match="gateway's own settings"):
            check_api_key_env(name)


def test_refused_name_resolves_to_nothing_and_is_logged_once(settings, monkeypatch, caplog):
    settings.UPSTREAM_SECRET_KEY = "upstream-key-one"
    token = encrypt_secret(SECRET)
    database_url = "postgres://tollgate:hunter2@db.internal:5432/tollgate"
    monkeypatch.setenv("DATABASE_URL", database_url)
    monkeypatch.setenv("TOLLGATE_UPSTREAM_OK", "sk-ok")
    monkeypatch.setattr(crypto, "_refusals_logged", set())
    with caplog.at_level(logging.WARNING, logger="apps.proxy.crypto"):
        # The encrypted secret is not a fallback either: the row is misconfigured.
        assert resolve_deployment_api_key("DATABASE_URL", token) == ""
        assert resolve_deployment_api_key("DATABASE_URL", "") == ""
        assert resolve_deployment_api_key("TOLLGATE_UPSTREAM_OK", "") == "sk-ok"
    refusals = [r for r in caplog.records if "DATABASE_URL" in r.getMessage()]
    assert len(refusals) == 1
    assert "hunter2" not in caplog.text and SECRET not in caplog.text
