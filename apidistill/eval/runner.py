"""Run students on the test split over HTTP and measure them next to the cached teacher.

The teacher is never called again: its answers, prompt tokens and cost per request come from
the harvest. Each student is queried through the official ``openai`` SDK, exactly as the team's
code will call it after the migration, so latency includes the HTTP hop and the server's
batching. Students run one after another (never at the same time) so they do not share the CPU
while being timed.

Answers are appended to ``out_dir/predictions/<student>.jsonl`` as they arrive. If an endpoint
goes down, what it answered stays on disk, the error names the endpoint and the file, and
``resume=True`` reuses those answers on the next run. Nothing retries here: a failed request is
a finding about the endpoint, not something to hide.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import re
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any

import numpy as np

from apidistill.config import EvalConfig
from apidistill.data.schema import Message, Record
from apidistill.errors import ConfigError, EvalError, register_secret
from apidistill.eval.aggregate import confusion_matrix, output_metrics
from apidistill.eval.metrics import sequence_confidence
from apidistill.eval.scoring import kl_unavailable_reason
from apidistill.eval.types import EvalResult, MetricValue, ModelEval, StudentEndpoint, Timing
from apidistill.eval.verdict import select_student
from apidistill.progress import make_progress

__all__ = ["Answer", "run_eval", "select_records"]

_UNSAFE = re.compile(r"[^A-Za-z0-9_.-]+")


@dataclass(frozen=True)
class Answer:
    """One student answer as saved in the predictions file."""

    record_id: str
    key: str
    output: str
    latency_ms: float
    prompt_tokens: int | None
    completion_tokens: int | None
    confidence: float | None


class _MalformedAnswer(Exception):
    """A 200 answer without the fields of a chat completion."""


class _EndpointFailed(Exception):
    def __init__(self, record_id: str, cause: BaseException) -> None:
        super().__init__(record_id)
        self.record_id, self.cause = record_id, cause


# --------------------------------------------------------------------------- inputs


def select_records(records: Sequence[Record], cfg: EvalConfig) -> list[Record]:
    """The records of ``cfg.split`` (all of them when none carries a split), capped at
    ``cfg.max_examples``; an empty or missing split is an :class:`EvalError` naming it."""
    if not records:
        raise EvalError(
            f"the {cfg.split} split is empty: no records to evaluate on",
            hint="build the dataset with a test share (dataset.splits.test > 0) before eval",
        )
    if any(r.split is not None for r in records):
        chosen = [r for r in records if r.split == cfg.split]
        if not chosen:
            found = {s: sum(r.split == s for r in records) for s in ("train", "validation", "test")}
            have = ", ".join(f"{k} {v}" for k, v in found.items())
            raise EvalError(
                f"no records in the {cfg.split!r} split (found: {have})",
                hint=f"set dataset.splits.{cfg.split} > 0 and rebuild the dataset, "
                "or choose eval.split",
            )
    else:
        chosen = list(records)
    ids = [r.id for r in chosen]
    if len(set(ids)) != len(ids):
        dup = next(i for i in ids if ids.count(i) > 1)
        raise EvalError(
            f"record id {dup!r} appears twice in the {cfg.split} split", hint="dedupe the dataset"
        )
    return chosen[: cfg.max_examples] if cfg.max_examples else chosen


def _file_stems(students: Mapping[str, StudentEndpoint]) -> dict[str, str]:
    """A safe, distinct file name per student (names like ``base (no prompt)`` are fine)."""
    if not students:
        raise EvalError("no student to evaluate", hint="give at least one student endpoint")
    stems: dict[str, str] = {}
    for name in students:
        stem = _UNSAFE.sub("_", name.strip()).strip("._") or "student"
        if stem in stems.values():
            raise ConfigError(
                f"student names {name!r} and "
                f"{next(n for n, s in stems.items() if s == stem)!r} map to the same file name",
                hint="give students names that differ in letters or digits",
            )
        stems[name] = stem
    return stems


# --------------------------------------------------------------------------- teacher


def _percentiles(lat: Sequence[float]) -> tuple[float | None, float | None]:
    if not lat:
        return None, None
    p50, p95 = np.percentile(np.asarray(lat, dtype=float), [50, 95])
    return float(p50), float(p95)


def _teacher_eval(
    records: Sequence[Record], cfg: EvalConfig, name: str, latency: Mapping[str, float] | None
) -> ModelEval:
    outputs = [r.completion for r in records]
    confidences = None
    if cfg.scorer == "label":
        confidences = [
            sequence_confidence([t.logprob for t in r.logprobs]) if r.logprobs else None
            for r in records
        ]
    metrics = output_metrics(
        records, outputs, cfg, compare_to_teacher=False, confidences=confidences
    )
    lat = [latency[r.id] for r in records if latency and r.id in latency]
    p50, p95 = _percentiles(lat)
    priced = [r.cost_usd for r in records if r.cost_usd is not None]
    usd = (sum(priced, Decimal(0)) / len(priced) * 1000) if priced else None
    first = records[0].provenance
    notes = []
    if len(priced) < len(records):
        notes.append(f"cost known for {len(priced)} of {len(records)} records")
    if not lat:
        notes.append(
            "latency not measured: the harvest recorded no per-request time (Batch API "
            "answers arrive together when the job ends)"
        )
    return ModelEval(
        name=name,
        role="teacher",
        kind="teacher",
        model=first.model if first else name,
        base_url=first.base_url if first else None,
        n_examples=len(records),
        metrics=metrics,
        timing=Timing(latency_ms=lat, p50_ms=p50, p95_ms=p95, requests=len(lat)),
        prompt_tokens_per_request=float(np.mean([r.usage.input_tokens for r in records])),
        completion_tokens_per_request=float(np.mean([r.usage.output_tokens for r in records])),
        usd_per_1k_requests=usd,
        cost_basis="API price per request from the harvest ledger"
        if priced
        else "unknown (unpriced)",
        confusion=confusion_matrix(records, outputs) if cfg.scorer == "label" else None,
        notes=notes,
    )


# --------------------------------------------------------------------------- student queries


def _answer_key(
    ep: StudentEndpoint, rec: Record, system_prompt: str | None, cfg: EvalConfig
) -> str:
    """Everything that changes a student's answer; a saved answer is reused only on a match."""
    body = {
        "base_url": ep.base_url,
        "model": ep.model,
        "system": system_prompt,
        "max_tokens": cfg.max_tokens,
        "messages": [m.model_dump() for m in rec.messages] if rec.messages else None,
        "prompt": rec.prompt,
        "logprobs": cfg.scorer == "label",
    }
    blob = json.dumps(body, sort_keys=True, ensure_ascii=False)
    return hashlib.sha256(blob.encode()).hexdigest()[:32]


