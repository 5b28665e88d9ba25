"""Create the demo tenancy: teams, users with roles, a virtual account. Idempotent."""

from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.management import BaseCommand, CommandError
from django.db import transaction

from apps.accounts.constants import Role
from apps.accounts.models import Team, VirtualAccount
from apps.accounts.services import membership_set
from apps.usage.regions import region_names

DEMO_TEAMS = [
    ("Platform", "platform", {"cost_center": "cc-100"}),
    ("Frontend", "frontend", {"cost_center": "cc-200"}),
    ("SaaS", "saas", {"cost_center": "cc-300"}),
    # Kept in the EU data region when there is one (the demo's two regions).
    ("Kontor EU", "kontor-eu", {"cost_center": "cc-400"}),
]
DEMO_TEAM_REGIONS = {"kontor-eu": "eu"}
# username, password, team slug, role, superuser
DEMO_USERS = [
    ("admin", "admin-demo-pass", "platform", Role.ADMIN, True),
    ("finance", "finance-demo-pass", "platform", Role.FINANCE, False),
    ("teamadmin", "teamadmin-demo-pass", "frontend", Role.TEAM_ADMIN, False),
    ("dev", "dev-demo-pass", "frontend", Role.DEVELOPER, False),
    ("eva", "eva-demo-pass", "kontor-eu", Role.DEVELOPER, False),
]
DEMO_VIRTUAL_ACCOUNT = ("countdown-bot", "saas", {"feature": "countdown-bot"})


class Command(BaseCommand):
    help = "Seed the demo: teams, users (admin, finance, teamadmin, dev), a virtual account."

    def add_arguments(self, parser) -> None:
        parser.add_argument("--force", action="store_true", help="run even with DEBUG off")

    def handle(self, *args, force: bool = False, **options) -> None:
        if not settings.DEBUG and not force:
            raise CommandError(
                "seed_demo creates known passwords; refusing with DEBUG off (use --force)"
            )
        with transaction.atomic():
            self._seed_tenancy()
        self._seed_extras()
        self.stdout.write(self.style.SUCCESS("Demo data ready. Logins:"))
        for username, password, _, role, _ in DEMO_USERS:
            self.stdout.write(f"  {username:<10} {password:<22} ({role.label})")

    def _seed_tenancy(self) -> None:
        User = get_user_model()
        teams = {}
        for name, slug, tags in DEMO_TEAMS:
            region = DEMO_TEAM_REGIONS.get(slug, "")
            teams[slug], _ = Team.objects.get_or_create(
                slug=slug,
                defaults={
                    "name": name,
                    "default_tags": tags,
                    "data_region": region if region in region_names() else "",
                },
            )
        for username, password, team_slug, role, superuser in DEMO_USERS:
            user, created = User.objects.get_or_create(
                username=username, defaults={"email": f"{username}@example.com"}
            )
            if created:
                user.set_password(password)
            user.is_staff = user.is_superuser = superuser
            user.save()
            membership_set(user=user, team=teams[team_slug], role=role)
        va_name, team_slug, tags = DEMO_VIRTUAL_ACCOUNT
        VirtualAccount.objects.get_or_create(
            name=va_name,
            defaults={
                "team": teams[team_slug],
                "default_tags": tags,
                "description": "Demo application identity",
            },
        )

    def _seed_extras(self) -> None:
        """Other apps add their demo data (models, prices, usage) through their own seeds."""
        from django.apps import apps

        for config in apps.get_app_configs():
            seed = getattr(config, "seed_demo", None)
            if callable(seed):
                seed(stdout=self.stdout)
