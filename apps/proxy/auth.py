"""API key authentication for the hot path.

A key is looked up by the SHA-256 of the presented secret: first in this worker's in-process
cache, then, on a miss, with one async query. Revocations drop cache entries (see
`invalidate`, fed by `key_events.listen_forever`), and entries expire after
settings.KEY_CACHE_TTL so any change is re-read. The time a key was last used is kept in
memory (`last_used`) and written in batches by `key_events.flush_last_used`.

While the database cannot be reached a key is still admitted if this worker knew it (its
expired cache entry) or the Redis key mirror does (`key_mirror`: what a worker started
during the outage relies on); other keys get a 503. The outage is logged once when it
starts, in a summary every minute and once when it ends (`key_store_log`).
"""

import dataclasses
import logging
import time
import typing
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any, cast

import orjson
from asgiref.sync import sync_to_async
from django.conf import settings
from django.db import DatabaseError, connection

from apps.accounts.models import ApiKey
from apps.accounts.secrets import hash_secret
from apps.usage.regions import region_or_default

from . import key_mirror
from .errors import GatewayError, Unauthorized
from .metadata import merge_tags
from .outage_log import OutageLog

if TYPE_CHECKING:
    from django.contrib.auth.base_user import AbstractBaseUser

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
    team_tags: dict[str, Any]
    owner_tags: dict[str, Any]
    key_tags: dict[str, Any]
    enforced_tag_keys: frozenset[str]
    required_tag_keys: tuple[str, ...]
    allowed_models: frozenset[str]
    scopes: frozenset[str]
    allow_request_logging: bool
    owner_active: bool
    # POSIX timestamps: cheaper to compare per request than aware datetimes.
    expires_ts: float | None
    revoked_ts: float | None
    # The team's data region (apps/usage/regions.py): where this key's usage rows go, unless
    # a row's customer has a region of its own.
    region: str

    def tags_with(self, request_tags: dict[str, str]) -> dict[str, str]:
        """A request's tags over the team's, virtual account's and key's defaults."""
        return merge_tags(
            team_defaults=self.team_tags,
            owner_defaults=self.owner_tags,
            key_defaults=self.key_tags,
            request_tags=request_tags,
            enforced_keys=self.enforced_tag_keys,
        )

    def attribution(self) -> dict[str, Any]:
        """Who a usage row of this key is charged to (UsageEvent's fields)."""
        return {
            "api_key_id": self.id,
            "key_lineage_id": self.lineage_id,
            "user_id": self.user_id,
            "team_id": self.team_id,
            "virtual_account_id": self.virtual_account_id,
        }

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
        # A check constraint gives every key exactly one owner: a user or a virtual account.
        owner_active=(va.is_active if va else cast("AbstractBaseUser", user).is_active),
        expires_ts=_ts(key.expires_at),
        revoked_ts=_ts(key.revoked_at),
        region=region_or_default(key.team.data_region),
    )


def _ts(moment: datetime | None) -> float | None:
    return moment.timestamp() if moment is not None else None


# Bumped when KeyInfo's fields change: a worker ignores mirror records of another version
# (the key then counts as unknown until the database is back).
KEY_INFO_VERSION = 2
# Fields held as frozensets or tuples, which JSON brings back as lists.
_COLLECTION_FIELDS: dict[str, Any] = {
    field.name: typing.get_origin(field.type)
    for field in dataclasses.fields(KeyInfo)
    if typing.get_origin(field.type) in (frozenset, tuple)
}


def key_info_dumps(info: KeyInfo) -> bytes:
    """KeyInfo as JSON for the key mirror (no secret in it: the mirror is keyed by the hash)."""
    fields = {field.name: getattr(info, field.name) for field in dataclasses.fields(KeyInfo)}
    return orjson.dumps({"version": KEY_INFO_VERSION, "info": fields}, default=sorted)


def key_info_loads(record: bytes | None) -> KeyInfo | None:
    """A KeyInfo from `key_info_dumps`; None for no record or one this code cannot read."""
    if record is None:
        return None
    try:
        data = orjson.loads(record)
        if data.get("version") != KEY_INFO_VERSION:
            return None
        fields = data["info"]
        for name, kind in _COLLECTION_FIELDS.items():
            fields[name] = kind(fields[name])
        return KeyInfo(**fields)
    except (orjson.JSONDecodeError, AttributeError, KeyError, TypeError, ValueError):
        logger.warning("ignoring an unreadable key mirror record")
        return None


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

# After a failed lookup the database is left alone for this long: while it is down (or its
# host black-holed, up to the connect timeout per attempt) a cache miss goes straight to the
# fallbacks instead of each one waiting for the database to fail again.
_DATABASE_RETRY_AFTER = 1.0
_database_retry_at = 0.0
key_store_log = OutageLog(
    "key store",
    logger=logger,
    consequence=(
        "serving the keys this worker or the Redis key mirror knows, refusing others with 503"
        if settings.REDIS_URL
        else "serving the keys this worker knows, refusing others with 503"
    ),
)


async def _look_up(key_hash: str) -> KeyInfo | None:
    """The key's info from the database (cached, and mirrored) or, if it is down, a fallback."""
    global _database_retry_at
    if time.monotonic() >= _database_retry_at:
        generation = key_cache.generation
        read_started = time.monotonic()
        try:
            info = await _load(key_hash)
        except DatabaseError as exc:
            _database_retry_at = time.monotonic() + _DATABASE_RETRY_AFTER
            key_store_log.failed(exc)
        else:
            key_store_log.ok()
            key_cache.put(key_hash, info, generation)
            if info is not None and generation == key_cache.generation and key_mirror.enabled():
                key_mirror.remember(key_hash, key_info_dumps(info), read_started)
            return info
    return await _look_up_without_database(key_hash)


async def _look_up_without_database(key_hash: str) -> KeyInfo:
    # Revocations that reached this worker still apply: they dropped the cache entry, and
    # the portal wrote the revoked state to the mirror.
    info = key_cache.stale(key_hash)
    if info is not None:
        key_store_log.note("served from this worker's cache")
        return info
    generation = key_cache.generation
    info = key_info_loads(await key_mirror.read(key_hash))
    if info is None:
        key_store_log.note("refused (unknown to the cache and the mirror)")
        raise KeyStoreUnavailable("The gateway cannot verify API keys right now; retry shortly.")
    key_cache.put(key_hash, info, generation)
    key_store_log.note("served from the mirror")
    return info


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
        info = await _look_up(key_hash)
    if info is None:
        raise Unauthorized("Incorrect API key provided.")
    now = time.time()
    refusal = info.refusal(now)
    if refusal:
        raise Unauthorized(f"This API key has been {refusal}.", code=f"api_key_{refusal}")
    last_used.note(info.id, now)
    return info
