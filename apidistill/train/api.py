"""``train_student``: records in, a trained adapter (or full model) folder out.

Every check that can fail is done before the model is loaded, so a bad setting costs
seconds, not a training run: empty data, logprob KD without logprobs, a student tokenizer
without a chat template, LoRA targets that match nothing, early stopping without a
validation split, QLoRA or an attention kernel this machine cannot run.

Layout of ``out_dir``::

    checkpoints/checkpoint-N/   Trainer checkpoints (safetensors, optimizer, RNG state)
    adapter/  or  model/        the final LoRA adapter (+ base_model.txt) or full model,
                                with the tokenizer; loadable by apidistill.model_loading.load_model
    run_fingerprint.json        what the checkpoints were trained on (guards resuming)
    train_result.json           :class:`TrainResult`

Resuming: with ``resume=True`` a finished run with the same fingerprint is returned as is,
and an interrupted one continues from its last checkpoint on the same loss curve.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import time
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict, Field

from apidistill.config import StudentConfig, TrainingConfig
from apidistill.errors import TrainingError
from apidistill.records import Record

if TYPE_CHECKING:
    from apidistill.train.compact_targets import CompactLogprobs

__all__ = ["TrainResult", "train_student"]

RESULT_FILE = "train_result.json"
FINGERPRINT_FILE = "run_fingerprint.json"


class TrainResult(BaseModel):
    """What a training run produced; saved as ``out_dir/train_result.json``."""

    model_config = ConfigDict(extra="forbid")

    out_dir: Path
    adapter_dir: Path | None = None  # LoRA runs
    model_dir: Path | None = None  # full fine-tuning runs
    base_model: str
    method: str
    system_prompt: str | None = None
    steps: int = 0
    processes: int = 1  # training processes (one DDP/FSDP/DeepSpeed group under a launcher)
    train_seconds: float = 0.0
    train_examples: int = 0
    supervised_share: float = 0.0  # share of answer tokens with a teacher top-k target
    # records whose teacher logprobs were aligned to student tokens by UTF-8 bytes (the
    # teacher's tokenizer differs, e.g. an API teacher's o200k_base); the rest used token ids
    byte_aligned_records: int = 0
    eval_metrics: dict[str, float] = Field(default_factory=dict)
    log_history: list[dict[str, Any]] = Field(default_factory=list)
    warnings: list[str] = Field(default_factory=list)

    @property
    def final_dir(self) -> Path:
        """The folder to load, export or serve (adapter or full model)."""
        out = self.adapter_dir or self.model_dir
        if out is None:
            raise TrainingError(f"{self.out_dir}: the training result names no output folder")
        return out

    @classmethod
    def load(cls, out_dir: Path) -> TrainResult:
        path = Path(out_dir) / RESULT_FILE
        if not path.is_file():
            raise TrainingError(
                f"{path}: no training result here", hint="run `apidistill train` first"
            )
        return cls.model_validate_json(path.read_text(encoding="utf-8"))


# --------------------------------------------------------------------------- checks


def _check_inputs(
    train: list[Record],
    training: TrainingConfig,
    has_val: bool,
    compact: Mapping[str, CompactLogprobs],
) -> list[str]:
    if not train:
        raise TrainingError(
            "the training set is empty",
            hint="check the dataset split (dataset.splits.train) and the filters that ran",
        )
    notes = []
    if training.method == "logprob_kd":
        lacking = [r.id for r in train if not r.logprobs and not _stored(compact, r.id)]
        if len(lacking) == len(train):
            raise TrainingError(
                "training.method is logprob_kd but no training record has teacher logprobs "
                f"(e.g. record {lacking[0]!r})",
                hint="harvest with harvest.logprobs: true and harvest.top_logprobs: 20, or use "
                "training.method: sequence_kd (harvest.on_missing_logprobs: sequence_kd "
                "falls back explicitly for teachers without logprobs)",
            )
        if lacking:
            notes.append(
                f"{len(lacking)} of {len(train)} records have no teacher logprobs (e.g. "
                f"{lacking[0]!r}); they train on sequence loss only"
            )
        if not any(t.top for r in train for t in (r.logprobs or [])) and not any(
            bool(compact[r.id].arrays.top_idx.any()) for r in train if _stored(compact, r.id)
        ):
            notes.append(
                "the teacher logprobs carry no top alternatives (harvest.top_logprobs was 0): "
                "logprob KD sees only the sampled token and the tail"
            )
    if training.early_stopping_patience and not has_val:
        raise TrainingError(
            "training.early_stopping_patience needs a validation set",
            hint="set dataset.splits.validation > 0, or remove early_stopping_patience",
        )
    return notes


def _is_api_encoding(name: str) -> bool:
    """An OpenAI BPE encoding (``o200k_base``, ``cl100k_base``, ...): an API teacher's
    vocabulary, known to be no Hugging Face student's."""
    import bpe_openai

    return name in bpe_openai.list_encoding_names()


