"""Billing use cases: every write goes through a function here."""

from .prices import PRICE_FIXTURE, model_prices_import
from .statements import statements_compute
from .subscriptions import subscription_change, subscriptions_seed_demo, tier_save, tiers_seed_demo

__all__ = [
    "PRICE_FIXTURE",
    "model_prices_import",
    "statements_compute",
    "subscription_change",
    "subscriptions_seed_demo",
    "tier_save",
    "tiers_seed_demo",
]
