"""ASGI entry point.

A small dispatcher sits in front of Django so the `/v1` hot path (added by the proxy)
never crosses Django's middleware stack; everything else is the Django portal.
"""

import os

from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "gateway_portal.settings")

django_app = get_asgi_application()


async def application(scope, receive, send):
    await django_app(scope, receive, send)
