from django.apps import AppConfig


class BillingConfig(AppConfig):
    name = "apps.billing"
    label = "billing"

    def seed_demo(self, stdout) -> None:
        """Called by `manage.py seed_demo`: load the list-price catalog (idempotent)."""
        from apps.billing.services import model_prices_import

        count = model_prices_import()
        stdout.write(f"Model prices: {count} catalog entries loaded")
