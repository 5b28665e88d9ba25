"""Body validation cost on the hot path: `validate_body`, now and as committed at a git revision.

    .venv/bin/python bench/validation_bench.py [--number 2000] [--repeat 15] [--baseline HEAD]

Times `validate_body(CHAT, body)` in-process on a typical chat body (system + user message,
a few sampling parameters) and on a 50-message conversation with content parts and tool
calls, for the working tree's apps/proxy/validation.py and for the version at `--baseline`
(read with `git show`, loaded as a sibling module so its relative imports resolve). Prints
the best and median run, in µs per call; runs of the two versions alternate so that load
from other processes on the machine hits both alike. Once a change to validation.py is
committed, compare with the commit before it (`--baseline <commit>~1`). Not a test: numbers
only.
"""

import argparse
import importlib.util
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "gateway_portal.settings")
os.environ.setdefault("DEBUG", "true")

import django

django.setup()

from apps.proxy import validation  # noqa: E402
from apps.proxy.providers.base import CHAT  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent

TYPICAL = {
    "model": "demo-chat",
    "messages": [
        {"role": "system", "content": "You are a helpful assistant. Be brief."},
        {"role": "user", "content": "Count down from five to one, please."},
    ],
    "temperature": 0.7,
    "max_tokens": 256,
    "stream": True,
    "stream_options": {"include_usage": True},
    "user": "end-user-7",
}


def conversation(turns: int = 50) -> dict:
    """A long agent-style chat: text, content parts, tool calls and tool results."""
    messages: list[dict] = [{"role": "system", "content": "You are a tool-using assistant."}]
    while len(messages) < turns:
        index = len(messages)
        messages.append(
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": f"Question {index}: what is the weather?"},
                    {"type": "image_url", "image_url": {"url": "https://example.com/a.png"}},
                ],
            }
        )
        messages.append(
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [
                    {
                        "id": f"call_{index}",
                        "type": "function",
                        "function": {"name": "weather", "arguments": '{"city": "Paris"}'},
                    }
                ],
            }
        )
        messages.append({"role": "tool", "tool_call_id": f"call_{index}", "content": "18C"})
        messages.append({"role": "assistant", "content": f"It is 18C ({index})."})
    return {**TYPICAL, "messages": messages[:turns]}


def load_baseline(revision: str):
    source = subprocess.run(
        ["git", "show", f"{revision}:apps/proxy/validation.py"],
        cwd=ROOT,
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    spec = importlib.util.spec_from_loader("apps.proxy._validation_baseline", loader=None)
    module = importlib.util.module_from_spec(spec)
    module.__package__ = "apps.proxy"
    exec(compile(source, f"{revision}:apps/proxy/validation.py", "exec"), module.__dict__)
    return module


def per_call_us(validate, body: dict, number: int) -> float:
    """Mean µs per call over one run of `number` calls."""
    clock = time.perf_counter_ns
    start = clock()
    for _ in range(number):
        validate(CHAT, body)
    return (clock() - start) / number / 1000


def compare(versions: dict, body: dict, number: int, repeat: int) -> dict[str, list[float]]:
    """Runs of each version, interleaved so that load from other processes hits them alike."""
    runs: dict[str, list[float]] = {name: [] for name in versions}
    for validate in versions.values():
        per_call_us(validate, body, number // 10)  # warm-up
    for _ in range(repeat):
        for name, validate in versions.items():
            runs[name].append(per_call_us(validate, body, number))
    return runs


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--number", type=int, default=2000, help="calls per run")
    parser.add_argument("--repeat", type=int, default=15, help="runs per version")
    parser.add_argument("--baseline", default="HEAD", help="git revision to compare with")
    args = parser.parse_args()
    versions = {
        args.baseline: load_baseline(args.baseline).validate_body,
        "working tree": validation.validate_body,
    }
    bodies = {"typical chat (2 messages)": TYPICAL, "50-message chat": conversation(50)}
    print(f"µs per validate_body call: best and median of {args.repeat} runs of {args.number}")
    for label, body in bodies.items():
        # The body must pass every version, or the comparison would time an error path.
        for validate in versions.values():
            validate(CHAT, body)
        print(label)
        for name, runs in compare(versions, body, args.number, args.repeat).items():
            print(f"  {name:<14} best {min(runs):7.2f}   median {statistics.median(runs):7.2f}")


if __name__ == "__main__":
    main()
