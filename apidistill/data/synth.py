"""Synthetic prompt generation through any teacher, with diversity controls.

When a user has few real inputs (or a class is under-represented after balancing), a
teacher can write new ones. Left alone, a model writes the same few inputs over and over, so
each request rotates the topic (from a taxonomy), shows a different random subset of the seed
examples, and cycles the temperature; every candidate is then checked against the existing
prompts and those already accepted with a MinHash near-duplicate index and dropped if it is
not new. Requests go through the harvest engine, so budget, journal, retries and rate
limits apply exactly as they do to a harvest, and a re-run never pays twice.
"""

from __future__ import annotations

import asyncio
import json
import math
import random
import re
import tempfile
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import TYPE_CHECKING, Any

from apidistill.data.dedupe import NearDupIndex
from apidistill.data.prompts import PromptRow, input_hash
from apidistill.errors import BudgetExceeded, ConfigError
from apidistill.records import Completion, GenerationParams, Message, TeacherRequest
from apidistill.teachers.base import Teacher

if TYPE_CHECKING:
    from apidistill.harvest.results import HarvestResult, HarvestSummary

__all__ = [
    "SynthOptions",
    "SynthPrompt",
    "SynthResult",
    "flatten_topics",
    "generate_for_classes",
    "generate_prompts",
    "parse_candidates",
    "write_prompts_jsonl",
]

SYSTEM = (
    "You write realistic, varied inputs for a task. Answer only with a JSON array of strings, "
    "each string one complete input. Do not answer the inputs."
)
_NUMBERED = re.compile(r"^\s*(?:\d+[.)]|[-*•])\s+")


@dataclass
class SynthOptions:
    """Diversity and spending controls for one generation run."""

    n: int  # prompts wanted
    task: str = "the task the examples show"  # one line describing what the inputs are for
    per_request: int = 5  # prompts asked for in one request
    examples_per_request: int = 3  # seed examples shown in one request
    temperatures: Sequence[float] = (0.7, 0.9, 1.1)  # cycled request by request
    novelty_threshold: float = 0.8  # a candidate this similar to a known prompt is dropped
    min_chars: int = 8
    max_chars: int = 4000
    max_requests: int | None = None  # default: 3 × the requests n needs
    concurrency: int = 4
    max_tokens: int = 1024
    seed: int = 0

    def request_limit(self) -> int:
        need = math.ceil(self.n / max(1, self.per_request))
        return self.max_requests if self.max_requests is not None else 3 * need


@dataclass(frozen=True)
class SynthPrompt:
    text: str
    topic: str | None = None
    label_hint: str | None = None


@dataclass
class SynthResult:
    prompts: list[SynthPrompt] = field(default_factory=list)
    requests: int = 0
    duplicates: int = 0  # candidates dropped as (near-)copies of known prompts
    invalid: int = 0  # candidates too short/long, or answers that held no list
    cost_usd: Decimal | None = Decimal(0)  # None once any response had an unknown cost
    failed: int = 0  # requests the harvest gave up on (after its retries)
    summary: HarvestSummary | None = None  # the harvest run's: spend, cache hits, stop reason

    def rows(self) -> list[PromptRow]:
        """As prompt rows (ids hash the text; metadata marks them synthetic)."""
        return [
            PromptRow(
                id=f"synth-{input_hash(p.text)}",
                input=p.text,
                label=None,
                metadata={"synthetic": True, "topic": p.topic, "label_hint": p.label_hint},
            )
            for p in self.prompts
        ]


def flatten_topics(taxonomy: Sequence[str] | Mapping[str, Any] | None) -> list[str]:
    """``{"sports": ["tennis", "golf"], "finance": {}}`` → ``["sports / tennis", ...]``."""
    if taxonomy is None:
        return []
    if isinstance(taxonomy, str):
        return [taxonomy]
    if isinstance(taxonomy, Mapping):
        out: list[str] = []
        for name, sub in taxonomy.items():
            leaves = flatten_topics(sub) if sub else []
            out.extend(f"{name} / {leaf}" for leaf in leaves) if leaves else out.append(str(name))
        return out
    return [str(t) for t in taxonomy]


def _request_text(
    opts: SynthOptions, examples: Sequence[str], topic: str | None, label: str | None
) -> str:
    parts = [f"Write {opts.per_request} new inputs for {opts.task}."]
    if examples:
        shown = "\n".join(f"- {json.dumps(e, ensure_ascii=False)}" for e in examples)
        parts.append(
            f"Examples of real inputs (match their style and length, not their content):\n{shown}"
        )
    if topic:
        parts.append(f"Every new input must be about: {topic}.")
    if label:
        parts.append(f"Every new input must be one whose correct answer is: {label}.")
    parts.append("Make them differ from each other and from the examples.")
    return "\n\n".join(parts)


