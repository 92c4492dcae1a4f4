"""Filters, dedupe, balance and splits: the acceptance numbers of issue 7."""

from __future__ import annotations

import hashlib
import random
from collections import Counter

import pytest

from apidistill.config import BalanceConfig, FilterConfig, SplitConfig
from apidistill.data.balance import balance, class_of, length_bucket
from apidistill.data.dedupe import NearDupIndex, dedupe, normalize
from apidistill.data.filters import apply_filters
from apidistill.data.splits import cross_split_duplicates, make_splits, split_targets
from apidistill.errors import ConfigError
from apidistill.records import Message, Record, Usage


def _distinct(i: int) -> str:
    """A prompt sharing almost no character 5-grams with any other index's."""
    return hashlib.sha256(str(i).encode()).hexdigest()[:32] + f" #{i}"


def rec(
    i: int,
    completion: str = "ok",
    *,
    label: str | None = None,
    prompt: str | None = None,
    finish: str | None = "stop",
    **meta,
) -> Record:
    return Record(
        id=f"r{i}",
        messages=[Message(role="user", content=prompt or _distinct(i))],
        completion=completion,
        finish_reason=finish,
        label=label,
        metadata=meta,
    )


# --------------------------------------------------------------------------- filters


def test_filters_count_each_drop_by_first_reason() -> None:
    recs = [
        rec(0, "fine"),
        rec(1, "partial", finish="length"),
        rec(2, "   "),
        rec(3, "I'm sorry, but I can't help with that."),
        rec(4, "x" * 50),
        rec(5, "boom", error="HTTP 500"),
        rec(6, "blocked", finish="content_filter"),
        rec(7, "also fine"),
    ]
    res = apply_filters(recs, FilterConfig(max_output_chars=40))
    assert [r.id for r in res.kept] == ["r0", "r7"]
    assert res.dropped_by_reason == {
        "truncated": 1,
        "empty": 1,
        "refusal": 2,
        "overlong": 1,
        "error": 1,
    }
    assert res.dropped == 6
    assert res.examples["refusal"][0][0] == "r3"


def test_filters_can_be_turned_off() -> None:
    recs = [rec(1, "partial", finish="length"), rec(2, "")]
    cfg = FilterConfig(drop_truncated=False, drop_empty=False, refusal_patterns=[])
    assert len(apply_filters(recs, cfg).kept) == 2


def test_validators_regex_json_schema_label_set_and_callable() -> None:
    recs = [rec(0, "positive"), rec(1, "meh"), rec(2, "Positive!")]
    res = apply_filters(recs, FilterConfig(regex=r"positive|negative"))
    assert [r.id for r in res.kept] == ["r0"] and res.dropped_by_reason == {"regex": 2}

    res = apply_filters(recs, FilterConfig(label_set=["positive", "meh"]))
    assert res.dropped_by_reason == {"label_set": 1}

    schema = {"type": "object", "required": ["score"], "properties": {"score": {"type": "integer"}}}
    js = [
        rec(0, '{"score": 3}'),
        rec(1, '```json\n{"score": 4}\n```'),
        rec(2, '{"score": "x"}'),
        rec(3, "not json"),
    ]
    res = apply_filters(js, FilterConfig(json_schema=schema))
    assert [r.id for r in res.kept] == ["r0", "r1"]
    assert res.dropped_by_reason == {"json_schema": 2}
    assert "not JSON" in res.examples["json_schema"][1][1]

    res = apply_filters(
        recs, FilterConfig(), validator=lambda r: "short" if len(r.completion) < 4 else None
    )
    assert res.dropped_by_reason == {"validator": 1} and res.examples["validator"] == [
        ("r1", "short")
    ]


def test_bad_patterns_are_config_errors() -> None:
    with pytest.raises(ConfigError, match=r"refusal_patterns\[0\]"):
        apply_filters([rec(0)], FilterConfig(refusal_patterns=["(unclosed"]))
    with pytest.raises(ConfigError, match="not a valid JSON schema"):
        apply_filters([rec(0)], FilterConfig(json_schema={"type": "nonsense"}))


# --------------------------------------------------------------------------- dedupe


