"""A small harvest program for the crash and signal tests (run as a subprocess).

usage: python harvest_script.py BASE_URL JOURNAL N CONCURRENCY sync|async SUMMARY_JSON [store]
Exit codes: 0 finished, 130 interrupted (after a graceful drain).
"""

from __future__ import annotations

import asyncio
import json
import sys
from decimal import Decimal

from apidistill.config import HarvestConfig, TeacherConfig
from apidistill.costs.prices import ModelPrice
from apidistill.harvest import HarvestInterrupted, harvest, harvest_sync
from apidistill.records import GenerationParams, Message, TeacherRequest
from apidistill.teachers import make_teacher

PRICE = ModelPrice(input_per_mtok=Decimal("1.25"), output_per_mtok=Decimal("10"))


def prompts(n: int) -> list[TeacherRequest]:
    return [
        TeacherRequest(
            messages=[Message(role="user", content=f"crash prompt {i}")],
            params=GenerationParams(max_tokens=16),
            prompt_id=f"p{i}",
        )
        for i in range(n)
    ]


def main() -> int:
    base_url, journal, n, conc, mode, out = sys.argv[1:7]
    store = sys.argv[7:8] == ["store"]  # OpenAI stored completions (teacher.store)
    teacher = make_teacher(
        TeacherConfig(
            provider="openai_compatible", base_url=base_url, model="fault-model", store=store
        )
    )
    kw = {
        "teacher": teacher,
        "journal": journal,
        "config": HarvestConfig(concurrency=int(conc)),
        "progress": False,
        "price": PRICE,
    }
    summary = None
    code = 0
    try:
        if mode == "sync":
            summary = harvest_sync(prompts(int(n)), **kw)
        else:
            stream = harvest(prompts(int(n)), **kw)

            async def consume() -> None:
                async for _ in stream:
                    pass

            try:
                asyncio.run(consume())
            finally:
                summary = stream.summary
    except HarvestInterrupted as exc:
        summary, code = exc.summary, 130
    with open(out, "w") as f:
        json.dump(summary.as_dict() if summary is not None else None, f)
    print("exit", code, flush=True)
    return code


if __name__ == "__main__":
    sys.exit(main())
