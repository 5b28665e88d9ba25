"""SSRF and secret exfiltration through upstream deployments (issue 13).

A real gateway process, real upstream servers on loopback: an allow-listed upstream that
redirects, a name on the list that resolves to loopback, a deployment whose api_key_env names
the gateway's own DATABASE_URL. Plus the configuration-time refusals and the default
allowlist as the settings build it.
"""

import json
import os
import subprocess
import sys

import httpx
import pytest
from django.core.exceptions import ValidationError
from django.core.management import CommandError, call_command

from apps.proxy.admin import DeploymentForm
from apps.proxy.models import Deployment, GatewayModel
from apps.proxy.services import CatalogSpecError, model_catalog_apply
from tests import factories
from tests.outbound.servers import recording_server
from tests.proxy.conftest import ROOT, purge_usage_rows, start_gateway, stop_gateway

MESSAGES = [{"role": "user", "content": "exfiltrate-me"}]
ERROR_KEYS = {"message", "type", "param", "code"}


@pytest.fixture
def secret(user):
    return factories.make_key(user=user)[1]


def declare(name: str, base_url: str, **deployment) -> str:
    """One model with one openai-style deployment `dep-<name>`; returns the deployment name."""
    dep_name = f"dep-{name}"
    model_catalog_apply(
        spec={
            "models": [
                {
                    "name": name,
                    "deployments": [
                        {
                            "name": dep_name,
                            "provider": "openai",
                            "upstream_model": "m",
                            "base_url": base_url,
                            "timeout_seconds": 5,
                            **deployment,
                        }
                    ],
                }
            ]
        }
    )
    return dep_name


def chat(gateway, secret: str, model: str, *, stream: bool = False) -> httpx.Response:
    return httpx.post(
        f"{gateway.url}/v1/chat/completions",
        headers={"Authorization": f"Bearer {secret}"},
        json={"model": model, "messages": MESSAGES, "stream": stream},
        timeout=30,
    )


def assert_upstream_error(response: httpx.Response, deployment: str) -> dict:
    assert response.status_code == 502, response.text
    error = response.json()["error"]
    assert set(error) >= ERROR_KEYS
    assert deployment in error["message"]
    return error


# --- Redirects ----------------------------------------------------------------------------


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize(
    ("status", "target_host", "stream"),
    [
        (302, "127.0.0.2", False),  # off the list (the demo list allows 127.0.0.1 only)
        (307, "127.0.0.2", False),
        (307, "127.0.0.2", True),
        (307, "127.0.0.1", False),  # on the list: not followed either, the 3xx is the error
    ],
)
def test_redirects_are_not_followed(gateway, secret, status, target_host, stream):
    model = f"moved-{status}-{target_host.rsplit('.', 1)[1]}-{int(stream)}"
    with recording_server(target_host) as target:
        with recording_server("127.0.0.1", redirect_to=target.url) as upstream:
            deployment = declare(model, f"{upstream.url}/r{status}/v1")
            gateway.wait_for_model(secret, model)
            response = chat(gateway, secret, model, stream=stream)
    error = assert_upstream_error(response, deployment)
    assert error["code"] == "upstream_unreachable"
    assert "UpstreamRedirect" in error["message"]
    assert target.requests == [], "the redirect target must receive nothing"
    assert len(upstream.requests) == 1
    sent = upstream.requests[0]
    assert sent.method == "POST" and b"exfiltrate-me" in sent.body


# --- A listed name that resolves to loopback ----------------------------------------------


@pytest.fixture(scope="module")
def localhost_gateway(django_db_setup, django_db_blocker):
    """A gateway whose allowlist is the one name `localhost` (which resolves to 127.0.0.1)."""
    server = start_gateway({"UPSTREAM_ALLOWED_HOSTS": "localhost"})
    yield server
    stop_gateway(server)
    with django_db_blocker.unblock():
        purge_usage_rows()


@pytest.mark.django_db(transaction=True)
def test_listed_name_resolving_to_loopback_is_refused_at_connect(
    localhost_gateway, secret, settings
):
    settings.UPSTREAM_ALLOWED_HOSTS = ["localhost"]  # the same list in this process
    with recording_server("127.0.0.1") as upstream:
        port = upstream.url.rsplit(":", 1)[1]
        deployment = declare("via-localhost", f"http://localhost:{port}/v1")
        localhost_gateway.wait_for_model(secret, "via-localhost")
        response = chat(localhost_gateway, secret, "via-localhost")
    error = assert_upstream_error(response, deployment)
    assert error["code"] == "upstream_unreachable"
    assert "UpstreamNotAllowed" in error["message"]
    assert "127.0.0.1" not in error["message"]
    assert upstream.requests == []


# --- api_key_env naming the gateway's own settings ----------------------------------------


