"""`manage.py migrate` migrates the primary database, then each data region's database.

Regions with a database of their own (DATA_REGIONS) need the schema as much as the primary,
and every set-up step (`make run`, the deploy's release step) already runs `migrate`; so it
covers them all. `--database X` migrates X alone, as Django's does.
"""

from typing import Any

from django.core.management.commands.migrate import Command as DjangoMigrate
from django.db import DEFAULT_DB_ALIAS

from apps.usage.regions import ledger_aliases


class Command(DjangoMigrate):
    help = "Migrate the primary database, then each data region's (DATA_REGIONS)."

    def handle(self, *args: Any, **options: Any) -> None:
        super().handle(*args, **options)
        # Django's test set-up creates and migrates each alias itself, with run_syncdb.
        if options["database"] != DEFAULT_DB_ALIAS or options.get("run_syncdb"):
            return
        for alias in ledger_aliases():
            if alias == DEFAULT_DB_ALIAS:
                continue
            if options["verbosity"] >= 1:
                self.stdout.write(self.style.MIGRATE_HEADING(f"Region database {alias}:"))
            super().handle(*args, **{**options, "database": alias})
