"""Which database a ledger row lives in: its tenant's region's (gateway_portal/data_regions.py).

Every model of this app is regional: usage rows with their tags and logged bodies, dead
letters, the rollups and their bookkeeping. Everything else (teams, keys, rules, tiers,
audit) is governance and lives in the primary database only. Ledger code says which region
it reads or writes with `in_region(name)`; outside one, the default region is meant, so a
single-region install never names one.

A region is chosen per row on the request path: the team's, unless the row's customer tag
has a region of its own (`apps.proxy.regions`).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any, ParamSpec, TypeVar

from django.conf import settings
from django.db import connections, transaction
from django.db.backends.base.base import BaseDatabaseWrapper
from django.db.transaction import Atomic

from gateway_portal.data_regions import PRIMARY_ALIAS, RegionSpec

LEDGER_APP = "usage"

_current: ContextVar[str | None] = ContextVar("tollgate_region", default=None)


class UnknownRegion(ValueError):
    pass


def regions() -> list[RegionSpec]:
    return list(settings.DATA_REGIONS)


def region_names() -> list[str]:
    return [region.name for region in settings.DATA_REGIONS]


def default_region() -> str:
    return str(settings.DATA_REGION_DEFAULT)


def is_multi_region() -> bool:
    return len(settings.DATA_REGIONS) > 1


def region_spec(name: str) -> RegionSpec:
    for region in settings.DATA_REGIONS:
        if region.name == name:
            return region
    raise UnknownRegion(f"'{name}' is not a data region here (DATA_REGIONS: {region_names()})")


def alias_for(name: str) -> str:
    return region_spec(name).alias


def region_or_default(name: str | None) -> str:
    """A stored region name, or the default for a blank one (a team that never chose)."""
    return name or default_region()


@contextmanager
def in_region(name: str) -> Iterator[str]:
    """Read and write the ledger of region `name` inside the block; yields its alias."""
    alias = alias_for(name)
    token = _current.set(name)
    try:
        yield alias
    finally:
        _current.reset(token)


def current_region() -> str:
    return _current.get() or default_region()


def current_alias() -> str:
    return alias_for(current_region())


def ledger_aliases() -> list[str]:
    """Each database holding a region's ledger, once (two regions may share none)."""
    return list(dict.fromkeys(region.alias for region in settings.DATA_REGIONS))


class RegionRouter:
    """Django database router: ledger models to the current region, the rest to the primary."""

    def db_for_read(self, model: type[Any], **hints: Any) -> str:
        if model._meta.app_label == LEDGER_APP:
            return current_alias()
        return PRIMARY_ALIAS

    db_for_write = db_for_read

    def allow_relation(self, obj1: Any, obj2: Any, **hints: Any) -> bool | None:
        return None

    def allow_migrate(
        self, db: str, app_label: str, model_name: str | None = None, **hints: Any
    ) -> bool | None:
        # Every database gets the whole schema: the ledger's tables were first created by
        # proxy and dashboards migrations (moved here later, state only), so a schema split
        # by app would miss them. The governance tables of a region database stay empty
        # (nothing routes there), as do the ledger tables of a primary that is no region.
        return None


def ledger_connection() -> BaseDatabaseWrapper:
    """The current region's database connection (raw SQL, vendor checks)."""
    return connections[current_alias()]


def ledger_atomic() -> Atomic:
    """A transaction on the current region's database."""
    return transaction.atomic(using=current_alias())


class _CurrentLedger:
    """`django.db.connection` for the ledger: the current region's connection, looked up at
    each use (as Django's own proxy looks up the default's)."""

    def __getattr__(self, name: str) -> Any:
        return getattr(connections[current_alias()], name)


ledger_db = _CurrentLedger()


P = ParamSpec("P")
R = TypeVar("R")


def ledger_transaction(function: Callable[P, R]) -> Callable[P, R]:
    """`@transaction.atomic` on the current region's database, chosen at each call."""

    @functools.wraps(function)
    def run(*args: P.args, **kwargs: P.kwargs) -> R:
        with ledger_atomic():
            return function(*args, **kwargs)

    return run


def ledger_managers(model: type[Any], names: Iterable[str] | None = None) -> list[Any]:
    """`model.objects` of each region's database (of the regions `names`, default all), for
    reads that combine the regions outside the query layer (tag keys seen, quota refusals)."""
    chosen = region_names() if names is None else list(names)
    aliases = dict.fromkeys(alias_for(name) for name in chosen)
    return [model.objects.using(alias) for alias in aliases]