def parse_candidates(text: str) -> list[str]:
    """Strings from a JSON array (fenced or not); else one candidate per (numbered) line."""
    s = text.strip()
    if s.startswith("```"):
        s = s.split("\n", 1)[1] if "\n" in s else ""
        s = s.rsplit("```", 1)[0].strip()
    start, end = s.find("["), s.rfind("]")
    if start >= 0 and end > start:
        try:
            items = json.loads(s[start : end + 1])
        except json.JSONDecodeError:
            items = None
        if isinstance(items, list):
            return [i.strip() for i in items if isinstance(i, str) and i.strip()]
    lines = (_NUMBERED.sub("", line).strip() for line in s.splitlines())
    return [line for line in lines if line]


async def generate_prompts(
    teacher: Teacher,
    opts: SynthOptions,
    *,
    seeds: Sequence[str] = (),
    topics: Sequence[str] | Mapping[str, Any] | None = None,
    existing: Sequence[str] = (),
    label_hint: str | None = None,
    on_completion: Callable[[Completion], None] | None = None,
    journal: str | Path | None = None,
    **harvest_options: Any,
) -> SynthResult:
    """Ask ``teacher`` for ``opts.n`` new prompts, rotating topics, examples and temperature.

    Every request goes through the harvest engine (:func:`apidistill.harvest.harvest`):
    ``harvest_options`` (``budget``, ``price``, ``config`` (a HarvestConfig: rpm, tpm,
    retries, max_requests; its concurrency is ``opts.concurrency``), ``options`` (a
    HarvestOptions), ``progress``) apply as they do to a harvest,
    and ``journal`` makes a re-run or a resumed crash answer every request already paid for
    from the journal (the requests are a pure function of ``opts``, seeds and topics, so a
    re-run asks the same questions in the same order). Without ``journal`` a throwaway one is
    used. ``existing`` (e.g. the user's prompt file) and every accepted prompt feed the
    novelty filter. ``on_completion`` sees each teacher answer. Stops at ``opts.n`` prompts,
    ``opts.request_limit()`` requests or a harvest stop, whichever comes first; a budget or
    ``max_requests`` stop returns what was accepted, with ``result.summary.stopped_by`` set.
    """
    if opts.n < 1 or opts.per_request < 1 or opts.concurrency < 1:
        raise ConfigError("synthetic prompts: n, per_request and concurrency must be ≥ 1")
    if not seeds and not topics:
        raise ConfigError(
            "synthetic prompts need seed examples or a topic taxonomy",
            hint="pass seeds=[...] (a few real inputs) or topics=[...]",
        )
    if journal is None:  # nothing to resume from later: skip the fsyncs
        from dataclasses import replace

        from apidistill.harvest import HarvestOptions

        given = harvest_options.get("options") or HarvestOptions()
        harvest_options["options"] = replace(given, durable=False)
        with tempfile.TemporaryDirectory(prefix="apidistill-synth-") as tmp:
            return await generate_prompts(
                teacher, opts, seeds=seeds, topics=topics, existing=existing,
                label_hint=label_hint, on_completion=on_completion,
                journal=Path(tmp) / "journal.sqlite", **harvest_options,
            )  # fmt: skip
    from apidistill.config import HarvestConfig
    from apidistill.harvest import harvest

    plan = _Plan(opts, list(seeds), flatten_topics(topics), label_hint)
    index = NearDupIndex(opts.novelty_threshold)
    for i, text in enumerate([*existing, *seeds]):
        index.add(f"known{i}", text)
    result = SynthResult()
    limit = opts.request_limit()
    wave: dict[int, HarvestResult | None] = {}
    wave_done = asyncio.Event()

    def settle_wave() -> None:
        """Judge a wave's answers in request order, so a re-run accepts the same prompts."""
        for i in sorted(wave):
            res = wave[i]
            if res is None:  # never answered (the run stopped first)
                continue
            if res.completion is None:
                result.failed += 1
                continue
            _accept(res.completion, res.request.metadata.get("topic"), label_hint, opts, index,
                    result)  # fmt: skip
            if on_completion is not None:
                on_completion(res.completion)
        wave.clear()

    async def requests() -> AsyncIterator[TeacherRequest]:
        while len(result.prompts) < opts.n and result.requests < limit:
            size = min(opts.concurrency, limit - result.requests)
            wanted = math.ceil((opts.n - len(result.prompts)) / opts.per_request)
            built = [plan.build(result.requests + i) for i in range(min(size, max(1, wanted)))]
            result.requests += len(built)
            wave_done.clear()
            wave.update({int(r.metadata["synth_index"]): None for r in built})
            for req in built:
                yield req
            await wave_done.wait()

    config = harvest_options.pop("config", None) or HarvestConfig()
    stream = harvest(
        requests(), teacher=teacher, journal=journal,
        config=config.model_copy(update={"concurrency": opts.concurrency}),
        **{"progress": False, **harvest_options},
    )  # fmt: skip
    try:
        async for res in stream:
            wave[int(res.request.metadata["synth_index"])] = res
            if all(v is not None for v in wave.values()):
                settle_wave()
                wave_done.set()
    except BudgetExceeded:
        pass  # the summary says so; what was paid for is judged below and returned
    finally:
        settle_wave()
        result.summary = stream.summary
    del result.prompts[opts.n :]
    return result


