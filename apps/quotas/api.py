"""/api/quotas: a key's own quota status, the dry run, and the active config.

Roles: `status` is for any active API key (about itself). `simulate` and `PUT config` need an
admin, `GET config` an admin or finance; either through a portal session or an API key
whose owning user holds the role (a virtual account's key holds no portal role).
"""

from datetime import datetime
from typing import Any

from django.http import HttpRequest
from ninja import Field, Query, Router, Schema
from ninja.errors import HttpError
from ninja.responses import Status

from apps.accounts.api_auth import api_key_auth, request_caller, session_or_key_auth
from apps.accounts.constants import Role
from apps.accounts.models import ApiKey
from apps.accounts.selectors import PortalIdentity, portal_identity

from .models import QuotaConfigVersion
from .rules import QuotaConfigError, parse_config
from .selectors import active_quota_config_version, key_quota_status
from .services import quota_config_apply
from .simulate import DEFAULT_DAYS, MAX_DAYS, simulate_recent

router = Router(tags=["quotas"])


class ErrorDetail(Schema):
    message: str
    type: str
    code: str
    issues: list[dict[str, Any]] = []


class ErrorOut(Schema):
    error: ErrorDetail


class RuleStatusOut(Schema):
    rule: str
    unit: str
    subject: str = Field(description="The subject the counter belongs to; '*' for everyone")
    per: dict[str, str] | None = None
    models: list[str]
    metadata: dict[str, str]
    limit: int | float
    used: int | float | None = Field(description="null when the counter store is unreachable")
    remaining: int | float | None
    window_start: datetime
    reset: datetime


class StatusOut(Schema):
    key_prefix: str
    rules: list[RuleStatusOut]


class StatusQuery(Schema):
    model: str | None = None
    tag: list[str] = Field(default=[], description="Request tags as key=value, repeatable")


class SimulateIn(Schema):
    yaml: str
    days: int = Field(DEFAULT_DAYS, ge=1, le=MAX_DAYS)


class RefusedSubjectOut(Schema):
    subject: str
    refused: int


class RefusedValueOut(Schema):
    value: str
    refused: int


class RuleSimulationOut(Schema):
    rule: str
    unit: str
    limit: int | float
    would_refuse: int
    first_refusal_at: datetime | None
    last_refusal_at: datetime | None
    peak_used: int | float
    subjects: list[RefusedSubjectOut]
    per_values: list[RefusedValueOut]


class SimulationOut(Schema):
    since: datetime
    until: datetime
    counters_start_at: datetime
    rows_replayed: int
    requests_refused: int
    rules: list[RuleSimulationOut]


class ConfigIn(Schema):
    yaml: str
    note: str = ""


class ConfigOut(Schema):
    version: int | None
    name: str
    author: str | None
    note: str
    created_at: datetime | None
    yaml: str


def _identity(request: HttpRequest) -> PortalIdentity:
    caller = request_caller(request)
    if isinstance(caller, ApiKey):
        return portal_identity(user=caller.user) if caller.user else PortalIdentity(role=None)
    return portal_identity(user=caller)


def _require(request: HttpRequest, roles: set[Role]) -> PortalIdentity:
    identity = _identity(request)
    if identity.role not in roles:
        allowed = " or ".join(sorted(role.label.lower() for role in roles))
        raise HttpError(403, f"This needs the {allowed} role.")
    return identity


def _author(request: HttpRequest) -> Any:
    caller = request_caller(request)
    return caller.user if isinstance(caller, ApiKey) else caller


def _invalid(error: QuotaConfigError) -> Status[dict[str, Any]]:
    return Status(
        400,
        {
            "error": {
                "message": f"Invalid quota config: {error}",
                "type": "invalid_request_error",
                "code": "invalid_quota_config",
                "issues": [
                    {"message": issue.message, "line": issue.line, "rule": issue.rule_id}
                    for issue in error.issues
                ],
            }
        },
    )


def _config_out(row: QuotaConfigVersion | None) -> dict[str, Any]:
    if row is None:
        return {"version": None, "name": "", "author": None, "note": "", "created_at": None,
                "yaml": ""}  # fmt: skip
    return {
        "version": row.version,
        "name": row.name,
        "author": row.author.get_username() if row.author else None,
        "note": row.note,
        "created_at": row.created_at,
        "yaml": row.yaml_text,
    }


@router.get("/status", auth=api_key_auth, response={200: StatusOut, 400: ErrorOut})
def quota_status(request: HttpRequest, query: Query[StatusQuery]) -> dict[str, Any]:
    """The caller's key: every rule that covers it, used, limit, remaining and reset time."""
    tags = {}
    for item in query.tag:
        name, sep, value = item.partition("=")
        if not sep or not name:
            raise HttpError(400, f"tag must be key=value, got {item!r}")
        tags[name] = value
    key: ApiKey = request_caller(request)
    rules = key_quota_status(key=key, model=query.model, tags=tags)
    return {"key_prefix": key.prefix, "rules": rules}


@router.post("/simulate", auth=session_or_key_auth, response={200: SimulationOut, 400: ErrorOut})
def quota_simulate(
    request: HttpRequest, payload: SimulateIn
) -> Status[dict[str, Any]] | dict[str, Any]:
    """Replay the last `days` days of recorded usage against a candidate config (admin)."""
    _require(request, {Role.ADMIN})
    try:
        config = parse_config(payload.yaml)
    except QuotaConfigError as error:
        return _invalid(error)
    return simulate_recent(config, days=payload.days).as_dict()


@router.get("/config", auth=session_or_key_auth, response=ConfigOut)
def quota_config_get(request: HttpRequest) -> dict[str, Any]:
    """The active config version and its YAML (admin or finance)."""
    _require(request, {Role.ADMIN, Role.FINANCE})
    return _config_out(active_quota_config_version())


@router.put("/config", auth=session_or_key_auth, response={200: ConfigOut, 400: ErrorOut})
def quota_config_put(
    request: HttpRequest, payload: ConfigIn
) -> Status[dict[str, Any]] | dict[str, Any]:
    """Validate and apply new YAML as a new active version (admin); 400 lists every issue."""
    _require(request, {Role.ADMIN})
    try:
        row = quota_config_apply(
            yaml_text=payload.yaml, author=_author(request), note=payload.note or "api"
        )
    except QuotaConfigError as error:
        return _invalid(error)
    return _config_out(row)
