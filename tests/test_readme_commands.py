"""Every command block of the README, run the way a newcomer runs it: from a fresh shell.

The checkout is copied to a temporary folder (sharing this .venv), set up as `make run` sets
it up (the `.env` make writes, migrate, seed_demo), and each command is then run with an
empty environment (`env -i`, PATH and HOME only), so a command that works only because the
developer exported something fails here. `make` lines are checked with `make -n` (their
targets are what CI itself runs); the Python block is run against a served gateway.
A README line this test does not know how to run fails it, so new commands get covered.
"""

import os
import re
import shlex
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
EMBEDDED = bool(os.environ.get("TOLLGATE_EMBEDDED_TESTS"))

# The whole file is about the default (embedded) settings, so it runs once, in that pass.
pytestmark = [
    pytest.mark.embedded,
    pytest.mark.skipif(not EMBEDDED, reason="runs once, in the embedded pass"),
]

PLACEHOLDER_PREFIX = "tg_live_AbCd1234"
DEPLOY_TESTS = ROOT / "tests" / "deploy"


def blocks(language: str) -> list[str]:
    return re.findall(rf"^```{language}\n(.*?)^```", README.read_text(), re.M | re.S)


def sh_commands() -> list[str]:
    commands = []
    for block in blocks("sh"):
        for line in block.splitlines():
            stripped = line.strip()
            if stripped and not stripped.startswith("#"):
                commands.append(line)
    return commands


def _strip_comment(line: str) -> str:
    # The README's comments follow the command after whitespace; no command quotes a `#`.
    return re.sub(r"\s+#\s.*$", "", line).strip()


def variants(command: str) -> list[str]:
    """`[--team frontend]` is an optional part: run the command without it and with it."""
    optional = re.search(r"\s\[([^\]]+)\]", command)
    if not optional:
        return [command]
    without = command[: optional.start()] + command[optional.end() :]
    with_part = command[: optional.start()] + " " + optional.group(1) + command[optional.end() :]
    return [*variants(without), *variants(with_part)]


@pytest.fixture(scope="module")
def port() -> str:
    """The demo's port: written to the copy's `.env`, as `PORT=... make run` would pass it."""
    return str(_free_port())


@pytest.fixture(scope="module")
def checkout(tmp_path_factory, port) -> Path:
    """A copy of the working tree with the demo's `.env` and a seeded database."""
    copy = tmp_path_factory.mktemp("newcomer") / "tollgate"
    files = subprocess.run(
        ["git", "ls-files", "-co", "--exclude-standard", "-z"],
        cwd=ROOT,
        capture_output=True,
        check=True,
    ).stdout.split(b"\0")
    for name in filter(None, files):
        source = ROOT / name.decode()
        if source.is_file():
            target = copy / name.decode()
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target)
    (copy / ".venv").symlink_to(sys.prefix)
    # What `make` writes before anything else (the Makefile's `.env` rule).
    subprocess.run(["make", "-s", ".env"], cwd=copy, env=fresh_env(copy), check=True)
    # This demo serves on a free port, not 8000; every command of the copy reads it from
    # `.env`, as `PORT=... make run` would pass it, so the simulator's URL stays in step.
    with (copy / ".env").open("a") as dotenv:
        dotenv.write(f"\nPORT={port}\n")
    # What `make run` does before serving; fewer synthetic rows, the same code.
    for step in (["migrate", "--noinput", "-v0"], ["seed_demo"]):
        command = shlex.join([".venv/bin/python", "manage.py", *step])
        run(copy, command, DEMO_USAGE_ROWS="300")
    return copy


def fresh_env(home: Path, **extra: str) -> dict[str, str]:
    return {"PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": str(home), **extra}


