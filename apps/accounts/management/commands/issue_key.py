"""Issue an API key; the plaintext is printed once, as the last line of stdout."""

import json

from django.contrib.auth import get_user_model
from django.core.management import BaseCommand, CommandError

from apps.accounts.exceptions import AccountsError
from apps.accounts.models import Team, VirtualAccount
from apps.accounts.services import api_key_issue


class Command(BaseCommand):
    help = "Issue an API key for a user or a virtual account and print it once."

    def add_arguments(self, parser) -> None:
        owner = parser.add_mutually_exclusive_group(required=True)
        owner.add_argument("--user", help="username or email of the owner")
        owner.add_argument("--virtual-account", help="name of the owning virtual account")
        parser.add_argument("--name", default="", help="a name for the key")
        parser.add_argument("--team", help="team slug to bill (user keys; default: first team)")
        parser.add_argument("--tags", default="{}", help="default tags as a JSON object")
        parser.add_argument("--models", default="", help="comma-separated allowed models")
        parser.add_argument("--expires-in-days", type=int, default=None)

    def handle(self, *args, **opts) -> None:
        try:
            tags = json.loads(opts["tags"])
        except json.JSONDecodeError as exc:
            raise CommandError(f"--tags is not valid JSON: {exc}") from exc
        if opts["expires_in_days"] is not None and opts["expires_in_days"] <= 0:
            raise CommandError("--expires-in-days must be positive")
        user = virtual_account = team = None
        if opts["user"]:
            User = get_user_model()
            user = (
                User.objects.filter(username=opts["user"]).first()
                or User.objects.filter(email=opts["user"]).first()
            )
            if user is None:
                raise CommandError(f"no user {opts['user']!r}")
        else:
            virtual_account = VirtualAccount.objects.filter(name=opts["virtual_account"]).first()
            if virtual_account is None:
                raise CommandError(f"no virtual account {opts['virtual_account']!r}")
        if opts["team"]:
            team = Team.objects.filter(slug=opts["team"]).first()
            if team is None:
                raise CommandError(f"no team {opts['team']!r}")
        models = [m.strip() for m in opts["models"].split(",") if m.strip()]
        owner = user.get_username() if user else virtual_account.name
        try:
            key, plaintext = api_key_issue(
                name=opts["name"] or f"{owner} key",
                user=user,
                virtual_account=virtual_account,
                team=team,
                default_tags=tags,
                allowed_models=models,
                expires_in_days=opts["expires_in_days"],
            )
        except AccountsError as exc:
            raise CommandError(str(exc)) from exc
        self.stdout.write(f"Issued key {key.prefix}… for {key.owner_label} (team {key.team.slug}).")
        self.stdout.write("Store it now: it is shown only once.")
        self.stdout.write(plaintext)
