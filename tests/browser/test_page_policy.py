"""The page security policy in headless Chromium: dashboards with Plotly charts, the
deployments page, the quota editor, the API docs and the Django admin run under the
Content-Security-Policy the portal sends, with zero violations, and still work (charts drawn,
PNG export downloads, tables filled, the rollback asks first, admin forms shown)."""

import datetime as dt

import pytest
from django.utils import timezone

from apps.accounts.constants import Role
from apps.dashboards.services import usage_generate
from apps.quotas.models import QuotaConfigVersion
from apps.quotas.services import quota_config_apply
from apps.usage.rollup_tables import rollup_days
from tests import factories

pytestmark = [pytest.mark.services, pytest.mark.django_db(transaction=True)]

PASSWORD = "pw-for-browser-123"
# Every violation a page sees, from the DOM event (runs before the page's own scripts).
RECORD_VIOLATIONS = """
window.__cspViolations = [];
document.addEventListener("securitypolicyviolation", (e) => {
  window.__cspViolations.push(e.violatedDirective + " " + (e.blockedURI || "inline"));
});
"""
QUOTAS = (
    "name: policy-test\ntype: gateway-rate-limiting-config\nrules:\n"
    "  - id: frontend-daily\n    when: {subjects: ['team:frontend']}\n"
    "    limit_to: {limit}\n    unit: requests_per_day\n"
)


@pytest.fixture
def people(team):
    factories.make_user("fin", team=team, role=Role.FINANCE, password=PASSWORD)
    factories.make_user("root", team=team, role=Role.ADMIN, password=PASSWORD, superuser=True)
    usage_generate(rows=400, days=7, seed=3)
    today = timezone.now().astimezone(dt.UTC).date()
    rollup_days(start=today - dt.timedelta(days=8), end=today)


def new_page(browser):
    context = browser.new_context(viewport={"width": 1280, "height": 900}, accept_downloads=True)
    context.add_init_script(RECORD_VIOLATIONS)
    page = context.new_page()
    # Chromium also logs each blocked action; keep those lines (other console noise aside).
    console: list[str] = []
    page.on("console", lambda m: console.append(m.text) if "Security Policy" in m.text else None)
    return context, page, console


def log_in(page, origin: str, username: str) -> None:
    page.goto(f"{origin}/login/")
    page.fill("input[name=username]", username)
    page.fill("input[name=password]", PASSWORD)
    page.click("button[type=submit]")
    page.wait_for_url(f"{origin}/")


def violations(page) -> list[str]:
    return page.evaluate("window.__cspViolations")


def test_dashboards_with_plotly_run_under_the_policy(browser, live_server, people):
    origin = live_server.url
    context, page, console = new_page(browser)
    log_in(page, origin, "fin")
    for path in ("/dashboards/", "/dashboards/cost/", "/dashboards/latency/"):
        response = page.goto(origin + path)
        assert "script-src 'self';" in response.headers["content-security-policy"]
        expected = page.locator(".js-plot").count()
        assert expected >= 1, path
        # A function, not an expression: Playwright re-evals an expression on every poll,
        # which the page's CSP (no 'unsafe-eval') refuses.
        page.wait_for_function(
            f"() => document.querySelectorAll('.js-plotly-plot .main-svg').length >= {expected}"
        )
        # Hovering draws plotly's hover layer; the PNG export goes through a blob: image.
        page.locator(".js-plotly-plot .nsewdrag").first.hover()
        with page.expect_download() as download:
            page.locator(".js-png").first.click()
        assert download.value.suggested_filename.endswith(".png")
        assert violations(page) == [], path
    assert console == []
    context.close()


def test_static_scripts_docs_and_admin_run_under_the_policy(browser, live_server, people):
    quota_config_apply(yaml_text=QUOTAS.replace("{limit}", "100"))
    quota_config_apply(yaml_text=QUOTAS.replace("{limit}", "200"))
    origin = live_server.url
    context, page, console = new_page(browser)
    log_in(page, origin, "root")

    # The deployments page fills its tables from a static script (it was inline).
    page.goto(f"{origin}/deployments/")
    page.wait_for_function("() => document.getElementById('dp-updated').textContent.length > 0")
    assert "Loading" not in page.locator("#dp-models").inner_text()
    assert violations(page) == []

    # The quota editor's rollback asks first (data-confirm, handled by a static script).
    page.goto(f"{origin}/quotas/edit/")
    questions: list[str] = []
    page.once("dialog", lambda d: (questions.append(d.message), d.dismiss()))
    page.click("text=Roll back to v1")
    assert QuotaConfigVersion.objects.count() == 2
    page.once("dialog", lambda d: (questions.append(d.message), d.accept()))
    with page.expect_navigation():
        page.click("text=Roll back to v1")
    assert QuotaConfigVersion.objects.get(is_active=True).version == 3
    assert len(questions) == 2 and "version 1" in questions[0]
    assert violations(page) == []

    # The API docs (Swagger UI from static files) and the Django admin.
    page.goto(f"{origin}/api/docs")
    page.wait_for_selector(".swagger-ui .opblock")
    assert violations(page) == []
    for path, ready in (
        ("/admin/", "#content-main"),
        ("/admin/accounts/team/", "#changelist-form"),
        ("/admin/accounts/team/add/", "#team_form"),
    ):
        response = page.goto(origin + path)
        assert response.headers["content-security-policy"].startswith("default-src 'self'")
        page.wait_for_selector(ready)
        assert violations(page) == [], path
    assert console == []
    context.close()
