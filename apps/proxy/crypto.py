"""Encryption at rest for upstream provider secrets.

Fernet (AES-128-CBC + HMAC-SHA256) under a key derived from settings.UPSTREAM_SECRET_KEY,
or SECRET_KEY when that is unset. Changing the key makes stored secrets unreadable; they
must then be entered again. Plaintext is never logged.

A deployment's `api_key_env` names the environment variable holding its key; which names
it may use is ruled here (`api_key_env_problem`), at configuration and again when the key is
read, so that no catalog entry can send the gateway's own secrets upstream.
"""

import ast
import base64
import hashlib
import importlib.util
import logging
import os
import re
from functools import lru_cache
from pathlib import Path

from cryptography.fernet import Fernet, InvalidToken
from django.conf import settings
from django.core.exceptions import ValidationError

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


_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
# The gateway's secrets, refused even if the scan of settings.py below ever misses them.
_ALWAYS_REFUSED = frozenset(
    {"SECRET_KEY", "UPSTREAM_SECRET_KEY", "DATABASE_URL", "REDIS_URL", "METRICS_TOKEN"}
)
_refusals_logged: set[str] = set()


@lru_cache(maxsize=1)
def settings_env_names() -> frozenset[str]:
    """Every environment variable gateway_portal/settings.py reads (DATABASE_URL, SECRET_KEY,
    REDIS_URL, METRICS_TOKEN, UPSTREAM_SECRET_KEY, ...), found in its source so that a
    setting added later is covered without a list to keep up to date."""
    spec = importlib.util.find_spec("gateway_portal.settings")
    if spec is None or spec.origin is None:
        raise RuntimeError("gateway_portal.settings has no source file to read")
    origin = spec.origin
    tree = ast.parse(Path(origin).read_text())
    names = set()
    for node in ast.walk(tree):
        # `env("NAME", ...)` and `env.<type>("NAME", ...)`, the django-environ readers.
        if not (isinstance(node, ast.Call) and node.args):
            continue
        func = node.func
        if isinstance(func, ast.Attribute):
            func = func.value
        first = node.args[0]
        if (
            isinstance(func, ast.Name)
            and func.id == "env"
            and isinstance(first, ast.Constant)
            and isinstance(first.value, str)
        ):
            names.add(first.value)
    return frozenset(names) | _ALWAYS_REFUSED


def api_key_env_problem(name: str) -> str | None:
    """Why `name` may not be a deployment's `api_key_env`, or None when it may.

    Allowed: a variable with one of settings.UPSTREAM_API_KEY_ENV_PREFIXES or named in
    settings.UPSTREAM_API_KEY_ENV_NAMES; never one of the gateway's own settings, whatever
    those two lists say.
    """
    if not _ENV_NAME.fullmatch(name):
        return f"{name!r} is not an environment variable name."
    if name in settings_env_names():
        return f"{name} is one of the gateway's own settings and cannot be an upstream key."
    prefixes = tuple(p for p in settings.UPSTREAM_API_KEY_ENV_PREFIXES if p)
    if name.startswith(prefixes) or name in settings.UPSTREAM_API_KEY_ENV_NAMES:
        return None
    return (
        f"The API key variable {name} must start with one of "
        f"UPSTREAM_API_KEY_ENV_PREFIXES ({', '.join(prefixes) or 'none set'}) "
        "or be listed in UPSTREAM_API_KEY_ENV_NAMES."
    )


def check_api_key_env(name: str) -> None:
    """ValidationError (code "api_key_env") unless `name` is empty or allowed."""
    if name:
        problem = api_key_env_problem(name)
        if problem:
            raise ValidationError(problem, code="api_key_env")


def resolve_deployment_api_key(api_key_env: str, api_key_encrypted: str) -> str:
    """A deployment's API key: the named environment variable, else the decrypted secret.

    Empty string when neither is set. A named but missing variable falls back to the
    encrypted secret and is logged by name. A name that is not allowed (a row stored before
    the rule, or written around the validation) resolves to "" and is logged once.
    """
    problem = api_key_env_problem(api_key_env) if api_key_env else None
    if problem:
        # Once per name: the catalog is re-read every few seconds.
        if api_key_env not in _refusals_logged:
            _refusals_logged.add(api_key_env)
            logger.error("deployment api_key_env refused, sending no API key: %s", problem)
        return ""
    if api_key_env:
        value = os.environ.get(api_key_env, "")
        if value:
            return value
        logger.warning("environment variable %s for an upstream API key is not set", api_key_env)
    if api_key_encrypted:
        return decrypt_secret(api_key_encrypted)
    return ""
