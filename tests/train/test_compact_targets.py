"""Compact arrays straight into tensors (issue #21 item 4): the examples built from a
dataset's compact logprob arrays equal, tensor for tensor, the ones built from the pydantic
records ``load_records`` rebuilds, on a small dataset that holds every case the targets care
about; so do the batches and the loss."""

from __future__ import annotations

import random

import pytest
import torch

from apidistill.data.store import iter_compact_records, load_records, save_records
from apidistill.records import Message, Record, TokenLogprob, TopLogprob
from apidistill.train.align import StudentVocab
from apidistill.train.collate import DistillCollator, build_examples
from apidistill.train.compact_targets import CompactLogprobs
from apidistill.train.token_loss import LossSpec, TokenTargets, logits_loss_sums

from .helpers import char_tokenizer

TOP_K = 4


def _entry(vocab: StudentVocab, tid: int | None, lp: float, text: str | None = None, **kw):
    raw = vocab.token_bytes[tid] if tid is not None else (text or "").encode()
    return dict(
        token_id=tid,
        token=(raw or b"").decode("utf-8", "replace"),
        bytes=list(raw) if raw else None,
        logprob=lp,
        **kw,
    )


def _records(tok, n: int = 40, seed: int = 0) -> list[Record]:
    """Same-tokenizer records with: duplicate alternatives, an alternative known only by its
    bytes, a sampled token missing from its list, lists longer than ``TOP_K``, a trailing
    end-of-turn entry (with alternatives), cut-off answers, ids that do not spell the
    completion (object fallback), API-style records without ids, and no logprobs at all."""
    rng = random.Random(seed)
    vocab = StudentVocab.build(tok)
    eos = tok.eos_token_id
    out = []
    for r in range(n):
        completion = "".join(rng.choice("abc xyz12") for _ in range(rng.randint(1, 14)))
        ids = tok(completion, add_special_tokens=False)["input_ids"]
        kind = r % 8
        if kind == 7:
            out.append(
                Record(
                    id=f"r{r}", messages=[Message(role="user", content="q")], completion=completion
                )
            )
            continue
        if r % 3 == 0:
            ids = [*ids, eos]
        positions = []
        for tid in ids:
            alts = rng.sample(range(4, 40), rng.randint(0, 6))
            if rng.random() < 0.6:
                alts.insert(rng.randint(0, len(alts)), tid)
            if alts and rng.random() < 0.3:
                alts.insert(rng.randint(0, len(alts)), alts[0])  # a duplicate
            lps = sorted((-rng.random() * 5 for _ in alts), reverse=True)
            top = []
            for a, lp in zip(alts, lps, strict=True):
                known = kind != 5 or rng.random() < 0.5  # kind 5: some alternatives by bytes
                top.append(
                    TopLogprob(
                        **_entry(
                            vocab,
                            a if known else None,
                            lp,
                            text=(vocab.token_bytes[a] or b"").decode(),
                        )
                    )
                )
            sampled_id = None if kind == 6 else tid  # kind 6: an API teacher (no ids)
            positions.append(
                TokenLogprob(
                    **_entry(
                        vocab,
                        sampled_id,
                        -rng.random(),
                        top=top,
                        text=(vocab.token_bytes[tid] or b"?").decode(),
                    )
                )
            )
        if kind == 4 and positions:  # ids that spell another text: the object path decides
            positions[0] = positions[0].model_copy(update={"token_id": 5})
        out.append(
            Record(
                id=f"r{r}",
                messages=[Message(role="user", content=f"ticket {r}")],
                completion=completion,
                logprobs=positions,
                finish_reason="length" if kind == 2 else "stop",
            )
        )
    return out


def _build(tok, records, compact=None, **kw):
    return build_examples(
        records,
        tok,
        system_prompt=None,
        top_k=TOP_K,
        vocab=StudentVocab.build(tok),
        compact=compact,
        **kw,
    )


@pytest.mark.parametrize("codec", ["fp16", "q8"])
@pytest.mark.parametrize(
    ("with_kd", "max_length", "same_vocab"),
    [(True, 256, True), (True, 40, True), (False, 256, True), (True, 256, False)],
)
def test_compact_path_builds_the_same_examples_as_the_object_path(
    tmp_path, codec, with_kd, max_length, same_vocab
):
    tok = char_tokenizer()
    save_records(_records(tok), tmp_path / "ds", codec=codec, shard_records=16)
    old = _build(
        tok,
        load_records(tmp_path / "ds"),
        with_kd=with_kd,
        max_length=max_length,
        same_vocab=same_vocab,
    )
    light, compact = [], {}
    for rec, arr, table in iter_compact_records(tmp_path / "ds"):
        assert rec.logprobs is None
        light.append(rec)
        if arr is not None:
            compact[rec.id] = CompactLogprobs(arr, table)
    new = _build(tok, light, compact, with_kd=with_kd, max_length=max_length, same_vocab=same_vocab)

    for name in (
        "completion_tokens",
        "supervised_tokens",
        "dropped_long_prompt",
        "truncated",
        "misaligned",
        "cross_tokenizer_records",
        "number_split_example",
        "warnings",
    ):
        assert getattr(new, name) == getattr(old, name), name
    assert len(new.examples) == len(old.examples) == 40
    for a, b in zip(old.examples, new.examples, strict=True):
        for name in ("input_ids", "labels", "topk_ids", "topk_logprobs", "kd_mask"):
            x, y = getattr(a, name), getattr(b, name)
            assert (x is None) == (y is None), name
            if x is not None:
                assert x.dtype == y.dtype and torch.equal(x, y), name
    if with_kd and same_vocab:
        assert old.supervised_tokens > 0

    collate = DistillCollator(0, TOP_K)
    for start in range(0, 40, 8):
        ba, bb = collate(old.examples[start : start + 8]), collate(new.examples[start : start + 8])
        assert ba.keys() == bb.keys()
        assert all(torch.equal(ba[k], bb[k]) for k in ba)
        if with_kd:
            la, lb = _loss(ba, start, len(tok)), _loss(bb, start, len(tok))
            assert torch.equal(la.ce, lb.ce) and torch.equal(la.kd, lb.kd)


def _loss(batch, seed: int, vocab: int):
    """CE + forward-KL sums of one batch against random student logits."""
    sel = batch["labels"][:, 1:] != -100
    logits = torch.randn(int(sel.sum()), vocab, generator=torch.Generator().manual_seed(seed))
    targets = TokenTargets(
        batch["labels"][:, 1:][sel],
        batch["teacher_topk_ids"][:, 1:][sel],
        batch["teacher_topk_logprobs"][:, 1:][sel],
        batch["kd_mask"][:, 1:][sel],
    )
    return logits_loss_sums(logits, targets, LossSpec("forward_kl"))


def test_compact_path_makes_no_object_per_position(tmp_path, monkeypatch):
    """On the same-tokenizer path no TokenLogprob is rebuilt (the point of the fast path)."""
    import apidistill.train.collate as collate_mod

    tok = char_tokenizer()
    records = [
        r
        for r in _records(tok)
        if r.logprobs and r.id not in {f"r{i}" for i in range(40) if i % 8 in (4, 6)}
    ]
    save_records(records, tmp_path / "ds")
    calls = []
    monkeypatch.setattr(collate_mod, "from_arrays", lambda *a: calls.append(a) or [])
    light, compact = [], {}
    for rec, arr, table in iter_compact_records(tmp_path / "ds"):
        light.append(rec)
        compact[rec.id] = CompactLogprobs(arr, table)
    built = _build(tok, light, compact, with_kd=True, max_length=256)
    assert len(built.examples) == len(records) and not calls
