"""Key lifecycle for scripts and runbooks: list, rotate, revoke.

Goes through the same services (and so the same audit log and cache invalidation) as the
portal. The actor is recorded as "system". `rotate` prints the new secret once, as the
last line of stdout, so a script can take it with `tail -n 1`.
"""

from django.core.management import BaseCommand, CommandError
from django.db.models import Exists, OuterRef
from django.utils import timezone

from apps.accounts.exceptions import AccountsError
from apps.accounts.models import ApiKey, Team
from apps.accounts.services import DEFAULT_GRACE_HOURS, api_key_revoke, api_key_rotate


def _status(key: ApiKey, now) -> str:
    if key.revoked_at is not None:
        return "revoked"
    if key.is_expired(now):
        return "expired"
    if getattr(key, "has_successor", False):
        return "grace"
    return "active"


def _when(moment) -> str:
    return moment.strftime("%Y-%m-%d %H:%M") if moment is not None else "-"


class Command(BaseCommand):
    help = "List, rotate or revoke API keys."

    def add_arguments(self, parser) -> None:
        sub = parser.add_subparsers(dest="action", required=True)
        listing = sub.add_parser("list", help="list keys (newest first)")
        listing.add_argument("--team", help="only keys billed to this team (slug)")
        rotate = sub.add_parser("rotate", help="issue a successor; print its secret last")
        rotate.add_argument("prefix", help="the key's prefix, as shown by `keys list`")
        rotate.add_argument(
            "--grace-hours",
            type=float,
            default=DEFAULT_GRACE_HOURS,
            help=f"hours the old key keeps working (default {DEFAULT_GRACE_HOURS:g})",
        )
        revoke = sub.add_parser("revoke", help="revoke at once on every gateway worker")
        revoke.add_argument("prefix")

    def handle(self, *args, **opts) -> None:
        action = opts["action"]
        if action == "list":
            self._list(opts.get("team"))
            return
        key = self._key(opts["prefix"])
        try:
            if action == "rotate":
                if opts["grace_hours"] < 0:
                    raise CommandError("--grace-hours cannot be negative")
                new_key, plaintext = api_key_rotate(
                    key=key, actor=None, grace_hours=opts["grace_hours"]
                )
                self.stdout.write(
                    f"Rotated {key.prefix}… -> {new_key.prefix}… ({new_key.owner_label}, "
                    f"team {new_key.team.slug}); the old key works until "
                    f"{_when(new_key.rotated_from.expires_at)} UTC."
                )
                self.stdout.write("Store the new key now: it is shown only once.")
                self.stdout.write(plaintext)
            else:
                api_key_revoke(key=key, actor=None)
                self.stdout.write(f"Revoked {key.prefix}… ({key.owner_label}).")
        except AccountsError as exc:
            raise CommandError(str(exc)) from exc

    def _key(self, prefix: str) -> ApiKey:
        prefix = prefix.strip().rstrip("…")
        key = (
            ApiKey.objects.select_related("team", "user", "virtual_account")
            .filter(prefix=prefix)
            .first()
        )
        if key is None:
            raise CommandError(f"no key with prefix {prefix!r}")
        return key

    def _list(self, team_slug: str | None) -> None:
        keys = (
            ApiKey.objects.select_related("team", "user", "virtual_account")
            .annotate(has_successor=Exists(ApiKey.objects.filter(rotated_from=OuterRef("pk"))))
            .order_by("team__slug", "-created_at")
        )
        if team_slug:
            team = Team.objects.filter(slug=team_slug).first()
            if team is None:
                raise CommandError(f"no team {team_slug!r}")
            keys = keys.filter(team=team)
        now = timezone.now()
        rows = [
            (
                key.prefix,
                key.team.slug,
                key.owner_label,
                _status(key, now),
                _when(key.expires_at),
                _when(key.last_used_at),
                key.name,
            )
            for key in keys
        ]
        header = ("PREFIX", "TEAM", "OWNER", "STATUS", "EXPIRES", "LAST USED", "NAME")
        widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
        for row in [header, *rows]:
            self.stdout.write("  ".join(str(v).ljust(w) for v, w in zip(row, widths, strict=True)))
