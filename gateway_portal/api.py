"""The JSON API at /api (django-ninja; OpenAPI docs at /api/docs).

Each app contributes a Router from its `api.py`; they are mounted here. Errors use the same
`{"error": {"message", "type", "code"}}` shape as the /v1 gateway API.
"""

import json

from django.http import HttpRequest, HttpResponse
from ninja import NinjaAPI
from ninja.errors import AuthenticationError, HttpError, ValidationError
from ninja.renderers import JSONRenderer

from apps.billing.api import router as billing_router
from apps.proxy.openapi import add_gateway_paths
from apps.quotas.api import router as quotas_router


class Utf8JSONRenderer(JSONRenderer):
    """JSON as real UTF-8 (tag keys and values in any script), not `\\u00e9` escapes."""

    def render(self, request: HttpRequest, data, *, response_status: int) -> bytes:
        text = json.dumps(data, cls=self.encoder_class, ensure_ascii=False)
        # A lone surrogate (only possible inside a JSON string) goes out as the same
        # `\udXXX` escape the default renderer writes, instead of failing to encode.
        return text.encode("utf-8", "backslashreplace")


class TollgateAPI(NinjaAPI):
    """The portal's API, documented beside the /v1 gateway endpoints it cannot route."""

    def get_openapi_schema(self, *, path_prefix=None, path_params=None):  # type: ignore[override]
        schema = super().get_openapi_schema(path_prefix=path_prefix, path_params=path_params)
        return add_gateway_paths(schema)


api = TollgateAPI(
    title="Tollgate API",
    version="1.0",
    docs_url="/docs",
    urls_namespace="api",
    renderer=Utf8JSONRenderer(),
)


def error_response(
    request: HttpRequest,
    status: int,
    message: str,
    code: str,
    error_type: str = "invalid_request_error",
) -> HttpResponse:
    return api.create_response(
        request,
        {"error": {"message": message, "type": error_type, "code": code}},
        status=status,
    )


@api.exception_handler(ValidationError)
def on_validation_error(request: HttpRequest, exc: ValidationError) -> HttpResponse:
    problems = "; ".join(
        f"{'.'.join(str(p) for p in error.get('loc', ())[1:]) or 'body'}: {error.get('msg')}"
        for error in exc.errors
    )
    return error_response(request, 400, problems or "invalid request", "invalid_request")


@api.exception_handler(AuthenticationError)
def on_auth_error(request: HttpRequest, exc: AuthenticationError) -> HttpResponse:
    return error_response(
        request,
        401,
        "Authentication required: a portal session or an API key as 'Authorization: Bearer <key>'.",
        "unauthorized",
        "authentication_error",
    )


@api.exception_handler(HttpError)
def on_http_error(request: HttpRequest, exc: HttpError) -> HttpResponse:
    return error_response(request, exc.status_code, str(exc), f"http_{exc.status_code}")


api.add_router("/quotas/", quotas_router)
api.add_router("/usage/", billing_router)
