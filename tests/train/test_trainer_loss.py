"""DistillTrainer's loss on a tiny random-init Llama built in code: gradient accumulation
normalizes by the step's token counts (4 × 2 = 8), and the chunked loss from hidden states
equals the loss from the full logits."""

from __future__ import annotations

import math

import pytest
import torch
from transformers import LlamaForCausalLM, TrainingArguments

from apidistill.config import KDConfig
from apidistill.train.collate import DistillCollator, Example
from apidistill.train.trainer import DistillTrainer

from .helpers import char_tokenizer, tiny_llama

K = 4
ANSWER_LENGTHS = [1, 2, 3, 5, 8, 13, 2, 21]  # uneven on purpose


@pytest.fixture(scope="module")
def tok():
    return char_tokenizer()


def _model(tok) -> LlamaForCausalLM:
    assert len(tok) == len(char_tokenizer())  # tiny_llama is built on this vocabulary
    return tiny_llama(hidden=32, seed=0)


def _examples(vocab: int) -> list[Example]:
    g = torch.Generator().manual_seed(3)
    out = []
    for i, n_answer in enumerate(ANSWER_LENGTHS):
        n_prompt = 3 + i % 4
        ids = torch.randint(4, vocab, (n_prompt + n_answer,), generator=g)
        labels = ids.clone()
        labels[:n_prompt] = -100
        top_ids = torch.randint(4, vocab, (len(ids), K), generator=g)
        top_ids[:, 0] = ids
        top_lps = (torch.randn(len(ids), K, generator=g) - 2).log_softmax(-1) + math.log(0.9)
        kd_mask = labels != -100
        kd_mask[n_prompt + n_answer - 1] = i % 2 == 0  # some answers end without a target
        top_lps[~kd_mask] = -math.inf
        out.append(Example(ids, labels, top_ids, top_lps, kd_mask))
    return out


def _trainer(tok, tmp_path, *, batch, accum, method, chunk=None, temperature=1.0):
    args = TrainingArguments(
        output_dir=str(tmp_path / f"b{batch}a{accum}"),
        per_device_train_batch_size=batch,
        gradient_accumulation_steps=accum,
        max_steps=1,
        learning_rate=1.0,
        optim="sgd",
        lr_scheduler_type="constant",
        weight_decay=0.0,
        max_grad_norm=0.0,
        save_strategy="no",
        logging_steps=1,
        report_to="none",
        disable_tqdm=True,
        remove_unused_columns=False,
        label_names=["labels"],
        use_cpu=True,
        seed=0,
    )
    kw = {} if chunk is None else {"loss_chunk_elements": chunk}
    model = _model(tok)
    return DistillTrainer(
        model=model,
        args=args,
        train_dataset=_examples(len(tok)),
        data_collator=DistillCollator(tok.pad_token_id, K),
        kd=KDConfig(top_k=K, alpha=0.5, temperature=temperature),
        use_kd=method == "logprob_kd",
        **kw,
    )


def _update(trainer) -> dict[str, torch.Tensor]:
    before = {n: p.detach().clone() for n, p in trainer.model.named_parameters()}
    trainer.train()
    return {n: p.detach() - before[n] for n, p in trainer.model.named_parameters()}


def _assert_same(a, b):
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=1e-4, atol=1e-6, msg=name)


@pytest.mark.parametrize("method", ["sequence_kd", "logprob_kd"])
def test_accumulation_4x2_equals_batch_8(tok, tmp_path, method):
    one_batch = _update(_trainer(tok, tmp_path, batch=8, accum=1, method=method))
    accumulated_trainer = _trainer(tok, tmp_path, batch=2, accum=4, method=method)
    accumulated = _update(accumulated_trainer)
    _assert_same(accumulated, one_batch)
    # the logged loss is the step's global mean too
    log8 = _trainer(tok, tmp_path, batch=8, accum=1, method=method)
    log8.train()
    loss8 = next(h["loss"] for h in log8.state.log_history if "loss" in h)
    loss42 = next(h["loss"] for h in accumulated_trainer.state.log_history if "loss" in h)
    assert loss42 == pytest.approx(loss8, rel=1e-4)


def test_mean_of_micro_batch_means_would_differ(tok, tmp_path, monkeypatch):
    # The control: without the step's counts the Trainer averages micro-batch means, which
    # on these uneven answers moves the weights differently from batch 8.
    one_batch = _update(_trainer(tok, tmp_path, batch=8, accum=1, method="logprob_kd"))
    monkeypatch.setattr(DistillTrainer, "_count_step_tokens", lambda *a, **k: None)
    old_style = _update(_trainer(tok, tmp_path, batch=2, accum=4, method="logprob_kd"))
    with pytest.raises(AssertionError):
        _assert_same(old_style, one_batch)


@pytest.mark.parametrize("temperature", [1.0, 2.0])
def test_trainer_chunked_loss_equals_full_logits(tok, tmp_path, temperature):
    vocab = len(tok)
    chunked = _trainer(
        tok,
        tmp_path,
        batch=8,
        accum=1,
        method="logprob_kd",
        chunk=3 * vocab,
        temperature=temperature,
    )
    full = _trainer(
        tok, tmp_path, batch=8, accum=1, method="logprob_kd", chunk=0, temperature=temperature
    )
    a, b = _update(chunked), _update(full)
    assert chunked._chunk_ok is True  # the chunked path ran (3 positions per chunk)
    assert full._chunk_ok is None  # and the reference did not
    _assert_same(a, b)
    la = next(h for h in chunked.state.log_history if "loss" in h)
    lb = next(h for h in full.state.log_history if "loss" in h)
    for key in ("loss", "ce", "kd", "top1_agreement"):
        assert la[key] == pytest.approx(lb[key], rel=1e-4), key
