"""CE + KD sums in chunks of positions equal the unchunked ones (values and gradients), and
the chunked path never creates a tensor of N × V elements."""

from __future__ import annotations

import math

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from apidistill.train.losses import teacher_target_mask
from apidistill.train.token_loss import (
    LossSpec,
    TokenTargets,
    chunk_rows_for,
    chunked_loss_sums,
    logits_loss_sums,
)

N, H, V, K = 37, 16, 301, 5


def _problem(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    hidden = torch.randn(N, H, generator=g)
    head = torch.nn.Linear(H, V, bias=False)
    with torch.no_grad():
        head.weight.copy_(torch.randn(V, H, generator=g) * 0.5)
    t_lp = (torch.randn(N, V, generator=g) * 3).log_softmax(-1)
    vals, ids = t_lp.topk(K, -1)
    vals[3, 2:] = -math.inf  # padded slots
    vals[5] = -math.inf  # a position without any teacher slot
    labels = ids[:, 0].clone()
    mask = teacher_target_mask(ids, vals, V)
    mask[7] = False  # KD masked there
    return hidden, head, TokenTargets(labels, ids, vals, mask)


SPECS = [
    LossSpec(),
    LossSpec("forward_kl"),
    LossSpec("forward_kl", temperature=2.0),
    LossSpec("reverse_kl", temperature=0.5),
    LossSpec("jsd", beta=0.3, temperature=4.0),
    LossSpec("unbiased"),
]


@pytest.mark.parametrize("spec", SPECS, ids=lambda s: f"{s.kd}-T{s.temperature}")
def test_chunked_equals_unchunked_values_and_gradients(spec):
    hidden, head, targets = _problem()

    def grads(fn):
        h = hidden.clone().requires_grad_()
        head.zero_grad()
        sums = fn(h)
        (sums.ce * 0.3 + sums.kd * 0.7).backward()
        return sums, h.grad.clone(), head.weight.grad.clone()

    full, gh_full, gw_full = grads(lambda h: logits_loss_sums(head(h), targets, spec))
    part, gh_part, gw_part = grads(lambda h: chunked_loss_sums(h, head, targets, spec, 6))
    torch.testing.assert_close(part.ce, full.ce, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(part.kd, full.kd, rtol=1e-5, atol=1e-5)
    assert int(part.agree) == int(full.agree)
    torch.testing.assert_close(gh_part, gh_full, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(gw_part, gw_full, rtol=1e-4, atol=1e-6)
    if spec.kd is not None:
        assert full.kd.item() > 0


def test_kd_sum_skips_masked_positions():
    hidden, head, targets = _problem(1)
    spec = LossSpec("forward_kl")
    logits = head(hidden)
    all_on = targets._replace(kd_mask=torch.ones(N, dtype=torch.bool))
    per = [
        logits_loss_sums(logits[i : i + 1], all_on.rows(i, i + 1), spec).kd.item() for i in range(N)
    ]
    want = sum(v for v, m in zip(per, targets.kd_mask.tolist(), strict=True) if m)
    assert logits_loss_sums(logits, targets, spec).kd.item() == pytest.approx(want, rel=1e-5)


class _LargestTensor(TorchDispatchMode):
    """Records the largest tensor any operator returns (forward and backward)."""

    def __init__(self) -> None:
        super().__init__()
        self.largest = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, tuple | list) else (out,):
            if isinstance(t, torch.Tensor):
                self.largest = max(self.largest, t.numel())
        return out


@pytest.mark.parametrize("spec", [LossSpec(), LossSpec("forward_kl", temperature=2.0)])
def test_chunked_path_never_builds_n_by_v(spec):
    hidden, head, targets = _problem(2)
    rows = 4

    def largest(fn) -> int:
        h = hidden.clone().requires_grad_()
        with _LargestTensor() as mode:
            sums = fn(h)
            (sums.ce + sums.kd).backward()
        return mode.largest

    unchunked = largest(lambda h: logits_loss_sums(head(h), targets, spec))
    chunked = largest(lambda h: chunked_loss_sums(h, head, targets, spec, rows))
    assert unchunked >= N * V  # the control: the plain path holds all N rows of logits
    assert chunked <= max(rows * V, V * H)  # one chunk's logits, or the head's weight grad


def test_chunk_rows_for():
    assert chunk_rows_for(151_936, 1 << 23) == 55
    assert chunk_rows_for(10**9, 1 << 23) == 1
