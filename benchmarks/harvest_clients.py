"""The harvest clients users would pick, one per process: ``python -m benchmarks.harvest_clients ARM``.

Every arm sends the same requests (one unique user turn each, ``max_tokens`` 16, temperature
0) to an OpenAI-compatible ``--base-url`` with ``--concurrency`` requests in flight, and
prints one line ``RESULT {json}``: wall and CPU seconds of the harvest itself (imports and
setup excluded, the tool's own worker processes included), requests that came back, and the
client's own report where it has one.

Why a separate file with nothing but the standard library at the top: the Curator,
distilabel and plain-``httpx`` arms run under the separate peers venv
(``/work/peers-venv``), which has no apidistill, torch or httpx2, so each arm imports its
library only when it runs.

Arms: ``apidistill`` (``harvest_sync`` with its SQLite journal, defaults otherwise;
``apidistill_httpx2`` the same on the openai SDK's httpx2 transport instead of the
default aiohttp one;
``apidistill_no_resend`` with ``resend_unknown=False``),
``raw_aiohttp`` and ``raw_httpx2`` (the fastest hand-written loops: a fixed pool of worker
coroutines on one client, with a minimal retry so the 10%-faults run completes),
``raw_httpx`` (httpx 0.28, peers venv), ``curator`` (``curator.LLM``, backend openai,
cache in ``--state``) and ``distilabel`` (a ``Pipeline`` of ``LoadDataFromDicts`` →
``TextGeneration`` on ``OpenAILLM``, ``input_batch_size`` = concurrency).

``--state DIR`` keeps the journal / cache between runs (the resume benchmark re-runs on
it); without it each run starts from an empty temporary folder.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

MODEL = "gpt-4o-mini"  # any name: the loopback server answers every model
MAX_TOKENS = 16
RAW_RETRIES = 10


def prompt_texts(n: int, tag: str) -> list[str]:
    """Unique prompts, so the server's per-request counters can tell duplicates apart."""
    return [f"[{tag}] request {i}: name one benefit of unit tests." for i in range(n)]


def _body(text: str) -> dict[str, Any]:
    return {
        "model": MODEL,
        "messages": [{"role": "user", "content": text}],
        "max_tokens": MAX_TOKENS,
        "temperature": 0.0,
    }


async def _pool(texts: list[str], concurrency: int, send: Callable[[str], Awaitable[bool]]) -> int:
    """``concurrency`` workers over one shared iterator; returns how many succeeded."""
    it = iter(texts)
    ok = 0

    async def worker() -> None:
        nonlocal ok
        for text in it:
            done = await send(text)  # read `ok` only after the await: no lost update
            ok += done

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return ok


async def _retrying(call: Callable[[], Awaitable[int]]) -> bool:
    """A hand-written loop's retry: any 429/5xx or transport error, 20 ms apart."""
    for _ in range(RAW_RETRIES):
        try:
            if await call() == 200:
                return True
        except Exception:
            pass
        await asyncio.sleep(0.02)
    return False


# --------------------------------------------------------------------------- raw loops
# Each arm is ``prepare(base_url, texts, concurrency, state) -> run``: imports and objects
# are made in ``prepare`` (not timed), ``run()`` harvests (timed) and returns a dict.

Run = Callable[[], dict]


def prepare_raw_aiohttp(base_url: str, texts: list[str], concurrency: int, state: Path) -> Run:
    import aiohttp

    async def main() -> int:
        conn = aiohttp.TCPConnector(limit=concurrency)
        timeout = aiohttp.ClientTimeout(total=60)
        async with aiohttp.ClientSession(connector=conn, timeout=timeout) as session:

            async def send(text: str) -> bool:
                async def call() -> int:
                    url = f"{base_url}/chat/completions"
                    async with session.post(url, json=_body(text)) as r:
                        await r.json()
                        return r.status

                return await _retrying(call)

            return await _pool(texts, concurrency, send)

    return lambda: {"ok": asyncio.run(main())}


