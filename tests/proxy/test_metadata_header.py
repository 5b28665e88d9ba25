"""Control characters in tags: refused by the metadata header and for default tags, by one rule.

Any other Unicode is a tag. A C0 control character (U+0000 to U+001F) or DEL (U+007F) in a
key or value is a 400 naming `X-Gateway-Metadata`, the key and the character; the same rule
(`apps.usage.tags`) guards default tags on teams, virtual accounts and keys: services,
portal forms, the admin and `issue_key --tags`.
"""

import io
import json
import threading

import httpx
import pytest
from django import forms
from django.core.management import CommandError, call_command

from apps.accounts.admin import DefaultTagsAdminForm
from apps.accounts.exceptions import TagsError
from apps.accounts.forms import JSONTagsField, TagDefinitionForm, TagKeyListField
from apps.accounts.models import ApiKey, Team
from apps.accounts.services import team_update, virtual_account_create
from apps.proxy.errors import BadRequest
from apps.proxy.metadata import parse_metadata_header
from apps.proxy.simulator.app import create_app
from apps.usage.models import UsageRecord
from tests import factories
from tests.proxy.helpers import declare_model, wait_for_usage
from tests.proxy.simulator_server import start_simulator

pytestmark = pytest.mark.embedded

UNICODE_TAGS = {
    "équipe": "🙂",
    "ключ": "значение",
    "a.b": "x",
    'q"uote': "y",
    "back\\slash": "$",
    "sp ace": "\u00a0non-breaking\u2028separator",
}

# (header as sent, the key the message names, the character it names)
CONTROL_HEADERS = [
    (json.dumps({"team\nname": "x"}).encode(), "'team\\nname'", "U+000A"),
    (json.dumps({"k": "a\r\nInjected: yes"}).encode(), "'k'", "U+000D"),
    (json.dumps({"k": "nul\u0000"}).encode(), "'k'", "U+0000"),
    (json.dumps({"nul\u0000": "v"}).encode(), "'nul\\x00'", "U+0000"),
    (json.dumps({"k": "tab\there"}).encode(), "'k'", "U+0009"),
    (json.dumps({"k": "unit\u001fsep"}).encode(), "'k'", "U+001F"),
    (json.dumps({"k": "del\x7f"}).encode(), "'k'", "U+007F"),
]


@pytest.mark.parametrize(
    ("raw", "key", "character"),
    [
        *CONTROL_HEADERS,
        # DEL is legal raw inside a JSON string (HTTP servers refuse it in a header value
        # themselves, so only the escaped form above reaches the gateway).
        (b'{"k": "del\x7f"}', "'k'", "U+007F"),
    ],
)
def test_control_characters_are_refused_naming_header_key_and_character(raw, key, character):
    with pytest.raises(BadRequest) as caught:
        parse_metadata_header(raw)
    error = caught.value
    assert error.status == 400
    assert error.param == "X-Gateway-Metadata" and error.code == "invalid_metadata"
    assert error.message.startswith("X-Gateway-Metadata: ")
    assert key in error.message and character in error.message


def test_bytes_that_are_not_utf8_are_refused():
    with pytest.raises(BadRequest) as caught:
        parse_metadata_header(b'{"\xff\xfe": "x"}')
    assert caught.value.param == "X-Gateway-Metadata"
    assert "not UTF-8 text" in caught.value.message
    # A lone surrogate cannot be stored as UTF-8 either.
    with pytest.raises(BadRequest, match="not valid JSON"):
        parse_metadata_header(b'{"k": "\\ud800"}')


def test_any_other_unicode_is_a_tag_raw_or_escaped():
    raw_utf8 = json.dumps(UNICODE_TAGS, ensure_ascii=False).encode()
    escaped = json.dumps(UNICODE_TAGS).encode()
    assert b"\xc3\xa9quipe" in raw_utf8 and b"\\u00e9quipe" in escaped
    assert parse_metadata_header(raw_utf8) == UNICODE_TAGS
    assert parse_metadata_header(escaped) == UNICODE_TAGS


@pytest.mark.django_db
def test_default_tags_follow_the_same_rule_in_services(team, user):
    with pytest.raises(TagsError, match="U\\+000A"):
        team_update(team=team, actor=None, default_tags={"cost\ncenter": "x"})
    with pytest.raises(TagsError, match="U\\+0000"):
        factories.make_key(user=user, default_tags={"k": "a\x00b"})
    with pytest.raises(TagsError, match="U\\+007F"):
        virtual_account_create(team=team, name="bot", default_tags={"k": "\x7f"})
    with pytest.raises(TagsError, match="1 to 64 characters"):
        team_update(team=team, actor=None, required_tag_keys=["x" * 65])
    team = team_update(team=team, actor=None, default_tags=UNICODE_TAGS)
    assert Team.objects.get(pk=team.pk).default_tags == UNICODE_TAGS


