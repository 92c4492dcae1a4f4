"""Run students on the test split over HTTP and measure them next to the cached teacher.

The teacher is never called again: its answers, prompt tokens and cost per request come from
the harvest. Each student is queried through the official ``openai`` SDK, exactly as the team's
code will call it after the migration, so latency includes the HTTP hop and the server's
batching. Students run one after another (never at the same time) so they do not share the CPU
while being timed.

Students are asked through the harvest engine (:func:`apidistill.harvest.harvest`), the one
loop that sends requests: each student is an OpenAI-compatible "teacher" with its own journal,
``out_dir/predictions/<student>.sqlite``, so retries (transient 429/5xx/connection faults,
with backoff), concurrency limits and the journal work exactly as they do for a harvest, and
evaluation answers never mix with the training harvest. The journal is the durable record:
``resume=True`` answers every request it already holds without sending it again. Answers
are also appended to ``out_dir/predictions/<student>.jsonl`` as they arrive (a readable copy
for people and the report, with the wall time of each run for throughput). If an endpoint
still fails after the retries, what it answered stays in its journal and the error names the
endpoint, the record and the file.
"""

from __future__ import annotations

import asyncio
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
from apidistill.errors import ConfigError, EvalError, register_secret
from apidistill.eval.aggregate import confusion_matrix, output_metrics
from apidistill.eval.metrics import sequence_confidence
from apidistill.eval.scoring import kl_unavailable_reason
from apidistill.eval.types import EvalResult, MetricValue, ModelEval, StudentEndpoint, Timing
from apidistill.eval.verdict import select_student
from apidistill.progress import make_progress
from apidistill.records import Completion, GenerationParams, Message, Record, TeacherRequest

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


def _student_request(rec: Record, system: str | None, cfg: EvalConfig) -> TeacherRequest:
    """One greedy request as the engine sends it. Label tasks ask for the sampled tokens'
    logprobs: the answer's probability is the confidence ECE bins by."""
    return TeacherRequest(
        messages=[Message.model_validate(m) for m in _chat_messages(rec, system)],
        params=GenerationParams(
            max_tokens=cfg.max_tokens, temperature=0.0, logprobs=cfg.scorer == "label"
        ),
        prompt_id=rec.id,
    )


def _answer_of(rec: Record, key: str, comp: Completion) -> Answer:
    """What the eval keeps of one student answer."""
    lps = [t.logprob for t in comp.logprobs] if comp.logprobs else None
    has_usage = comp.usage.input_tokens or comp.usage.output_tokens
    return Answer(
        record_id=rec.id,
        key=key,
        output=comp.text,
        latency_ms=comp.latency_ms,
        prompt_tokens=comp.usage.input_tokens if has_usage else None,
        completion_tokens=comp.usage.output_tokens if has_usage else None,
        confidence=sequence_confidence(lps) if lps else None,
    )