def _httpx_like(module: Any, base_url: str, texts: list[str], concurrency: int) -> Run:
    async def main() -> int:
        limits = module.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
        async with module.AsyncClient(base_url=base_url, limits=limits, timeout=60) as client:

            async def send(text: str) -> bool:
                async def call() -> int:
                    r = await client.post("/chat/completions", json=_body(text))
                    r.json()
                    return r.status_code

                return await _retrying(call)

            return await _pool(texts, concurrency, send)

    return lambda: {"ok": asyncio.run(main())}


def prepare_raw_httpx2(base_url: str, texts: list[str], concurrency: int, state: Path) -> Run:
    import httpx2

    return _httpx_like(httpx2, base_url, texts, concurrency)


def prepare_raw_httpx(base_url: str, texts: list[str], concurrency: int, state: Path) -> Run:
    import httpx  # plain httpx 0.28: peers venv only, never apidistill's stack

    return _httpx_like(httpx, base_url, texts, concurrency)


# --------------------------------------------------------------------------- apidistill


def prepare_apidistill(
    base_url: str,
    texts: list[str],
    concurrency: int,
    state: Path,
    *,
    transport: str = "auto",
    resend_unknown: bool = True,
    store: bool = False,
) -> Run:
    """apidistill as a user runs it: defaults, except no progress bar (no terminal here).
    ``transport`` picks the SDK transport (``auto`` = aiohttp, or ``httpx2``);
    ``resend_unknown=False`` reports requests a killed run left in flight instead of
    re-sending them; ``store=True`` sends OpenAI ``store: true`` and recovers lost answers
    from the server's stored completions (with a 10 s request timeout, so a resume stops
    looking for a never-sent request's answer 10 s after its claim, not 120 s)."""
    from apidistill.config import HarvestConfig
    from apidistill.harvest import HarvestOptions, harvest_sync
    from apidistill.harvest.retry import RetryPolicy
    from apidistill.records import GenerationParams, Message, TeacherRequest
    from apidistill.teachers.openai import OpenAITeacher

    params = GenerationParams(max_tokens=MAX_TOKENS, temperature=0.0)
    requests = [
        TeacherRequest(messages=[Message(role="user", content=t)], params=params) for t in texts
    ]
    teacher = OpenAITeacher(MODEL, base_url=base_url, transport=transport, store=store)
    options = HarvestOptions(
        resend_unknown=resend_unknown,
        retry_policy=RetryPolicy(timeout_s=10.0) if store else None,
    )

    def run() -> dict:
        summary = harvest_sync(
            requests,
            teacher=teacher,
            journal=state / "journal.sqlite",
            config=HarvestConfig(concurrency=concurrency),
            progress=False,
            options=options,
        )
        return {
            "ok": summary.done + summary.cached + summary.recovered,
            "report": summary.as_dict(),
        }

    return run


# --------------------------------------------------------------------------- peers


def prepare_curator(base_url: str, texts: list[str], concurrency: int, state: Path) -> Run:
    os.environ["CURATOR_CACHE_DIR"] = str(state)
    from bespokelabs import curator

    llm = curator.LLM(
        model_name=MODEL,
        backend="openai",
        generation_params={"max_tokens": MAX_TOKENS, "temperature": 0.0},
        backend_params={
            "base_url": base_url,
            "api_key": "sk-loopback",
            "max_concurrent_requests": concurrency,
            "max_requests_per_minute": 10_000_000,
            "max_tokens_per_minute": 10_000_000_000,
            "require_all_responses": False,
            "request_timeout": 60,
        },
    )

    def run() -> dict:
        out = llm(texts)
        return {"ok": len(getattr(out, "dataset", out))}

    return run


