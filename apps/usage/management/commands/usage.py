"""Usage ledger chores for runbooks: `usage move-region --team T --to eu`,
`usage customer-region --customer acme --to eu` (or `--clear`) for a customer kept outside
its team's region, and `usage sweep-moves`: now, what the scheduled sweep does (finish
interrupted moves, move rows that landed in an old region after one).

The move is idempotent and may be re-run after an interruption (apps/usage/region_move.py);
the audit log records the region change and the move.
"""

from typing import Any

from django.core.management import BaseCommand, CommandError

from apps.accounts.exceptions import AccountsError
from apps.accounts.models import Team
from apps.accounts.services import customer_region_set
from apps.usage.region_move import (
    RegionMoveError,
    usage_region_move,
    usage_region_moves_sweep,
)
from apps.usage.regions import UnknownRegion


class Command(BaseCommand):
    help = "Usage ledger chores: move-region, customer-region, sweep-moves."

    def add_arguments(self, parser: Any) -> None:
        sub = parser.add_subparsers(dest="action", required=True)
        move = sub.add_parser(
            "move-region", help="keep a team's usage in a region and move its history there"
        )
        move.add_argument("--team", required=True, help="the team's slug")
        move.add_argument("--to", required=True, help="the data region (DATA_REGIONS)")
        sub.add_parser("sweep-moves", help="finish interrupted moves and move stragglers now")
        customer = sub.add_parser(
            "customer-region", help="keep one customer's new usage in a region of its own"
        )
        customer.add_argument("--customer", required=True, help="the customer tag's value")
        target = customer.add_mutually_exclusive_group(required=True)
        target.add_argument("--to", help="the data region (DATA_REGIONS)")
        target.add_argument("--clear", action="store_true", help="follow the team's region")

    def handle(self, *args: Any, **opts: Any) -> None:
        if opts["action"] == "sweep-moves":
            swept = usage_region_moves_sweep()
            stragglers = ", ".join(f"{t}: {n:,}" for t, n in sorted(swept.stragglers.items()))
            self.stdout.write(
                f"moves finished: {', '.join(swept.finished) or 'none'}; "
                f"stragglers moved: {stragglers or 'none'}"
            )
            return
        if opts["action"] == "customer-region":
            self._customer_region(opts["customer"], None if opts["clear"] else opts["to"])
            return
        team = Team.objects.filter(slug=opts["team"]).first()
        if team is None:
            raise CommandError(f"no team with the slug '{opts['team']}'")
        try:
            result = usage_region_move(team=team, to=opts["to"], actor=None)
        except (UnknownRegion, AccountsError, RegionMoveError) as exc:
            raise CommandError(str(exc)) from exc
        by_source = ", ".join(f"{n:,} from {r}" for r, n in sorted(result.moved.items()))
        self.stdout.write(
            f"team {result.team}: region {result.to}; "
            f"{result.total:,} rows moved{f' ({by_source})' if by_source else ''}"
        )

    def _customer_region(self, customer: str, region: str | None) -> None:
        try:
            customer_region_set(customer_id=customer, region=region, actor=None)
        except AccountsError as exc:
            raise CommandError(str(exc)) from exc
        where = region or "its team's region"
        self.stdout.write(f"customer {customer}: new usage kept in {where}")
