"""Parse /api/usage query parameters into a validated `UsageQuery`.

Shared by the usage API and the chargeback CSV (which adds `month`). Every problem raises
`UsageQueryError` with a message meant for the caller (the API turns it into a 400).
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, replace

from django.contrib.auth import get_user_model
from django.http import QueryDict
from django.utils import timezone
from django.utils.dateparse import parse_date, parse_datetime

from apps.accounts.models import TagDefinition, Team, VirtualAccount
from apps.usage.grouping import day_bounds, next_month, rollup_tag_keys
from apps.usage.regions import is_multi_region, region_names
from apps.usage.tags import MAX_TAG_VALUE_CHARS, control_character, tag_key_problem

from .exceptions import UsageQueryError

# Built-in group_by dimensions (the query layer's columns this API offers).
DIMENSIONS = (
    "team",
    "user",
    "virtual_account",
    "model",
    "status",
    "provider",
    "request_type",
    "region",
)
GRANULARITIES = ("hour", "day", "month")
METRICS = ("requests", "tokens", "cost", "latency", "error_rate")
DATE_RE = re.compile(r"^\d{4}-\d{2}-\d{2}$")
STATUS_CLASSES = {"success": (0, 400), "error": (400, 1000)}


@dataclass(frozen=True)
class Dim:
    """A group_by dimension: a built-in column (`name`) or a tag key (`tag` is set)."""

    name: str
    tag: str | None = None

    @property
    def output(self) -> str:
        return f"tag.{self.tag}" if self.tag else self.name


@dataclass(frozen=True)
class UsageQuery:
    start: dt.datetime | None = None
    end: dt.datetime | None = None
    team_ids: tuple[int, ...] = ()
    user_ids: tuple[int, ...] = ()
    virtual_account_ids: tuple[int, ...] = ()
    models: tuple[str, ...] = ()
    status_codes: tuple[int, ...] = ()
    status_range: tuple[int, int] | None = None
    tags: tuple[tuple[str, str], ...] = ()
    group_by: tuple[Dim, ...] = ()
    granularity: str | None = None
    metrics: frozenset[str] = field(default_factory=lambda: frozenset(METRICS))
    # Data regions read (apps/usage/regions.py); empty is all of them.
    regions: tuple[str, ...] = ()


def _split(value: str | None) -> list[str]:
    return [part.strip() for part in (value or "").split(",") if part.strip()]


def parse_time(value: str, *, name: str, end: bool = False) -> dt.datetime:
    """An ISO date (00:00 UTC; an `end` date includes that whole day) or datetime (UTC if naive)."""
    value = value.strip()
    try:
        # Date first: Python 3.11's fromisoformat (behind parse_datetime) accepts a bare date.
        day = parse_date(value) if DATE_RE.match(value) else None
        moment = None if day else parse_datetime(value)
    except ValueError:
        moment = day = None
    if moment is None and day is None:
        raise UsageQueryError(f"{name}: '{value}' is not an ISO date or datetime")
    if moment is None:
        if end:
            day += dt.timedelta(days=1)
        return dt.datetime.combine(day, dt.time.min, tzinfo=dt.UTC)
    if timezone.is_naive(moment):
        moment = moment.replace(tzinfo=dt.UTC)
    return moment.astimezone(dt.UTC)


def _ids(value: str | None, *, name: str, model, label_field: str) -> tuple[int, ...]:
    """Comma-separated ids or natural keys (team slug, username, virtual account name)."""
    out = []
    for item in _split(value):
        if item.isdigit():
            out.append(int(item))
            continue
        pk = model.objects.filter(**{label_field: item}).values_list("pk", flat=True).first()
        if pk is None:
            raise UsageQueryError(f"{name}: unknown {name} '{item}'")
        out.append(pk)
    return tuple(out)


def known_tag_keys() -> set[str]:
    """Tag keys usable in group_by without the `tag.` prefix."""
    keys = set(rollup_tag_keys())
    keys.update(TagDefinition.objects.values_list("key", flat=True))
    return keys


def _tag_key(key: str, *, name: str) -> str:
    """Any tag key the metadata header accepts (`apps.usage.tags`); it reaches SQL only as a
    bound parameter, so quotes, dots, `$` or backslashes in it are plain text."""
    problem = tag_key_problem(key)
    if problem:
        raise UsageQueryError(f"{name}: {problem}")
    return key


def _no_control_characters(params: Mapping[str, str]) -> None:
    # No stored value holds one (the metadata header refuses them), and PostgreSQL refuses
    # NUL in a query parameter: a 400 here, not a database error.
    for name, value in params.items():
        for text in (name, value):
            control = control_character(text)
            if control:
                raise UsageQueryError(f"{name!r}: contains the control character {control}")


def parse_group_by(value: str | None) -> tuple[Dim, ...]:
    dims: list[Dim] = []
    tag_keys: set[str] | None = None
    for item in _split(value):
        if item in DIMENSIONS:
            dim = Dim(item)
        elif item.startswith("tag."):
            dim = Dim(item, tag=_tag_key(item[4:], name="group_by"))
        else:
            if tag_keys is None:
                tag_keys = known_tag_keys()
            if item not in tag_keys:
                raise UsageQueryError(
                    f"group_by: unknown dimension '{item}'; use one of "
                    f"{', '.join(DIMENSIONS)} or a tag as tag.<key>"
                )
            dim = Dim(f"tag.{item}", tag=item)
        if dim.output not in {d.output for d in dims}:
            dims.append(dim)
    return tuple(dims)


def parse_usage_query(
    params: Mapping[str, str],
    *,
    default_group_by: str = "",
    require_start: bool = True,
) -> UsageQuery:
    _no_control_characters(params)
    now = timezone.now()
    start = parse_time(params["start"], name="start") if params.get("start") else None
    end = parse_time(params["end"], name="end", end=True) if params.get("end") else None
    if require_start and start is None:
        # Month to date when no range is given.
        start = now.astimezone(dt.UTC).replace(day=1, hour=0, minute=0, second=0, microsecond=0)
    if require_start and end is None:
        end = now
    if start is not None and end is not None and start >= end:
        raise UsageQueryError(f"start ({start.isoformat()}) must be before end ({end.isoformat()})")

    status_codes: list[int] = []
    status_range = None
    for item in _split(params.get("status")):
        if item in STATUS_CLASSES:
            status_range = STATUS_CLASSES[item]
        elif re.fullmatch(r"[1-5]xx", item):
            low = int(item[0]) * 100
            status_range = (low, low + 100)
        elif item.isdigit() and 100 <= int(item) <= 599:
            status_codes.append(int(item))
        else:
            raise UsageQueryError(
                f"status: '{item}' is not a status code, a class like 4xx, success or error"
            )

    tags = []
    for name, value in params.items():
        if name == "tag" or name.startswith("tag."):
            key = _tag_key(name[4:], name=name)
            if not value:
                raise UsageQueryError(f"{name}: a tag filter needs a value (tag.<key>=<value>)")
            if len(value) > MAX_TAG_VALUE_CHARS:
                # No row holds one (the metadata header refuses them): a mistake, said so.
                raise UsageQueryError(
                    f"{name}: a tag value is at most {MAX_TAG_VALUE_CHARS} characters"
                )
            tags.append((key, value))

    regions = tuple(_split(params.get("region")))
    unknown_regions = sorted(set(regions) - set(region_names()))
    if unknown_regions:
        raise UsageQueryError(
            f"region: unknown {', '.join(unknown_regions)}; use {', '.join(region_names())}"
        )

    granularity = params.get("granularity") or None
    if granularity is not None and granularity not in GRANULARITIES:
        raise UsageQueryError(f"granularity: use one of {', '.join(GRANULARITIES)}")
    metrics = frozenset(_split(params.get("metrics"))) or frozenset(METRICS)
    unknown = metrics - set(METRICS)
    if unknown:
        raise UsageQueryError(
            f"metrics: unknown {', '.join(sorted(unknown))}; use {', '.join(METRICS)}"
        )

    return UsageQuery(
        start=start,
        end=end,
        team_ids=_ids(params.get("team"), name="team", model=Team, label_field="slug"),
        user_ids=_ids(
            params.get("user"), name="user", model=get_user_model(), label_field="username"
        ),
        virtual_account_ids=_ids(
            params.get("virtual_account"),
            name="virtual_account",
            model=VirtualAccount,
            label_field="name",
        ),
        models=tuple(_split(params.get("model"))),
        status_codes=tuple(status_codes),
        status_range=status_range,
        tags=tuple(tags),
        group_by=parse_group_by(params.get("group_by", default_group_by)),
        granularity=granularity,
        metrics=metrics,
        regions=regions,
    )


def parse_chargeback_query(params: QueryDict) -> UsageQuery:
    """As `parse_usage_query`, grouped by team by default, plus `month` (YYYY-MM: the whole UTC
    month, instead of start/end). No latency percentiles: the expensive part of the GROUP BY.
    """
    data = params.copy()
    if params.get("month"):
        if params.get("start") or params.get("end"):
            raise UsageQueryError("month: give either month or start/end")
        try:
            first = parse_time(f"{params['month']}-01", name="month").date()
        except UsageQueryError as error:
            raise UsageQueryError("month: use YYYY-MM") from error
        data["start"] = first.isoformat()
        # A datetime, not a date: an end date would include the whole next day.
        data["end"] = day_bounds(first, next_month(first))[1].isoformat()
    if is_multi_region():
        # With several data regions every chargeback line names the region its rows live in.
        dims = [d.strip() for d in (data.get("group_by") or "team").split(",") if d.strip()]
        data["group_by"] = ",".join(dims if "region" in dims else [*dims, "region"])
    query = parse_usage_query(data, default_group_by="team")
    return replace(query, metrics=frozenset({"requests", "tokens", "cost"}))