def test_exact_and_near_duplicates() -> None:
    base = (
        "Classify the sentiment of this review: the battery lasts two days and the screen is bright"
    )
    recs = [
        rec(0, prompt=base),
        rec(1, prompt="  " + base.upper() + " "),  # exact after normalization
        rec(2, prompt=base.replace("two days", "two full days")),  # near
        rec(3, prompt="Completely different: translate 'good morning' into French please"),
    ]
    res = dedupe(recs, mode="exact")
    assert [r.id for r in res.kept] == ["r0", "r2", "r3"] and res.exact_removed == 1
    res = dedupe(recs, mode="near", threshold=0.7)
    assert [r.id for r in res.kept] == ["r0", "r3"]
    assert res.groups == [["r0", "r1", "r2"]]
    assert (res.exact_removed, res.near_removed) == (1, 1)
    assert res.group_of["r2"] == "r0"


def test_dedupe_on_completion() -> None:
    recs = [rec(0, "same answer"), rec(1, "same answer"), rec(2, "other")]
    assert len(dedupe(recs, mode="exact", on="completion").kept) == 2
    assert len(dedupe(recs, mode="exact", on="prompt").kept) == 3


def test_near_index_rejects_lsh_false_positives() -> None:
    idx = NearDupIndex(0.9)
    idx.add("a", "the quick brown fox jumps over the lazy dog")
    assert idx.query("The quick brown fox jumps over the lazy dog!") == ["a"]
    assert idx.query("a totally unrelated sentence about tax law") == []
    assert normalize("  A\u00a0B  ") == "a b"


# --------------------------------------------------------------------------- balance


def _skewed() -> list[Record]:
    labels = ["a"] * 90 + ["b"] * 5 + ["c"] * 5
    random.Random(1).shuffle(labels)
    return [rec(i, label=lab) for i, lab in enumerate(labels)]


@pytest.mark.parametrize(
    ("cfg", "want"),
    [
        (BalanceConfig(), {"a": 5, "b": 5, "c": 5}),
        (BalanceConfig(max_per_class=5), {"a": 5, "b": 5, "c": 5}),
        (BalanceConfig(max_per_class=30), {"a": 30, "b": 5, "c": 5}),
        (BalanceConfig(target={"a": 0.5, "b": 0.25, "c": 0.25}), {"a": 10, "b": 5, "c": 5}),
        (BalanceConfig(target={"a": 0.8, "b": 0.1, "c": 0.1}), {"a": 40, "b": 5, "c": 5}),
        (BalanceConfig(target={"a": 0.6, "b": 0.4}), {"a": 7, "b": 5, "c": 0}),
    ],
)
def test_balance_skewed_90_5_5(cfg: BalanceConfig, want: dict[str, int]) -> None:
    res = balance(_skewed(), cfg, seed=3)
    got = Counter(r.label for r in res.kept)
    for c, n in want.items():
        assert abs(got.get(c, 0) - n) <= 1, (c, got)
    assert res.before == {"a": 90, "b": 5, "c": 5}
    assert res.after == {c: got.get(c, 0) for c in "abc"}
    ids = [r.id for r in res.kept]
    assert ids == sorted(ids, key=lambda x: int(x[1:]))  # input order kept
    assert balance(_skewed(), cfg, seed=3).kept == res.kept  # deterministic


def test_balance_reports_under_represented_and_histogram() -> None:
    res = balance(_skewed(), BalanceConfig(target={"a": 1 / 3, "b": 1 / 3, "c": 1 / 3}))
    assert res.under_represented == {"b": 29, "c": 29}
    text = res.histogram_text()
    assert text.splitlines()[1].startswith("a") and " 90 " in text
    assert res.histogram()["a"] == {"before": 90, "after": 5}
    with pytest.raises(ConfigError, match=r"sum to 1\.0"):
        balance(_skewed(), BalanceConfig(target={"a": 0.5}))


def test_balance_by_length_and_metadata() -> None:
    r = rec(0, "word " * 40)
    assert length_bucket(r) == "32-63"
    r2 = r.model_copy(update={"usage": Usage(output_tokens=200)})
    assert length_bucket(r2) == "128-255"
    assert class_of(rec(1, topic="sports"), "topic") == "sports"
    assert class_of(rec(1), "topic") == "(none)"


# --------------------------------------------------------------------------- splits


def test_split_targets_within_one() -> None:
    cfg = SplitConfig(train=0.7, validation=0.15, test=0.15)
    for n in range(0, 60):
        t = split_targets(n, cfg)
        assert sum(t.values()) == n
        assert all(abs(t[s] - n * getattr(cfg, s)) < 1 for s in t)