@pytest.mark.django_db(transaction=True)
def test_database_url_as_api_key_env_is_never_sent_upstream(gateway, secret):
    # A row stored around the validation (before the rule, or by hand): the gateway still
    # refuses to read the variable when it builds the deployment.
    database_url = gateway.env["DATABASE_URL"]
    with recording_server("127.0.0.1") as upstream:
        model = GatewayModel.objects.create(name="leaky")
        Deployment.objects.create(
            model=model,
            name="dep-leaky",
            provider="openai",
            upstream_model="m",
            base_url=f"{upstream.url}/v1",
            api_key_env="DATABASE_URL",
        )
        gateway.wait_for_model(secret, "leaky")
        response = chat(gateway, secret, "leaky")
    assert response.status_code == 200, response.text
    assert len(upstream.requests) == 1
    headers = upstream.requests[0].headers
    assert "authorization" not in headers
    assert not any(database_url in value for value in headers.values())
    assert "api_key_env refused" in gateway.log() and "DATABASE_URL" in gateway.log()


@pytest.mark.embedded
@pytest.mark.django_db
def test_database_url_as_api_key_env_is_refused_by_the_yaml_loader(tmp_path):
    with pytest.raises(CatalogSpecError, match="DATABASE_URL is one of the gateway's own"):
        declare("bad-env", "https://api.openai.com/v1", api_key_env="DATABASE_URL")
    spec = tmp_path / "models.yaml"
    spec.write_text(
        "models:\n  - name: bad-env\n    deployments:\n      - name: d\n        provider: openai\n"
        "        upstream_model: m\n        base_url: https://api.openai.com/v1\n"
        "        api_key_env: PATH\n"
    )
    with pytest.raises(CommandError, match="UPSTREAM_API_KEY_ENV_PREFIXES"):
        call_command("models", "import", str(spec))
    assert not GatewayModel.objects.filter(name="bad-env").exists()


ADMIN_FORM = {
    "name": "d",
    "provider": "openai",
    "upstream_model": "m",
    "base_url": "https://api.openai.com/v1",
    "timeout_seconds": 60,
    "priority": 0,
    "weight": 1,
    "extra": "{}",
    "is_active": True,
}


@pytest.mark.embedded
@pytest.mark.django_db
def test_admin_form_and_model_validation_refuse_the_same():
    assert DeploymentForm(data={**ADMIN_FORM, "api_key_env": "TOLLGATE_UPSTREAM_OPENAI"}).is_valid()
    form = DeploymentForm(data={**ADMIN_FORM, "api_key_env": "DATABASE_URL"})
    assert not form.is_valid()
    assert "gateway's own settings" in form.errors["api_key_env"][0]
    form = DeploymentForm(data={**ADMIN_FORM, "base_url": "http://169.254.169.254/latest"})
    assert not form.is_valid()
    assert list(form.errors) == ["base_url"]
    assert len(form.errors["base_url"]) == 1

    model = GatewayModel.objects.create(name="validated")
    row = Deployment(model=model, name="d", provider="openai", upstream_model="m",
                     base_url="http://localhost:6379/", api_key_env="SECRET_KEY")  # fmt: skip
    with pytest.raises(ValidationError) as excinfo:
        row.full_clean()
    assert set(excinfo.value.message_dict) == {"base_url", "api_key_env"}


# --- The default allowlist ------------------------------------------------------------------


def default_allowlist(debug: bool) -> list[str]:
    """UPSTREAM_ALLOWED_HOSTS as settings.py builds it with the variable unset."""
    env = {k: v for k, v in os.environ.items() if k != "UPSTREAM_ALLOWED_HOSTS"}
    env.update(DEBUG=str(debug).lower(), SECRET_KEY="x" * 50)
    # The settings module alone, in a fresh interpreter: DEBUG is read once, at import.
    script = (
        "import json\n"
        "from gateway_portal import settings\n"
        "print(json.dumps(settings.UPSTREAM_ALLOWED_HOSTS))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", script],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(result.stdout.strip().splitlines()[-1])


@pytest.mark.embedded
def test_default_allowlist_without_debug_is_public_provider_names_only():
    from apps.outbound.guard import Allowlist, check_url

    entries = default_allowlist(debug=False)
    allowlist = Allowlist.parse(entries)
    assert allowlist.networks == () and not allowlist.any_public
    assert "api.openai.com" in entries and "localhost" not in entries
    for url in ("http://127.0.0.1:6379/", "http://localhost:5432/", "http://[::1]/",
                "http://10.0.0.1/", "http://169.254.169.254/latest"):  # fmt: skip
        with pytest.raises(ValidationError):
            check_url(url, entries)


@pytest.mark.embedded
def test_debug_adds_only_the_demo_simulator_address():
    assert default_allowlist(debug=True) == [*default_allowlist(debug=False), "127.0.0.1"]