class _Plan:
    """Request ``n`` of a generation run, the same on every run with the same inputs."""

    def __init__(
        self, opts: SynthOptions, seeds: list[str], topics: list[str], label: str | None
    ) -> None:
        self.opts, self.seeds, self.topics, self.label = opts, seeds, topics, label
        self.rng = random.Random(opts.seed)
        self.built = 0

    def build(self, n: int) -> TeacherRequest:
        if n != self.built:  # the examples shown come from one random stream, in order
            raise AssertionError(f"request {n} built out of order (expected {self.built})")
        self.built += 1
        opts = self.opts
        topic = self.topics[n % len(self.topics)] if self.topics else None
        shown = self.rng.sample(self.seeds, min(opts.examples_per_request, len(self.seeds)))
        params = GenerationParams(
            max_tokens=opts.max_tokens,
            temperature=opts.temperatures[n % len(opts.temperatures)],
            seed=opts.seed + n,
        )
        msgs = [
            Message(role="system", content=SYSTEM),
            Message(role="user", content=_request_text(opts, shown, topic, self.label)),
        ]
        meta = {"purpose": "synth", "synth_index": n, "topic": topic}
        return TeacherRequest(messages=msgs, params=params, metadata=meta)


def _accept(
    completion: Completion,
    topic: str | None,
    label: str | None,
    opts: SynthOptions,
    index: NearDupIndex,
    result: SynthResult,
) -> None:
    if result.cost_usd is not None:
        result.cost_usd = (
            None if completion.cost_usd is None else result.cost_usd + completion.cost_usd
        )
    candidates = parse_candidates(completion.text)
    if not candidates:
        result.invalid += 1
    for text in candidates:
        if not opts.min_chars <= len(text) <= opts.max_chars:
            result.invalid += 1
        elif index.query(text):
            result.duplicates += 1
        else:
            index.add(f"new{len(result.prompts)}", text)
            result.prompts.append(SynthPrompt(text, topic, label))


async def generate_for_classes(
    teacher: Teacher,
    needs: Mapping[str, int],
    examples: Mapping[str, Sequence[str]],
    opts: SynthOptions,
    *,
    existing: Sequence[str] = (),
    on_completion: Callable[[Completion], None] | None = None,
    **harvest_options: Any,
) -> dict[str, SynthResult]:
    """New prompts for under-represented classes (``BalanceResult.under_represented``),
    each request conditioned on the class and shown that class's examples. The labels are
    hints: the teacher's answers to these prompts decide the records' real labels.
    ``harvest_options`` (``journal``, ``budget``...) go to every :func:`generate_prompts`."""
    out: dict[str, SynthResult] = {}
    known = list(existing)
    for cls, n in needs.items():
        if n <= 0:
            continue
        sub = SynthOptions(**{**opts.__dict__, "n": n})
        res = await generate_prompts(
            teacher,
            sub,
            seeds=examples.get(cls, ()),
            topics=None if examples.get(cls) else [cls],
            existing=known,
            label_hint=cls,
            on_completion=on_completion,
            **harvest_options,
        )
        known.extend(p.text for p in res.prompts)
        out[cls] = res
    return out


def write_prompts_jsonl(prompts: Sequence[SynthPrompt], path: str | Path) -> Path:
    """A prompt file (``text`` + ``topic``/``label_hint``) that ``load_prompt_rows`` reads."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    with p.open("w", encoding="utf-8") as fh:
        for sp in prompts:
            row = {
                "text": sp.text,
                "topic": sp.topic,
                "label_hint": sp.label_hint,
                "synthetic": True,
            }
            fh.write(json.dumps(row, ensure_ascii=False) + "\n")
    return p
