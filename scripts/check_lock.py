"""Fail when the lock files no longer match pyproject.toml, or a dependency has no upper bound.

`make lock` writes requirements/runtime.txt and requirements/dev.txt with pip-compile
(`--generate-hashes`) and stamps each with the SHA-256 of the dependency tables it was
compiled from. Editing the dependencies without re-locking changes that digest, and this
check (run by `make check`, hence CI) says so. Every pin is also checked against the
specifiers in pyproject.toml, so a hand-edited lock is caught too.

Usage: python scripts/check_lock.py [--stamp]   (--stamp rewrites the digest lines)
"""

import hashlib
import json
import re
import sys
import tomllib
from functools import cache
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parent.parent
LOCKS = {"runtime": ROOT / "requirements" / "runtime.txt", "dev": ROOT / "requirements" / "dev.txt"}
STAMP = "# pyproject-dependencies-sha256: "
PIN = re.compile(r"^([A-Za-z0-9._-]+)==([^\s\\;]+)")


@cache
def _project() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]


def _requirements(group: str) -> list[Requirement]:
    project = _project()
    lines = list(project["dependencies"])
    if group == "dev":
        lines += project["optional-dependencies"]["dev"]
    return [Requirement(line) for line in lines]


def digest(group: str) -> str:
    project = _project()
    tables = {
        "requires-python": project.get("requires-python"),
        "dependencies": project["dependencies"],
        "dev": project["optional-dependencies"]["dev"] if group == "dev" else None,
    }
    return hashlib.sha256(json.dumps(tables, sort_keys=True).encode()).hexdigest()


def _pins(text: str) -> dict[str, str]:
    pins = {}
    for line in text.splitlines():
        match = PIN.match(line)
        if match:
            pins[canonicalize_name(match.group(1))] = match.group(2)
    return pins


def problems() -> list[str]:
    found = []
    for group, path in LOCKS.items():
        if not path.exists():
            found.append(f"{path.relative_to(ROOT)} is missing: run `make lock`")
            continue
        text = path.read_text()
        if f"{STAMP}{digest(group)}" not in text:
            found.append(
                f"{path.relative_to(ROOT)} is out of date with pyproject.toml: run `make lock`"
            )
        if "--hash=sha256:" not in text:
            found.append(f"{path.relative_to(ROOT)} has no hashes")
        pins = _pins(text)
        for requirement in _requirements(group):
            name = canonicalize_name(requirement.name)
            if not any(spec.operator in ("<", "<=", "==", "~=") for spec in requirement.specifier):
                found.append(f"{requirement} has no upper bound in pyproject.toml")
            if name not in pins:
                found.append(f"{requirement.name} is not pinned in {path.name}")
            elif not requirement.specifier.contains(pins[name], prereleases=True):
                found.append(f"{path.name} pins {name}=={pins[name]}, outside {requirement}")
    return found


def stamp() -> None:
    for group, path in LOCKS.items():
        lines = [line for line in path.read_text().splitlines() if not line.startswith(STAMP)]
        path.write_text("\n".join([f"{STAMP}{digest(group)}", *lines]) + "\n")


def main() -> int:
    if "--stamp" in sys.argv[1:]:
        stamp()
    found = problems()
    for problem in found:
        print(f"lock check: {problem}", file=sys.stderr)
    if not found:
        print("lock check: requirements/*.txt match pyproject.toml")
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main())
