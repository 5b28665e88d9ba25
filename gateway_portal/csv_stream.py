"""Streaming CSV pieces shared by every export (usage, chargebacks, statements, dashboards,
audit): safe cells and a writer sink that returns lines to a generator.

Lines are `str`; the streaming response encodes them as UTF-8 (`text/csv; charset=utf-8`), so
a tag `équipe` or `🙂` is those bytes in the file. No byte-order mark: these files are read by
programs (the usage export is a versioned schema loaded by cursors), and a BOM would glue
itself to the first column name for any reader that decodes plain UTF-8. Excel users import
with Data > From Text/CSV, which detects UTF-8.
"""

# A spreadsheet runs a cell starting with one of these as a formula (CSV injection), and
# exported cells hold untrusted text (tag values, names).
FORMULA_PREFIXES = ("=", "+", "-", "@", "\t", "\r")


def csv_safe(value: object) -> object:
    """`value`, with text that would start a formula prefixed by a quote."""
    if isinstance(value, str) and value.startswith(FORMULA_PREFIXES):
        return "'" + value
    return value


class Echo:
    """A file-like object whose write returns the line, for csv.writer in a generator."""

    def write(self, value: str) -> str:
        return value
