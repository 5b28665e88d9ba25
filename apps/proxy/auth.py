"""API key authentication for the hot path.

A key is looked up by the SHA-256 of the presented secret: first in this worker's in-process
cache, then, on a miss, with one async query. Revocations drop cache entries (see
`invalidate`, fed by `key_events.listen_forever`), and entries expire after
settings.KEY_CACHE_TTL so any change is re-read. The time a key was last used is kept in
memory (`last_used`) and written in batches by `key_events.flush_last_used`.
"""

import logging
import time
from dataclasses import dataclass
from datetime import datetime

from asgiref.sync import sync_to_async
from django.conf import settings
from django.db import DatabaseError, connection

from apps.accounts.models import ApiKey
from apps.accounts.secrets import hash_secret

from .errors import GatewayError, Unauthorized

logger = logging.getLogger(__name__)


class KeyStoreUnavailable(GatewayError):
    status = 503
    error_type = "server_error"
    code = "key_store_unavailable"


_NEGATIVE_TTL = 5.0
_MAX_ENTRIES = 100_000


@dataclass(frozen=True, slots=True)
class KeyInfo:
    """What the proxy needs to know about a key, without touching the database again."""

    id: int
    prefix: str
    lineage_id: str
    team_id: int
    team_slug: str
    user_id: int | None
    username: str
    user_email: str
    virtual_account_id: int | None
    virtual_account_name: str
    team_tags: dict
    owner_tags: dict
    key_tags: dict
    enforced_tag_keys: frozenset[str]
    required_tag_keys: tuple[str, ...]
    allowed_models: frozenset[str]
    scopes: frozenset[str]
    allow_request_logging: bool
    owner_active: bool
    # POSIX timestamps: cheaper to compare per request than aware datetimes.
    expires_ts: float | None
    revoked_ts: float | None

    def may_use(self, model: str) -> bool:
        return not self.allowed_models or model in self.allowed_models

    def refusal(self, now: float) -> str | None:
        if self.revoked_ts is not None and self.revoked_ts <= now:
            return "revoked"
        if self.expires_ts is not None and self.expires_ts <= now:
            return "expired"
        if not self.owner_active:
            return "disabled"
        return None


def key_info_from_row(key: ApiKey) -> KeyInfo:
    va = key.virtual_account
    user = key.user
    return KeyInfo(
        id=key.id,
        prefix=key.prefix,
        lineage_id=str(key.lineage_id),
        team_id=key.team_id,
        team_slug=key.team.slug,
        user_id=key.user_id,
        username=user.get_username() if user else "",
        user_email=user.email if user else "",
        virtual_account_id=key.virtual_account_id,
        virtual_account_name=va.name if va else "",
        team_tags=dict(key.team.default_tags or {}),
        owner_tags=dict(va.default_tags or {}) if va else {},
        key_tags=dict(key.default_tags or {}),
        enforced_tag_keys=frozenset(key.enforced_tag_keys or ()),
        required_tag_keys=tuple(key.team.required_tag_keys or ()),
        allowed_models=frozenset(key.allowed_models or ()),
        scopes=frozenset(key.scopes or ()),
        allow_request_logging=key.team.allow_request_logging,
        owner_active=(va.is_active if va else user.is_active),
        expires_ts=_ts(key.expires_at),
        revoked_ts=_ts(key.revoked_at),
    )


def _ts(moment: datetime | None) -> float | None:
    return moment.timestamp() if moment is not None else None


