"""Losses: hand-computed values, equality with full-distribution losses when k = vocab,
padding invariance and finite gradients with -inf / padded teacher slots."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from apidistill.train.losses import (
    generalized_jsd,
    kd_mix,
    masked_mean,
    sequence_ce,
    topk_tail_kl,
    unbiased_sampled_token_loss,
)


def _full_topk(teacher_logits: torch.Tensor, temperature: float = 1.0):
    """Teacher top-k with k = vocab: ids sorted by probability, log-probs at T = 1."""
    lp = teacher_logits.log_softmax(-1)
    vals, ids = lp.sort(-1, descending=True)
    return ids, vals


def _full_kl(p_logits, q_logits, t=1.0):
    """KL(p‖q) per position on full distributions at temperature t, via F.kl_div."""
    lp = (p_logits / t).log_softmax(-1)
    lq = (q_logits / t).log_softmax(-1)
    return F.kl_div(lq, lp, log_target=True, reduction="none").sum(-1)


# --------------------------------------------------------------------------- hand values


def test_topk_tail_kl_hand_value():
    # q uniform over 4 tokens; teacher top-2 = {0: 0.5, 1: 0.25}, tail 0.25.
    # buckets: p = (0.5, 0.25, 0.25), q = (0.25, 0.25, 0.5)
    # KL = 0.5 ln 2 + 0 + 0.25 ln 0.5 = 0.25 ln 2
    logits = torch.zeros(1, 1, 4)
    ids = torch.tensor([[[0, 1]]])
    lps = torch.tensor([[[math.log(0.5), math.log(0.25)]]])
    mask = torch.ones(1, 1, dtype=torch.bool)
    kl = topk_tail_kl(logits, ids, lps, mask)
    assert kl.item() == pytest.approx(0.25 * math.log(2), abs=1e-6)
    # reverse: 0.25 ln(0.25/0.5) + 0 + 0.5 ln(0.5/0.25) = 0.25 ln 2
    rkl = topk_tail_kl(logits, ids, lps, mask, direction="reverse")
    assert rkl.item() == pytest.approx(0.25 * math.log(2), abs=1e-6)


def test_no_renormalization_of_topk():
    # Student exactly matching the teacher on S and the tail: zero loss. Renormalizing the
    # top-2 alone would instead report a positive loss for this student.
    q = torch.tensor([0.5, 0.25, 0.125, 0.125])
    logits = q.log().view(1, 1, 4)
    ids = torch.tensor([[[0, 1]]])
    lps = torch.tensor([[[math.log(0.5), math.log(0.25)]]])
    mask = torch.ones(1, 1, dtype=torch.bool)
    assert topk_tail_kl(logits, ids, lps, mask).item() == pytest.approx(0.0, abs=1e-6)


def test_sequence_ce_hand_value_and_ignore():
    logits = torch.log(torch.tensor([[[0.5, 0.5], [0.9, 0.1], [0.2, 0.8]]]))
    labels = torch.tensor([[0, -100, 1]])
    expected = -(math.log(0.5) + math.log(0.8)) / 2
    assert sequence_ce(logits, labels).item() == pytest.approx(expected, abs=1e-6)


def test_kd_mix():
    assert kd_mix(torch.tensor(2.0), torch.tensor(4.0), 0.25).item() == pytest.approx(2.5)
    with pytest.raises(ValueError):
        kd_mix(torch.tensor(1.0), torch.tensor(1.0), 1.5)


# --------------------------------------------------------------------------- full vocab


@pytest.mark.parametrize("temperature", [1.0, 2.0, 0.5])
def test_forward_kl_with_k_equal_vocab_is_exact(temperature):
    torch.manual_seed(0)
    b, t, v = 2, 3, 11
    s_logits = torch.randn(b, t, v) * 2
    t_logits = torch.randn(b, t, v) * 2
    ids, lps = _full_topk(t_logits)
    mask = torch.ones(b, t, dtype=torch.bool)
    got = topk_tail_kl(s_logits, ids, lps, mask, temperature=temperature, reduction="none")
    want = _full_kl(t_logits, s_logits, temperature) * temperature**2
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-4)


def test_reverse_kl_with_k_equal_vocab_is_exact():
    torch.manual_seed(1)
    s_logits, t_logits = torch.randn(2, 3, 9), torch.randn(2, 3, 9)
    ids, lps = _full_topk(t_logits)
    mask = torch.ones(2, 3, dtype=torch.bool)
    got = topk_tail_kl(s_logits, ids, lps, mask, direction="reverse", reduction="none")
    want = _full_kl(s_logits, t_logits)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("beta", [0.1, 0.5, 0.9])
def test_jsd_with_k_equal_vocab_is_exact(beta):
    torch.manual_seed(2)
    s_logits, t_logits = torch.randn(2, 4, 7), torch.randn(2, 4, 7)
    ids, lps = _full_topk(t_logits)
    mask = torch.ones(2, 4, dtype=torch.bool)
    got = generalized_jsd(s_logits, ids, lps, mask, beta=beta, reduction="none")
    p, q = t_logits.softmax(-1), s_logits.softmax(-1)
    m = beta * p + (1 - beta) * q
    want = beta * (p * (p / m).log()).sum(-1) + (1 - beta) * (q * (q / m).log()).sum(-1)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-4)


def test_topk_with_tail_equals_kl_of_coarsened_distributions():
    # k < vocab: the value is the exact KL between the (k+1)-bucket coarsenings.
    torch.manual_seed(3)
    v, k = 10, 3
    s_logits, t_logits = torch.randn(1, 1, v), torch.randn(1, 1, v)
    lp_full = t_logits.log_softmax(-1)
    vals, ids = lp_full.topk(k, -1)
    got = topk_tail_kl(s_logits, ids, vals, torch.ones(1, 1, dtype=torch.bool))
    p = lp_full.exp()[0, 0]
    q = s_logits.softmax(-1)[0, 0]
    s = ids[0, 0]
    pb = torch.cat([p[s], (1 - p[s].sum()).view(1)])
    qb = torch.cat([q[s], (1 - q[s].sum()).view(1)])
    assert got.item() == pytest.approx((pb * (pb / qb).log()).sum().item(), abs=1e-5)


def test_unbiased_sampled_token_matches_full_ce_in_expectation():
    # Enumerate every sampled token y with its teacher probability p_y.
    torch.manual_seed(4)
    v, k = 8, 3
    s_logits, t_logits = torch.randn(1, 1, v), torch.randn(1, 1, v)
    p = t_logits.softmax(-1)[0, 0]
    vals, ids = t_logits.log_softmax(-1).topk(k, -1)
    mask = torch.ones(1, 1, dtype=torch.bool)
    expected = 0.0
    for y in range(v):
        loss = unbiased_sampled_token_loss(s_logits, ids, vals, torch.tensor([[y]]), mask)
        expected += p[y].item() * loss.item()
    full_ce = -(p * s_logits.log_softmax(-1)[0, 0]).sum().item()
    assert expected == pytest.approx(full_ce, abs=1e-5)


def test_unbiased_hand_value():
    logits = torch.zeros(1, 1, 4)  # q = 1/4 everywhere
    ids = torch.tensor([[[0]]])
    lps = torch.tensor([[[math.log(0.5)]]])
    mask = torch.ones(1, 1, dtype=torch.bool)
    in_s = unbiased_sampled_token_loss(logits, ids, lps, torch.tensor([[0]]), mask)
    out_s = unbiased_sampled_token_loss(logits, ids, lps, torch.tensor([[2]]), mask)
    assert in_s.item() == pytest.approx(0.5 * math.log(4), abs=1e-6)
    assert out_s.item() == pytest.approx(1.5 * math.log(4), abs=1e-6)


# --------------------------------------------------------------------------- robustness


def _with_padding(ids, lps, pad_slots: int, pad_id: int):
    b, t, _ = ids.shape
    pad_ids = torch.full((b, t, pad_slots), pad_id, dtype=ids.dtype)
    pad_lps = torch.full((b, t, pad_slots), -math.inf)
    return torch.cat([ids, pad_ids], -1), torch.cat([lps, pad_lps], -1)


@pytest.mark.parametrize(
    "loss", ["forward", "reverse", "jsd", "unbiased"], ids=lambda s: f"loss={s}"
)
@pytest.mark.parametrize("pad_id", [0, -1, 10_000])
def test_padded_slots_do_not_change_value_and_grads_are_finite(loss, pad_id):
    torch.manual_seed(5)
    v, k = 12, 4
    t_logits = torch.randn(2, 5, v)
    vals, ids = t_logits.log_softmax(-1).topk(k, -1)
    mask = torch.ones(2, 5, dtype=torch.bool)
    mask[1, 3:] = False
    sampled = t_logits.argmax(-1)

    def run(ids_, lps_):
        s = torch.randn(2, 5, v, generator=torch.Generator().manual_seed(9)).requires_grad_()
        if loss == "unbiased":
            out = unbiased_sampled_token_loss(s, ids_, lps_, sampled, mask)
        elif loss == "jsd":
            out = generalized_jsd(s, ids_, lps_, mask)
        else:
            out = topk_tail_kl(s, ids_, lps_, mask, direction=loss)
        out.backward()
        return out.detach(), s.grad

    base, g_base = run(ids, vals)
    p_ids, p_lps = _with_padding(ids, vals, 3, pad_id)
    padded, g_pad = run(p_ids, p_lps)
    assert torch.isfinite(padded) and torch.isfinite(g_pad).all()
    torch.testing.assert_close(padded, base)
    torch.testing.assert_close(g_pad, g_base)
    assert g_pad[1, 3:].abs().sum() == 0  # masked positions get no gradient


def test_repeated_ids_count_once():
    logits = torch.zeros(1, 1, 4)
    mask = torch.ones(1, 1, dtype=torch.bool)
    one = topk_tail_kl(logits, torch.tensor([[[0]]]), torch.tensor([[[math.log(0.5)]]]), mask)
    rep = topk_tail_kl(
        logits, torch.tensor([[[0, 0]]]), torch.tensor([[[math.log(0.5), math.log(0.5)]]]), mask
    )
    assert rep.item() == pytest.approx(one.item(), abs=1e-7)


def test_all_slots_invalid_or_all_masked_gives_zero_with_finite_grad():
    s = torch.randn(1, 2, 5, requires_grad=True)
    ids = torch.zeros(1, 2, 3, dtype=torch.long)
    lps = torch.full((1, 2, 3), -math.inf)
    out = topk_tail_kl(s, ids, lps, torch.ones(1, 2, dtype=torch.bool))
    out.backward()
    assert out.item() == 0.0 and torch.isfinite(s.grad).all()
    s.grad = None
    out = sequence_ce(s, torch.full((1, 2), -100))
    out.backward()
    assert out.item() == 0.0 and torch.isfinite(s.grad).all()


def test_extreme_student_logits_keep_gradients_finite():
    s = torch.tensor([[[80.0, -80.0, -80.0, -80.0]]], requires_grad=True)
    ids = torch.tensor([[[1, 2, 3, 0]]])  # k = vocab, student nearly certain of token 0
    lps = torch.log(torch.tensor([[[0.97, 0.01, 0.01, 0.01]]]))
    for direction in ("forward", "reverse"):
        s.grad = None
        out = topk_tail_kl(s, ids, lps, torch.ones(1, 1, dtype=torch.bool), direction=direction)
        out.backward()
        assert torch.isfinite(out) and torch.isfinite(s.grad).all()


def test_token_mean_does_not_change_with_batch_padding():
    torch.manual_seed(6)
    v = 6
    s_logits, t_logits = torch.randn(1, 4, v), torch.randn(1, 4, v)
    vals, ids = t_logits.log_softmax(-1).topk(3, -1)
    mask = torch.ones(1, 4, dtype=torch.bool)
    short = topk_tail_kl(s_logits, ids, vals, mask)
    # the same sequence padded to length 9, plus an all-padding row
    pad = 5
    s2 = torch.cat([s_logits, torch.randn(1, pad, v)], 1).repeat(2, 1, 1)
    i2 = torch.cat([ids, torch.zeros(1, pad, 3, dtype=torch.long)], 1).repeat(2, 1, 1)
    l2 = torch.cat([vals, torch.full((1, pad, 3), -math.inf)], 1).repeat(2, 1, 1)
    m2 = torch.zeros(2, 4 + pad, dtype=torch.bool)
    m2[0, :4] = True
    torch.testing.assert_close(topk_tail_kl(s2, i2, l2, m2), short)
    labels = t_logits.argmax(-1)
    labels2 = torch.full((2, 4 + pad), -100)
    labels2[0, :4] = labels[0]
    torch.testing.assert_close(sequence_ce(s2, labels2), sequence_ce(s_logits, labels))


def test_masked_mean_per_sequence_weighs_examples_equally():
    values = torch.tensor([[1.0, 1.0, 1.0, 1.0], [5.0, 0.0, 0.0, 0.0]])
    mask = torch.tensor([[1, 1, 1, 1], [1, 0, 0, 0]], dtype=torch.bool)
    assert masked_mean(values, mask).item() == pytest.approx(9 / 5)
    assert masked_mean(values, mask, per="sequence").item() == pytest.approx(3.0)