def _chat_messages(rec: Record, system: str | None) -> list[dict[str, str]]:
    """The request the student gets: its system prompt (if any), then the record's turns; a
    plain ``prompt`` is one user turn, as in training (``train.collate.record_messages``), so
    the student is asked exactly what it was trained on."""
    turns = (
        rec.messages
        if rec.messages is not None
        else [Message(role="user", content=rec.prompt or "")]
    )
    msgs = [{"role": "system", "content": system}] if system else []
    return msgs + [{"role": m.role, "content": m.content} for m in turns]


async def _ask(
    client: Any, ep: StudentEndpoint, rec: Record, system: str | None, cfg: EvalConfig
) -> Answer:
    """One greedy request, timed from send to full answer (HTTP and server queue included).
    Label tasks ask for logprobs: the answer's probability is the confidence ECE bins by."""
    extra = {"logprobs": True} if cfg.scorer == "label" else {}
    start = time.perf_counter()
    resp = await client.chat.completions.create(
        model=ep.model,
        messages=_chat_messages(rec, system),
        temperature=0,
        max_tokens=cfg.max_tokens,
        **extra,
    )
    latency = (time.perf_counter() - start) * 1000
    if not getattr(resp, "choices", None):
        raise _MalformedAnswer("the answer has no choices")
    choice = resp.choices[0]
    content = choice.logprobs.content if choice.logprobs else None
    lps = [t.logprob for t in content] if content else None
    usage = resp.usage
    return Answer(
        record_id=rec.id,
        key="",
        output=choice.message.content or "",
        latency_ms=latency,
        prompt_tokens=usage.prompt_tokens if usage else None,
        completion_tokens=usage.completion_tokens if usage else None,
        confidence=sequence_confidence(lps) if lps else None,
    )