def _same_vocab(student_tok: Any, student: StudentConfig, teacher_tokenizer: str | None) -> bool:
    """Whether teacher token ids may be read as student ids (still checked per record)."""
    if teacher_tokenizer is None or teacher_tokenizer == student.model:
        return True
    if _is_api_encoding(teacher_tokenizer):  # known and different: bytes, without a warning
        return False
    from apidistill.errors import ModelLoadError
    from apidistill.model_loading import load_tokenizer

    try:
        teacher = load_tokenizer(teacher_tokenizer)
    except ModelLoadError as exc:  # byte alignment needs no teacher tokenizer: carry on
        warnings.warn(
            f"teacher tokenizer {teacher_tokenizer!r} not loadable ({exc.message}); "
            "aligning teacher logprobs by bytes",
            stacklevel=3,
        )
        return False
    return teacher.get_vocab() == student_tok.get_vocab()


# Settings added after runs were already trained, with the value that keeps the old
# behaviour: left at that value they stay out of the fingerprint, so a run folder trained
# before they existed still resumes (or is returned finished) instead of being refused.
_LATER_DEFAULTS: dict[str, Any] = {
    "dtype": "float32",
    "attn_implementation": None,
    "gradient_checkpointing": False,
    "quantization": None,
    "trainer_args": {},
    "candidates": [],
}


def _settings(section: Any) -> dict[str, Any]:
    """``section.model_dump()`` without the later settings left at their old behaviour."""
    return {
        k: v
        for k, v in section.model_dump().items()
        if not (k in _LATER_DEFAULTS and v == _LATER_DEFAULTS[k])
    }


def _stored(compact: Mapping[str, CompactLogprobs], rid: str) -> bool:
    c = compact.get(rid)
    return c is not None and bool(c.arrays.idx.size)


def _fingerprint(train: list[Record], validation: list[Record] | None, **parts: Any) -> str:
    """The fingerprint of full records (see :class:`_Fingerprint`)."""
    return _Fingerprint(train, validation, {}, parts).value


class _Fingerprint:
    """What a run folder's checkpoints were trained on.

    ``value`` hashes each record's JSON; a record whose logprobs are still in the compact
    arrays contributes its arrays instead (:func:`compact_digest`: the same data gives the
    same hash however the dataset was sharded). A folder written before the compact path
    existed holds the hash of the full records' JSON: :meth:`matches` accepts that too,
    rebuilding the records' logprobs once to compute it.
    """

    def __init__(
        self,
        train: list[Record],
        validation: list[Record] | None,
        compact: Mapping[str, CompactLogprobs],
        parts: dict[str, Any],
    ) -> None:
        self._records = (train, validation)
        self._compact = compact
        self._parts = parts
        self.value = self._hash(full=False)

    def _hash(self, *, full: bool) -> str:
        from apidistill.data.compact import from_arrays
        from apidistill.train.compact_targets import compact_digest

        train, validation = self._records
        h = hashlib.sha256()
        for rec in [*train, None, *(validation or [])]:
            if rec is None:
                h.update(b"|")
                continue
            stored = self._compact.get(rec.id) if rec.logprobs is None else None
            if stored is not None and full:
                rec = rec.model_copy(update={"logprobs": from_arrays(stored.arrays, stored.table)})
                stored = None
            h.update(rec.model_dump_json(exclude={"provenance"}).encode())
            if stored is not None:
                h.update(b"#" + compact_digest(stored))
        h.update(json.dumps(self._parts, sort_keys=True, default=str).encode())
        return h.hexdigest()

    def matches(self, stored: str | None) -> bool:
        if stored is None:
            return False
        if stored == self.value:
            return True
        if not any(r.logprobs is None and r.id in self._compact for r in self._all()):
            return False
        return stored == self._hash(full=True)

    def _all(self) -> list[Record]:
        train, validation = self._records
        return [*train, *(validation or [])]


# --------------------------------------------------------------------------- main


