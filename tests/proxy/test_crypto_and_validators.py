"""Upstream secrets encrypted at rest, and the upstream base URL guard."""

import logging

import pytest
from django.core.exceptions import ValidationError

from apps.proxy.crypto import (
    SecretDecryptionError,
    decrypt_secret,
    encrypt_secret,
    resolve_deployment_api_key,
)
from apps.proxy.validators import validate_upstream_base_url

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
    monkeypatch.setenv("TOLLGATE_TEST_UPSTREAM_KEY", "from-env")
    monkeypatch.delenv("TOLLGATE_TEST_MISSING_KEY", raising=False)

    assert resolve_deployment_api_key("TOLLGATE_TEST_UPSTREAM_KEY", token) == "from-env"
    assert resolve_deployment_api_key("", token) == SECRET
    assert resolve_deployment_api_key("", "") == ""
    with caplog.at_level(logging.WARNING):
        assert resolve_deployment_api_key("TOLLGATE_TEST_MISSING_KEY", token) == SECRET
        assert resolve_deployment_api_key("TOLLGATE_TEST_MISSING_KEY", "") == ""
    assert "TOLLGATE_TEST_MISSING_KEY" in caplog.text
    assert SECRET not in caplog.text


# --- Base URL validation ----------------------------------------------------------------

ALLOWED = ["api.openai.com", "*.openai.azure.com", "127.0.0.0/8", "10.0.0.0/8", "fd00::/8"]


@pytest.mark.parametrize(
    "url",
    [
        "https://api.openai.com/v1",
        "https://API.OpenAI.com./v1",
        "https://contoso.openai.azure.com",
        "https://a.b.openai.azure.com/openai",
        "http://127.0.0.1:8001/v1",
        "http://10.20.30.40/v1",
        "http://[fd00::1]:8000/v1",
        "http://[::ffff:10.0.0.1]/v1",
        "http://127.1:9000/v1",
    ],
)
def test_allowed_urls(url):
    validate_upstream_base_url(url, ALLOWED)


@pytest.mark.parametrize(
    ("url", "code"),
    [
        ("file:///etc/passwd", "scheme"),
        ("ftp://api.openai.com/v1", "scheme"),
        ("gopher://10.0.0.1", "scheme"),
        ("api.openai.com/v1", "scheme"),
        ("https://user:pw@api.openai.com/v1", "credentials"),
        ("https://token@api.openai.com/v1", "credentials"),
        ("https:///v1", "host"),
        ("https://api.openai.com:99999/v1", "invalid"),
        ("https://evil.example.com/v1", "host_not_allowed"),
        ("https://api.openai.com.evil.com/v1", "host_not_allowed"),
        ("https://openai.azure.com/v1", "host_not_allowed"),
        ("https://evilopenai.azure.com/v1", "host_not_allowed"),
        ("http://169.254.169.254/latest", "host_not_allowed"),
        ("http://192.168.1.1/v1", "host_not_allowed"),
        ("http://[::1]/v1", "host_not_allowed"),
        ("http://2852039166/latest", "host_not_allowed"),
        ("http://0xa9.0xfe.0xa9.0xfe/latest", "host_not_allowed"),
    ],
)
def test_rejected_urls(url, code):
    with pytest.raises(ValidationError) as excinfo:
        validate_upstream_base_url(url, ALLOWED)
    assert excinfo.value.code == code


def test_empty_allow_list_checks_only_scheme_host_and_credentials():
    validate_upstream_base_url("http://169.254.169.254/v1", [])
    validate_upstream_base_url("https://anything.example/v1", [])
    for url in ("file:///etc/passwd", "https://u:p@x.example", "http://"):
        with pytest.raises(ValidationError):
            validate_upstream_base_url(url, [])


def test_ip_literal_needs_a_network_not_a_hostname_pattern():
    with pytest.raises(ValidationError):
        validate_upstream_base_url("http://10.0.0.1/v1", ["*.example.com"])
    validate_upstream_base_url("http://10.0.0.1/v1", ["10.0.0.1"])
