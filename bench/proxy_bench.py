"""Proxy benchmark: the simulator directly vs. through the gateway, same load, alternating.

    .venv/bin/python bench/proxy_bench.py [--duration 20] [--concurrency 1 16 64]
        [--endpoints chat messages responses] [--stream]

Starts the standalone simulator and one gateway worker (uvicorn, uvloop, httptools) pinned to
CPU 0, with a real key, metadata tags and usage capture on; the load generator (wrk, with a
Lua script that reports p50/p95/p99) and the simulator share CPU 1. Prints requests/s and
latency percentiles for both targets and the gateway's overhead, per endpoint: chat
completions, Anthropic Messages (the demo's `demo-claude`, answered natively by the
simulator in Anthropic's format) and OpenAI Responses (passed through to the simulator).
Not a test: numbers only.
"""

import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
PYTHON = sys.executable
LUA = """
wrk.method = "POST"
wrk.body = [[%(body)s]]
wrk.headers["Content-Type"] = "application/json"
%(headers)s
done = function(summary, latency, requests)
  local seconds = summary.duration / 1e6
  io.write(string.format(
    "RESULT {\\"rps\\": %%.1f, \\"p50\\": %%.3f, \\"p95\\": %%.3f, \\"p99\\": %%.3f, " ..
    "\\"requests\\": %%d, \\"errors\\": %%d, \\"non2xx\\": %%d}\\n",
    summary.requests / seconds, latency:percentile(50) / 1000, latency:percentile(95) / 1000,
    latency:percentile(99) / 1000, summary.requests,
    summary.errors.connect + summary.errors.read + summary.errors.write + summary.errors.timeout,
    summary.errors.status))
end
"""
PROMPT = "Say hello to the benchmark."
# Endpoint -> (path, body): the same prompt and output budget on each.
ENDPOINTS = {
    "chat": (
        "/v1/chat/completions",
        {"model": "demo-chat", "max_tokens": 16, "messages": [{"role": "user", "content": PROMPT}]},
    ),
    "messages": (
        "/v1/messages",
        {
            "model": "demo-claude",
            "max_tokens": 16,
            "messages": [{"role": "user", "content": PROMPT}],
        },
    ),
    "responses": (
        "/v1/responses",
        {"model": "demo-chat", "max_output_tokens": 16, "input": PROMPT},
    ),
}
# What the simulator is asked directly for the same call (its model names).
DIRECT_MODELS = {"demo-chat": "demo-chat", "demo-claude": "sim-claude"}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def pinned(cpu: int, command: list[str]) -> list[str]:
    return ["taskset", "-c", str(cpu), *command] if shutil.which("taskset") else command


