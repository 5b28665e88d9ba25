"""The key flow in a real browser against a real gateway server: log in as an admin,
create a key, copy its secret, call /v1/models with it, revoke it in the UI, and see the
gateway refuse it within seconds. Screenshots land in tests/screenshots/ (gitignored)."""

import time

import httpx
import pytest

from apps.accounts.constants import Role
from apps.accounts.models import ApiKey
from tests import factories
from tests.proxy.conftest import start_gateway, stop_gateway
from tests.proxy.helpers import declare_model

pytestmark = [pytest.mark.services, pytest.mark.django_db(transaction=True)]

PASSWORD = "pw-for-browser-123"
MODEL = "browser-chat"


def models_status(url: str, secret: str) -> int:
    return httpx.get(
        f"{url}/v1/models", headers={"Authorization": f"Bearer {secret}"}, timeout=5
    ).status_code


def test_admin_creates_copies_uses_and_revokes_a_key(browser, screenshots, team, other_team):
    factories.make_user("root", team=team, role=Role.ADMIN, password=PASSWORD)
    factories.make_user("coder", team=team, role=Role.DEVELOPER)
    factories.make_virtual_account(team, name="search-bot", default_tags={"feature": "search"})
    server = start_gateway()
    try:
        declare_model(MODEL, server.simulator_url)
        context = browser.new_context(viewport={"width": 1280, "height": 860})
        origin = server.url
        context.grant_permissions(["clipboard-read", "clipboard-write"], origin=origin)
        page = context.new_page()

        page.goto(f"{origin}/login/")
        page.fill("input[name=username]", "root")
        page.fill("input[name=password]", PASSWORD)
        page.click("button[type=submit]")
        page.wait_for_url(f"{origin}/")
        assert page.locator("h1").inner_text() == "Gateway administration"
        page.screenshot(path=screenshots / "01-home-admin.png", full_page=True)

        page.click("nav >> text=Keys")
        page.click("text=New key")
        page.fill("input[name=name]", "browser key")
        page.select_option("select[name=allowed_models]", [MODEL])
        page.fill("textarea[name=default_tags]", '{"environment": "browser"}')
        page.screenshot(path=screenshots / "02-key-form.png", full_page=True)
        page.click("button:has-text('Create key')")

        secret_box = page.locator("#secret")
        secret_box.wait_for()
        page.click("button[data-copy-target=secret]")
        page.wait_for_selector("button[data-copy-target=secret]:has-text('Copied')")
        secret = page.evaluate("navigator.clipboard.readText()").strip()
        assert secret == secret_box.inner_text().strip()
        assert secret.startswith("tg_live_")
        assert f'base_url="{origin}/v1"' in page.locator("#snippet").inner_text()
        page.screenshot(path=screenshots / "03-key-secret.png", full_page=True)

        server.wait_for_model(secret, MODEL)
        response = httpx.get(
            f"{origin}/v1/models", headers={"Authorization": f"Bearer {secret}"}, timeout=5
        )
        assert response.status_code == 200
        assert [m["id"] for m in response.json()["data"]] == [MODEL]

        page.click("text=Done, go to the key")
        page.wait_for_selector("a:has-text('Revoke')")
        page.screenshot(path=screenshots / "04-key-detail.png", full_page=True)
        page.click("a:has-text('Revoke')")
        page.wait_for_selector("button:has-text('Revoke key')")
        page.screenshot(path=screenshots / "05-key-revoke-confirm.png", full_page=True)
        page.click("button:has-text('Revoke key')")
        page.wait_for_selector(".messages >> text=revoked")
        page.screenshot(path=screenshots / "06-key-revoked.png", full_page=True)
        assert ApiKey.objects.get(name="browser key").revoked_at is not None

        deadline = time.monotonic() + 5
        status = models_status(origin, secret)
        while status != 401 and time.monotonic() < deadline:
            time.sleep(0.1)
            status = models_status(origin, secret)
        assert status == 401, "a revoked key still works after 5 s"

        # The other pages, for a look at their layout.
        for name, path in [
            ("07-keys", "/keys/"),
            ("08-teams", "/teams/"),
            ("09-team-detail", f"/teams/{team.pk}/"),
            ("10-users", "/users/"),
            ("11-tags", "/tags/"),
            ("12-audit", "/audit/"),
        ]:
            page.goto(f"{origin}{path}")
            assert page.locator("h1").count() >= 1
            page.screenshot(path=screenshots / f"{name}.png", full_page=True)
        audit_text = page.content()
        assert "key.revoked" in audit_text and "key.created" in audit_text
        context.close()
    finally:
        stop_gateway(server)