class _Sink:
    """Append-only JSONL of answers, flushed per line so a crash loses at most one answer.

    A ``segment`` line closes every run with its wall time, so throughput over resumed runs is
    the sum of the segments rather than a guess."""

    def __init__(self, path: Path, resume: bool) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        self.saved: dict[str, Answer] = {}
        self.segments: list[tuple[float, int]] = []
        if resume and path.is_file():
            self._load()
        elif path.exists():
            path.unlink()
        self._fh = path.open("a", encoding="utf-8")

    def _load(self) -> None:
        for line in self.path.read_text(encoding="utf-8").splitlines():
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                continue  # a torn last line from a crash
            if "segment" in row:
                self.segments.append(
                    (float(row["segment"]["wall_s"]), int(row["segment"]["requests"]))
                )
            elif "record_id" in row:
                try:
                    self.saved[row["key"]] = Answer(**row)
                except (TypeError, KeyError):
                    continue  # a row from another version: ask again rather than guess

    def write(self, ans: Answer) -> None:
        self._fh.write(json.dumps(ans.__dict__, ensure_ascii=False) + "\n")
        self._fh.flush()

    def close_segment(self, wall_s: float, requests: int) -> None:
        self.segments.append((wall_s, requests))
        self._fh.write(json.dumps({"segment": {"wall_s": wall_s, "requests": requests}}) + "\n")
        self._fh.close()


async def _query_student(
    name: str,
    ep: StudentEndpoint,
    records: Sequence[Record],
    system: str | None,
    cfg: EvalConfig,
    concurrency: int,
    sink: _Sink,
    progress: Any,
) -> dict[str, Answer]:
    """Answers by record id: reused ones (``resume``) and new ones."""
    from openai import APIError, AsyncOpenAI

    keys = {r.id: _answer_key(ep, r, system, cfg) for r in records}
    answers = {r.id: sink.saved[keys[r.id]] for r in records if keys[r.id] in sink.saved}
    todo = [r for r in records if r.id not in answers]
    task = progress.add_task(f"eval {name}", total=len(records), completed=len(answers))
    queue: asyncio.Queue[Record] = asyncio.Queue()
    for r in todo:
        queue.put_nowait(r)
    register_secret(ep.api_key)  # redacted by value in every message
    client = AsyncOpenAI(
        base_url=ep.base_url, api_key=ep.api_key or "unused", max_retries=0, timeout=ep.timeout_s
    )

    async def worker() -> None:
        while not queue.empty():
            rec = queue.get_nowait()
            try:
                ans = await _ask(client, ep, rec, system, cfg)
            except (APIError, _MalformedAnswer) as exc:
                raise _EndpointFailed(rec.id, exc) from exc
            ans = Answer(**{**ans.__dict__, "key": keys[rec.id]})
            sink.write(ans)
            answers[rec.id] = ans
            progress.advance(task)

    reused = len(answers)
    failed: _EndpointFailed | None = None
    start = time.perf_counter()
    try:
        async with client, asyncio.TaskGroup() as tg:
            for _ in range(min(concurrency, len(todo))):
                tg.create_task(worker())
    except* _EndpointFailed as group:
        failed = group.exceptions[0]  # type: ignore[assignment]
    finally:  # also on cancellation: the segment keeps throughput honest on resume
        wall = time.perf_counter() - start
        sink.close_segment(wall, len(answers) - reused)
    if failed is not None:
        _raise_endpoint_error(name, ep, failed, len(answers), len(records), sink.path)
    return answers


