"""`manage.py usage_partitions [--exact] [--ensure] [--prune [--dry-run]] [--region R]`.

Lists the raw usage table's partitions (PostgreSQL) with rows and sizes; `--ensure` creates
the coming months' partitions as the beat task does; `--prune` applies the retention
(whole months of raw rows, then logged bodies), `--dry-run` only says what it would do.
"""

from django.core.management import BaseCommand, CommandError
from django.db.models import Min

from apps.usage.models import UsageRecord
from apps.usage.partitions import usage_partitions
from apps.usage.regions import UnknownRegion, in_region, is_multi_region, region_names, region_spec
from apps.usage.retention import raw_cutoff, usage_bodies_prune, usage_raw_prune
from apps.usage.tasks import partitions_maintain


def _size(count: int) -> str:
    size = float(count)
    for unit in ("B", "kB", "MB", "GB"):
        if size < 1024:
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} TB"


class Command(BaseCommand):
    help = "List the usage table's partitions, create the coming ones, or apply retention."

    def add_arguments(self, parser) -> None:
        parser.add_argument("--exact", action="store_true", help="count rows (reads each)")
        parser.add_argument("--ensure", action="store_true", help="create coming partitions")
        parser.add_argument("--prune", action="store_true", help="apply the retention")
        parser.add_argument("--dry-run", action="store_true", help="with --prune: only report")
        parser.add_argument("--region", help="one data region (default: every region)")

    def handle(self, *args, exact: bool, ensure: bool, prune: bool, dry_run: bool, **options):
        if ensure:
            # What the beat task does, run here and now.
            created = partitions_maintain()["created"]
            self.stdout.write(f"created: {', '.join(created) or 'none'}")
        try:
            names = [region_spec(options["region"]).name] if options["region"] else region_names()
        except UnknownRegion as error:
            raise CommandError(str(error)) from error
        if ensure and not prune:
            return
        for name in names:
            if is_multi_region():
                self.stdout.write(f"== region {name}")
            with in_region(name):
                if prune:
                    self._prune(dry_run=dry_run)
                else:
                    self._list(exact=exact)

    def _list(self, *, exact: bool) -> None:
        partitions = usage_partitions(exact=exact)
        if not partitions:
            first = UsageRecord.objects.aggregate(first=Min("created_at"))["first"]
            self.stdout.write(
                f"{UsageRecord._meta.db_table}: one table, not partitioned, "
                f"{UsageRecord.objects.count():,} rows since {first or '-'}"
            )
            return
        rows_label = "rows" if exact else "rows (est.)"
        self.stdout.write(
            f"{'partition':<32} {'from':<11} {'to':<11} {rows_label:>14} {'size':>10}"
        )
        for p in partitions:
            rows = "?" if p.rows is None else f"{p.rows:,}"
            start, end = ("DEFAULT", "") if p.is_default else (str(p.start), str(p.end))
            self.stdout.write(f"{p.name:<32} {start:<11} {end:<11} {rows:>14} {_size(p.bytes):>10}")
        default = partitions[-1]
        if default.is_default and default.rows:
            self.stdout.write(
                f"{default.name} holds rows: `--ensure` moves those of kept months into "
                "their partitions; older ones are past retention"
            )

    def _prune(self, *, dry_run: bool) -> None:
        result = usage_raw_prune(dry_run=dry_run)
        verb = "would drop" if dry_run else "dropped"
        cutoff = raw_cutoff()
        if cutoff is None:
            self.stdout.write("raw rows: kept forever (USAGE_RAW_RETENTION_DAYS=0)")
        else:
            self.stdout.write(
                f"raw rows before {cutoff}: {verb} {len(result.dropped)} "
                f"(about {result.rows:,} rows) {', '.join(result.dropped)}"
            )
        for name, days in result.refused.items():
            self.stdout.write(
                f"refused {name}: rollups miss {len(days)} day(s), from {days[0]}; run "
                "`manage.py rollup --month` first"
            )
        bodies = usage_bodies_prune(dry_run=dry_run)
        self.stdout.write(f"logged bodies: {'would null' if dry_run else 'nulled'} {bodies:,}")
