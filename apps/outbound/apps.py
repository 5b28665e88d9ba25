from django.apps import AppConfig


class OutboundConfig(AppConfig):
    """The one guard for URLs the product calls out to (no models): allowlist rules checked
    when a URL is configured and on the resolved address at connect time, redirects off."""

    name = "apps.outbound"
    label = "outbound"
    verbose_name = "Outbound URLs"
