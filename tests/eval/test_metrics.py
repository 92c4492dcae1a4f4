"""Scorers and aggregates on hand-computed cases, including bootstrap intervals on fixed seeds."""

from __future__ import annotations

import math

import numpy as np
import pytest

from apidistill.errors import EvalError
from apidistill.eval.metrics import (
    bootstrap_ci,
    bootstrap_ratio_ci,
    calibration_ci,
    chrf,
    exact_match,
    expected_calibration_error,
    fields_match,
    is_refusal,
    label_match,
    parse_fields,
    rouge_l,
    score,
    sequence_confidence,
    token_kl_estimates,
    valid_structure,
)

DEMO = "order_id: 123456\nproduct: Harbor Steel Water Bottle"
REFUSALS = [r"(?i)\bI(?:'m| am) sorry\b", r"(?i)\bI can(?:not|'t) help\b"]


# --------------------------------------------------------------------------- scorers


def test_exact_ignores_case_and_whitespace_only() -> None:
    assert exact_match("  Order_ID: 1\n", "order_id:   1") == 1.0
    assert exact_match("order_id: 1", "order_id: 12") == 0.0


def test_label_ignores_quotes_and_trailing_punctuation() -> None:
    assert label_match('"Billing."', "billing") == 1.0
    assert label_match("billing", "shipping") == 0.0


def test_parse_fields_reads_lines_json_and_fenced_json() -> None:
    want = {"order_id": "123456", "product": "Harbor Steel Water Bottle"}
    assert parse_fields(DEMO) == want
    assert parse_fields('{"order_id": 123456, "product": "Harbor Steel Water Bottle"}') == want
    assert parse_fields('```json\n{"Order ID": "123456"}\n```') == {"order_id": "123456"}
    assert parse_fields("no structure here") == {}


def test_fields_match_compares_only_listed_fields_after_normalization() -> None:
    fields = ["order_id", "product"]
    as_json = '{"order_id": 123456, "product": "harbor steel water bottle", "extra": 1}'
    assert fields_match(as_json, DEMO, fields) == 1.0
    assert fields_match("order_id: 123456\nproduct: Harbor Steel Bottle", DEMO, fields) == 0.0
    assert fields_match("order_id: 123456", DEMO, fields) == 0.0  # product missing
    assert fields_match("order_id: 123456", DEMO, ["order_id"]) == 1.0
    with pytest.raises(EvalError, match=r"eval\.fields"):
        fields_match(DEMO, DEMO, [])


def test_valid_structure_needs_every_field_and_json_when_asked() -> None:
    assert valid_structure(DEMO, ["order_id", "product"])
    assert not valid_structure("order_id: 1", ["order_id", "product"])
    assert not valid_structure(DEMO, ["order_id"], json_only=True)
    assert valid_structure('{"order_id": 1}', ["order_id"], json_only=True)
    assert not valid_structure("Sure! Here you go.", None)


def test_rouge_l_hand_computed() -> None:
    # LCS("the cat sat on the mat", "the cat on the mat") = 5 → P = 5/6, R = 1, F1 = 10/11.
    assert rouge_l("The cat sat on the mat", "the cat on the mat") == pytest.approx(10 / 11)
    assert rouge_l("a b", "c d") == 0.0
    assert rouge_l("", "") == 1.0


def test_chrf_hand_computed() -> None:
    assert chrf("ab", "a b") == pytest.approx(1.0)  # whitespace is ignored
    # "ab" vs "ac": unigrams P = R = 1/2, bigrams P = R = 0 → P̄ = R̄ = 1/4 → F2 = 1/4.
    assert chrf("ab", "ac") == pytest.approx(0.25)
    # "abc" vs "ab": orders 1, 2 only (no trigram in "ab"): P̄ = (2/3 + 1/2)/2 = 7/12, R̄ = 1,
    # F2 = 5·(7/12)·1 / (4·7/12 + 1) = 35/40.
    assert chrf("abc", "ab") == pytest.approx(35 / 40)
    assert chrf("", "abc") == 0.0


def test_score_dispatch_and_unknown_scorer() -> None:
    assert score("fields", DEMO, DEMO, ["product"]) == 1.0
    assert score("exact", "A", "a") == 1.0
    with pytest.raises(EvalError, match="unknown scorer"):
        score("bleu", "a", "a")


def test_refusal_patterns() -> None:
    assert is_refusal("I'm sorry, I can't help with that.", REFUSALS)
    assert not is_refusal("order_id: 1", REFUSALS)


# --------------------------------------------------------------------------- bootstrap


