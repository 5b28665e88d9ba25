from decimal import Decimal

from django.db import models


class SubjectType(models.TextChoices):
    TEAM = "team", "Team"
    VIRTUAL_ACCOUNT = "virtual_account", "Virtual account"
    CUSTOMER = "customer", "Customer (tag value)"


CURRENCY = "USD"
# Statement and tier-fit amounts are whole cents.
CENT = Decimal("0.01")
# Chargeback and export cost cells: USD with 6 decimals, half-up (documented in exports.py).
COST_DECIMALS = 6
COST_QUANTUM = Decimal(1).scaleb(-COST_DECIMALS)
EXPORT_SCHEMA_VERSION = "1"
# The tag whose values the insights page compares models for (a rollup tag key).
FEATURE_TAG_KEY = "feature"
