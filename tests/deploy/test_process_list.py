"""deploy/Procfile, deploy/compose.yaml, deploy/Dockerfile and deploy/haproxy.cfg describe one
topology: the same commands, the same persistence, the drain fitting inside the stop grace."""

import json
import os
import re
import shlex
import shutil
import subprocess

import pytest
import yaml

from tests.deploy.conftest import PROCFILE, ROOT

DEPLOY = ROOT / "deploy"
COMPOSE = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
SERVICES = COMPOSE["services"]
APP_PROCESSES = ("release", "web", "worker", "beat")


def words(command: str) -> list[str]:
    return shlex.split(command)


def shell_line(service: dict) -> str:
    """The line a compose service runs through `sh -c "exec ..."`, `$$` read as `$`."""
    shell, flag, line = service["command"]
    assert (shell, flag) == ("sh", "-c") and line.startswith("exec ")
    return line.removeprefix("exec ").replace("$$", "$")


def default_of(line: str, variable: str) -> str:
    match = re.search(r"\$\{" + variable + r":-([^}]+)\}", line)
    assert match, f"{variable} has no default in {line!r}"
    return match.group(1)


def seconds(duration: str) -> float:
    value, unit = re.fullmatch(r"(\d+)(s|m)", duration).groups()
    return float(value) * (60 if unit == "m" else 1)


@pytest.mark.embedded
def test_the_process_list_names_every_process_of_the_topology():
    assert list(PROCFILE) == ["release", "web", "worker", "beat", "db", "redis", "lb"]
    assert set(SERVICES) == set(PROCFILE)


@pytest.mark.embedded
@pytest.mark.parametrize("name", APP_PROCESSES)
def test_compose_runs_the_procfile_command_word_for_word(name):
    assert shell_line(SERVICES[name]) == PROCFILE[name]
    assert SERVICES[name]["build"]["dockerfile"] == "deploy/Dockerfile"


@pytest.mark.embedded
def test_the_image_serves_the_web_process_by_default():
    cmd = next(
        line for line in (DEPLOY / "Dockerfile").read_text().splitlines() if line.startswith("CMD")
    )
    assert shell_line({"command": json.loads(cmd.removeprefix("CMD "))}) == PROCFILE["web"]


@pytest.mark.embedded
def test_the_web_process_is_uvicorn_with_the_measured_server_choices():
    argv = words(PROCFILE["web"])
    # gateway_portal.serve is uvicorn's own command line with a supervisor that closes the
    # listener on SIGTERM (see its docstring and tests/deploy/test_graceful_drain.py).
    assert argv[:4] == ["python", "-m", "gateway_portal.serve", "gateway_portal.asgi:application"]
    for flag, value in (("--loop", "uvloop"), ("--http", "httptools")):
        assert argv[argv.index(flag) + 1] == value
    assert "--no-access-log" in argv
    assert argv[argv.index("--workers") + 1] == "${WEB_CONCURRENCY:-2}"
    assert argv[argv.index("--timeout-graceful-shutdown") + 1] == "${DRAIN_SECONDS:-25}"


@pytest.mark.embedded
def test_docker_stops_web_only_after_the_drain_and_the_usage_flush():
    drain = float(default_of(PROCFILE["web"], "DRAIN_SECONDS"))
    writer_grace = 10.0  # UsageWriter.stop(grace_seconds=10) in the lifespan shutdown
    assert seconds(SERVICES["web"]["stop_grace_period"]) > drain + writer_grace


@pytest.mark.embedded
def test_app_processes_start_after_the_release_and_the_release_after_the_stores():
    for name in ("web", "worker", "beat"):
        assert SERVICES[name]["depends_on"] == {
            "release": {"condition": "service_completed_successfully"}
        }
    assert SERVICES["release"]["restart"] == "no"
    assert SERVICES["release"]["depends_on"] == {
        "db": {"condition": "service_healthy"},
        "redis": {"condition": "service_healthy"},
    }


@pytest.mark.embedded
def test_each_web_replica_gets_an_empty_metrics_directory_of_its_own():
    web = SERVICES["web"]
    directory = web["environment"]["PROMETHEUS_MULTIPROC_DIR"]
    assert directory in web["tmpfs"]  # a tmpfs is empty at every container start


@pytest.mark.embedded
def test_redis_persists_every_write_in_both():
    def persistence(argv: list[str]) -> dict[str, str]:
        return {
            flag: argv[argv.index(flag) + 1]
            for flag in ("--appendonly", "--appendfsync")
            if flag in argv
        }

    local, compose = words(PROCFILE["redis"]), SERVICES["redis"]["command"]
    assert local[0] == compose[0] == "redis-server"
    expected = {"--appendonly": "yes", "--appendfsync": "everysec"}
    assert persistence(local) == persistence(compose) == expected
    assert "redisdata:/data" in SERVICES["redis"]["volumes"]


@pytest.mark.embedded
def test_postgres_has_the_same_settings_in_both():
    def settings(argv: list[str]) -> set[str]:
        return {
            argv[i + 1]
            for i, word in enumerate(argv)
            if word == "-c" and not argv[i + 1].startswith(("listen_addresses", "unix_socket"))
        }

    local, compose = words(PROCFILE["db"]), SERVICES["db"]["command"]
    assert local[0] == compose[0] == "postgres"
    assert settings(local) == settings(compose) == {"max_connections=200"}
    assert SERVICES["db"]["image"].startswith("postgres:")
    assert "pgdata:/var/lib/postgresql/data" in SERVICES["db"]["volumes"]


@pytest.mark.embedded
def test_the_balancer_runs_deploy_haproxy_cfg_in_both():
    local, compose = words(PROCFILE["lb"]), SERVICES["lb"]["command"]
    mounted = {
        target: source
        for source, target, *_ in (volume.split(":") for volume in SERVICES["lb"]["volumes"])
    }
    config = compose[compose.index("-f") + 1]
    assert (DEPLOY / mounted[config]).resolve() == DEPLOY / "haproxy.cfg"
    assert local[local.index("-f") + 1] == "deploy/haproxy.cfg"
    assert [w for w in local if w != "deploy/haproxy.cfg"] == [w for w in compose if w != config]


@pytest.mark.embedded
def test_the_example_environment_names_the_compose_hosts():
    example = (ROOT / ".env.example").read_text()
    assert "DATABASE_URL=postgres://tollgate:secret@db:5432/tollgate" in example
    assert "REDIS_URL=redis://redis:6379/0" in example
    assert {"db", "redis"} <= set(SERVICES)
    # Every variable compose.yaml requires is documented there.
    required = set(re.findall(r"\$\{(\w+):\?", (DEPLOY / "compose.yaml").read_text()))
    assert required and all(re.search(rf"^{name}=", example, re.M) for name in required)


@pytest.mark.parametrize(
    "env",
    [
        {"WEB1_ADDR": "127.0.0.1:8081", "WEB2_ADDR": "127.0.0.1:8082"},  # make stack
        {"WEB_DNS_NAME": "localhost", "WEB_INSTANCES": "3"},  # compose replicas
    ],
    ids=["two-addresses", "dns-replicas"],
)
def test_haproxy_accepts_the_configuration_in_both_modes(env):
    haproxy = shutil.which("haproxy")
    if haproxy is None:
        pytest.skip("haproxy is not installed")
    checked = subprocess.run(
        [haproxy, "-c", "-f", str(DEPLOY / "haproxy.cfg")],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        check=False,
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "WARNING" not in checked.stdout + checked.stderr
