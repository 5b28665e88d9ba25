"""`DATA_REGIONS`: where each region's usage ledger lives, read once by settings.

    DATA_REGIONS=eu=postgres://…/tollgate_eu,us=postgres://…/tollgate_us
    DATA_REGION_DEFAULT=us           # the region of a team that names none (default: the first)
    DATA_REGIONS_STRICT=eu           # tenants of these regions are served only by deployments
                                     # that declare the region (apps/proxy/routing)

Unset, there is one region, `DATA_REGION_DEFAULT` (default "default"), kept in the primary
database: a single-database install needs nothing. A region whose URL is the primary's is
kept in the primary too (one connection, not two to the same database).

Pure parsing, no Django: settings imports it before Django is set up.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

PRIMARY_ALIAS = "default"
REGION_NAME = re.compile(r"^[a-z][a-z0-9_-]{0,31}$")


class RegionConfigError(ValueError):
    pass


@dataclass(frozen=True, slots=True)
class RegionSpec:
    name: str
    url: str  # "" when the region is kept in the primary database
    strict: bool

    @property
    def alias(self) -> str:
        """The Django database alias the region's rows are read and written through."""
        return f"region_{self.name}" if self.url else PRIMARY_ALIAS


def parse_regions(
    value: str, *, default: str = "", strict: str = "", primary_url: str = ""
) -> tuple[list[RegionSpec], str]:
    """(the regions, the default region's name) from the environment's three values."""
    strict_names = {name.strip() for name in strict.split(",") if name.strip()}
    regions: list[RegionSpec] = []
    # Split on commas that start a new "name=" pair: a URL may hold commas in its query.
    for part in re.split(r",(?=\s*[a-z][a-z0-9_-]*=)", value.strip()) if value.strip() else []:
        name, sep, url = part.strip().partition("=")
        name = name.strip()
        if not sep or not url.strip():
            raise RegionConfigError(f"DATA_REGIONS: '{part}' is not name=database-url")
        if not REGION_NAME.match(name):
            raise RegionConfigError(f"DATA_REGIONS: '{name}' is not a region name (a-z, 0-9, -)")
        if any(r.name == name for r in regions):
            raise RegionConfigError(f"DATA_REGIONS: region '{name}' is named twice")
        url = url.strip()
        url = "" if url == primary_url else url
        # One database holding two regions' ledgers would be read twice by every merged read.
        shared = next((r.name for r in regions if r.url == url), None)
        if shared is not None:
            raise RegionConfigError(
                f"DATA_REGIONS: regions '{shared}' and '{name}' name the same database"
            )
        regions.append(RegionSpec(name, url, name in strict_names))
    if not regions:
        name = default or "default"
        if not REGION_NAME.match(name):
            raise RegionConfigError(f"DATA_REGION_DEFAULT: '{name}' is not a region name")
        regions = [RegionSpec(name, "", name in strict_names)]
    default = default or regions[0].name
    if default not in {r.name for r in regions}:
        raise RegionConfigError(f"DATA_REGION_DEFAULT: '{default}' is not in DATA_REGIONS")
    unknown = strict_names - {r.name for r in regions}
    if unknown:
        raise RegionConfigError(f"DATA_REGIONS_STRICT: {sorted(unknown)} not in DATA_REGIONS")
    return regions, default
