"""``retry_failed`` (issue 19, item 2): requests an earlier run gave up on for good can be sent
again once the cause is fixed, per reason; answers are never re-bought, and a request whose
earlier send may have been billed is re-sent only when the user names ``at_risk``."""

from __future__ import annotations

import pytest
from harvest_fakes import FakeTeacher, requests

from apidistill.config import HarvestConfig
from apidistill.errors import ConfigError, TeacherRejected, TeacherTimeout
from apidistill.harvest import HarvestOptions, JournalStore, harvest
from apidistill.harvest.retry import RetryPolicy
from apidistill.harvest.retry_failed import RetryFailed

FAST = RetryPolicy(max_retries=2, timeout_s=5, initial_backoff_s=0.001, max_backoff_s=0.005)


async def _run(teacher, reqs, journal, retry_failed=None):
    stream = harvest(
        reqs,
        teacher=teacher,
        journal=journal,
        options=HarvestOptions(retry_policy=FAST),
        progress=False,
        config=HarvestConfig(retry_failed=retry_failed),
    )
    results = [r async for r in stream]
    return results, stream.summary


def _states(journal) -> dict[str, tuple[str, str | None]]:
    store = JournalStore(journal, readonly=True)
    try:
        return {r.prompt_id: (r.state, r.reason) for r in store.rows()}
    finally:
        store.close()


async def test_rejected_requests_are_resent_only_when_asked_and_answers_never(tmp_path):
    journal = tmp_path / "j.sqlite"
    reqs = requests(6, prefix="p")
    broken = {"p-1", "p-4"}  # e.g. a model name the key may not use

    def refuse(req, call):
        if req.prompt_id in broken:
            return TeacherRejected("fake answered 403: no access to this model", status=403)
        return None

    teacher = FakeTeacher(script=refuse)
    _, first = await _run(teacher, reqs, journal)
    assert first.done == 4 and first.failed == {"rejected": 2}
    assert first.first_errors["rejected"] == ["fake answered 403: no access to this model"]
    assert sum(teacher.calls.values()) == 6

    # the cause is not fixed and nothing is asked: a re-run sends nothing
    _, second = await _run(teacher, reqs, journal)
    assert sum(teacher.calls.values()) == 6
    assert second.cached == 4 and second.failed == {"rejected": 2} and second.sends == 0

    # fixed; another reason named: still nothing sent
    broken.clear()
    _, other = await _run(teacher, reqs, journal, retry_failed="out_of_credit")
    assert other.sends == 0 and other.failed == {"rejected": 2}

    # fixed and asked: only the two rejected requests are sent, the answered four are not
    results, third = await _run(teacher, reqs, journal, retry_failed=["rejected"])
    assert third.sends == 2 and third.retried_failed == 2 and third.done == 2
    assert third.cached == 4 and not third.failed
    assert teacher.calls == {f"p-{i}": (2 if i in (1, 4) else 1) for i in range(6)}
    assert all(r.ok for r in results)
    assert set(_states(journal).values()) == {("done", None)}

    # "all" on a journal with only answers: sends nothing
    _, fourth = await _run(teacher, reqs, journal, retry_failed="all")
    assert fourth.sends == 0 and fourth.cached == 6


async def test_a_maybe_billed_failure_is_resent_only_with_at_risk(tmp_path):
    journal = tmp_path / "j.sqlite"
    reqs = requests(2, prefix="r")

    def lost_then_refused(req, call):
        if req.prompt_id != "r-0":
            return None
        if call == 1:  # sent, answer lost: may have been billed
            return TeacherTimeout("no answer in time after sending", maybe_billed=True)
        if call == 2:
            return TeacherRejected("fake answered 400: bad request", status=400)
        return None

    teacher = FakeTeacher(script=lost_then_refused)
    _, first = await _run(teacher, reqs, journal)
    assert first.failed == {"rejected": 1} and teacher.calls["r-0"] == 2
    store = JournalStore(journal, readonly=True)
    row = next(r for r in store.rows() if r.prompt_id == "r-0")
    store.close()
    assert row.state == "failed" and row.unknown_sends == 1 and row.at_risk_usd >= 0

    _, second = await _run(teacher, reqs, journal, retry_failed="rejected")
    assert teacher.calls["r-0"] == 2 and second.sends == 0  # may pay twice: not unasked
    _, third = await _run(teacher, reqs, journal, retry_failed="all")
    assert teacher.calls["r-0"] == 2 and third.sends == 0

    _, fourth = await _run(teacher, reqs, journal, retry_failed="rejected,at_risk")
    assert teacher.calls["r-0"] == 3 and fourth.sends == 1 and fourth.resent == 1
    assert _states(journal)["r-0"] == ("done", None)


def test_parse_names_the_reasons_and_refuses_unknown_words():
    assert RetryFailed.parse(None).active is False
    assert RetryFailed.parse("all").reasons is None
    assert RetryFailed.parse(["all", "at_risk"]) == RetryFailed(None, True)
    assert RetryFailed.parse("rejected,out_of_credit").reasons == {"rejected", "out_of_credit"}
    with pytest.raises(ConfigError, match=r"unknown failure reason.*'rejectd'") as info:
        RetryFailed.parse("rejectd", key="--retry-failed")
    assert "--retry-failed" in str(info.value) and "rejected" in str(info.value)
    with pytest.raises(ConfigError, match="at_risk"):
        RetryFailed.parse("at_risk")
