"""After several kill -9s the summary shows what every crash left in flight, as the journal
holds it, not only the last crash (issue 19, item 8).

A killed process leaves its in-flight rows ``sent`` in the journal. Each "process" here is a
real :class:`JournalStore` owner that opens the journal (recovering the previous crash, as a
harvest does), journals some sends and then stops without finishing them, exactly the state a
kill -9 leaves behind.
"""

from __future__ import annotations

from decimal import Decimal

from harvest_fakes import FakeTeacher, requests

from apidistill.harvest import HarvestOptions, JournalStore, harvest
from apidistill.harvest.retry import RetryPolicy


def _killed_process(journal, teacher, reqs) -> None:
    store = JournalStore(journal)
    try:
        store.recover()  # what the next harvest's open does
        for req in reqs:
            store.claim(
                req.cache_key(teacher.teacher_id, teacher.model),
                teacher_id=teacher.teacher_id,
                model=teacher.model,
                request_json=req.model_dump_json(),
                prompt_id=req.prompt_id,
                label=None,
                split=None,
                reserved_usd=Decimal("0.01"),
            )
    finally:
        store.close()  # the rows stay 'sent': nothing finished them


async def test_summary_counts_every_crash_the_journal_holds(tmp_path):
    journal = tmp_path / "j.sqlite"
    teacher = FakeTeacher()
    reqs = requests(10, prefix="k")
    _killed_process(journal, teacher, reqs[:2])  # first crash: 2 in flight
    _killed_process(journal, teacher, reqs[2:5])  # second crash: 3 more in flight
    policy = RetryPolicy(max_retries=1, timeout_s=5, initial_backoff_s=0.001)
    summary = await harvest(reqs, teacher=teacher, journal=journal, options=HarvestOptions(retry_policy=policy),
                            progress=False)  # fmt: skip
    assert summary.crashed_found == 3  # left by the last crash
    assert summary.unknown_found == 5  # both crashes' rows are still unknown here
    assert (summary.crashes_total, summary.crashed_total) == (2, 5)
    assert summary.crashed_total_usd == Decimal("0.05")
    text = "\n".join(summary.lines())
    assert "3 left in flight by the last stopped process" in text
    assert "in all, 2 stopped processes left 5 request(s) in flight" in text
    assert summary.done == 10
    assert summary.as_dict()["crashed_total"] == 5
