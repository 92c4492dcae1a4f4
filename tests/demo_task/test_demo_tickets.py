"""The demo's ticket generator: deterministic, diverse, and every gold answer is in its ticket."""

from __future__ import annotations

import re
from collections import Counter
from pathlib import Path

import pytest
import yaml

from apidistill.resources import demo_data_dir

DEMO = Path(__file__).resolve().parents[2] / "examples" / "demo"
DATA = demo_data_dir()  # the generated files ship inside the package

FIELDS = ["id", "text", "gold", "order_id", "product", "label", "tone", "order_format"]


def test_same_seed_writes_the_same_bytes(make_tickets, tmp_path) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    make_tickets.main(["--out-dir", str(a), "--n", "60"])
    make_tickets.main(["--out-dir", str(b), "--n", "60"])
    for name in ("tickets.jsonl", "prototype_prompt.yaml"):
        assert (a / name).read_bytes() == (b / name).read_bytes()


def test_another_seed_writes_other_tickets(make_tickets) -> None:
    t12, _ = make_tickets.build(12, 40)
    t13, _ = make_tickets.build(13, 40)
    assert {t.text for t in t12}.isdisjoint({t.text for t in t13})


def test_shipped_files_are_what_the_generator_writes(make_tickets) -> None:
    """Catches hand edits and a generator changed without re-running it."""
    tickets, shots = make_tickets.build()
    assert (DATA / "tickets.jsonl").read_text(encoding="utf-8") == make_tickets.tickets_jsonl(
        tickets
    )
    expected = make_tickets.prompt_yaml(shots, make_tickets.SEED)
    assert (DATA / "prototype_prompt.yaml").read_text(encoding="utf-8") == expected


def test_rows_have_the_documented_fields(rows) -> None:
    assert len(rows) == 420
    assert all(list(r) == FIELDS for r in rows)
    assert len({r["id"] for r in rows}) == len(rows)


def test_tickets_are_distinct(rows) -> None:
    assert len({r["text"] for r in rows}) == len(rows)
    assert len({r["order_id"] for r in rows}) == len(rows)
    # No near-copies either: a ticket minus its order number and product is still rare.
    skeletons = Counter(
        r["text"].replace(r["order_id"], "N").replace(r["product"], "P") for r in rows
    )
    assert skeletons.most_common(1)[0][1] <= 3


def test_gold_is_the_two_line_answer_of_the_fields(rows) -> None:
    for r in rows:
        assert r["gold"] == f"order_id: {r['order_id']}\nproduct: {r['product']}"
        assert r["order_id"] and r["product"]


def test_every_ticket_contains_its_order_number_and_product_once(rows) -> None:
    """Gold drops only a leading '#': the ticket holds '#' + order_id for that format."""
    for r in rows:
        written = "#" + r["order_id"] if r["order_format"] == "hash" else r["order_id"]
        assert r["text"].count(written) == 1, r
        assert re.search(rf"(?<![\d-]){re.escape(written)}(?![\d-])", r["text"]), r
        assert r["text"].count(r["product"]) == 1, r


def test_order_numbers_are_digit_only_in_three_formats(rows) -> None:
    patterns = {"hash": r"\d{6}", "dash": r"\d{4}-\d{4}", "plain": r"\d{7}"}
    for r in rows:
        assert re.fullmatch(patterns[r["order_format"]], r["order_id"]), r
        assert not r["order_id"].startswith("#")
    counts = Counter(r["order_format"] for r in rows)
    assert set(counts) == set(patterns) and min(counts.values()) >= 0.25 * len(rows)


def test_labels_tones_and_products_vary(rows, make_tickets) -> None:
    labels = Counter(r["label"] for r in rows)
    assert set(labels) == set(make_tickets.LABELS) and min(labels.values()) >= 0.15 * len(rows)
    assert set(Counter(r["tone"] for r in rows)) == set(make_tickets.TONES)
    assert len(make_tickets.catalogue(make_tickets.SEED)) >= 150
    assert len({r["product"] for r in rows}) >= 150
    assert all(len(r["product"].split()) >= 2 for r in rows)  # brand + item


def test_tickets_carry_distractor_numbers_and_names(rows) -> None:
    def other_numbers(r: dict[str, str]) -> list[str]:
        text = r["text"].replace(r["order_id"], " ").replace(r["product"], " ")
        return re.findall(r"\d{2,}", text)

    assert sum(bool(other_numbers(r)) for r in rows) >= 0.25 * len(rows)
    kinds = {
        "price": r"[$€£]\d+|\d USD",
        "phone": r"\d{3}[-) ]+\d{3}-\d{4}|\+44 7",
        "tracking": r"[Tt]racking (1Z|TBA|LX|\d{4} )",
        "case": r"case (CS-)?\d{5}|email: (CS-)?\d{5}",
        "date": r"(January|February|March|April|May|June|July|August|September|October|"
        r"November|December) \d|\d/\d",
        "sign-off name": r"(Thanks|regards|Best|Cheers),?\s+[A-Z][a-z]+",
    }
    for kind, pattern in kinds.items():
        assert sum(bool(re.search(pattern, r["text"])) for r in rows) >= 8, kind
    multiline = sum("\n" in r["text"] for r in rows)
    assert 0.2 * len(rows) <= multiline <= 0.8 * len(rows)


def test_tickets_are_short(rows) -> None:
    lengths = [len(r["text"]) for r in rows]
    assert min(lengths) >= 25 and max(lengths) <= 600


def test_shots_come_from_a_separate_pool(make_tickets, rows) -> None:
    _, shots = make_tickets.build()
    assert len(shots) == make_tickets.N_SHOTS == 16
    texts, ids = {r["text"] for r in rows}, {r["order_id"] for r in rows}
    products = {r["product"] for r in rows}
    for s in shots:
        assert s.text not in texts and s.order_id not in ids and s.product not in products
    brands = [s.product.split()[0] for s in shots]
    assert len(set(brands)) == len(brands)  # a repeated brand becomes an attractor


def test_shots_show_every_label_format_and_trap(make_tickets) -> None:
    _, shots = make_tickets.build()
    shown = set().union(*(s.tags for s in shots))
    for tag in ("label:late", "label:other", "format:hash", "format:dash", "format:plain"):
        assert tag in shown
    assert {"case", "phone", "tracking", "price", "date"} <= shown


def test_prompt_file_has_the_template_keys_and_follows_the_gold_convention() -> None:
    data = yaml.safe_load((DATA / "prototype_prompt.yaml").read_text(encoding="utf-8"))
    assert list(data) == ["system", "shots", "template"]
    assert data["template"] == "{input}"
    assert len(data["shots"]) == 16
    for shot in data["shots"]:
        assert list(shot) == ["user", "assistant"]
        order = re.fullmatch(r"order_id: (\S+)\nproduct: (.+)", shot["assistant"])
        assert order, shot["assistant"]
        assert not order.group(1).startswith("#") and order.group(2) in shot["user"]


def test_prompt_file_loads_with_the_pipeline_loader() -> None:
    template = pytest.importorskip("apidistill.pipeline.template")
    prompt = template.load_template(DATA / "prototype_prompt.yaml")
    assert len(prompt.render("a ticket")) == 1 + 2 * 16 + 1


def test_student_prompt_is_one_short_line() -> None:
    text = (DEMO / "student_prompt.txt").read_text(encoding="utf-8")
    assert text.endswith("\n") and text.count("\n") == 1 and len(text) < 120
