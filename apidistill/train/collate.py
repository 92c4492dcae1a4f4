"""Records → token tensors: the student's prompt, the teacher's answer as targets, padding.

The student's prompt is rendered by :func:`render_student_prompt`, the one function that
train, eval and serve agree on, so the student sees at serve time exactly the prompt it was
trained on.

**System prompt decision.** ``system_prompt=None`` renders the messages as they are, so the
tokenizer's chat template does what it always does — the SmolLM2 template then inserts its
built-in "You are a helpful AI assistant named SmolLM…" system turn. That is deliberate: the
serve engine applies the same template to the request messages, so a client that sends no
system message gets the identical prompt. A given ``system_prompt`` becomes a leading system
turn (unless the record already starts with one, which then wins); :mod:`.export` writes it
into the exported tokenizer's chat template as the default system turn, so serving the
export needs no client change either.

Targets: with the teacher's own tokenizer (same vocabulary, ``token_id`` set and spelling
the completion) the teacher's token ids are used directly, so every top-k list stays on its
position. Otherwise the completion is tokenized for the student and the teacher's top-k is
attached by byte alignment (:mod:`.align`). The end-of-turn token is appended (CE only,
unless the teacher's list carried its own end-of-turn entry with alternatives) — except
after an answer the teacher did not finish (``finish_reason == "length"``), which must not
teach the student to stop there.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from apidistill.data.compact import from_arrays
from apidistill.errors import TrainingError
from apidistill.records import Message, Record, TokenLogprob
from apidistill.train.align import StudentVocab, align_completion, teacher_token_bytes
from apidistill.train.compact_targets import (
    CompactLogprobs,
    CompactTargets,
    TableCache,
    compact_targets,
)

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

__all__ = [
    "BuiltDataset",
    "DistillCollator",
    "Example",
    "build_examples",
    "end_of_turn_id",
    "pack_examples",
    "record_messages",
    "render_student_prompt",
    "template_end_of_turn",
]

IGNORE_INDEX = -100


# --------------------------------------------------------------------------- prompt


def render_student_prompt(
    tokenizer: PreTrainedTokenizerBase,
    messages: Sequence[Message] | Sequence[dict[str, str]],
    system_prompt: str | None,
) -> list[int]:
    """Token ids of the student's prompt: chat template with ``add_generation_prompt=True``.

    ``system_prompt`` is prepended as a system turn when the messages do not start with one;
    ``None`` leaves the template's own default in charge (see the module docstring).
    """
    if not getattr(tokenizer, "chat_template", None):
        name = getattr(tokenizer, "name_or_path", "") or type(tokenizer).__name__
        raise TrainingError(
            f"the student tokenizer {name!r} has no chat template",
            hint="use an instruct/chat model as the student, or set tokenizer.chat_template "
            "(a Jinja string) in its tokenizer_config.json / chat_template.jinja",
        )
    msgs = [m.model_dump() if isinstance(m, Message) else dict(m) for m in messages]
    if system_prompt is not None and not (msgs and msgs[0].get("role") == "system"):
        msgs.insert(0, {"role": "system", "content": system_prompt})
    text = tokenizer.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def record_messages(record: Record) -> list[Message]:
    """The student's input turns: the record's messages, or its plain prompt as a user turn."""
    if record.messages is not None:
        return list(record.messages)
    return [Message(role="user", content=record.prompt or "")]


_TURN_PROBE = "APIDISTILLTURNPROBE"  # no whitespace: templates that trim content keep it


def end_of_turn_id(tokenizer: PreTrainedTokenizerBase) -> int:
    """The token the chat template puts right after an assistant turn's content.

    That is where a chat model must stop, and it is often not ``eos_token``: Qwen2.5 base
    ends text with ``<|endoftext|>`` but turns with ``<|im_end|>``, Llama 3 with
    ``<|eot_id|>`` (not ``<|end_of_text|>``), Gemma with ``<end_of_turn>`` (not ``<eos>``),
    Phi-3 with ``<|end|>`` (not ``<|endoftext|>``). It is found by rendering a probe
    conversation and reading the first token after the assistant's text; a template that
    puts no special token there (or cannot render the probe) falls back to ``eos_token``.
    """
    probed = template_end_of_turn(tokenizer)
    if probed is not None:
        return probed
    eos = tokenizer.eos_token_id
    if eos is None:
        raise TrainingError(
            "the student tokenizer has no eos_token and its chat template ends an assistant "
            "turn with no special token, so the student could never learn to stop",
            hint="set eos_token in the tokenizer config (e.g. '<|im_end|>' for ChatML models)",
        )
    return int(eos)


def template_end_of_turn(tokenizer: PreTrainedTokenizerBase) -> int | None:
    """The special token the chat template writes after an assistant turn, or None."""
    if not getattr(tokenizer, "chat_template", None):
        return None
    probe = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": _TURN_PROBE}]
    try:
        text = tokenizer.apply_chat_template(probe, tokenize=False)
    except Exception:  # a template with its own rules (roles, alternation): eos decides
        return None
    if not isinstance(text, str) or _TURN_PROBE not in text:
        return None
    after = text[text.rindex(_TURN_PROBE) + len(_TURN_PROBE) :]
    ids = tokenizer(after, add_special_tokens=False)["input_ids"] if after else []
    special = set(tokenizer.all_special_ids) | {
        int(i) for i, t in tokenizer.added_tokens_decoder.items() if t.special
    }
    return int(ids[0]) if ids and int(ids[0]) in special else None


# --------------------------------------------------------------------------- examples


@dataclass
class Example:
    """One training row. Position ``t`` of ``topk_*``/``kd_mask`` is the teacher's
    distribution over the token at ``t`` (predicted from position ``t − 1``), like labels."""

    input_ids: torch.Tensor  # long [L]
    labels: torch.Tensor  # long [L], -100 outside the assistant turn
    topk_ids: torch.Tensor | None = None  # long [L, K]
    topk_logprobs: torch.Tensor | None = None  # float [L, K], -inf = no slot
    kd_mask: torch.Tensor | None = None  # bool [L]
    position_ids: torch.Tensor | None = None  # long [L], set by packing only

    def __len__(self) -> int:
        return int(self.input_ids.shape[0])


@dataclass
class BuiltDataset:
    """Examples plus what it took to make them (reported by the trainer)."""

    examples: list[Example]
    completion_tokens: int = 0
    supervised_tokens: int = 0
    dropped_long_prompt: int = 0
    truncated: int = 0
    misaligned: int = 0
    cross_tokenizer_records: int = 0
    number_split_example: str | None = None
    warnings: list[str] = field(default_factory=list)

    @property
    def supervised_share(self) -> float:
        """Share of completion tokens (end-of-turn excluded) with a teacher top-k target."""
        return self.supervised_tokens / self.completion_tokens if self.completion_tokens else 0.0


def _same_vocab_targets(
    logprobs: list[TokenLogprob], completion: str, vocab: StudentVocab, eot: int, top_k: int
) -> tuple[list[int], list[list[tuple[int, float]]]] | None:
    """Targets straight from teacher ids, or None when the ids do not spell the completion."""
    if any(t.token_id is None for t in logprobs):
        return None
    ids = [int(t.token_id) for t in logprobs]  # type: ignore[arg-type]
    entries = list(logprobs)
    if ids and ids[-1] == eot:
        ids, entries = ids[:-1], entries[:-1]
    pieces = [vocab.token_bytes[i] if 0 <= i < len(vocab.token_bytes) else None for i in ids]
    if any(p is None for p in pieces) or b"".join(pieces) != completion.encode():  # type: ignore[arg-type]
        return None
    tops = [_direct_top(t, i, vocab, top_k) for t, i in zip(entries, ids, strict=True)]
    return ids, tops


def _direct_top(tok: TokenLogprob, sid: int, vocab: StudentVocab, top_k: int):
    out: list[tuple[int, float]] = []
    seen: set[int] = set()
    for alt in tok.top[:top_k]:
        aid = (
            alt.token_id if alt.token_id is not None else vocab.index.get(teacher_token_bytes(alt))
        )
        if aid is not None and aid not in seen:
            seen.add(aid)
            out.append((int(aid), float(alt.logprob)))
    if sid not in seen and len(out) < top_k:
        out.append((sid, float(tok.logprob)))
    return out


def _eot_top(logprobs: list[TokenLogprob], eot: int, top_k: int, vocab: StudentVocab):
    """The teacher's alternatives at its own end-of-turn entry, when the list carries one."""
    if not logprobs or logprobs[-1].token_id != eot:
        return []
    return _direct_top(logprobs[-1], eot, vocab, top_k)


