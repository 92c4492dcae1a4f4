"""Harvest teacher answers from OpenAI or Anthropic in an async batch script, with a terms
check before the first request and a hard budget.

    OPENAI_API_KEY=... python examples/async_batch_harvest.py prompts.jsonl out.jsonl \\
        --provider openai --model gpt-4.1-mini --budget 2.50 --use internal

Runs against a local OpenAI-compatible server when OPENAI_BASE_URL (or ANTHROPIC_BASE_URL)
points there. Keys come from the environment only. Prompts: one JSON object per line with a
"text" field (and an "id" field, else ids are hashes of the text). Re-running with the same journal sends only what has no answer yet.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
from decimal import Decimal

from apidistill import (
    GenerationParams,
    HarvestConfig,
    Message,
    PolicyConfig,
    TeacherConfig,
    TeacherRequest,
    harvest,
    load_prompt_rows,
)


async def main(args: argparse.Namespace) -> None:
    env_url = "OPENAI_BASE_URL" if args.provider == "openai" else "ANTHROPIC_BASE_URL"
    teacher = TeacherConfig(
        provider=args.provider, model=args.model, base_url=os.environ.get(env_url)
    )
    params = GenerationParams(max_tokens=args.max_tokens, temperature=0.0)
    rows = load_prompt_rows(args.prompts, id_field=args.id_field or None).rows
    requests = [
        TeacherRequest(
            messages=[Message(role="user", content=r.input)], params=params, prompt_id=r.id
        )
        for r in rows
    ]
    # The terms are checked before the first request (PolicyDenied: nothing is sent); the
    # teacher client is built, priced (genai-prices) and closed by the harvest.
    stream = harvest(
        requests,
        teacher=teacher,
        policy=PolicyConfig(use=args.use),
        journal=args.journal,
        budget=Decimal(args.budget),
        config=HarvestConfig(concurrency=args.concurrency),
    )
    decision = stream.decision
    assert decision is not None  # set whenever policy= is given
    print(f"terms: {decision.decision} ({decision.document or 'no document'}) — not legal advice")
    with open(args.out, "w", encoding="utf-8") as out:
        async for r in stream:
            line = {"id": r.request.prompt_id, "ok": r.ok, "reason": r.reason}
            if r.ok:
                line.update(text=r.completion.text, cost_usd=str(r.completion.cost_usd))
            out.write(json.dumps(line) + "\n")
    for line in stream.summary.lines():
        print(line)


if __name__ == "__main__":
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("prompts")
    p.add_argument("out")
    p.add_argument("--provider", choices=["openai", "anthropic"], default="openai")
    p.add_argument("--model", default="gpt-4.1-mini")
    p.add_argument("--use", default="internal")
    p.add_argument("--budget", default="1.00")
    p.add_argument("--max-tokens", type=int, default=128)
    p.add_argument("--concurrency", type=int, default=32)
    p.add_argument("--journal", default="harvest-journal.sqlite")
    p.add_argument("--id-field", default="id", help="field with a stable row id ('' = hash)")
    asyncio.run(main(p.parse_args()))
