from django.conf import settings
from django.db import models
from django.db.models import Q


class QuotaConfigVersion(models.Model):
    """One saved version of the quota rules YAML; every save (and rollback) adds a row.

    Exactly one row is active: the gateway workers load it (see `QuotaEngine.refresh`). Old
    rows are kept as history and are what a rollback copies from.
    """

    version = models.PositiveIntegerField(unique=True)
    name = models.CharField(max_length=200, blank=True)
    yaml_text = models.TextField()
    author = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="quota_config_versions",
    )
    # What produced the version: "apply", "import", "rollback of v3", ...
    note = models.CharField(max_length=200, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    is_active = models.BooleanField(default=False)

    class Meta:
        ordering = ["-version"]
        constraints = [
            models.UniqueConstraint(
                fields=["is_active"],
                condition=Q(is_active=True),
                name="quotas_one_active_config",
            )
        ]

    def __str__(self) -> str:
        state = " (active)" if self.is_active else ""
        return f"quota config v{self.version}{state}"
