"""`manage.py usage_dead_letters [--replay] [--id N ...]`: list or replay refused usage rows."""

from django.core.management import BaseCommand

from apps.usage.selectors import usage_dead_letters_open
from apps.usage.services import usage_dead_letters_replay


class Command(BaseCommand):
    help = "List usage rows the database refused, or replay them after a fix."

    def add_arguments(self, parser) -> None:
        parser.add_argument("--replay", action="store_true", help="write them again")
        parser.add_argument("--id", type=int, action="append", help="only this dead letter")

    def handle(self, *args, replay: bool = False, id: list[int] | None = None, **options) -> None:
        if replay:
            result = usage_dead_letters_replay(ids=id)
            self.stdout.write(
                f"{result.written} written, {result.already_there} already in the ledger, "
                f"{result.still_failing} still refused"
            )
            return
        letters = usage_dead_letters_open()
        if id:
            letters = letters.filter(id__in=id)
        for letter in letters:
            self.stdout.write(
                f"{letter.id}\t{letter.request_id}\t{letter.failures}\t{letter.error}"
            )
        self.stdout.write(f"{letters.count()} open dead letter(s)")
