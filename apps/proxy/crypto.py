"""Encryption at rest for upstream provider secrets.

Fernet (AES-128-CBC + HMAC-SHA256) under a key derived from settings.UPSTREAM_SECRET_KEY,
or SECRET_KEY when that is unset. Changing the key makes stored secrets unreadable; they
must then be entered again. Plaintext is never logged.
"""

import base64
import hashlib
import logging
import os
from functools import lru_cache

from cryptography.fernet import Fernet, InvalidToken
from django.conf import settings

logger = logging.getLogger(__name__)


class SecretDecryptionError(Exception):
    """A stored secret cannot be decrypted: wrong UPSTREAM_SECRET_KEY, or a damaged token."""


@lru_cache(maxsize=4)
def _fernet(key_material: str) -> Fernet:
    # Keyed on the material so that a settings override (tests, rotation) takes effect.
    digest = hashlib.sha256(key_material.encode()).digest()
    return Fernet(base64.urlsafe_b64encode(digest))


def _current_fernet() -> Fernet:
    material = getattr(settings, "UPSTREAM_SECRET_KEY", "") or settings.SECRET_KEY
    if not material:
        raise SecretDecryptionError("neither UPSTREAM_SECRET_KEY nor SECRET_KEY is set")
    return _fernet(material)


def encrypt_secret(plaintext: str) -> str:
    """A Fernet token (ASCII text) for `plaintext`."""
    return _current_fernet().encrypt(plaintext.encode()).decode("ascii")


def decrypt_secret(token: str) -> str:
    """The plaintext of a token made by `encrypt_secret`; SecretDecryptionError if unreadable."""
    try:
        return _current_fernet().decrypt(token.encode("ascii")).decode()
    except (InvalidToken, UnicodeError):
        raise SecretDecryptionError(
            "cannot decrypt the stored upstream secret: UPSTREAM_SECRET_KEY (or SECRET_KEY) "
            "differs from the one it was encrypted with, or the value is damaged; "
            "enter the secret again"
        ) from None


def resolve_deployment_api_key(api_key_env: str, api_key_encrypted: str) -> str:
    """A deployment's API key: the named environment variable, else the decrypted secret.

    Empty string when neither is set. A named but missing variable falls back to the
    encrypted secret and is logged by name.
    """
    if api_key_env:
        value = os.environ.get(api_key_env, "")
        if value:
            return value
        logger.warning("environment variable %s for an upstream API key is not set", api_key_env)
    if api_key_encrypted:
        return decrypt_secret(api_key_encrypted)
    return ""