def _to_tensors(
    prompt: list[int], target: list[int], tops: list[list[tuple[int, float]]] | None, k: int
) -> Example:
    ids = torch.tensor(prompt + target, dtype=torch.long)
    labels = torch.full_like(ids, IGNORE_INDEX)
    labels[len(prompt) :] = ids[len(prompt) :]
    if tops is None:
        return Example(ids, labels)
    n = len(ids)
    top_ids = torch.zeros(n, k, dtype=torch.long)
    top_lps = torch.full((n, k), -math.inf)
    for j, slots in enumerate(tops):
        for s, (tid, lp) in enumerate(slots[:k]):
            top_ids[len(prompt) + j, s] = tid
            top_lps[len(prompt) + j, s] = lp
    kd_mask = torch.isfinite(top_lps).any(-1)
    return Example(ids, labels, top_ids, top_lps, kd_mask)


def build_examples(
    records: Sequence[Record],
    tokenizer: PreTrainedTokenizerBase,
    *,
    system_prompt: str | None,
    max_length: int,
    top_k: int = 20,
    with_kd: bool = False,
    same_vocab: bool = True,
    vocab: StudentVocab | None = None,
    compact: Mapping[str, CompactLogprobs] | None = None,
) -> BuiltDataset:
    """Tokenize records into :class:`Example` rows.

    ``with_kd`` attaches teacher top-k targets; ``same_vocab`` allows using the teacher's
    token ids as they are (checked per record: they must spell the completion).
    Prompts longer than ``max_length − 1`` are dropped (counted); long answers are cut.
    ``compact`` holds, by record id, logprobs still in the dataset's compact arrays
    (:func:`apidistill.data.store.iter_compact_records`, whose records carry none): on the
    same-tokenizer path they go straight into tensors (:mod:`.compact_targets`), elsewhere
    they are rebuilt for that one record. The examples are the same either way.
    """
    vocab = vocab or StudentVocab.build(tokenizer)
    eot = end_of_turn_id(tokenizer)
    cache = TableCache(vocab)
    out = BuiltDataset([])
    for rec in records:
        prompt = render_student_prompt(tokenizer, record_messages(rec), system_prompt)
        if len(prompt) >= max_length:
            out.dropped_long_prompt += 1
            continue
        stored = compact.get(rec.id) if compact is not None else None
        if stored is not None and same_vocab and stored.arrays.idx.size:
            fast = compact_targets(stored, rec.completion, vocab, cache, eot, top_k)
            if fast is not None:
                out.examples.append(
                    _compact_example(out, rec, prompt, fast, eot, max_length, with_kd)
                )
                continue
        direct = None
        lps = rec.logprobs
        if stored is not None and lps is None:
            lps = from_arrays(stored.arrays, stored.table)
        if lps and same_vocab:
            direct = _same_vocab_targets(lps, rec.completion, vocab, eot, top_k)
        eot_top: list[tuple[int, float]] = []
        if direct is not None:
            target, tops = direct
            eot_top = _eot_top(lps or [], eot, top_k, vocab)
        else:
            al = align_completion(
                rec.completion, lps if with_kd else None, tokenizer, vocab, top_k=top_k
            )
            target, tops = al.student_ids, al.topk
            if with_kd and lps:
                out.cross_tokenizer_records += 1
                out.misaligned += 0 if al.teacher_text_ok else 1
                out.number_split_example = out.number_split_example or al.number_split
        answer_len = len(target)
        if rec.finish_reason != "length":  # a cut-off answer must not teach stopping there
            target, tops = [*target, eot], [*tops, eot_top]
        room = max_length - len(prompt)
        if len(target) > room:
            out.truncated += 1
            target, tops = target[:room], tops[:room]
        body = tops[: min(answer_len, len(target))]
        out.completion_tokens += len(body)
        out.supervised_tokens += sum(1 for t in body if t)
        out.examples.append(_to_tensors(prompt, target, tops if with_kd else None, top_k))
    _summarize_warnings(out, len(records))
    return out


