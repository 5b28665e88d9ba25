"""Tag keys and values: the one rule for what they may hold, and the one way to read them in SQL.

Tags come in through the `X-Gateway-Metadata` header and as default tags on teams, virtual
accounts and keys; they are read back by the usage API, the dashboards and the rollups. A
tag key or value is any Unicode text except C0 control characters (U+0000 to U+001F) and DEL
(U+007F): CR and LF would forge lines in logs and CSV cells, and PostgreSQL refuses NUL in
text and jsonb. Everything else (accents, Cyrillic, emoji, quotes, dots, `$`, backslashes)
is a tag and must come back unchanged on every surface.

This module is imported by the /v1 hot path: it must stay free of portal code.
"""

from __future__ import annotations

import re

from django.db import NotSupportedError
from django.db.models import F, Func, Q, TextField
from django.db.models.lookups import Exact

MAX_TAG_KEY_CHARS = 64
MAX_TAG_VALUE_CHARS = 256

# Searched over decoded text, so JSON escapes such as "\u0000" are caught too.
CONTROL_CHARACTER = re.compile(r"[\x00-\x1f\x7f]")


def control_character(text: str) -> str | None:
    """The first control character in `text` as "U+000A", or None when there is none."""
    found = CONTROL_CHARACTER.search(text)
    return f"U+{ord(found.group()):04X}" if found else None


def _key_shape(key: object, what: str) -> str | None:
    if not isinstance(key, str):
        return f"{what} keys must be strings, not {type(key).__name__}"
    if not key or len(key) > MAX_TAG_KEY_CHARS:
        return f"{what} key {key[:80]!r} must be 1 to {MAX_TAG_KEY_CHARS} characters"
    return None


def _value_shape(key: str, value: object, what: str) -> str | None:
    if not isinstance(value, str):
        return f"{what} value for {key!r} must be a string, not {type(value).__name__}"
    if len(value) > MAX_TAG_VALUE_CHARS:
        return f"{what} value for {key!r} is longer than {MAX_TAG_VALUE_CHARS} characters"
    return None


def _key_control(key: str, what: str) -> str | None:
    control = control_character(key)
    return f"{what} key {key!r} contains the control character {control}" if control else None


def _value_control(key: str, value: str, what: str) -> str | None:
    control = control_character(value)
    if control:
        return f"{what} value for {key!r} contains the control character {control}"
    return None


def tag_key_problem(key: object, *, what: str = "tag") -> str | None:
    """Why `key` cannot be a tag key, or None when it can. `what` starts the message."""
    return _key_shape(key, what) or _key_control(str(key), what)


def tags_problem(tags: dict, *, what: str = "tag", json_text: bytes | None = None) -> str | None:
    """Why the dict `tags` cannot be tags (its first problem), or None when it can.

    `json_text`, the UTF-8 JSON the tags were just parsed from, makes the common case cheap
    on the /v1 path: JSON strings hold C0 characters only as backslash escapes (a parser
    refuses them raw), so JSON without a backslash or a DEL byte cannot hold one, and two
    byte scans replace a regex search over every key and value.
    """
    for key, value in tags.items():
        problem = _key_shape(key, what) or _value_shape(key, value, what)
        if problem:
            return problem
    if json_text is not None and b"\\" not in json_text and b"\x7f" not in json_text:
        return None
    # One search over all the text; only when it finds something, a second pass names the tag.
    if CONTROL_CHARACTER.search("".join(tags)) or CONTROL_CHARACTER.search("".join(tags.values())):
        for key, value in tags.items():
            problem = _key_control(key, what) or _value_control(key, value, what)
            if problem:
                return problem
    return None


class TagText(Func):
    """The text of tag `key` in a JSON column (`tags` on usage rows, `dims` on rollups).

    Django's key transforms cannot be trusted with any key: they read a key that `int()`
    accepts ("0", "-1", "١٢") as an array index, and a key holding a double quote makes a
    SQLite JSON path that silently matches nothing. Here the key is always a bound text
    parameter: `->>` on PostgreSQL, `json_each` (which compares decoded keys) on SQLite.
    """

    output_field = TextField()

    def __init__(self, key: str, field: str = "tags") -> None:
        super().__init__(F(field))
        self.key = key

    def _column(self, compiler, connection) -> tuple[str, tuple]:
        column, params = compiler.compile(self.get_source_expressions()[0])
        return column, tuple(params)

    def as_postgresql(self, compiler, connection, **extra):
        column, params = self._column(compiler, connection)
        return f"({column} ->> %s)", (*params, self.key)

    def as_sqlite(self, compiler, connection, **extra):
        column, params = self._column(compiler, connection)
        # `column` is Django's compiled column reference; the key is a bound parameter.
        sql = f"(SELECT value FROM json_each({column}) WHERE key = %s)"  # noqa: S608
        return sql, (*params, self.key)

    def as_sql(self, compiler, connection, **extra):
        raise NotSupportedError("tags are read on PostgreSQL and SQLite only")


def tag_equals(key: str, value: str, field: str = "tags") -> Q:
    """Rows whose tag `key` is the string `value` (a filter for `.filter()`)."""
    from .regions import ledger_db

    if ledger_db.vendor == "postgresql":
        # Containment: the GIN index on the column answers it. The key is inside a JSON
        # parameter, never in the SQL text.
        return Q(**{f"{field}__contains": {key: value}})
    return Q(Exact(TagText(key, field), value))
