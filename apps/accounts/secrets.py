"""Key material: generation, hashing and constant-time verification.

Kept free of Django imports so the proxy's hot path can use it cheaply.
"""

import hashlib
import hmac
import secrets
import string
from dataclasses import dataclass

from .constants import DISPLAY_PREFIX_CHARS, SECRET_BYTES

_ALPHABET = string.ascii_letters + string.digits


@dataclass(frozen=True)
class NewSecret:
    plaintext: str
    prefix: str
    key_hash: str

    def __repr__(self) -> str:
        # Never let the plaintext reach a log through a repr.
        return f"NewSecret(prefix={self.prefix!r})"


def _base62(data: bytes) -> str:
    number = int.from_bytes(data, "big")
    chars = []
    while number:
        number, rem = divmod(number, 62)
        chars.append(_ALPHABET[rem])
    return "".join(reversed(chars)) or "0"


def hash_secret(plaintext: str) -> str:
    return hashlib.sha256(plaintext.encode()).hexdigest()


def generate_secret(kind_prefix: str = "tg_live_") -> NewSecret:
    """A fresh key: a recognisable prefix plus 32 random bytes in base62 (~43 chars)."""
    body = _base62(secrets.token_bytes(SECRET_BYTES)).rjust(43, "0")
    plaintext = f"{kind_prefix}{body}"
    return NewSecret(
        plaintext=plaintext,
        prefix=f"{kind_prefix}{body[:DISPLAY_PREFIX_CHARS]}",
        key_hash=hash_secret(plaintext),
    )


def verify_secret(plaintext: str, key_hash: str) -> bool:
    return hmac.compare_digest(hash_secret(plaintext), key_hash)
