"""Build apps/billing/fixtures/model_prices.json from the shared list-price catalog.

    python scripts/build_price_fixture.py [SOURCE] [--out PATH]

Keeps the providers the gateway can call (or bill like) and the modes it serves, adds the
demo models, and writes a Django fixture that `billing.services.model_prices_import`
upserts on (model_name, effective_from). Prices are written as decimal strings so no float
noise reaches the catalog. Prompt-cache prices come along where an entry lists them:
`cache_read_input_token_cost` as `cached_input_cost_per_token`, and
`cache_creation_input_token_cost` as `cache_write_cost_per_token`.
"""

import argparse
import json
import sys
from decimal import Decimal
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_SOURCE = Path("/work/shared/data/model_prices.json")
DEFAULT_OUT = ROOT / "apps" / "billing" / "fixtures" / "model_prices.json"
EFFECTIVE_FROM = "2024-01-01"
PROVIDERS = {
    "openai",
    "anthropic",
    "azure",
    "cohere",
    "mistral",
    "deepseek",
    "groq",
    "together_ai",
    "voyage",
    "xai",
    "gemini",
}
MODES = {"chat", "completion", "embedding", "rerank"}
# The simulator's models, priced like the public models they imitate.
# (provider, mode, input, output, cache read, cache write)
DEMO_MODELS = {
    # like gpt-4o-mini (OpenAI lists no cache write price)
    "demo-chat": ("simulator", "chat", 1.5e-07, 6e-07, 7.5e-08, None),
    # like text-embedding-3-small
    "demo-embed": ("simulator", "embedding", 2e-08, 0.0, None, None),
    # like cohere rerank-v5.0-fast (per token; per-query prices have no column)
    "demo-rerank": ("simulator", "rerank", 2e-08, 0.0, None, None),
}


def money(value: float | int | None) -> str | None:
    if value is None:
        return None
    # repr() is the shortest string that round-trips the float: 1.5e-07, not 1.4999...e-07.
    return format(Decimal(repr(float(value))).normalize(), "f")


def entry(name: str, provider: str, mode: str, inp, out, cached, cache_write) -> dict:
    return {
        "model": "billing.modelprice",
        "fields": {
            "model_name": name,
            "provider": provider,
            "mode": mode,
            "input_cost_per_token": money(inp),
            "output_cost_per_token": money(out or 0),
            "cached_input_cost_per_token": money(cached),
            "cache_write_cost_per_token": money(cache_write),
            "effective_from": EFFECTIVE_FROM,
        },
    }


def build(source: Path) -> list[dict]:
    catalog = json.loads(source.read_text())["models"]
    rows = []
    for name, info in sorted(catalog.items()):
        if info.get("provider") not in PROVIDERS or info.get("mode") not in MODES:
            continue
        if info.get("input_cost_per_token") is None:
            continue  # not priced per token (e.g. containers): nothing to bill with
        rows.append(
            entry(
                name,
                info["provider"],
                info["mode"],
                info["input_cost_per_token"],
                info.get("output_cost_per_token"),
                info.get("cache_read_input_token_cost"),
                info.get("cache_creation_input_token_cost"),
            )
        )
    for name, (provider, mode, *prices) in DEMO_MODELS.items():
        rows.append(entry(name, provider, mode, *prices))
    return rows


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("source", nargs="?", type=Path, default=DEFAULT_SOURCE)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args(argv)
    rows = build(args.source)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(rows, indent=1) + "\n")
    print(f"{len(rows)} prices written to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
