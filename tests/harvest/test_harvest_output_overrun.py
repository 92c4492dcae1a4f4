"""A server known to generate past ``max_tokens`` (llama-cpp-python finishes a UTF-8 character
cut by the limit: 18 output tokens for ``max_tokens`` 16, found by the reliability suite against
the real llama.cpp server) is reserved for and judged with that overrun: its honest answers are
booked, not flagged, and the budget's worst case still bounds them. Output past the overrun is
flagged as before."""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass
from decimal import Decimal as D

import pytest
from harvest_fakes import FakeTeacher, requests

from apidistill.config import HarvestConfig
from apidistill.costs.budget import Budget
from apidistill.costs.prices import ModelPrice
from apidistill.harvest import HarvestOptions, JournalStore, harvest
from apidistill.records import TeacherRequest, Usage
from apidistill.teachers.base import Capabilities, TeacherResponse
from apidistill.teachers.profiles import server_profile

PRICE = ModelPrice(input_per_mtok=D("1000"), output_per_mtok=D("4000"))


@dataclass
class OverrunTeacher(FakeTeacher):
    """Reports ``max_tokens + extra`` output tokens; its server overruns by up to ``allowed``."""

    extra: int = 2
    allowed: int = 3

    @property
    def capabilities(self) -> Capabilities:
        return Capabilities(output_overrun_tokens=self.allowed)

    async def complete(self, request: TeacherRequest) -> TeacherResponse:
        response = await super().complete(request)
        usage = Usage(input_tokens=5, output_tokens=request.params.max_tokens + self.extra)
        response.completion = response.completion.model_copy(update={"usage": usage})
        return response


async def _flags(teacher: FakeTeacher, journal) -> list[dict]:
    stream = harvest(
        requests(4, max_tokens=16), teacher=teacher, journal=journal, budget=Budget(D("10")),
        price=PRICE, config=HarvestConfig(concurrency=2), progress=False,
        options=HarvestOptions(durable=False),
    )  # fmt: skip
    await stream  # collects to the summary; a budget stop is not raised
    store = JournalStore(journal, readonly=True)
    try:
        return store.usage_flags()
    finally:
        store.close()


def _reserved_and_cost(journal) -> list[tuple[D, D]]:
    with sqlite3.connect(journal) as con:
        rows = con.execute("SELECT reserved_usd, cost_usd FROM requests").fetchall()
    return [(D(r), D(c)) for r, c in rows]


async def test_documented_overrun_is_reserved_for_and_not_flagged(tmp_path):
    journal = tmp_path / "j.sqlite"
    assert await _flags(OverrunTeacher(extra=2, allowed=3), journal) == []
    for reserved, cost in _reserved_and_cost(journal):
        assert cost <= reserved  # the worst case covers max_tokens + the overrun
        assert reserved >= PRICE.output_per_mtok * (16 + 3) / 1_000_000


@pytest.mark.parametrize(("extra", "allowed"), [(2, 0), (4, 3)])
async def test_output_past_the_allowed_overrun_is_flagged(tmp_path, extra, allowed):
    flags = await _flags(OverrunTeacher(extra=extra, allowed=allowed), tmp_path / "j.sqlite")
    assert flags and {f["flag"] for f in flags} == {"usage_out_of_bounds"}


def test_llamacpp_profile_declares_its_overrun():
    assert server_profile("llamacpp").capabilities.output_overrun_tokens == 3
    assert server_profile("vllm").capabilities.output_overrun_tokens == 0
