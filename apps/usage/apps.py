from django.apps import AppConfig


class UsageConfig(AppConfig):
    """The usage ledger: records, capture-side normalisation, the writer, dead letters,
    rollups, scope and the one query layer every page, export and API reads through."""

    name = "apps.usage"
    label = "usage"
    verbose_name = "Usage ledger"
