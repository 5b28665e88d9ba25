import uuid

from django.conf import settings
from django.core.serializers.json import DjangoJSONEncoder
from django.db import models
from django.db.models import Q

from .constants import Role


class Team(models.Model):
    """A group of people and applications that usage is attributed and billed to.

    `default_tags` are merged under every request's metadata tags for the team's keys.
    """

    name = models.CharField(max_length=200, unique=True)
    slug = models.SlugField(max_length=100, unique=True)
    default_tags = models.JSONField(default=dict, blank=True)
    # When off, the reserved `log_request` tag cannot make the gateway store bodies.
    allow_request_logging = models.BooleanField(default=True)
    # Tag keys every request of the team's keys must carry (after defaults are merged).
    required_tag_keys = models.JSONField(default=list, blank=True)
    # Where the team's usage, tags and logged bodies are kept (DATA_REGIONS); blank is the
    # default region. Changed through `team_region_set`, which audits it.
    data_region = models.CharField(max_length=32, blank=True, default="")
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name


class Membership(models.Model):
    """A user's role in a team. Admin and finance roles reach across every team."""

    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="memberships"
    )
    team = models.ForeignKey(Team, on_delete=models.CASCADE, related_name="memberships")
    role = models.CharField(max_length=20, choices=Role.choices, default=Role.DEVELOPER)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["user", "team"], name="membership_unique_user_team"),
        ]

    def __str__(self) -> str:
        return f"{self.user} in {self.team} as {self.role}"


class VirtualAccount(models.Model):
    """A service account: an application's identity inside a team, owning its own keys."""

    team = models.ForeignKey(Team, on_delete=models.PROTECT, related_name="virtual_accounts")
    name = models.SlugField(max_length=100, unique=True)
    description = models.TextField(blank=True)
    default_tags = models.JSONField(default=dict, blank=True)
    is_active = models.BooleanField(default=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name


class ApiKey(models.Model):
    """A gateway key, owned by exactly one user or one virtual account.

    Only a SHA-256 hash of the secret is stored; `prefix` is a short public handle for
    display and lookups by humans. Keys rotated from one another share a `lineage_id`.
    `team` is the team usage is attributed to (a user may belong to several).
    """

    name = models.CharField(max_length=200)
    prefix = models.CharField(max_length=32, unique=True)
    key_hash = models.CharField(max_length=64, unique=True)
    team = models.ForeignKey(Team, on_delete=models.PROTECT, related_name="api_keys")
    user = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        null=True,
        blank=True,
        on_delete=models.PROTECT,
        related_name="api_keys",
    )
    virtual_account = models.ForeignKey(
        VirtualAccount,
        null=True,
        blank=True,
        on_delete=models.PROTECT,
        related_name="api_keys",
    )
    lineage_id = models.UUIDField(default=uuid.uuid4, db_index=True)
    rotated_from = models.ForeignKey(
        "self", null=True, blank=True, on_delete=models.SET_NULL, related_name="successors"
    )
    default_tags = models.JSONField(default=dict, blank=True)
    # Tag keys whose default value a request may not override.
    enforced_tag_keys = models.JSONField(default=list, blank=True)
    # Model names this key may call; empty means every model.
    allowed_models = models.JSONField(default=list, blank=True)
    scopes = models.JSONField(default=list, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    expires_at = models.DateTimeField(null=True, blank=True)
    revoked_at = models.DateTimeField(null=True, blank=True)
    last_used_at = models.DateTimeField(null=True, blank=True)
    # Set once by the beat tasks so an owner is warned, and an expiry audited, only once.
    expiry_warned_at = models.DateTimeField(null=True, blank=True)
    retired_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at"]
        constraints = [
            models.CheckConstraint(
                condition=(Q(user__isnull=False) & Q(virtual_account__isnull=True))
                | (Q(user__isnull=True) & Q(virtual_account__isnull=False)),
                name="apikey_exactly_one_owner",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.name} ({self.prefix}…)"

    @property
    def owner_label(self) -> str:
        if self.virtual_account_id:
            return f"virtualaccount:{self.virtual_account}"
        return f"user:{self.user}"

    def is_expired(self, now) -> bool:
        return self.expires_at is not None and self.expires_at <= now


class TagDefinition(models.Model):
    """A glossary entry: what a tag key means and who answers for it."""

    key = models.CharField(max_length=64, unique=True)
    description = models.TextField(blank=True)
    owner_team = models.ForeignKey(
        Team, null=True, blank=True, on_delete=models.SET_NULL, related_name="tag_definitions"
    )
    owner_user = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="tag_definitions",
    )
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["key"]

    def __str__(self) -> str:
        return self.key


class RotationPolicy(models.Model):
    """Scheduled rotation for one key or for every key of a team (a key policy wins).

    A key is due when it is `every_days` old; the old key keeps working `grace_hours`.
    """

    key = models.OneToOneField(
        ApiKey, null=True, blank=True, on_delete=models.CASCADE, related_name="rotation_policy"
    )
    team = models.OneToOneField(
        Team, null=True, blank=True, on_delete=models.CASCADE, related_name="rotation_policy"
    )
    every_days = models.PositiveIntegerField()
    grace_hours = models.FloatField(default=24.0)
    last_run_at = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        verbose_name_plural = "rotation policies"
        constraints = [
            models.CheckConstraint(
                condition=(Q(key__isnull=False) & Q(team__isnull=True))
                | (Q(key__isnull=True) & Q(team__isnull=False)),
                name="rotationpolicy_exactly_one_target",
            ),
            models.CheckConstraint(
                condition=Q(every_days__gte=1), name="rotationpolicy_every_days_positive"
            ),
            models.CheckConstraint(
                condition=Q(grace_hours__gte=0), name="rotationpolicy_grace_not_negative"
            ),
        ]

    def __str__(self) -> str:
        target = f"key {self.key}" if self.key_id else f"team {self.team}"
        return f"rotate {target} every {self.every_days} days"


class PendingSecret(models.Model):
    """A scheduled rotation's new secret, waiting to be shown once to the key's owner.

    Only a Fernet token of the secret is kept (`apps.proxy.crypto`), never the plaintext.
    Revealing it empties `ciphertext` and sets `revealed_at`, so a second reveal finds
    nothing; rows past `expires_at` are deleted by the retire beat task.
    """

    key = models.OneToOneField(ApiKey, on_delete=models.CASCADE, related_name="pending_secret")
    ciphertext = models.TextField(blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    expires_at = models.DateTimeField(db_index=True)
    revealed_at = models.DateTimeField(null=True, blank=True)
    revealed_by = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="+",
    )

    class Meta:
        constraints = [
            # A revealed secret must not stay decryptable.
            models.CheckConstraint(
                condition=Q(revealed_at__isnull=True) | Q(ciphertext=""),
                name="pendingsecret_revealed_has_no_ciphertext",
            ),
        ]

    def __str__(self) -> str:
        state = "revealed" if self.revealed_at else "pending"
        return f"{state} secret of key {self.key_id}"


class AuditLog(models.Model):
    """An append-only record of a governance action: who, what, when, before and after.

    Written only through `apps.accounts.audit.audit_record`; the admin cannot edit or delete
    rows. `actor_label` and `object_repr` keep the record readable after deletions.
    `team` scopes rows for team admins; it is empty for organisation-wide objects.
    """

    actor = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="audit_entries",
    )
    actor_label = models.CharField(max_length=200)
    action = models.CharField(max_length=64, db_index=True)
    object_type = models.CharField(max_length=100)
    object_id = models.CharField(max_length=64)
    object_repr = models.CharField(max_length=300)
    before = models.JSONField(null=True, blank=True, encoder=DjangoJSONEncoder)
    after = models.JSONField(null=True, blank=True, encoder=DjangoJSONEncoder)
    team = models.ForeignKey(
        Team, null=True, blank=True, on_delete=models.SET_NULL, related_name="audit_entries"
    )
    created_at = models.DateTimeField(auto_now_add=True, db_index=True)

    class Meta:
        ordering = ["-created_at", "-id"]
        indexes = [models.Index(fields=["object_type", "object_id"])]

    def __str__(self) -> str:
        return f"{self.created_at:%Y-%m-%d %H:%M:%S} {self.actor_label} {self.action} {self.object_repr}"


