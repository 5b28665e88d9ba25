import pytest
from django.test import override_settings

pytestmark = pytest.mark.django_db


@pytest.mark.embedded
def test_healthz(client):
    response = client.get("/healthz")
    assert response.status_code == 200 and response.json() == {"status": "ok"}


@pytest.mark.embedded
def test_readyz_ok(client, settings):
    response = client.get("/readyz")
    assert response.status_code == 200
    body = response.json()
    assert body["status"] == "ok" and body["checks"]["database"] == "ok"
    if settings.REDIS_URL:
        assert body["checks"]["redis"] == "ok"
    else:
        assert "embedded" in body["checks"]["redis"]


def test_readyz_reports_redis_down(client):
    with override_settings(REDIS_URL="redis://127.0.0.1:1/0"):
        response = client.get("/readyz")
    assert response.status_code == 503
    body = response.json()
    assert body["status"] == "unavailable"
    assert "redis unreachable" in body["reason"]
    assert body["checks"]["database"] == "ok"
