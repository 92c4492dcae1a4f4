"""Synthetic prompt generation.

FAKE TEACHER: these tests use ``ScriptedTeacher``, an in-test implementation of the Teacher
protocol that answers from a script. It is not a provider client; it exists so the tests
exercise synth's own logic (rotation, parsing, novelty filtering, limits, cost).
"""

from __future__ import annotations

import json
from decimal import Decimal
from pathlib import Path

import pytest

from apidistill.data.prompts import load_prompt_rows
from apidistill.data.synth import (
    SynthOptions,
    flatten_topics,
    generate_for_classes,
    generate_prompts,
    parse_candidates,
    write_prompts_jsonl,
)
from apidistill.errors import ConfigError
from apidistill.records import Completion, TeacherRequest
from apidistill.teachers.base import Capabilities, Teacher, TeacherResponse


class ScriptedTeacher:
    """FAKE teacher for synth tests: writes inputs that mention the requested topic/label."""

    provider = "fake"
    model = "scripted"

    def __init__(self, *, repeat: bool = False, cost: Decimal | None = Decimal("0.001")) -> None:
        self.requests: list[TeacherRequest] = []
        self.repeat = repeat
        self.cost = cost

    @property
    def teacher_id(self) -> str:
        return "fake:scripted"

    @property
    def capabilities(self) -> Capabilities:
        return Capabilities()

    async def complete(self, request: TeacherRequest) -> TeacherResponse:
        self.requests.append(request)
        n = len(self.requests)
        user = request.messages[-1].content
        about = user.split("must be about: ")[1].split(".")[0] if "must be about" in user else "x"
        words = [
            "apples",
            "rivers",
            "engines",
            "violins",
            "glaciers",
            "markets",
            "orbits",
            "lanterns",
            "deserts",
            "harbors",
            "spices",
            "bridges",
        ]
        items = [
            "Same boring question about the weather today?"
            if self.repeat
            else f"Request {n}.{i}: tell me about {about} and {words[(n * 5 + i) % 12]} {n * 31 + i}"
            for i in range(5)
        ]
        text = "```json\n" + json.dumps(items) + "\n```" if n % 2 else json.dumps(items)
        comp = Completion(text=text, provider="fake", model="scripted", cost_usd=self.cost)
        return TeacherResponse(completion=comp)

    async def aclose(self) -> None:
        return None


def test_fake_teacher_satisfies_protocol() -> None:
    assert isinstance(ScriptedTeacher(), Teacher)


async def test_topics_rotate_and_temperatures_cycle() -> None:
    t = ScriptedTeacher()
    seen: list[Completion] = []
    opts = SynthOptions(n=12, per_request=5, concurrency=2, temperatures=(0.5, 1.0))
    res = await generate_prompts(
        t,
        opts,
        topics={"sports": ["tennis", "golf"], "cooking": []},
        seeds=["How do I serve in tennis?", "Best pasta sauce?", "Golf swing tips"],
        on_completion=seen.append,
    )
    assert len(res.prompts) == 12 and res.requests == 3 and len(seen) == 3
    assert [p.topic for p in res.prompts[:6]] == ["sports / tennis"] * 5 + ["sports / golf"]
    assert [r.params.temperature for r in t.requests] == [0.5, 1.0, 0.5]
    assert res.cost_usd == Decimal("0.003")
    shown = [r.messages[-1].content for r in t.requests]
    assert all("Examples of real inputs" in s for s in shown)
    assert len(set(shown)) == 3


async def test_novelty_filter_drops_copies_of_existing_and_each_other() -> None:
    t = ScriptedTeacher(repeat=True)
    res = await generate_prompts(
        t,
        SynthOptions(n=5, max_requests=3, concurrency=1),
        seeds=["a seed example"],
        existing=["same boring question about the weather today"],
    )
    assert res.prompts == [] and res.requests == 3 and res.duplicates == 15

    t2 = ScriptedTeacher(repeat=True)
    res2 = await generate_prompts(
        t2, SynthOptions(n=5, max_requests=2, concurrency=1), seeds=["seed"]
    )
    assert len(res2.prompts) == 1 and res2.duplicates == 9


async def test_unknown_cost_stays_unknown_and_inputs_are_checked() -> None:
    res = await generate_prompts(ScriptedTeacher(cost=None), SynthOptions(n=3), topics=["x"])
    assert res.cost_usd is None and len(res.prompts) == 3
    with pytest.raises(ConfigError, match="seed examples or a topic"):
        await generate_prompts(ScriptedTeacher(), SynthOptions(n=3))


async def test_generate_for_classes_conditions_on_label(tmp_path: Path) -> None:
    t = ScriptedTeacher()
    out = await generate_for_classes(
        t,
        {"refund": 4, "billing": 0, "fraud": 2},
        {"refund": ["I want my money back"]},
        SynthOptions(n=1, per_request=5),
    )
    assert set(out) == {"refund", "fraud"}
    assert len(out["refund"].prompts) == 4 and len(out["fraud"].prompts) == 2
    assert "correct answer is: refund" in t.requests[0].messages[-1].content
    assert "must be about: fraud" in t.requests[1].messages[-1].content
    path = write_prompts_jsonl(out["refund"].prompts, tmp_path / "p.jsonl")
    rows = load_prompt_rows(path).rows
    assert [r.input for r in rows] == [p.text for p in out["refund"].prompts]
    assert rows[0].metadata["label_hint"] == "refund"
    assert out["refund"].rows()[0].id.startswith("synth-")


def test_parse_candidates_and_taxonomy() -> None:
    assert parse_candidates('Sure!\n["a b", "", 3, "c"]') == ["a b", "c"]
    assert parse_candidates("1. first\n2) second\n- third") == ["first", "second", "third"]
    assert flatten_topics({"a": {"b": ["c", "d"]}, "e": None}) == ["a / b / c", "a / b / d", "e"]


async def test_a_rerun_with_the_same_journal_sends_nothing_and_accepts_the_same(
    tmp_path: Path,
) -> None:
    """The requests are a pure function of the options, so the journal answers a re-run."""
    journal = tmp_path / "journal.sqlite"
    first_teacher = ScriptedTeacher()
    opts = SynthOptions(n=6, per_request=2, concurrency=2)
    first = await generate_prompts(first_teacher, opts, topics=["a", "b", "c"], journal=journal)
    assert len(first.prompts) == 6 and first_teacher.requests
    again_teacher = ScriptedTeacher()
    again = await generate_prompts(again_teacher, opts, topics=["a", "b", "c"], journal=journal)
    assert again_teacher.requests == []  # every answer came from the journal
    assert again.prompts == first.prompts
    assert again.summary is not None and again.summary.cached == first.requests
