"""Authentication for /api: a portal session, or a gateway API key as a bearer token."""

import time
from typing import Any

from django.http import HttpRequest
from ninja.security import HttpBearer, django_auth

from apps.proxy.auth import key_info_from_row

from .models import ApiKey
from .secrets import hash_secret


class ApiKeyBearer(HttpBearer):
    """Accepts an active gateway key; the key row is available as `request.auth`."""

    def authenticate(self, request: HttpRequest, token: str) -> ApiKey | None:
        key = (
            ApiKey.objects.select_related("team", "user", "virtual_account")
            .filter(key_hash=hash_secret(token))
            .first()
        )
        # The gateway's own rule (revoked, expired, owner disabled), so /api and /v1 agree.
        if key is None or key_info_from_row(key).refusal(time.time()) is not None:
            return None
        return key


def request_caller(request: HttpRequest) -> Any:
    """What the route's authentication returned: an ApiKey row, or the session's user."""
    # ninja sets `request.auth` on the request; django-stubs' HttpRequest does not declare it.
    return request.auth  # type: ignore[attr-defined]


api_key_auth = ApiKeyBearer()
session_or_key_auth = [django_auth, api_key_auth]
