from django.apps import AppConfig


class BillingConfig(AppConfig):
    name = "apps.billing"
    label = "billing"

    def seed_demo(self, stdout) -> None:
        """Called by `manage.py seed_demo`: the price catalog and the demo tiers (idempotent)."""
        from apps.billing.services import (
            model_prices_import,
            subscriptions_seed_demo,
            tiers_seed_demo,
        )

        count = model_prices_import()
        stdout.write(f"Model prices: {count} catalog entries loaded")
        created = tiers_seed_demo()
        stdout.write(f"Tiers: {created} created (Standard 200k, Professional 1M tokens/month)")
        subscribed = subscriptions_seed_demo()
        if subscribed:
            stdout.write(f"Subscriptions: {subscribed} demo teams on Professional this month")