def _compact_example(
    out: BuiltDataset,
    rec: Record,
    prompt: list[int],
    fast: CompactTargets,
    eot: int,
    max_length: int,
    with_kd: bool,
) -> Example:
    """:func:`build_examples`' same-tokenizer branch on arrays: the same cut, counts and
    tensors as the object path, without a Python object per position."""
    n = fast.ids.size
    rows = n + (rec.finish_reason != "length")  # a cut-off answer must not teach stopping
    room = max_length - len(prompt)
    if rows > room:
        out.truncated += 1
        rows = room
    body = min(n, rows)
    out.completion_tokens += body
    out.supervised_tokens += int((fast.filled[:body] > 0).sum())
    target = np.concatenate([fast.ids, np.array([eot], np.int64)])[:rows]
    ids = torch.cat([torch.tensor(prompt, dtype=torch.long), torch.from_numpy(target)])
    labels = torch.full_like(ids, IGNORE_INDEX)
    labels[len(prompt) :] = ids[len(prompt) :]
    if not with_kd:
        return Example(ids, labels)
    k = fast.top_ids.shape[1]
    top_ids = torch.zeros(len(ids), k, dtype=torch.long)
    top_lps = torch.full((len(ids), k), -math.inf)
    top_ids[len(prompt) :] = torch.from_numpy(fast.top_ids[:rows])
    top_lps[len(prompt) :] = torch.from_numpy(fast.top_logprobs[:rows])
    return Example(ids, labels, top_ids, top_lps, torch.isfinite(top_lps).any(-1))


