"""CE + KD sums in chunks of positions equal the unchunked ones (values and gradients), and
the chunked path never creates a tensor of N × V elements."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
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


# --------------------------------------------------------------------------- fused op


def _reference(x, labels, ids, lps, kind, beta, t):
    """The same terms through log_softmax + autograd (the plain formulation)."""
    from apidistill.train.losses import bucket_divergence, sampled_token_ce

    logq = x.log_softmax(-1)
    ce = -logq.gather(-1, labels.unsqueeze(-1)).squeeze(-1)
    if kind == "unbiased":
        kd, _ = sampled_token_ce(logq, ids, lps, labels)
    else:
        d, _ = bucket_divergence(
            (x / t).log_softmax(-1), ids, lps, kind=kind, beta=beta, teacher_temperature=t
        )
        kd = d * t**2
    return ce, kd


@pytest.mark.parametrize(
    ("kind", "t"),
    [
        ("forward", 1.0),
        ("forward", 0.5),
        ("forward", 2.0),
        ("reverse", 1.0),
        ("reverse", 4.0),
        ("jsd", 1.0),
        ("jsd", 2.0),
        ("unbiased", 1.0),
    ],
)
def test_fused_ce_and_kd_equals_the_log_softmax_formulation(kind, t):
    from apidistill.train.losses import ce_and_kd

    g = torch.Generator().manual_seed(11)
    v, k, n = 40, 6, 9
    x0 = torch.randn(n, v, generator=g) * 3
    x0[4, :k] += 60.0  # a student almost certain inside S: tail < 1e-20 (exact path)
    ids = torch.stack([torch.randperm(v, generator=g)[:k] for _ in range(n)])
    lps = (torch.randn(n, k, generator=g)).log_softmax(-1) + math.log(0.9)
    x0[4] = x0[4].index_put((ids[4],), x0[4, :k])  # those large logits sit on S's ids
    lps[1, 3:] = -math.inf  # padded slots
    ids[2, 2] = ids[2, 1]  # a repeated id
    lps[3] = -math.inf  # no teacher slot at all
    ids[5, 0] = -1  # an id outside the vocabulary
    labels = torch.randint(0, v, (n,), generator=g)
    labels[6] = ids[6, 0]
    full_ids = torch.arange(v).repeat(n, 1)  # k = vocabulary: empty tail

    for tid, tlp in ((ids, lps), (full_ids, x0.log_softmax(-1))):
        xa = x0.clone().requires_grad_()
        ce, kd, has = ce_and_kd(xa, labels, tid, tlp, kind=kind, beta=0.3, temperature=t)
        (ce * 0.4 + torch.where(has, kd, 0) * 0.6).sum().backward()
        xb = x0.clone().requires_grad_()
        ce_r, kd_r = _reference(xb, labels, tid, tlp, kind, 0.3, t)
        (ce_r * 0.4 + torch.where(has, kd_r, 0) * 0.6).sum().backward()
        torch.testing.assert_close(ce, ce_r, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(
            torch.where(has, kd, 0), torch.where(has, kd_r, 0), rtol=1e-4, atol=1e-5
        )
        torch.testing.assert_close(xa.grad, xb.grad, rtol=1e-4, atol=1e-5)


@settings(max_examples=60, deadline=None)
@given(
    vocab=st.integers(2, 30),
    k=st.integers(1, 8),
    kind=st.sampled_from(["forward", "reverse", "jsd", "unbiased"]),
    t=st.sampled_from([0.5, 1.0, 2.0, 4.0]),
    scale=st.sampled_from([0.1, 3.0, 30.0]),
    seed=st.integers(0, 2**16),
)
def test_fused_op_matches_the_plain_formulation_everywhere(vocab, k, kind, t, scale, seed):
    # Any vocabulary size, k (also ≥ vocabulary, repeats and out-of-range ids included),
    # logit scale (peaked students with tails far below 1e-20) and temperature.
    from apidistill.train.losses import ce_and_kd

    g = torch.Generator().manual_seed(seed)
    n = 3
    x0 = torch.randn(n, vocab, generator=g) * scale
    ids = torch.randint(-1, vocab + 1, (n, k), generator=g)
    lps = torch.randn(n, k, generator=g).log_softmax(-1) + math.log(0.8)
    lps[0, -1] = -math.inf
    labels = torch.randint(0, vocab, (n,), generator=g)
    t = 1.0 if kind == "unbiased" else t
    xa = x0.clone().requires_grad_()
    ce, kd, has = ce_and_kd(xa, labels, ids, lps, kind=kind, beta=0.4, temperature=t)
    kd = torch.where(has, kd, 0)
    (ce + kd).sum().backward()
    xb = x0.clone().requires_grad_()
    ce_r, kd_r = _reference(xb, labels, ids, lps, kind, 0.4, t)
    kd_r = torch.where(has, kd_r, 0)
    (ce_r + kd_r).sum().backward()
    assert torch.isfinite(kd).all() and torch.isfinite(xa.grad).all()
    torch.testing.assert_close(ce, ce_r, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(kd, kd_r, rtol=1e-3, atol=1e-4)
    torch.testing.assert_close(xa.grad, xb.grad, rtol=1e-3, atol=1e-4)


# --------------------------------------------------------------------------- held-out scores


def _full_vocabulary_kl(logits_row, ids, lps):
    """KL(P‖Q) over the k + 1 buckets, written out from the full softmax (no shared code):
    P = the teacher's listed probabilities + the rest in one tail; Q = the student's softmax
    over the whole vocabulary, summed into the same buckets."""
    q = logits_row.double().softmax(-1)
    keep = [(int(i), float(lp)) for i, lp in zip(ids, lps, strict=True) if lp > -math.inf]
    keep = list({i: lp for i, lp in keep}.items())
    p_top = [math.exp(lp) for _, lp in keep]
    q_top = [float(q[i]) for i, _ in keep]
    p_tail, q_tail = max(0.0, 1 - sum(p_top)), max(0.0, 1 - sum(q_top))
    kl = sum(p * math.log(p / qq) for p, qq in zip(p_top, q_top, strict=True) if p > 0)
    return kl + (p_tail * math.log(p_tail / q_tail) if p_tail > 1e-12 else 0.0)


def test_teacher_forced_scores_match_a_full_vocabulary_reference():
    """The one held-out KL (train's teacher_fit and eval's score_records both call it), in
    chunks of 4 rows picked anywhere in ``[B, L, V]`` logits."""
    from apidistill.train.token_loss import teacher_forced_scores

    g = torch.Generator().manual_seed(5)
    b, length = 3, 9
    logits = torch.randn(b, length, V, generator=g) * 2
    rows = torch.tensor([0, 2, 3, 5, 8, 9, 10, 17, 20, 21, 22, 25, 26])
    n = rows.numel()
    t_lp = (torch.randn(n, V, generator=g) * 3).log_softmax(-1)
    vals, ids = t_lp.topk(K, -1)
    vals[1, 3:] = -math.inf  # padded slots
    vals[4] = -math.inf  # no teacher slot
    labels = torch.randint(0, V, (n,), generator=g)
    kd_mask = torch.ones(n, dtype=torch.bool)
    kd_mask[6] = False
    got = teacher_forced_scores(
        logits, rows, TokenTargets(labels, ids, vals, kd_mask), chunk_rows=4
    )
    flat = logits.reshape(-1, V)
    for j, r in enumerate(rows.tolist()):
        has = j not in (4, 6)
        assert bool(got.has_kl[j]) is has
        want = _full_vocabulary_kl(flat[r], ids[j], vals[j]) if has else 0.0
        assert float(got.kl[j]) == pytest.approx(want, rel=1e-4, abs=1e-6)
        assert float(got.ce[j]) == pytest.approx(-float(flat[r].log_softmax(-1)[labels[j]]))
        assert bool(got.top1[j]) is (int(flat[r].argmax()) == int(labels[j]))


class _LargestAllocation(_LargestTensor):
    """Like :class:`_LargestTensor`, but views (outputs aliasing an input) allocate nothing."""

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if any(r.alias_info is not None for r in func._schema.returns):
            return out
        for t in out if isinstance(out, tuple | list) else (out,):
            if isinstance(t, torch.Tensor):
                self.largest = max(self.largest, t.numel())
        return out


def test_teacher_forced_scores_never_hold_n_by_v():
    from apidistill.train.token_loss import teacher_forced_scores

    _, _, targets = _problem(3)
    logits = torch.randn(1, N, V)
    with _LargestAllocation() as control:
        logits[0].log_softmax(-1)
    assert control.largest == N * V  # the control: the plain formulation allocates N × V
    with _LargestAllocation() as mode:
        teacher_forced_scores(logits, torch.arange(N), targets, chunk_rows=4)
    assert mode.largest <= 4 * V  # the input logits exist already; nothing N × V is made