class KeyChange(models.Model):
    """One entry of the key change log that embedded-mode gateways poll (no Redis pub/sub).

    Written by `apps.proxy.key_events.publish_invalidation` after a change commits: the
    changed keys' hashes, or the team whose settings every key of it copies. Each gateway
    worker reads the rows past the last id it saw and drops those keys from its cache.
    `team_id` is a plain column, not a foreign key, so the log outlives what it names.
    Rows older than an hour are deleted by the same writer.
    """

    key_hashes = models.JSONField(default=list, blank=True)
    team_id = models.BigIntegerField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True, db_index=True)

    class Meta:
        ordering = ["id"]

    def __str__(self) -> str:
        named = f"team {self.team_id}" if self.team_id is not None else ""
        keys = f"{len(self.key_hashes)} key(s)" if self.key_hashes else ""
        return f"key change {self.pk}: " + ", ".join(part for part in (keys, named) if part)


class CustomerRegion(models.Model):
    """A customer whose usage is kept in a region other than its team's.

    The customer is a tag value (the `BILLING_CUSTOMER_TAG_KEY` tag tiers bill by), so a SaaS
    team serving EU and US customers through one key keeps each customer's rows in place.
    The gateway holds these in its catalog and picks a row's region from them for free.
    """

    customer_id = models.CharField(max_length=200, unique=True)
    region = models.CharField(max_length=32)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["customer_id"]

    def __str__(self) -> str:
        return f"customer {self.customer_id} in {self.region}"


class TeamRegionMove(models.Model):
    """One move of a team's usage history into its region (`manage.py usage move-region`).

    Open until every other region's database holds none of the team's rows. The scheduled
    sweep (`usage.region_moves_sweep`) finishes a move that was interrupted (nothing has
    touched it for a while), and for a day after a move moves the rows that landed in the old
    region after it: events in flight at the change (the usage stream, a spool, a gateway
    that had not yet re-read the key).
    """

    team = models.ForeignKey(Team, on_delete=models.CASCADE, related_name="region_moves")
    to = models.CharField(max_length=32)
    started_at = models.DateTimeField(auto_now_add=True)
    # Touched after every chunk: a move untouched for a while is no longer running.
    touched_at = models.DateTimeField(auto_now=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    rows_moved = models.BigIntegerField(default=0)

    class Meta:
        ordering = ["-started_at"]
        indexes = [models.Index(fields=["finished_at"], name="regionmove_finished")]

    def __str__(self) -> str:
        return f"move of {self.team} to {self.to}"