def test_stratified_splits_keep_class_shares_and_are_deterministic() -> None:
    labels = ["a"] * 53 + ["b"] * 31 + ["c"] * 16
    recs = [rec(i, label=lab) for i, lab in enumerate(labels)]
    cfg = SplitConfig(train=0.7, validation=0.1, test=0.2, seed=5)
    res = make_splits(recs, cfg)
    for split in ("train", "validation", "test"):
        share = getattr(cfg, split)
        got = Counter(r.label for r in res.of(split))
        for c, n in Counter(labels).items():
            assert abs(got.get(c, 0) - n * share) <= 1, (split, c, got)
    again = make_splits(list(reversed(recs)), cfg)
    assert {r.id: r.split for r in again.records} == {r.id: r.split for r in res.records}
    other = make_splits(recs, cfg.model_copy(update={"seed": 6}))
    assert [r.split for r in other.records] != [r.split for r in res.records]


def test_planted_near_duplicates_never_cross_splits() -> None:
    rng = random.Random(0)
    words = [
        "alpha",
        "beta",
        "gamma",
        "delta",
        "epsilon",
        "zeta",
        "eta",
        "theta",
        "iota",
        "kappa",
        "lambda",
        "mu",
        "nu",
        "xi",
        "omicron",
    ]
    recs = []
    for i in range(120):
        prompt = " ".join(rng.choice(words) for _ in range(25)) + f" case {i}"
        recs.append(rec(i, prompt=prompt, label="ab"[i % 2]))
    planted = []
    for j in range(15):  # near-copies of 15 prompts: one word changed, plus spacing and case
        src = recs[j * 7]
        tokens = src.messages[0].content.split(" ")
        at = rng.randrange(25)
        tokens[at] = rng.choice([w for w in words if w != tokens[at]])
        text = "  ".join(tokens).upper()
        before, after = src.messages[0].content.split(), text.lower().split()
        assert sum(a != b for a, b in zip(before, after, strict=True)) == 1  # one word apart
        recs.append(rec(1000 + j, prompt=text, label=src.label))
        planted.append((src.id, f"r{1000 + j}"))

    naive = SplitConfig(train=0.5, validation=0.0, test=0.5, seed=1)
    crossed = make_splits(recs, naive, dedupe="none")
    leaks = cross_split_duplicates(crossed.records, threshold=0.8)
    assert leaks, "the planted pairs should cross splits without grouping"
    assert {tuple(sorted(p)) for p in leaks} <= {tuple(sorted(p)) for p in planted}

    res = make_splits(recs, naive, threshold=0.8)
    where = {r.id: r.split for r in res.records}
    assert all(where[a] == where[b] for a, b in planted)
    assert cross_split_duplicates(res.records, threshold=0.8) == []
    assert res.groups_kept_together == 15


# --------------------------------------------------------------------------- one call


def test_curate_runs_every_step_in_order(tmp_path) -> None:
    from apidistill.config import DatasetConfig
    from apidistill.data.curate import curate
    from apidistill.data.store import load_records

    recs = [rec(i, label="a" if i < 60 else "b") for i in range(80)]
    recs.append(rec(200, "I'm sorry, I can't help", label="a"))
    recs.append(rec(201, label="a", prompt=recs[0].messages[0].content))  # exact duplicate
    cfg = DatasetConfig(
        balance=BalanceConfig(target={"a": 0.5, "b": 0.5}),
        splits=SplitConfig(train=0.75, validation=0.0, test=0.25, seed=2),
    )
    res = curate(recs, cfg)
    assert res.filtered.dropped_by_reason == {"refusal": 1}
    assert res.deduped.exact_removed == 1
    assert Counter(r.label for r in res.records) == {"a": 20, "b": 20}
    assert Counter(r.split for r in res.records) == {"train": 30, "test": 10}
    card = res.card(name="x").to_json()
    assert card["drops_by_reason"] == {"refusal": 1} and card["dedupe"]["exact_removed"] == 1
    assert res.save(tmp_path / "ds") == {"train": 30, "test": 10}
    assert len(load_records(tmp_path / "ds", split="test")) == 10


def test_curate_does_not_depend_on_arrival_order() -> None:
    """A live harvest stores answers as they arrive, a cached re-run in another order: the
    dataset (and so a resumed training run's fingerprint) must come out the same."""
    from apidistill.config import DatasetConfig
    from apidistill.data.curate import curate

    recs = [rec(i, label="ab"[i % 2]) for i in range(60)]
    recs.append(rec(99, label="a", prompt=recs[3].messages[0].content))  # duplicate of r3
    cfg = DatasetConfig(splits=SplitConfig(train=0.7, validation=0.0, test=0.3, seed=1))
    shuffled = recs[:]
    random.Random(5).shuffle(shuffled)
    a, b = curate(recs, cfg), curate(shuffled, cfg)
    assert [(r.id, r.split) for r in a.records] == [(r.id, r.split) for r in b.records]
    assert "r3" in {r.id for r in a.records} and "r99" not in {r.id for r in a.records}


