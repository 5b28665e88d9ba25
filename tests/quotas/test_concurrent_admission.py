"""Exactly N of 10·N concurrent admissions succeed, across several OS processes and one Redis."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from apps.quotas.counters import CounterCheck

from .conftest import redis_url

ROOT = Path(__file__).resolve().parents[2]
PROCESSES = 4


def run_workers(tmp_path: Path, checks: list[CounterCheck], total_attempts: int) -> int:
    go_file = tmp_path / "go"
    spec = {
        "redis_url": redis_url(),
        "checks": [check._asdict() for check in checks],
        "go_file": str(go_file),
        "attempts": total_attempts // PROCESSES,
    }
    workers = [
        subprocess.Popen(
            [sys.executable, "-m", "tests.quotas.admit_worker", json.dumps(spec)],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            text=True,
        )
        for _ in range(PROCESSES)
    ]
    try:
        for worker in workers:
            assert worker.stdout.readline().strip() == "ready"
        go_file.touch()  # every process starts its burst at once
        admitted = 0
        for worker in workers:
            out, _ = worker.communicate(timeout=60)
            assert worker.returncode == 0
            admitted += json.loads(out)["admitted"]
        return admitted
    finally:
        for worker in workers:
            if worker.poll() is None:
                worker.kill()


@pytest.mark.parametrize("limit", [10, 50])
def test_exactly_n_requests_are_admitted(tmp_path, key_prefix, sync_redis, limit):
    requests_key = key_prefix + "requests"
    tokens_key = key_prefix + "tokens"
    checks = [
        CounterCheck(key=requests_key, limit=limit, amount=1, ttl=60),
        # A second, roomy counter in the same script: it must move only with admissions.
        CounterCheck(key=tokens_key, limit=10**9, amount=7, ttl=60, reserve=True),
    ]
    admitted = run_workers(tmp_path, checks, total_attempts=10 * limit)
    assert admitted == limit
    assert int(sync_redis.get(requests_key)) == limit
    assert int(sync_redis.get(tokens_key)) == 7 * limit
    assert sync_redis.zcard(tokens_key + "|r") == limit


def test_token_reservations_never_overspend(tmp_path, key_prefix, sync_redis):
    tokens_key = key_prefix + "tokens"
    checks = [CounterCheck(key=tokens_key, limit=1000, amount=70, ttl=60, reserve=True)]
    admitted = run_workers(tmp_path, checks, total_attempts=200)
    assert admitted == 1000 // 70
    assert int(sync_redis.get(tokens_key)) == 70 * (1000 // 70)
