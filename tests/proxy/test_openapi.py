"""/api/docs describes the /v1 gateway endpoints beside the portal API."""

import pytest

from apps.proxy.app import COUNT_TOKENS_PATH
from apps.proxy.endpoints import ENDPOINTS

pytestmark = [pytest.mark.django_db, pytest.mark.embedded]


@pytest.fixture
def schema(client):
    response = client.get("/api/openapi.json")
    assert response.status_code == 200
    return response.json()


def test_every_gateway_path_is_described(schema):
    served = {*ENDPOINTS, COUNT_TOKENS_PATH, "/v1/models", "/v1/models/{model}"}
    described = {path for path in schema["paths"] if path.startswith("/v1/")}
    assert described == served
    # The portal's own API is still there.
    assert any(path.startswith("/api/usage") for path in schema["paths"])


def test_auth_metadata_and_errors_are_described(schema):
    assert set(schema["components"]["securitySchemes"]) >= {"bearer", "x-api-key"}
    chat = schema["paths"]["/v1/chat/completions"]["post"]
    assert {"bearer": []} in chat["security"] and {"x-api-key": []} in chat["security"]
    assert chat["parameters"][0]["name"] == "X-Gateway-Metadata"
    assert set(chat["responses"]) >= {"200", "400", "401", "403", "404", "429", "502", "503"}
    assert "x-gateway-cost-usd" in chat["responses"]["200"]["headers"]
    quota = chat["responses"]["429"]["content"]["application/json"]["schema"]
    assert "broken_rules" in str(quota)
    messages = schema["paths"]["/v1/messages"]["post"]
    anthropic_error = messages["responses"]["400"]["content"]["application/json"]["schema"]
    assert anthropic_error["properties"]["type"]["enum"] == ["error"]
    assert "broken_rules" in str(messages["responses"]["429"])


def test_the_docs_page_renders(client):
    response = client.get("/api/docs")
    assert response.status_code == 200
