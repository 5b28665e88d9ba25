"""Each dashboard page in headless Chromium against a live server: every Plotly graph
renders with data, nothing is fetched from another origin, and an untrusted tag value never
runs. Screenshots land in tests/screenshots/ (gitignored)."""

import datetime as dt

import pytest
from django.utils import timezone

from apps.accounts.constants import Role
from apps.billing.services import model_prices_import
from apps.dashboards.services import usage_generate
from apps.usage.models import UsageRecord
from apps.usage.rollup_tables import rollup_days
from tests import factories

pytestmark = [pytest.mark.services, pytest.mark.django_db(transaction=True)]

PASSWORD = "pw-for-browser-123"
EVIL = "<script>alert(1)</script>"
PAGES = [
    ("dash-01-overview", "/dashboards/"),
    ("dash-02-cost-team", "/dashboards/cost/"),
    ("dash-03-cost-feature", "/dashboards/cost/?group=tag:feature&top=6"),
    ("dash-04-latency", "/dashboards/latency/"),
    ("dash-05-errors", "/dashboards/errors/"),
    ("dash-06-tags", "/dashboards/tags/?key=feature"),
    ("dash-07-tag-drill", "/dashboards/tags/?key=feature&value=search"),
    ("dash-08-overview-hourly", "/dashboards/?start={today}&end={today}"),
]
POINTS_PER_PLOT = """() => Array.from(document.querySelectorAll('.js-plot')).map(el => ({
  id: el.id,
  svg: el.querySelectorAll('.main-svg').length,
  points: (el.data || []).reduce((n, t) => n + ((t.x || []).length), 0),
}))"""


@pytest.fixture
def usage_history(team, other_team, virtual_account):
    factories.make_user("fin", team=team, role=Role.FINANCE, password=PASSWORD)
    factories.make_key(user=factories.make_user("dev1", team=team))
    factories.make_key(user=factories.make_user("dev2", team=other_team))
    model_prices_import()  # the catalog's models join the mix: several models and providers
    usage_generate(rows=6000, days=21, seed=11)
    # Past days rolled up as the beat task would; today stays raw rows.
    today = timezone.now().astimezone(dt.UTC).date()
    rollup_days(start=today - dt.timedelta(days=22), end=today)
    row = UsageRecord.objects.order_by("-created_at").first()
    row.tags = {**row.tags, "feature": EVIL}
    row.save(update_fields=["tags"])


def test_every_dashboard_renders_its_graphs(browser, screenshots, live_server, usage_history):
    origin = live_server.url
    context = browser.new_context(viewport={"width": 1360, "height": 900})
    page = context.new_page()
    foreign: list[str] = []
    dialogs: list[str] = []
    # Plotly's PNG export goes through a same-origin blob: URL; anything else is foreign.
    local = (origin, f"blob:{origin}", "data:")
    page.on("request", lambda r: None if r.url.startswith(local) else foreign.append(r.url))
    page.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))

    page.goto(f"{origin}/login/")
    page.fill("input[name=username]", "fin")
    page.fill("input[name=password]", PASSWORD)
    page.click("button[type=submit]")
    page.wait_for_url(f"{origin}/")

    today = dt.datetime.now(dt.UTC).date().isoformat()
    for name, path in PAGES:
        page.goto(origin + path.format(today=today))
        expected = page.locator(".js-plot").count()
        assert expected >= 1, name
        # A function, not an expression: Playwright re-evals an expression on every poll,
        # which the page's CSP (no 'unsafe-eval') refuses.
        page.wait_for_function(
            f"() => document.querySelectorAll('.js-plotly-plot .main-svg').length >= {expected}"
        )
        plots = page.evaluate(POINTS_PER_PLOT)
        assert all(p["svg"] >= 1 and p["points"] > 0 for p in plots), (name, plots)
        page.screenshot(path=screenshots / f"{name}.png", full_page=True)

    # The modebar's PNG button is plotly's toImage: it must produce an image download.
    page.goto(f"{origin}/dashboards/")
    page.wait_for_selector(".js-plotly-plot .main-svg")
    with page.expect_download() as download:
        page.locator(".js-png").first.click()
    assert download.value.suggested_filename.endswith(".png")

    assert foreign == []
    assert dialogs == []
    context.close()