def wait_http(url: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            httpx.get(url, timeout=1)
            return
        except httpx.TransportError:
            time.sleep(0.1)
    raise RuntimeError(f"{url} did not come up")


def ensure_wrk() -> str:
    found = shutil.which("wrk")
    if found:
        return found
    if os.geteuid() == 0 and shutil.which("apt-get"):
        subprocess.run(["apt-get", "install", "-y", "-qq", "wrk"], check=True)
        return shutil.which("wrk") or "wrk"
    sys.exit("wrk is needed: apt-get install wrk")


def run_wrk(
    wrk: str,
    url: str,
    concurrency: int,
    duration: int,
    headers: dict,
    workdir: Path,
    body: dict,
) -> dict:
    script = workdir / f"load-{abs(hash((url, concurrency, json.dumps(body))))}.lua"
    header_lines = "\n".join(f'wrk.headers["{k}"] = [[{v}]]' for k, v in headers.items())
    script.write_text(LUA % {"body": json.dumps(body), "headers": header_lines})
    command = pinned(1, [wrk, "-t1", f"-c{concurrency}", f"-d{duration}s", "-s", str(script), url])
    output = subprocess.run(command, capture_output=True, text=True, check=True).stdout
    line = next(line for line in output.splitlines() if line.startswith("RESULT "))
    return json.loads(line.removeprefix("RESULT "))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=int, default=20)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 16, 64])
    parser.add_argument("--rounds", type=int, default=1, help="alternations per concurrency")
    parser.add_argument(
        "--endpoints", nargs="+", choices=sorted(ENDPOINTS), default=["chat"], help="what to call"
    )
    parser.add_argument("--stream", action="store_true", help="streamed answers")
    parser.add_argument(
        "--embedded",
        action="store_true",
        help="no Redis: in-process usage queue and writer on SQLite",
    )
    args = parser.parse_args()
    wrk = ensure_wrk()
    workdir = Path(tempfile.mkdtemp(prefix="tollgate-bench-"))
    sim_port, gw_port = free_port(), free_port()
    env = {
        **os.environ,
        "DEBUG": "true",
        "PORT": str(gw_port),
        "SIMULATOR_BASE_URL": f"http://127.0.0.1:{sim_port}/v1",
        "LOG_LEVEL": "WARNING",
    }
    env.setdefault("DATABASE_URL", f"sqlite:///{workdir / 'bench.sqlite3'}")
    manage = [PYTHON, "manage.py"]
    processes = []
    redis_server = shutil.which("redis-server")
    if redis_server and not args.embedded:
        # The production shape: usage goes to a Redis stream, a separate writer inserts it.
        redis_port = free_port()
        processes.append(
            subprocess.Popen(
                pinned(
                    1, [redis_server, "--port", str(redis_port), "--save", "", "--appendonly", "no"]
                ),
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
        )
        env.update(REDIS_URL=f"redis://127.0.0.1:{redis_port}/0", USAGE_WRITER_IN_PROCESS="false")
        mode = "Redis stream buffer, separate usage_writer process"
    else:
        mode = "embedded: in-process queue and writer, SQLite"
    subprocess.run([*manage, "migrate", "-v0"], cwd=ROOT, env=env, check=True)
    subprocess.run([*manage, "seed_demo"], cwd=ROOT, env=env, check=True, capture_output=True)
    key = (
        subprocess.run(
            [*manage, "issue_key", "--user", "dev", "--tags", '{"environment": "bench"}'],
            cwd=ROOT,
            env=env,
            check=True,
            capture_output=True,
            text=True,
        )
        .stdout.strip()
        .splitlines()[-1]
    )
    # Appended to, not replaced: the Redis server started above is stopped with the rest.
    processes += [
        subprocess.Popen(
            pinned(1, [*manage, "run_simulator", "--port", str(sim_port)]),
            cwd=ROOT,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        ),
        subprocess.Popen(
            pinned(
                0,
                [
                    PYTHON,
                    "-m",
                    "uvicorn",
                    "gateway_portal.asgi:application",
                    "--port",
                    str(gw_port),
                    "--loop",
                    "uvloop",
                    "--http",
                    "httptools",
                    "--no-access-log",
                    "--log-level",
                    "warning",
                ],
            ),
            cwd=ROOT,
            env=env,
        ),
    ]
    try:
        wait_http(f"http://127.0.0.1:{sim_port}/v1/models")
        wait_http(f"http://127.0.0.1:{gw_port}/healthz")
        gateway_headers = {
            "Authorization": f"Bearer {key}",
            "X-Gateway-Metadata": json.dumps({"customer_id": "acme", "feature": "bench"}),
        }
        # (endpoint, target) -> (url, headers, body)
        targets = {}
        for endpoint in args.endpoints:
            path, body = ENDPOINTS[endpoint]
            body = {**body, "stream": True} if args.stream else body
            direct_body = {**body, "model": DIRECT_MODELS[body["model"]]}
            targets[(endpoint, "direct")] = (f"http://127.0.0.1:{sim_port}{path}", {}, direct_body)
            targets[(endpoint, "gateway")] = (
                f"http://127.0.0.1:{gw_port}{path}",
                gateway_headers,
                body,
            )
        for url, headers, body in targets.values():  # warm up connections and caches
            run_wrk(wrk, url, 4, 2, headers, workdir, body)
        results: dict[tuple[str, str, int], list[dict]] = {}
        for concurrency in args.concurrency:
            for _ in range(args.rounds):
                for (endpoint, name), (url, headers, body) in targets.items():
                    result = run_wrk(wrk, url, concurrency, args.duration, headers, workdir, body)
                    results.setdefault((endpoint, name, concurrency), []).append(result)
        print(
            f"\nTollgate proxy benchmark: {args.duration}s per run, one gateway worker pinned "
            f"to CPU 0; usage capture: {mode}\n"
        )
        print("| endpoint | target | c | RPS | p50 ms | p95 ms | p99 ms | errors |")
        print("|---|---|---:|---:|---:|---:|---:|---:|")
        for (endpoint, name, concurrency), runs in results.items():
            best = max(runs, key=lambda r: r["rps"])
            print(
                f"| {endpoint} | {name} | {concurrency} | {best['rps']:,.0f} | "
                f"{best['p50']:.2f} | {best['p95']:.2f} | {best['p99']:.2f} | "
                f"{best['errors'] + best['non2xx']} |"
            )
        print("\n| endpoint | c | overhead p50 ms | overhead p99 ms |")
        print("|---|---:|---:|---:|")
        for endpoint in args.endpoints:
            for concurrency in args.concurrency:
                direct = max(results[(endpoint, "direct", concurrency)], key=lambda r: r["rps"])
                gateway = max(results[(endpoint, "gateway", concurrency)], key=lambda r: r["rps"])
                print(
                    f"| {endpoint} | {concurrency} | {gateway['p50'] - direct['p50']:.2f} | "
                    f"{gateway['p99'] - direct['p99']:.2f} |"
                )
    finally:
        for process in processes:
            process.terminate()
        for process in processes:
            process.wait(20)
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