def _raise_endpoint_error(
    name: str, ep: StudentEndpoint, failed: _EndpointFailed, done: int, total: int, path: Path
) -> None:
    cause = failed.cause
    status = getattr(cause, "status_code", None)
    what = f"HTTP {status}" if status else type(cause).__name__
    if isinstance(cause, _MalformedAnswer):
        what = "not an OpenAI chat completion"
    raise EvalError(
        f"student {name!r} at {ep.base_url} (model {ep.model!r}) failed on record "
        f"{failed.record_id!r}: {what}: {str(cause)[:200]}; {done} of {total} answers are saved "
        f"in {path}",
        hint="check that the endpoint is up (apidistill serve ...) and re-run with resume "
        "to keep the saved answers",
    ) from cause


# --------------------------------------------------------------------------- student metrics


def _student_eval(
    name: str,
    ep: StudentEndpoint,
    records: Sequence[Record],
    answers: Mapping[str, Answer],
    segments: Sequence[tuple[float, int]],
    cfg: EvalConfig,
    concurrency: int,
    path: Path,
) -> ModelEval:
    ordered = [answers[r.id] for r in records]
    outputs = [a.output for a in ordered]
    confidences = [a.confidence for a in ordered] if cfg.scorer == "label" else None
    metrics = output_metrics(
        records, outputs, cfg, compare_to_teacher=True, confidences=confidences
    )
    lat = [a.latency_ms for a in ordered]
    p50, p95 = _percentiles(lat)
    wall = sum(w for w, _ in segments)
    requests = sum(n for _, n in segments)
    rate = ep.usd_per_hour if ep.usd_per_hour is not None else cfg.student_usd_per_hour
    usd = None
    if requests and wall > 0:
        usd = rate * Decimal(str(wall)) / Decimal(3600) / requests * 1000
    prompt = [a.prompt_tokens for a in ordered if a.prompt_tokens is not None]
    completion = [a.completion_tokens for a in ordered if a.completion_tokens is not None]
    return ModelEval(
        name=name,
        role="student",
        kind=ep.kind,
        model=ep.model,
        base_url=ep.base_url,
        params=ep.params,
        n_examples=len(records),
        metrics=metrics,
        timing=Timing(
            latency_ms=lat,
            p50_ms=p50,
            p95_ms=p95,
            throughput_rps=requests / wall if requests and wall > 0 else None,
            wall_s=wall,
            requests=requests,
            concurrency=concurrency,
        ),
        prompt_tokens_per_request=float(np.mean(prompt)) if prompt else None,
        completion_tokens_per_request=float(np.mean(completion)) if completion else None,
        usd_per_1k_requests=usd,
        cost_basis=f"${rate}/hour × {wall:.1f} s wall time for {requests} requests "
        f"at concurrency {concurrency}",
        confusion=confusion_matrix(records, outputs) if cfg.scorer == "label" else None,
        predictions_path=str(path),
    )


async def _add_local_kl(
    me: ModelEval,
    ep: StudentEndpoint,
    records: Sequence[Record],
    system: str | None,
    cfg: EvalConfig,
    same_vocab: bool,
) -> str | None:
    """Held-out KL and top-1 agreement of a local student, with the share of answer positions
    they were measured on; returns the one-line reason instead when nothing can be scored."""
    from apidistill.eval.scoring import NothingToScore, heldout_kl

    try:
        summary = await asyncio.to_thread(
            heldout_kl,
            ep.local_model or "",
            records,
            adapter=ep.adapter,
            system_prompt=system,
            samples=cfg.bootstrap_samples,
            seed=cfg.seed,
            same_vocab=same_vocab,
        )
    except NothingToScore as exc:
        return f"held-out KL not measured: {exc.message}"
    me.metrics["kl_nats_per_token"] = MetricValue.of(summary.kl_nats_per_token)
    me.metrics["top1_agreement"] = MetricValue.of(summary.top1_agreement)
    me.kl_coverage = round(summary.coverage, 6)
    me.kl_basis = _kl_basis(summary.records_scored, summary.records_aligned)
    me.notes.append(
        f"held-out KL on {summary.scored_positions} of {summary.positions} answer positions "
        f"({summary.coverage:.0%} coverage) of {summary.records_scored} records, scored on "
        f"{me.kl_basis}"
    )
    if summary.records_skipped:
        me.notes.append(
            f"held-out KL over {summary.records_scored} records ({summary.records_skipped} "
            "without teacher logprobs that spell the answer skipped)"
        )
    return None