def test_bootstrap_constant_values_give_a_point_interval() -> None:
    est = bootstrap_ci([1.0] * 7, samples=500, seed=3)
    assert (est.value, est.low, est.high, est.n) == (1.0, 1.0, 1.0, 7)


def test_bootstrap_two_values_spans_zero_to_one() -> None:
    # Resampled means of [0, 1] are 0, 0.5, 1 with chances 1/4, 1/2, 1/4: both tails hold
    # far more than 2.5% of 2000 draws, so the interval is exactly [0, 1].
    est = bootstrap_ci([0.0, 1.0], samples=2000, seed=0)
    assert (est.value, est.low, est.high) == (0.5, 0.0, 1.0)


def test_bootstrap_one_in_ten_matches_the_binomial_quantiles() -> None:
    # A resample's mean is Binomial(10, 0.1)/10: P(0) = 0.349 > 2.5% so low = 0;
    # P(X ≤ 2) = 0.930 < 97.5% ≤ P(X ≤ 3) = 0.987 so high = 0.3.
    est = bootstrap_ci([0.0] * 9 + [1.0], samples=4000, seed=0)
    assert est.value == pytest.approx(0.1)
    assert est.low == 0.0
    assert est.high == pytest.approx(0.3)


def test_bootstrap_is_reproducible_per_seed() -> None:
    values = np.random.default_rng(7).random(40)
    a = bootstrap_ci(values, seed=11)
    assert bootstrap_ci(values, seed=11) == a
    assert bootstrap_ci(values, seed=12) != a
    assert a.low < a.value < a.high


def test_bootstrap_custom_stat_and_empty_input() -> None:
    est = bootstrap_ci([1.0, 2.0, 9.0], stat=lambda a: float(np.median(a)), samples=200, seed=0)
    assert est.value == 2.0
    with pytest.raises(EvalError, match="zero examples"):
        bootstrap_ci([])


def test_ratio_of_sums_with_paired_resampling() -> None:
    # Identical numerators and denominators: every resample's ratio is exactly 1.
    same = bootstrap_ratio_ci([1, 0, 1, 1], [1, 0, 1, 1], samples=300, seed=0)
    assert (same.value, same.low, same.high) == (1.0, 1.0, 1.0)
    est = bootstrap_ratio_ci([1, 1, 0, 1], [1, 1, 1, 1], samples=2000, seed=0)
    assert est.value == pytest.approx(0.75)
    assert est.low == 0.25 and est.high == 1.0  # 4 items: ratios k/4; tails hold P(k≤1), P(k=4)
    with pytest.raises(EvalError, match="zero denominator"):
        bootstrap_ratio_ci([0, 0], [0, 0])


def test_token_kl_is_a_token_mean_with_records_as_units() -> None:
    kl, top1 = token_kl_estimates(
        [np.array([0.1, 0.3]), np.array([0.2])],
        [np.array([1.0, 0.0]), np.array([1.0])],
        samples=500,
        seed=0,
    )
    assert kl.value == pytest.approx(0.6 / 3)
    assert top1.value == pytest.approx(2 / 3)
    assert kl.n == 2  # records, not tokens
    assert 0.1 <= kl.low <= kl.value <= kl.high <= 0.3
    with pytest.raises(EvalError, match="no token positions"):
        token_kl_estimates([np.array([])], [np.array([])])


# --------------------------------------------------------------------------- calibration


def test_ece_hand_computed() -> None:
    # Two answers at 0.9 with one right (|0.5 − 0.9| = 0.4), two at 0.6 both right (0.4):
    # ECE = 0.5·0.4 + 0.5·0.4 = 0.4.
    assert expected_calibration_error([0.9, 0.9, 0.6, 0.6], [1, 0, 1, 1]) == pytest.approx(0.4)
    assert expected_calibration_error([1.0, 1.0, 0.5, 0.5], [1, 1, 1, 0]) == pytest.approx(0.0)
    with pytest.raises(EvalError, match=r"\[0, 1\]"):
        expected_calibration_error([1.2], [1])


def test_ece_interval_contains_the_point_value() -> None:
    est = calibration_ci([0.9, 0.9, 0.6, 0.6, 0.8], [1, 0, 1, 1, 1], samples=300, seed=0)
    assert est.value == pytest.approx(
        expected_calibration_error([0.9, 0.9, 0.6, 0.6, 0.8], [1, 0, 1, 1, 1])
    )
    assert est.low <= est.value <= est.high


def test_sequence_confidence() -> None:
    assert sequence_confidence([math.log(0.5), math.log(0.5)]) == pytest.approx(0.25)
    assert sequence_confidence([-1000.0]) == 0.0