def run(checkout: Path, command: str, **extra: str) -> subprocess.CompletedProcess:
    result = subprocess.run(
        ["bash", "-c", command],
        cwd=checkout,
        env=fresh_env(checkout, **extra),
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert result.returncode == 0, (
        f"{command!r} failed:\n{result.stdout[-2000:]}\n{result.stderr[-3000:]}"
    )
    return result


def test_the_readme_shows_commands_at_all():
    commands = sh_commands()
    assert any(c.startswith("make run") for c in commands)
    assert any("issue_key" in c for c in commands)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def served(checkout, port):
    """The seeded demo, served the way `make run` serves it."""
    server = subprocess.Popen(
        [
            ".venv/bin/python",
            "-m",
            "uvicorn",
            "gateway_portal.asgi:application",
            "--port",
            str(port),
        ],
        cwd=checkout,
        env=fresh_env(checkout),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 40
        while True:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if server.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"the demo did not start: {server.stderr.read().decode()[-2000:]}")
            time.sleep(0.2)
        yield f"http://127.0.0.1:{port}"
    finally:
        server.terminate()
        server.wait(15)


def issue_key(checkout: Path) -> str:
    return run(checkout, ".venv/bin/python manage.py issue_key --user dev").stdout.split()[-1]


def test_the_readme_python_example_runs_against_the_demo(checkout, port, served):
    key = issue_key(checkout)
    (example,) = blocks("python")
    script = example.replace("tg_live_...", key).replace("127.0.0.1:8000", f"127.0.0.1:{port}")
    (checkout / "example.py").write_text(script)
    output = run(checkout, ".venv/bin/python example.py").stdout
    assert "CompletionUsage(" in output and "total_tokens=" in output
    assert len(output.splitlines()) > 2  # the streamed text came before the usage


AGENT = "claude"

# Claude Code itself is not on this machine (nor on CI's). What it does with the README's
# variables is documented: ANTHROPIC_BASE_URL and ANTHROPIC_AUTH_TOKEN (sent as a bearer
# token) configure its anthropic client, ANTHROPIC_CUSTOM_HEADERS holds "Name: value" lines
# added to every request, and ANTHROPIC_MODEL names the model. This stand-in does exactly
# that with the official anthropic SDK, streaming as Claude Code does.
CLAUDE_CODE_STAND_IN = """
import os
import anthropic

headers = dict(
    line.split(": ", 1) for line in os.environ["ANTHROPIC_CUSTOM_HEADERS"].splitlines() if line
)
client = anthropic.Anthropic(default_headers=headers)  # base URL and token from the env
with client.messages.stream(
    model=os.environ["ANTHROPIC_MODEL"],
    max_tokens=64,
    system="You are Claude Code.",
    messages=[{"role": "user", "content": "List the files in this repository."}],
) as stream:
    text = "".join(stream.text_stream)
    final = stream.get_final_message()
assert text, "no text was streamed"
print("usage", final.usage.input_tokens, final.usage.output_tokens)
"""


def agent_block() -> list[str]:
    (block,) = [b for b in blocks("sh") if AGENT in [line.strip() for line in b.splitlines()]]
    return [_strip_comment(line) for line in block.splitlines() if line.strip()]


def test_the_readme_claude_code_setup_reaches_the_demo_with_its_tags(checkout, port, served):
    key = issue_key(checkout)
    lines = agent_block()
    assert lines[-1] == AGENT and all(line.startswith("export ") for line in lines[:-1])
    exports = "\n".join(lines[:-1])
    exports = exports.replace("tg_live_...", key).replace("127.0.0.1:8000", f"127.0.0.1:{port}")
    (checkout / "claude_code.py").write_text(CLAUDE_CODE_STAND_IN)
    # The exports run as typed in a fresh shell; the stand-in takes the agent's place.
    output = run(checkout, f"{exports}\n.venv/bin/python claude_code.py").stdout
    assert output.startswith("usage "), output
    # The tags of ANTHROPIC_CUSTOM_HEADERS reached the ledger on a `messages` row.
    query = (
        "from apps.usage.models import UsageRecord; "
        "from apps.usage.regions import ledger_managers; "
        "print(sum(rows.filter(request_type='messages', tags__feature='claude-code', "
        "tags__repo='web').count() for rows in ledger_managers(UsageRecord)))"
    )
    deadline = time.monotonic() + 20
    while run(checkout, f'.venv/bin/python manage.py shell -c "{query}"').stdout.strip() == "0":
        assert time.monotonic() < deadline, "the Claude Code call left no tagged usage row"
        time.sleep(0.5)


def test_every_readme_shell_command_works_from_a_fresh_shell(checkout):
    issued_prefix = ""
    unknown = []
    for line in sh_commands():
        command = _strip_comment(line)
        if command.startswith("make "):
            # The targets CI runs for real; here: they exist and make can plan them.
            run(checkout, f"make -n {command.removeprefix('make ')}")
            continue
        runbook = re.fullmatch(r'echo "([^"]+)" \| socat stdio \$LB_ADMIN_SOCKET', command)
        if runbook:
            # HAProxy's runtime API on a production balancer: the scale-out test sends these
            # very commands to its HAProxy while it replaces an instance under load.
            sent = "".join(path.read_text() for path in DEPLOY_TESTS.glob("*.py"))
            assert f'"{runbook.group(1)}"' in sent, command
            continue
        if command in agent_block():
            # Claude Code's set-up: run against a served demo by the test above.
            continue
        if not command.startswith(".venv/bin/python manage.py "):
            unknown.append(command)
            continue
        for variant in variants(command):
            if PLACEHOLDER_PREFIX in variant:
                assert issued_prefix, "the README uses a key prefix before issuing a key"
                variant = variant.replace(PLACEHOLDER_PREFIX, issued_prefix)
            output = run(checkout, variant).stdout
            if " issue_key " in variant or " keys rotate " in variant:
                key = output.strip().splitlines()[-1]
                assert key.startswith("tg_live_"), output
                issued_prefix = key[: len(PLACEHOLDER_PREFIX)]
    assert not unknown, f"README commands this test cannot run yet: {unknown}"
    exported = checkout / "models.yaml"
    assert "demo-chat" in exported.read_text()


def test_the_readme_codex_config_reaches_the_demo_with_its_tags(checkout, port, served):
    """Codex is not on this machine either: its config is read as Codex reads it, and the
    call it makes with `wire_api = "responses"` is made with the official openai SDK."""
    import tomllib

    import openai

    (config,) = blocks("toml")
    settings = tomllib.loads(config)
    provider = settings["model_providers"][settings["model_provider"]]
    assert provider["wire_api"] == "responses"
    client = openai.OpenAI(
        base_url=provider["base_url"].replace("127.0.0.1:8000", f"127.0.0.1:{port}"),
        api_key=issue_key(checkout),  # what Codex reads from provider["env_key"]
        default_headers=provider["http_headers"],
    )
    with client.responses.stream(model=settings["model"], input="Explain this repo.") as stream:
        final = stream.get_final_response()
    assert final.output_text and final.usage.output_tokens > 0
    query = (
        "from apps.usage.models import UsageRecord; "
        "from apps.usage.regions import ledger_managers; "
        "print(sum(rows.filter(request_type='responses', tags__feature='codex').count() "
        "for rows in ledger_managers(UsageRecord)))"
    )
    deadline = time.monotonic() + 20
    while run(checkout, f'.venv/bin/python manage.py shell -c "{query}"').stdout.strip() == "0":
        assert time.monotonic() < deadline, "the Codex call left no tagged usage row"
        time.sleep(0.5)
