"""`manage.py usage_dead_letters [--replay] [--id N ...]`: list or replay refused usage rows."""

from django.core.management import BaseCommand, CommandError

from apps.usage.regions import region_names
from apps.usage.selectors import usage_dead_letters_open
from apps.usage.services import usage_dead_letters_replay


class Command(BaseCommand):
    help = "List usage rows the database refused, or replay them after a fix."

    def add_arguments(self, parser) -> None:
        parser.add_argument("--replay", action="store_true", help="write them again")
        parser.add_argument("--id", type=int, action="append", help="only this dead letter")
        parser.add_argument("--region", help="the data region's dead letters (default: default)")

    def handle(
        self, *args, replay: bool = False, id: list[int] | None = None, region=None, **options
    ) -> None:
        if region is not None and region not in region_names():
            raise CommandError(f"'{region}' is not a data region; use one of {region_names()}")
        if replay:
            result = usage_dead_letters_replay(ids=id, region=region)
            self.stdout.write(
                f"{result.written} written, {result.already_there} already in the ledger, "
                f"{result.still_failing} still refused"
            )
            return
        letters = usage_dead_letters_open(region)
        if id:
            letters = letters.filter(id__in=id)
        for letter in letters:
            self.stdout.write(
                f"{letter.id}\t{letter.request_id}\t{letter.failures}\t{letter.error}"
            )
        self.stdout.write(f"{letters.count()} open dead letter(s)")
