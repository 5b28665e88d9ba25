"""Billing reads: usage (export API, chargebacks) and plans (tiers, statements)."""
