"""Authentication for /api: a portal session, or a gateway API key as a bearer token."""

from django.http import HttpRequest
from django.utils import timezone
from ninja.security import HttpBearer, django_auth

from .models import ApiKey
from .secrets import hash_secret


class ApiKeyBearer(HttpBearer):
    """Accepts an active gateway key; the key row is available as `request.auth`."""

    def authenticate(self, request: HttpRequest, token: str) -> ApiKey | None:
        key = (
            ApiKey.objects.select_related("team", "user", "virtual_account")
            .filter(key_hash=hash_secret(token), revoked_at__isnull=True)
            .first()
        )
        if key is None or (key.expires_at is not None and key.expires_at <= timezone.now()):
            return None
        return key


api_key_auth = ApiKeyBearer()
session_or_key_auth = [django_auth, api_key_auth]
