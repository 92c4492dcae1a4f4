"""Seconds per request of ``apidistill serve``'s engine on the demo's traffic shape.

The demo's teacher gets many concurrent chat requests that share a ~1,500-token few-shot
prefix (system + 16 user/assistant shots) and differ in a short final ticket; answers are
~20-30 greedy tokens. Three arms run in the same process on the same loaded SmolLM2, so only
the serving strategy differs:

  batch1           one request at a time, no prefix cache (a plain HF server)
  batched          up to --batch-size requests per batch, every prompt prefilled in full
  batched+prefix   batched, and the shared prefix's KV computed once and reused

Every arm must produce the same tokens (greedy); the JSON records any mismatch.

    python benchmarks/serve_batching.py            # 32 requests, 16 shots, 24 new tokens
    python benchmarks/serve_batching.py --quick    # 8 requests, 4 shots, 8 new tokens

Writes benchmarks/out/serve_batching.json and appends a row to benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.common import HERE, fmt, out_dir, write_result

NAME = "serve_batching"
SYSTEM = (
    "You read customer support tickets and extract two fields. Answer with exactly two "
    "lines, `order_id: <digits>` and `product: <product name>`, and nothing else. Ignore "
    "prices, dates, phone numbers, tracking numbers, old case numbers and names in the "
    "sign-off. Copy the product name exactly as the customer wrote it, brand word included, "
    "and copy the order number digits without any prefix or punctuation."
)
PRODUCTS = [
    "Harbor desk lamp", "Nimbus travel kettle", "Aster ceramic mug set", "Orion running shoes",
    "Juniper yoga mat", "Vega bluetooth speaker", "Cobalt chef knife", "Maple bookshelf",
    "Lumen reading light", "Atlas hiking backpack", "Willow bath towels", "Comet electric scooter",
]  # fmt: skip
OPENERS = ["Hi,", "Hello team,", "Good morning.", "Hey there,", "To whom it may concern,", ""]
ISSUES = [
    "my {p} (order #{o}) arrived with a cracked base and I paid ${price} for it.",
    "I ordered the {p} on {date} under order {o} and it still has not shipped.",
    "order {o}: the {p} stopped working after two days, tracking said delivered on {date}.",
    "the {p} from order number {o} is the wrong colour; call me at 555-{phone}.",
    "can you cancel order {o}? I no longer need the {p}. My old case was {case}.",
]
EXTRAS = [
    "I already tried resetting it and following the manual twice.",
    "This is the second time this has happened with your store this year.",
    "My tracking number is 1Z{case}{phone} if that helps.",
    "I would prefer a replacement over a refund if possible.",
    "Your chat assistant told me to email instead, so here I am.",
    "The box was also damaged and the receipt says {date}.",
]
CLOSERS = ["Thanks, {name}", "Regards, {name}", "Please help asap.", "Cheers", ""]
NAMES = ["Dana", "Luis", "Priya", "Tom", "Mei", "Sam", "Ola", "Ravi"]


def ticket(rng: random.Random) -> tuple[str, str, str]:
    p, o = rng.choice(PRODUCTS), str(rng.randint(100000, 9999999))
    body = rng.choice(ISSUES).format(
        p=p, o=o, price=rng.randint(12, 400), date=f"{rng.randint(1, 28)}/{rng.randint(1, 12)}",
        phone=rng.randint(1000, 9999), case=rng.randint(10000, 99999),
    )  # fmt: skip
    extra = rng.choice(EXTRAS).format(
        case=rng.randint(10000, 99999),
        phone=rng.randint(1000, 9999),
        date=f"{rng.randint(1, 28)}/5",
    )
    closer = rng.choice(CLOSERS).format(name=rng.choice(NAMES))
    text = " ".join(x for x in (rng.choice(OPENERS), body, extra, closer) if x)
    return text, o, p


def build_requests(shots: int, requests: int, seed: int = 0) -> list[list[dict[str, str]]]:
    """``requests`` chats: one shared few-shot prefix, a different final ticket each."""
    rng = random.Random(seed)
    prefix = [{"role": "system", "content": SYSTEM}]
    for _ in range(shots):
        text, o, p = ticket(rng)
        prefix += [
            {"role": "user", "content": text},
            {"role": "assistant", "content": f"order_id: {o}\nproduct: {p}"},
        ]
    return [[*prefix, {"role": "user", "content": ticket(rng)[0]}] for _ in range(requests)]


async def run_arm(engine: Any, chats: list[Any], max_tokens: int) -> tuple[float, list[Any]]:
    from apidistill.records import GenerationParams, Message

    params = GenerationParams(max_tokens=max_tokens, temperature=0.0)
    msgs = [[Message(**m) for m in chat] for chat in chats]
    started = time.perf_counter()
    outs = await asyncio.gather(*(engine.generate(m, None, params) for m in msgs))
    wall = time.perf_counter() - started
    return wall, [o[0] for o in outs]


def append_results_md(row: str) -> Path:
    """Append to benchmarks/RESULTS.md (or next to the JSON when APIDISTILL_BENCH_OUT
    redirects output, so trial runs never touch the real table)."""
    path = (out_dir() if os.environ.get("APIDISTILL_BENCH_OUT") else HERE) / "RESULTS.md"
    if not path.exists():
        path.write_text(
            "# Benchmark results\n\nRows are appended by the scripts in benchmarks/; the JSON "
            "in benchmarks/out/ has the machine, versions and raw numbers.\n\n"
            "| date | benchmark | setting | result | notes |\n|---|---|---|---|---|\n",
            encoding="utf-8",
        )
    with path.open("a", encoding="utf-8") as f:
        f.write(row + "\n")
    return path


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="8 requests, 4 shots, 8 new tokens")
    ap.add_argument("--requests", type=int, default=None)
    ap.add_argument("--shots", type=int, default=None)
    ap.add_argument("--max-tokens", type=int, default=None)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--arms", default="batch1,batched,batched+prefix")
    ap.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch threads (default: physical cores; 1 gives steadier numbers on a shared box)",
    )
    args = ap.parse_args(argv)
    requests = args.requests or (8 if args.quick else 32)
    shots = args.shots if args.shots is not None else (4 if args.quick else 16)
    max_tokens = args.max_tokens or (8 if args.quick else 24)
    arms = [a.strip() for a in args.arms.split(",") if a.strip()]
    started = time.perf_counter()

    import torch

    from apidistill.model_loading import load_model, load_tokenizer
    from apidistill.serve.engine import ServeEngine, physical_cores

    threads = args.threads or physical_cores()
    torch.set_num_threads(threads)
    model, tok = load_model(args.model), load_tokenizer(args.model)
    chats = build_requests(shots, requests)
    settings = {
        "batch1": {"max_batch_size": 1, "prefix_cache": False},
        "batched": {"max_batch_size": args.batch_size, "prefix_cache": False},
        "batched+prefix": {"max_batch_size": args.batch_size, "prefix_cache": True},
    }
    results: dict[str, Any] = {}
    reference: list[list[int]] | None = None
    prompt_lens: list[int] = []
    for arm in arms:
        engine = ServeEngine(model, tok, model_name=args.model, **settings[arm])
        if not prompt_lens:
            from apidistill.records import Message

            prompt_lens = [engine.count_prompt_tokens([Message(**m) for m in c]) for c in chats]
        load_before = os.getloadavg()[0]
        wall, outs = asyncio.run(run_arm(engine, chats, max_tokens))
        ids = [o.token_ids for o in outs]
        reference = reference or ids
        results[arm] = {
            **settings[arm],
            "wall_s": round(wall, 2),
            "s_per_request": round(wall / requests, 3),
            "batches": engine.stats.batches,
            "largest_batch": engine.stats.largest_batch,
            "mean_cached_prompt_tokens": round(sum(o.cached_tokens for o in outs) / requests, 1),
            "completion_tokens": sum(o.completion_tokens for o in outs),
            "outputs_equal_to_first_arm": sum(a == b for a, b in zip(ids, reference, strict=True)),
            "load_avg_before": round(load_before, 2),
            "shared_prefix_attention": engine.shared_attention,
        }
        engine.close()
        print(
            f"{arm:>15}: {wall / requests:.3f} s/request ({wall:.1f} s for {requests})", flush=True
        )
    prefix_len = min(prompt_lens)  # the shared part is at most the shortest prompt
    payload = {
        "requests": requests,
        "shots": shots,
        "max_tokens": max_tokens,
        "batch_size": args.batch_size,
        "torch_threads": threads,
        "prompt_tokens": {"min": min(prompt_lens), "max": max(prompt_lens)},
        "arms": results,
        "example_output": outs[0].text if arms else None,
    }
    path = write_result(
        NAME, payload, mode="quick" if args.quick else "full", seeds=[0], started=started
    )
    cells = " · ".join(f"{a} {fmt(r['s_per_request'], 3)}" for a, r in results.items())
    equal = min((r["outputs_equal_to_first_arm"] for r in results.values()), default=0)
    load = os.getloadavg()[0]
    row = (
        f"| {time.strftime('%Y-%m-%d')} | {NAME}.py{' --quick' if args.quick else ''} | "
        f"SmolLM2-135M, {requests} concurrent chats, {shots} shots ({prefix_len}+ prompt "
        f"tokens), {max_tokens} new tokens greedy, batch ≤ {args.batch_size} | "
        f"s/request: {cells}; {equal}/{requests} outputs identical across arms | "
        f"cpu, {threads} torch threads, load average {load:.1f} (shared machine: compare "
        "arms within the row) |"
    )
    md = append_results_md(row)
    print(f"wrote {path} and a row in {md}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