@pytest.mark.django_db
def test_portal_forms_and_admin_follow_the_same_rule(team):
    field = JSONTagsField()
    with pytest.raises(forms.ValidationError, match="U\\+000D"):
        field.clean('{"k": "a\\r\\nb"}')
    assert field.clean(json.dumps(UNICODE_TAGS)) == UNICODE_TAGS
    # Shown for editing as typed, not as \u escapes.
    assert "équipe" in field.prepare_value(UNICODE_TAGS)
    with pytest.raises(forms.ValidationError, match="U\\+0009"):
        TagKeyListField().clean("fine, bad\tkey")
    assert TagKeyListField().clean("équipe, ключ") == ["équipe", "ключ"]

    glossary = TagDefinitionForm(
        {"key": "équipe", "description": "Owning squad"}, team_choices=[], owner_required=False
    )
    assert glossary.is_valid(), glossary.errors
    refused = TagDefinitionForm(
        {"key": "a\x01b", "description": "x"}, team_choices=[], owner_required=False
    )
    assert not refused.is_valid() and "U+0001" in str(refused.errors["key"])

    admin_form = forms.modelform_factory(
        Team, form=DefaultTagsAdminForm, fields=["name", "slug", "default_tags"]
    )
    bad = admin_form({"name": "Frontend", "slug": "frontend", "default_tags": '{"k": "\\n"}'})
    assert not bad.is_valid() and "U+000A" in str(bad.errors["default_tags"])
    good = admin_form(
        {"name": "Frontend", "slug": "frontend", "default_tags": json.dumps(UNICODE_TAGS)},
        instance=team,
    )
    assert good.is_valid(), good.errors
    assert good.save().default_tags == UNICODE_TAGS


@pytest.mark.django_db
def test_issue_key_command_follows_the_same_rule(user):
    with pytest.raises(CommandError, match="U\\+000A"):
        call_command(
            "issue_key", "--user", user.username, "--tags", '{"k": "a\\nb"}', stdout=io.StringIO()
        )
    assert not ApiKey.objects.exists()
    call_command(
        "issue_key", "--user", user.username, "--tags", json.dumps(UNICODE_TAGS),
        stdout=io.StringIO(),
    )  # fmt: skip
    assert ApiKey.objects.get().default_tags == UNICODE_TAGS


class CountingUpstream:
    """The simulator, counting the requests that reach it."""

    def __init__(self) -> None:
        self.app = create_app()
        self.calls = 0
        self._lock = threading.Lock()

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] == "http":
            with self._lock:
                self.calls += 1
        await self.app(scope, receive, send)


@pytest.fixture
def counted_upstream():
    upstream = CountingUpstream()
    url, stop = start_simulator(app=upstream)
    yield upstream, url
    stop()


@pytest.mark.django_db(transaction=True)
def test_real_gateway_refuses_control_characters_before_any_upstream_call(
    gateway, user, counted_upstream
):
    upstream, upstream_url = counted_upstream
    api_key, secret = factories.make_key(user=user)
    declare_model("meta-chat", f"{upstream_url}/v1", "demo-chat")
    gateway.wait_for_model(secret, "meta-chat")
    body = {"model": "meta-chat", "messages": [{"role": "user", "content": "hi"}]}

    def send(header: bytes) -> httpx.Response:
        headers = {"Authorization": f"Bearer {secret}", "X-Gateway-Metadata": header}
        return httpx.post(f"{gateway.url}/v1/chat/completions", json=body, headers=headers)

    # Raw UTF-8 in the header reaches the ledger unchanged.
    ok = send(json.dumps(UNICODE_TAGS, ensure_ascii=False).encode())
    assert ok.status_code == 200, ok.text
    assert upstream.calls == 1
    row = wait_for_usage(ok.headers["x-request-id"])
    assert {key: row.tags[key] for key in UNICODE_TAGS} == UNICODE_TAGS

    refused = []
    for raw, key, character in [*CONTROL_HEADERS, (b'{"\xff": "x"}', "", "UTF-8")]:
        response = send(raw)
        assert response.status_code == 400, (raw, response.text)
        error = response.json()["error"]
        assert error["param"] == "X-Gateway-Metadata"
        assert error["code"] == "invalid_metadata"
        assert error["type"] == "invalid_request_error"
        assert "X-Gateway-Metadata" in error["message"]
        assert key in error["message"] and character in error["message"]
        refused.append(response.headers["x-request-id"])
    assert upstream.calls == 1
    # Each refusal is on the key's ledger, without the refused tags.
    for request_id in refused:
        row = wait_for_usage(request_id)
        assert (row.status_code, row.error_type, row.attempts) == (400, "invalid_metadata", 0)
        assert not any(
            ch in text for text in [*row.tags, *map(str, row.tags.values())] for ch in "\n\r\0\x7f"
        )
    # This key's rows only: the usage stream may still hold events an earlier test queued,
    # which this gateway's writer lands after the flush. The lineage is a fresh UUID, so it
    # cannot match a row of an earlier key even if a flush reset the id sequences.
    own = UsageRecord.objects.filter(key_lineage_id=api_key.lineage_id)
    assert own.filter(status_code=200).count() == 1
    assert own.count() == 1 + len(refused)