# --------------------------------------------------------------------------- harvest.n > 1


def _samples(i: int, n: int, *, label: str | None = None, prompt: str | None = None):
    """The ``n`` records a harvest with ``harvest.n: n`` writes for prompt ``r{i}``: ids and
    ``sample_of`` as :func:`apidistill.pipeline.stages.record_from_result` sets them."""
    out = [rec(i, f"answer {i}.0", label=label, prompt=prompt)]
    for s in range(1, n):
        r = rec(i, f"answer {i}.{s}", label=label, prompt=prompt, sample_of=f"r{i}")
        out.append(r.model_copy(update={"id": f"r{i}-s{s}"}))
    return out


@pytest.mark.parametrize("mode", ["exact", "near"])
def test_every_paid_sample_of_a_prompt_survives_dedupe(mode) -> None:
    """harvest.n: 3 over 10 prompts is 30 paid answers: all 30 reach the dataset (the
    default prompt dedupe kept one per prompt, 30 became 10), while a real duplicate prompt
    (another row with the same text) is still dropped with all its samples."""
    recs = [r for i in range(10) for r in _samples(i, 3)]
    dup = _samples(10, 3, prompt=recs[0].messages[0].content)  # same text as r0, other row
    res = dedupe(recs + dup, mode=mode)
    assert len(res.kept) == 30
    assert {r.id for r in res.kept} == {r.id for r in recs}
    assert res.removed == 3 and res.group_of["r10-s2"] == "r0"
    assert res.groups == [["r0", "r0-s1", "r0-s2", "r10", "r10-s1", "r10-s2"]]


@pytest.mark.parametrize("dedupe_mode", ["none", "exact", "near"])
def test_samples_of_one_prompt_share_a_split(dedupe_mode) -> None:
    """The n answers to one prompt on both sides of a split would leak the test prompt."""
    recs = [r for i in range(20) for r in _samples(i, 3, label="ab"[i % 2])]
    cfg = SplitConfig(train=0.7, validation=0.0, test=0.3, seed=0)
    res = make_splits(recs, cfg, dedupe=dedupe_mode)
    by_prompt: dict[str, set[str]] = {}
    for r in res.records:
        by_prompt.setdefault(r.metadata.get("sample_of") or r.id, set()).add(r.split)
    assert len(by_prompt) == 20 and all(len(s) == 1 for s in by_prompt.values())
    assert sum(1 for r in res.records if r.split == "test") == 18  # 6 of 20 prompts x 3


# --------------------------------------------------------------------------- top_k_store


def _with_top(i: int, k: int) -> Record:
    from apidistill.records import TokenLogprob, TopLogprob

    lps = [
        TokenLogprob(
            token="a",
            logprob=-0.1,
            # least likely first: keeping the first k would keep the wrong ones
            top=[TopLogprob(token=f"t{j}", logprob=-0.1 - j) for j in reversed(range(k))],
        )
        for _ in range(4)
    ]
    return rec(i).model_copy(update={"logprobs": lps})


@pytest.mark.parametrize("keep", [0, 5, 20])
def test_top_k_store_keeps_the_most_likely_alternatives(keep, tmp_path) -> None:
    from apidistill.config import DatasetConfig
    from apidistill.data.curate import curate
    from apidistill.data.store import load_records

    recs = [_with_top(i, 20) for i in range(10)]
    cfg = DatasetConfig(top_k_store=keep, splits=SplitConfig(train=0.5, test=0.5, stratify_by=None))
    res = curate(recs, cfg)
    res.save(tmp_path / "ds")
    stored = load_records(tmp_path / "ds", split="train") + load_records(tmp_path / "ds", "test")
    assert len(stored) == 10
    for r in stored:
        for pos in r.logprobs:
            assert {a.token for a in pos.top} == {f"t{j}" for j in range(keep)}  # most likely
            assert pos.logprob == pytest.approx(
                -0.1, abs=1e-3
            )  # fp16 store; the sampled token stays
    assert all(len(p.top) == 20 for r in recs for p in r.logprobs)  # inputs untouched