def _summarize_warnings(out: BuiltDataset, total: int) -> None:
    if out.dropped_long_prompt:
        out.warnings.append(
            f"{out.dropped_long_prompt} of {total} records dropped: the prompt alone is longer "
            "than training.max_length (raise it, or shorten the inputs)"
        )
    if out.truncated:
        out.warnings.append(
            f"{out.truncated} records cut at training.max_length; their answers lose the end "
            "(raise training.max_length to keep them whole)"
        )
    if out.misaligned:
        out.warnings.append(
            f"{out.misaligned} records: the teacher's logprob tokens do not spell the completion "
            "text (was it edited after harvest?); those records train on sequence loss only"
        )
    if out.number_split_example:
        out.warnings.append(
            "teacher and student tokenizers split numbers differently, e.g. "
            f"{out.number_split_example}; inside numbers only shared boundaries get logprob "
            "supervision"
        )


# --------------------------------------------------------------------------- packing


def pack_examples(examples: Sequence[Example], max_length: int) -> list[Example]:
    """Concatenate consecutive examples into rows of at most ``max_length`` tokens.

    Each packed row carries ``position_ids`` restarting at 0 per example; with no attention
    mask the model then attends only within each example (transformers builds a
    block-diagonal mask from restarting positions, but only when the forward pass runs with
    ``use_cache=False``, as :class:`~apidistill.train.trainer.DistillTrainer` does). Labels
    never cross examples: every
    example starts with prompt tokens, whose labels are -100.
    """
    rows: list[list[Example]] = []
    size = 0
    for ex in examples:
        if not rows or size + len(ex) > max_length:
            rows.append([])
            size = 0
        rows[-1].append(ex)
        size += len(ex)
    packed = []
    for row in rows:
        cat = _concat(row)
        cat.position_ids = torch.cat([torch.arange(len(e)) for e in row])
        packed.append(cat)
    return packed


def _concat(row: list[Example]) -> Example:
    def cat(name: str) -> torch.Tensor | None:
        parts = [getattr(e, name) for e in row]
        return None if any(p is None for p in parts) else torch.cat(parts)

    return Example(
        cat("input_ids"),  # type: ignore[arg-type]
        cat("labels"),  # type: ignore[arg-type]
        cat("topk_ids"),
        cat("topk_logprobs"),
        cat("kd_mask"),
    )


# --------------------------------------------------------------------------- collator


class DistillCollator:
    """Right-pads a list of :class:`Example` into the batch dict the trainer consumes.

    Keys: ``input_ids``, ``attention_mask`` (or ``position_ids`` for packed rows),
    ``labels``, and with KD targets ``teacher_topk_ids``, ``teacher_topk_logprobs``,
    ``kd_mask``. Every example of a batch must agree on having KD targets.
    """

    def __init__(self, pad_token_id: int, top_k: int) -> None:
        self.pad_token_id = pad_token_id
        self.top_k = top_k

    def __call__(self, batch: Sequence[Example]) -> dict[str, Any]:
        n = max(len(e) for e in batch)
        b = len(batch)
        input_ids = torch.full((b, n), self.pad_token_id, dtype=torch.long)
        labels = torch.full((b, n), IGNORE_INDEX, dtype=torch.long)
        attn = torch.zeros((b, n), dtype=torch.long)
        for i, e in enumerate(batch):
            input_ids[i, : len(e)] = e.input_ids
            labels[i, : len(e)] = e.labels
            attn[i, : len(e)] = 1
        out: dict[str, Any] = {"input_ids": input_ids, "labels": labels}
        if batch[0].position_ids is not None:
            pos = torch.zeros((b, n), dtype=torch.long)
            for i, e in enumerate(batch):
                pos[i, : len(e)] = e.position_ids  # type: ignore[assignment]
                pos[i, len(e) :] = torch.arange(n - len(e))  # padding = one more segment
            out["position_ids"] = pos
        else:
            out["attention_mask"] = attn
        if batch[0].topk_ids is not None:
            k = self.top_k
            ids = torch.zeros((b, n, k), dtype=torch.long)
            lps = torch.full((b, n, k), -math.inf)
            mask = torch.zeros((b, n), dtype=torch.bool)
            for i, e in enumerate(batch):
                ids[i, : len(e)] = e.topk_ids  # type: ignore[assignment]
                lps[i, : len(e)] = e.topk_logprobs  # type: ignore[assignment]
                mask[i, : len(e)] = e.kd_mask  # type: ignore[assignment]
            out.update(teacher_topk_ids=ids, teacher_topk_logprobs=lps, kd_mask=mask)
        return out