def _kl_basis(scored: int, aligned: int) -> str:
    """What held-out KL was read on: the teacher's own token ids, byte-aligned positions
    (another tokenizer), or a mix of both."""
    if not aligned:
        return "teacher token ids"
    if aligned == scored:
        return "byte-aligned positions (the teacher's tokenizer differs)"
    return (
        f"teacher token ids ({scored - aligned} records) and byte-aligned positions "
        f"({aligned} records)"
    )


# --------------------------------------------------------------------------- entry point


async def run_eval(
    records: list[Record],
    students: dict[str, StudentEndpoint],
    cfg: EvalConfig,
    *,
    teacher_name: str = "teacher",
    system_prompts: dict[str, str | None] | None = None,
    concurrency: int = 8,
    out_dir: Path | None = None,
    teacher_latency_ms: Mapping[str, float] | None = None,
    resume: bool = False,
    same_vocab: bool = True,
) -> EvalResult:
    """Evaluate every student against the teacher's cached answers on the test split.

    ``system_prompts`` maps a student name to its short instruction (missing = none).
    ``teacher_latency_ms`` maps record id to the latency measured at harvest, for the
    comparison table. Answers go to ``out_dir/predictions/`` (a temporary folder when ``None``).
    ``same_vocab=False`` says the teacher's tokenizer is not the students' (held-out KL is
    then measured on byte-aligned positions only). A metric that cannot be measured for this
    teacher (held-out KL without logprobs) is left out with a one-line reason in
    ``EvalResult.notes``; the verdict uses the metrics that exist.
    Raises :class:`EvalError` for an empty split or an endpoint that fails; saved answers stay.
    """
    if concurrency < 1:
        raise ConfigError(f"concurrency must be at least 1, got {concurrency}")
    chosen = select_records(records, cfg)
    stems = _file_stems(students)
    systems = system_prompts or {}
    if out_dir is None:
        import tempfile

        out_dir = Path(tempfile.mkdtemp(prefix="apidistill-eval-"))
    teacher = _teacher_eval(chosen, cfg, teacher_name, teacher_latency_ms)
    evals: dict[str, ModelEval] = {}
    notes: list[str] = []
    no_kl = kl_unavailable_reason(chosen)  # known before any model is loaded
    with make_progress(unit="req") as progress:
        for name, ep in students.items():
            path = Path(out_dir) / "predictions" / f"{stems[name]}.jsonl"
            sink = _Sink(path, resume)
            answers = await _query_student(
                name, ep, chosen, systems.get(name), cfg, concurrency, sink, progress
            )
            me = _student_eval(name, ep, chosen, answers, sink.segments, cfg, concurrency, path)
            if ep.local_model and no_kl is None:
                why = await _add_local_kl(me, ep, chosen, systems.get(name), cfg, same_vocab)
                if why is not None and why not in notes:
                    notes.append(why)
            evals[name] = me
    if no_kl is not None and any(ep.local_model for ep in students.values()):
        notes.append(no_kl)
    result = EvalResult(
        scorer=cfg.scorer,
        fields=cfg.fields,
        split=cfg.split,
        n_records=len(chosen),
        n_with_gold=sum(r.gold is not None for r in chosen),
        thresholds=cfg.thresholds,
        teacher=teacher,
        students=evals,
        notes=notes,
    )
    result.selected = select_student(result)
    return result
