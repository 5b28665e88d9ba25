"""Liveness and readiness probes, as JSON."""

from django.conf import settings
from django.db import DatabaseError, connection
from django.http import HttpRequest, JsonResponse


def healthz(request: HttpRequest) -> JsonResponse:
    return JsonResponse({"status": "ok"})


def _check_database() -> str | None:
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")
    except Exception as exc:  # any driver error means "not ready"
        return f"database unreachable: {exc.__class__.__name__}"
    return None


def _check_redis() -> str | None:
    if not settings.REDIS_URL:
        return None
    import redis

    from .redis import sync_client

    try:
        client = sync_client(socket_timeout=1, connect_timeout=1)
        client.ping()
    except redis.RedisError as exc:
        return f"redis unreachable: {exc.__class__.__name__}"
    return None


def _check_usage() -> str | None:
    """Rows the database refused, and rows held for a region whose database is down, are not
    an outage (the gateway keeps serving, and writing every other row), so they make the
    instance degraded, not unready. A region with rows held is not connected to here: the
    probe must not wait on that database's connect timeout."""
    from apps.usage.regions import region_names
    from apps.usage.selectors import usage_dead_letters_open
    from apps.usage.writer import held_rows_by_region

    held = held_rows_by_region()
    notes = [
        f"{rows} row{'s' if rows != 1 else ''} held for region {region} (its database unreachable)"
        for region, rows in held.items()
    ]
    count = 0
    for region in region_names():
        if region in held:
            continue
        try:
            count += usage_dead_letters_open(region).count()
        except DatabaseError:
            notes.append(f"region {region} unreachable")
    if count:
        notes.insert(0, f"{count} row{'s' if count != 1 else ''} dead-lettered")
    return "; ".join(notes) or None


def readyz(request: HttpRequest) -> JsonResponse:
    checks = {"database": _check_database(), "redis": _check_redis()}
    problems = {name: reason for name, reason in checks.items() if reason}
    degraded = _check_usage() if not problems.get("database") else None
    checks["usage"] = degraded
    status = "unavailable" if problems else ("degraded" if degraded else "ok")
    body = {
        "status": status,
        "checks": {name: (reason or "ok") for name, reason in checks.items()},
    }
    if not settings.REDIS_URL:
        body["checks"]["redis"] = "not configured (embedded mode)"
    if problems:
        body["reason"] = "; ".join(problems.values())
    elif degraded:
        body["reason"] = f"degraded: {degraded}"
    return JsonResponse(body, status=503 if problems else 200)
