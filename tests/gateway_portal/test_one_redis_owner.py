"""Every Redis client comes from gateway_portal/redis.py: no other module builds one.

A source scan (ast, so docstrings, comments and Lua scripts do not count): any call reached
through a name imported from the `redis` package whose dotted path names a client or pool
constructor (`redis.Redis(...)`, `Redis.from_url(...)`, `BlockingConnectionPool.from_url`,
`aioredis.from_url(...)`, ...) is a client built outside the owner. Clients that Django's
cache backend and Celery's broker make from settings are theirs, not built by our code.
"""

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
OWNER = ROOT / "gateway_portal" / "redis.py"
SCANNED = ("apps", "gateway_portal")
CONSTRUCTORS = {
    "Redis",
    "StrictRedis",
    "RedisCluster",
    "Sentinel",
    "ConnectionPool",
    "BlockingConnectionPool",
    "from_url",
    "from_pool",
}

pytestmark = pytest.mark.embedded


def _redis_names(tree: ast.Module) -> dict[str, str]:
    """Local name -> the dotted path it stands for, for names bound to the redis package."""
    names: dict[str, str] = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] == "redis":
                    if alias.asname:
                        names[alias.asname] = alias.name
                    else:
                        names["redis"] = "redis"
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            if node.module.split(".")[0] == "redis":
                for alias in node.names:
                    names[alias.asname or alias.name] = f"{node.module}.{alias.name}"
    return names


def _dotted(node: ast.expr) -> list[str] | None:
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if not isinstance(node, ast.Name):
        return None
    parts.append(node.id)
    return parts[::-1]


def client_constructions(path: Path) -> list[str]:
    """`file:line dotted.path` of every Redis client or pool built in the file."""
    tree = ast.parse(path.read_text(), filename=str(path))
    names = _redis_names(tree)
    found = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call):
            continue
        parts = _dotted(node.func)
        if not parts or parts[0] not in names:
            continue
        path_parts = [*names[parts[0]].split("."), *parts[1:]]
        if CONSTRUCTORS.intersection(path_parts):
            found.append(f"{path.relative_to(ROOT)}:{node.lineno} {'.'.join(path_parts)}")
    return found


def test_the_scan_sees_the_owners_own_clients():
    # Guards the scan itself: were it blind, the test below would pass vacuously.
    found = " ".join(client_constructions(OWNER))
    assert "redis.Redis.from_url" in found
    assert "redis.asyncio.Redis.from_url" in found
    assert "redis.asyncio.BlockingConnectionPool.from_url" in found


def test_no_module_but_the_owner_builds_a_redis_client():
    offenders = [
        hit
        for top in SCANNED
        for path in sorted((ROOT / top).rglob("*.py"))
        if path != OWNER and "migrations" not in path.parts
        for hit in client_constructions(path)
    ]
    assert offenders == [], "build Redis clients in gateway_portal/redis.py: " + ", ".join(
        offenders
    )