def prepare_distilabel(base_url: str, texts: list[str], concurrency: int, state: Path) -> Run:
    from distilabel.models import OpenAILLM
    from distilabel.pipeline import Pipeline
    from distilabel.steps import LoadDataFromDicts
    from distilabel.steps.tasks import TextGeneration

    with Pipeline(name="apidistill-bench", cache_dir=str(state)) as pipeline:
        load = LoadDataFromDicts(data=[{"instruction": t} for t in texts], batch_size=concurrency)
        gen = TextGeneration(
            llm=OpenAILLM(
                model=MODEL,
                base_url=base_url,
                api_key="sk-loopback",
                timeout=60,
                generation_kwargs={"max_new_tokens": MAX_TOKENS, "temperature": 0.0},
            ),
            input_batch_size=concurrency,
        )
        load >> gen

    def run() -> dict:
        distiset = pipeline.run(use_cache=True)
        rows = distiset["default"]["train"]
        return {"ok": sum(1 for g in rows["generation"] if g)}

    return run


ARMS: dict[str, Callable[[str, list[str], int, Path], Run]] = {
    "apidistill": prepare_apidistill,
    "apidistill_httpx2": lambda *a: prepare_apidistill(*a, transport="httpx2"),
    "apidistill_no_resend": lambda *a: prepare_apidistill(*a, resend_unknown=False),
    "apidistill_store": lambda *a: prepare_apidistill(*a, store=True),
    "raw_aiohttp": prepare_raw_aiohttp,
    "raw_httpx2": prepare_raw_httpx2,
    "raw_httpx": prepare_raw_httpx,
    "curator": prepare_curator,
    "distilabel": prepare_distilabel,
}


def _quiet_peers() -> None:
    """No telemetry, viewer upload or live console from the peer tools (no network here).

    Curator counts tokens with tiktoken, which downloads its BPE files on first use; litellm
    (a Curator dependency) ships them, so tiktoken is pointed at that folder instead.
    """
    import importlib.util

    spec = importlib.util.find_spec("litellm")
    if spec is not None and spec.origin:
        bundled = Path(spec.origin).parent / "litellm_core_utils" / "tokenizers"
        os.environ.setdefault("TIKTOKEN_CACHE_DIR", str(bundled))
    for key, value in {
        "TELEMETRY_ENABLED": "false",
        "CURATOR_DISABLE_RICH_DISPLAY": "1",
        "DISTILABEL_LOG_LEVEL": "ERROR",
        "HF_HUB_OFFLINE": "1",
        "HF_DATASETS_OFFLINE": "1",
        "TOKENIZERS_PARALLELISM": "false",
    }.items():
        os.environ.setdefault(key, value)


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("arm", choices=sorted(ARMS))
    ap.add_argument("--base-url", required=True)
    ap.add_argument("--n", type=int, default=2000)
    ap.add_argument("--concurrency", type=int, default=64)
    ap.add_argument("--tag", default="bench", help="makes prompts unique across runs")
    ap.add_argument("--state", type=Path, help="journal/cache folder kept between runs")
    args = ap.parse_args(argv)
    _quiet_peers()
    texts = prompt_texts(args.n, args.tag)
    state = args.state or Path(tempfile.mkdtemp(prefix=f"bench-{args.arm}-"))
    state.mkdir(parents=True, exist_ok=True)
    import resource

    run = ARMS[args.arm](args.base_url, texts, args.concurrency, state)
    cpu0 = os.times()
    t0 = time.perf_counter()
    result = run()
    wall = time.perf_counter() - t0
    cpu1 = os.times()
    cpu = sum(cpu1[i] - cpu0[i] for i in range(4))  # user, system, children user/system
    rss_self = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    rss_children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    out = {
        "arm": args.arm,
        "n": args.n,
        "concurrency": args.concurrency,
        "wall_s": round(wall, 4),
        "cpu_s": round(cpu, 4),
        "peak_rss_self_mb": round(rss_self, 1),
        "peak_rss_child_mb": round(rss_children, 1),
        **result,
    }
    print("RESULT " + json.dumps(out, default=str), flush=True)
    return out


if __name__ == "__main__":
    main(sys.argv[1:])