class _Sink:
    """Append-only JSONL copy of the answers, flushed per line (the journal is the record).

    A ``segment`` line closes every run with its wall time, so throughput over resumed runs is
    the sum of the segments rather than a guess."""

    def __init__(self, path: Path, resume: bool) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
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
    journal: Path,
    max_retries: int,
) -> tuple[dict[str, Answer], Any]:
    """Answers by record id (from the journal when ``resume`` kept it, else sent through
    the harvest engine), and the engine's summary of this run."""
    from apidistill.config import HarvestConfig, TeacherConfig
    from apidistill.harvest import harvest
    from apidistill.teachers import make_teacher

    by_id = {r.id: r for r in records}
    requests = [_student_request(r, system, cfg) for r in records]
    task = progress.add_task(f"eval {name}", total=len(records))
    register_secret(ep.api_key)  # redacted by value in every message
    teacher = make_teacher(
        TeacherConfig(provider="openai_compatible", profile="generic", model=ep.model,
                      base_url=ep.base_url),
        api_key=ep.api_key or "unused",
        timeout_s=ep.timeout_s,
    )  # fmt: skip
    answers: dict[str, Answer] = {}
    failed: list[Any] = []
    sent = 0
    config = HarvestConfig(concurrency=concurrency, max_retries=max_retries, timeout_s=ep.timeout_s)
    stream = harvest(requests, teacher=teacher, journal=journal, config=config, progress=False)
    start = time.perf_counter()
    try:
        async for res in stream:
            rec = by_id[res.request.prompt_id or ""]
            if res.completion is None:
                failed.append(res)
                continue
            ans = answers[rec.id] = _answer_of(rec, res.key, res.completion)
            if not res.from_cache:
                sink.write(ans)
                sent += 1
            progress.advance(task)
    finally:  # also on cancellation: the segment keeps throughput honest on resume
        wall = time.perf_counter() - start
        sink.close_segment(wall, sent)
        await teacher.aclose()
    if failed:
        first = next(f for r in records for f in failed if f.request.prompt_id == r.id)
        _raise_endpoint_error(name, ep, first, len(answers), len(records), journal)
    return answers, stream.summary


def _first_line(text: str) -> str:
    """The engine's error without its harvest-specific hint lines (the eval gives its own)."""
    return text.splitlines()[0][:300] if text else "failed"


def _raise_endpoint_error(
    name: str, ep: StudentEndpoint, failed: Any, done: int, total: int, path: Path
) -> None:
    tries = f" after {failed.attempts} attempts" if failed.attempts > 1 else ""
    raise EvalError(
        f"student {name!r} at {ep.base_url} (model {ep.model!r}) failed on record "
        f"{failed.request.prompt_id!r}{tries}: {_first_line(failed.error or failed.reason)}; "
        f"{done} of {total} answers are saved in {path}",
        hint="check that the endpoint is up (apidistill serve ...) and re-run with resume "
        "to keep the saved answers",
    )


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
            device=cfg.device,
            dtype=cfg.dtype,
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


def _student_journal(predictions: Path, resume: bool) -> Path:
    """The student's own journal next to its predictions; without ``resume`` a fresh one
    (its answers cost nothing to ask again, and must not be reused)."""
    journal = predictions.with_suffix(".sqlite")
    journal.parent.mkdir(parents=True, exist_ok=True)
    if not resume:
        for p in (journal, *(Path(f"{journal}{s}") for s in ("-wal", "-shm", ".lock"))):
            p.unlink(missing_ok=True)
    return journal


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
    max_retries: int = 2,
) -> EvalResult:
    """Evaluate every student against the teacher's cached answers on the test split.

    ``system_prompts`` maps a student name to its short instruction (missing = none).
    ``teacher_latency_ms`` maps record id to the latency measured at harvest, for the
    comparison table. Answers go to ``out_dir/predictions/`` (a temporary folder when ``None``).
    ``same_vocab=False`` says the teacher's tokenizer is not the students' (held-out KL is
    then measured on byte-aligned positions only). A metric that cannot be measured for this
    teacher (held-out KL without logprobs) is left out with a one-line reason in
    ``EvalResult.notes``; the verdict uses the metrics that exist. ``max_retries``: retries of
    a transient failure per request (the harvest engine's policy and backoff).
    Raises :class:`EvalError` for an empty split or an endpoint that still fails after its
    retries; its answers stay in its journal and ``resume=True`` reuses them.
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
            journal = _student_journal(path, resume)
            sink = _Sink(path, resume)
            answers, summary = await _query_student(
                name, ep, chosen, systems.get(name), cfg, concurrency, sink, progress,
                journal, max_retries,
            )  # fmt: skip
            me = _student_eval(name, ep, chosen, answers, sink.segments, cfg, concurrency, path)
            if summary is not None and summary.sends > summary.done:
                me.notes.append(
                    f"{summary.sends - summary.done} of {summary.sends} requests were sent "
                    "again after a transient failure (retries with backoff)"
                )
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
