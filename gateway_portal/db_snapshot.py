"""One committed state for a read made of several queries."""

import contextlib
from collections.abc import Iterator

from django.db import DEFAULT_DB_ALIAS, connections, transaction


@contextlib.contextmanager
def read_snapshot(using: str = DEFAULT_DB_ALIAS) -> Iterator[None]:
    """The queries inside see one committed state, as one statement would.

    Read statement by statement, a read that straddles a commit can combine halves of two
    states (a model without the deployments committed with it; an hour's coverage from
    before a rollup run with its rows from after). SQLite's read transaction holds one
    snapshot (in WAL mode it blocks no writer); PostgreSQL's READ COMMITTED takes one per
    statement, hence REPEATABLE READ. `using` is the database alias (a region's, for the
    ledger).
    """
    connection = connections[using]
    if connection.in_atomic_block:
        # Inside the caller's transaction, whose isolation is no longer ours to set.
        yield
        return
    with transaction.atomic(using=using):
        if connection.vendor == "postgresql":
            with connection.cursor() as cursor:
                cursor.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
        yield
