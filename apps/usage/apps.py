from django.apps import AppConfig


class UsageConfig(AppConfig):
    """The usage ledger: records, capture-side normalisation, the writer, dead letters, the
    one set of rollup tables with its coverage rule, month-to-date, and the scope every
    page, export and API reads through."""

    name = "apps.usage"
    label = "usage"
    verbose_name = "Usage ledger"