class KeyCache:
    """hash -> (KeyInfo or None, monotonic expiry). One per worker process."""

    def __init__(self) -> None:
        self._entries: dict[str, tuple[KeyInfo | None, float]] = {}
        # Bumped by every invalidation. A lookup that began before one may have read the row
        # before the change committed, so its result is not cached (see `put`).
        self.generation = 0

    def get(self, key_hash: str) -> tuple[bool, KeyInfo | None]:
        entry = self._entries.get(key_hash)
        if entry is None or entry[1] < time.monotonic():
            return False, None
        return True, entry[0]

    def stale(self, key_hash: str) -> KeyInfo | None:
        """The last known info, however old: used only while the database is unreachable."""
        entry = self._entries.get(key_hash)
        return entry[0] if entry is not None else None

    def put(self, key_hash: str, info: KeyInfo | None, generation: int | None = None) -> None:
        if generation is not None and generation != self.generation:
            return
        if len(self._entries) >= _MAX_ENTRIES:
            self._entries.clear()  # crude bound; a full reload costs one query per key
        ttl = settings.KEY_CACHE_TTL if info is not None else _NEGATIVE_TTL
        self._entries[key_hash] = (info, time.monotonic() + ttl)

    def invalidate(self, key_hash: str | None = None) -> None:
        self.generation += 1
        if key_hash is None:
            self._entries.clear()
        else:
            self._entries.pop(key_hash, None)

    def invalidate_team(self, team_id: int) -> None:
        """Team-wide settings (tags, required tags, logging) changed: drop its keys."""
        self.generation += 1
        for key_hash, (info, _) in list(self._entries.items()):
            if info is not None and info.team_id == team_id:
                del self._entries[key_hash]

    def __len__(self) -> int:
        return len(self._entries)


class LastUsed:
    """key id -> POSIX time of its latest request in this worker, until the next flush."""

    def __init__(self) -> None:
        self._seen: dict[int, float] = {}

    def note(self, key_id: int, ts: float) -> None:
        self._seen[key_id] = ts

    def drain(self) -> dict[int, float]:
        seen, self._seen = self._seen, {}
        return seen

    def restore(self, pending: dict[int, float]) -> None:
        for key_id, ts in pending.items():
            if self._seen.get(key_id, 0.0) < ts:
                self._seen[key_id] = ts


key_cache = KeyCache()
last_used = LastUsed()


def presented_secret(headers: dict[bytes, bytes]) -> str | None:
    auth = headers.get(b"authorization")
    if auth:
        scheme, _, token = auth.decode("latin-1").partition(" ")
        if scheme.lower() == "bearer" and token.strip():
            return token.strip()
        return None
    api_key = headers.get(b"x-api-key")
    if api_key:
        return api_key.decode("latin-1").strip() or None
    return None


def _load_sync(key_hash: str) -> KeyInfo | None:
    try:
        row = (
            ApiKey.objects.select_related("team", "user", "virtual_account")
            .filter(key_hash=key_hash)
            .first()
        )
    except DatabaseError:
        # Outside Django's request cycle nobody else resets a broken connection.
        connection.close()
        raise
    return key_info_from_row(row) if row is not None else None


_load = sync_to_async(_load_sync)


async def authenticate(headers: dict[bytes, bytes]) -> KeyInfo:
    """Return the key's info or raise Unauthorized (never echoing the presented token)."""
    secret = presented_secret(headers)
    if not secret:
        raise Unauthorized(
            "Missing API key: send it as 'Authorization: Bearer <key>' or 'x-api-key'.",
            code="missing_api_key",
        )
    key_hash = hash_secret(secret)
    hit, info = key_cache.get(key_hash)
    if not hit:
        generation = key_cache.generation
        try:
            info = await _load(key_hash)
        except DatabaseError:
            # Database down: keep serving keys we already know (revocations that reached us
            # still apply); unknown keys cannot be checked, so they are refused with a 503.
            info = key_cache.stale(key_hash)
            if info is None:
                logger.warning("key lookup failed: database unreachable")
                raise KeyStoreUnavailable(
                    "The gateway cannot verify API keys right now; retry shortly."
                ) from None
        else:
            key_cache.put(key_hash, info, generation)
    if info is None:
        raise Unauthorized("Incorrect API key provided.")
    now = time.time()
    refusal = info.refusal(now)
    if refusal:
        raise Unauthorized(f"This API key has been {refusal}.", code=f"api_key_{refusal}")
    last_used.note(info.id, now)
    return info
