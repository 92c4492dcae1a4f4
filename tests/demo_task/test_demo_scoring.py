"""Parsing and scoring of the demo's two-line answers, and the message layouts of both arms."""

from __future__ import annotations

import pytest

GOLD = "order_id: 4829-1377\nproduct: Harbor Steel Water Bottle"


def test_parses_the_two_lines(task) -> None:
    assert task.parse_fields(GOLD) == {
        "order_id": "4829-1377",
        "product": "Harbor Steel Water Bottle",
    }


@pytest.mark.parametrize(
    "text",
    [
        "  order_id:   4829-1377  \n\n  product: Harbor Steel Water Bottle   \n",
        "Sure! Here are the fields:\norder_id: 4829-1377\nproduct: Harbor Steel Water Bottle",
        "Order ID: 4829-1377\nProduct: Harbor Steel Water Bottle",
        '- order_id: 4829-1377,\n- product: "Harbor Steel Water Bottle"',
        "order_id: 4829-1377\nproduct: Harbor Steel Water Bottle\norder_id: 1111111",
    ],
)
def test_tolerates_what_small_models_add(task, text: str) -> None:
    assert task.parse_fields(text) == task.parse_fields(GOLD)
    assert task.score(text, GOLD)


@pytest.mark.parametrize(
    "text, missing",
    [
        ("order_id: 4829-1377", "product"),
        ("product: Harbor Steel Water Bottle", "order_id"),
        ("order_id:\nproduct: Harbor Steel Water Bottle", "order_id"),
        ('{"order_id": "4829-1377", "product": "Harbor Steel Water Bottle"}', "order_id"),
        ("", "product"),
    ],
)
def test_missing_field_is_none_and_scores_wrong(task, text: str, missing: str) -> None:
    assert task.parse_fields(text)[missing] is None
    assert not task.score(text, GOLD)


@pytest.mark.parametrize(
    "pred",
    [
        "order_id: #4829-1377\nproduct: Harbor Steel Water Bottle",  # '#' is not normalized
        "order_id: 48291377\nproduct: Harbor Steel Water Bottle",  # dash dropped
        "order_id: 4829-1377\nproduct: Steel Water Bottle",  # brand dropped
        "order_id: 4829-1377\nproduct: Herman Steel Water Bottle",  # brand mangled
        "order_id: 4829-1377\nproduct: harbor steel water bottle",  # case matters
    ],
)
def test_score_is_exact_on_both_fields(task, pred: str) -> None:
    assert not task.score(pred, GOLD)


def test_both_arms_start_with_their_own_system_turn(task) -> None:
    """SmolLM2's template would otherwise inject its default system prompt."""
    prompt = task.load_prompt()
    teacher = task.teacher_messages("my ticket", prompt)
    assert teacher[0] == {"role": "system", "content": prompt["system"]}
    assert teacher[-1] == {"role": "user", "content": "my ticket"}
    assert [m["role"] for m in teacher[1:-1]] == ["user", "assistant"] * 16
    student = task.student_messages("my ticket", task.student_instruction())
    assert [m["role"] for m in student] == ["system", "user"]
    assert "\n" not in student[0]["content"]