def train_student(
    train: list[Record],
    validation: list[Record] | None,
    *,
    student: StudentConfig,
    training: TrainingConfig,
    out_dir: Path,
    teacher_tokenizer: str | None = None,
    resume: bool = True,
    progress: bool = True,
    compact: Mapping[str, CompactLogprobs] | None = None,
) -> TrainResult:
    """Distill ``train`` into ``student`` (LoRA or full fine-tuning) under ``out_dir``.

    ``teacher_tokenizer`` names the teacher's tokenizer when known: a different one (or an
    OpenAI encoding name such as ``o200k_base``) switches logprob targets to byte alignment;
    records whose logprobs carry no token ids (API teachers) are aligned by bytes anyway.
    ``resume`` continues an interrupted run (or returns a finished one) with the same data
    and settings; ``resume=False`` starts over. ``compact`` holds, by record id, logprobs
    left in the dataset's compact arrays (:func:`.compact_targets.load_compact_split`; those
    records carry none): same-tokenizer targets are read from them straight into tensors.
    """
    from apidistill.model_loading import load_tokenizer
    from apidistill.train.align import StudentVocab
    from apidistill.train.collate import build_examples, record_messages, render_student_prompt
    from apidistill.train.student_model import check_student_settings

    out_dir = Path(out_dir)
    compact = compact or {}
    notes = _check_inputs(train, training, bool(validation), compact)
    check_student_settings(training)  # QLoRA/kernels this machine lacks: before any load
    tok = load_tokenizer(student.model)
    render_student_prompt(tok, record_messages(train[0]), student.system_prompt)  # template?
    use_kd = training.method == "logprob_kd"
    same = _same_vocab(tok, student, teacher_tokenizer)
    vocab = StudentVocab.build(tok)
    kw = dict(
        system_prompt=student.system_prompt,
        max_length=training.max_length,
        top_k=training.kd.top_k,
        with_kd=use_kd,
        same_vocab=same,
        vocab=vocab,
        compact=compact,
    )
    built = build_examples(train, tok, **kw)  # type: ignore[arg-type]
    if not built.examples:
        raise TrainingError(
            f"no training example is left after tokenization ({built.warnings[0]})"
            if built.warnings
            else "no training example is left after tokenization"
        )
    val_built = build_examples(validation, tok, **kw) if validation else None  # type: ignore[arg-type]
    notes += built.warnings
    for note in notes:
        warnings.warn(note, stacklevel=2)

    fp = _Fingerprint(
        train,
        validation,
        compact,
        dict(
            student=_settings(student),
            training=_settings(training),
            teacher_tokenizer=teacher_tokenizer,
        ),
    )
    done = _finished(out_dir, fp) if resume else None
    if done is not None:
        return done
    ckpt = _prepare_out_dir(out_dir, fp, resume)

    from apidistill.train.session import run_training

    started = time.perf_counter()
    outcome = run_training(
        built,
        val_built,
        tokenizer=tok,
        student=student,
        training=training,
        out_dir=out_dir,
        resume_from=ckpt,
        progress=progress,
    )
    result = TrainResult(
        out_dir=out_dir,
        adapter_dir=outcome.final_dir if not training.full_finetune else None,
        model_dir=outcome.final_dir if training.full_finetune else None,
        base_model=student.model,
        method=training.method,
        system_prompt=student.system_prompt,
        steps=outcome.steps,
        processes=outcome.processes,
        train_seconds=round(time.perf_counter() - started, 3),
        train_examples=len(built.examples),
        supervised_share=round(built.supervised_share, 6) if use_kd else 0.0,
        byte_aligned_records=built.cross_tokenizer_records,
        eval_metrics=outcome.eval_metrics,
        log_history=outcome.log_history,
        warnings=notes,
    )
    if outcome.is_main_process:
        (out_dir / RESULT_FILE).write_text(result.model_dump_json(indent=2), encoding="utf-8")
    return result


def _finished(out_dir: Path, fp: _Fingerprint) -> TrainResult | None:
    res, fpf = out_dir / RESULT_FILE, out_dir / FINGERPRINT_FILE
    if not (res.is_file() and fpf.is_file()):
        return None
    if not fp.matches(json.loads(fpf.read_text()).get("fingerprint")):
        return None
    result = TrainResult.load(out_dir)
    return (
        result
        if (result.final_dir / "config.json").exists()
        or (result.final_dir / "adapter_config.json").exists()
        else None
    )


def _prepare_out_dir(out_dir: Path, fp: _Fingerprint, resume: bool) -> Path | None:
    """Return the checkpoint to resume from (or None), after checking it is ours.

    Under ``accelerate launch`` every process runs this: all check, only the main process
    writes, and the others wait for it.
    """
    from accelerate import PartialState

    from apidistill.train.session import no_accelerator

    state = PartialState(cpu=no_accelerator())
    ckpts = out_dir / "checkpoints"
    fpf = out_dir / FINGERPRINT_FILE
    latest = _latest_checkpoint(ckpts) if resume else None
    if latest is not None:
        old = json.loads(fpf.read_text()).get("fingerprint") if fpf.is_file() else None
        if not fp.matches(old):
            raise TrainingError(
                f"{ckpts}: checkpoints from a run with different data or settings",
                hint="resume with the original settings, pass --no-resume to start over, "
                "or use another output folder",
            )
    if state.is_main_process:
        if not resume:
            shutil.rmtree(ckpts, ignore_errors=True)
            (out_dir / RESULT_FILE).unlink(missing_ok=True)
        out_dir.mkdir(parents=True, exist_ok=True)
        fpf.write_text(json.dumps({"fingerprint": fp.value}), encoding="utf-8")
    state.wait_for_everyone()
    return latest


def _latest_checkpoint(ckpts: Path) -> Path | None:
    found = []
    for p in ckpts.glob("checkpoint-*"):
        suffix = p.name.rsplit("-", 1)[-1]
        if suffix.isdigit() and _state_written(p):
            found.append((int(suffix), p))
    return max(found)[1] if found else None


def _state_written(ckpt: Path) -> bool:
    """The Trainer writes trainer_state.json last; a kill while writing it leaves it empty."""
    try:
        json.loads((ckpt / "trainer_state.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return True
