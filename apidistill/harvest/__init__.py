"""harvest stage: the async engine that pulls teacher completions, journaled and budgeted.

Public API: :func:`harvest`, :func:`harvest_sync`, :class:`HarvestResult`,
:class:`HarvestSummary`; the journal (:class:`JournalStore`) is what later stages read.
"""

from apidistill.harvest.api import HarvestStream, harvest, harvest_sync
from apidistill.harvest.limits import RateLimiter
from apidistill.harvest.options import HarvestOptions
from apidistill.harvest.results import HarvestInterrupted, HarvestResult, HarvestSummary
from apidistill.harvest.retry import RetryPolicy
from apidistill.harvest.retry_failed import RetryFailed
from apidistill.harvest.writer import AsyncJournal
from apidistill.storage.journal import JournalRow, JournalStore, check_integrity

__all__ = [
    "AsyncJournal",
    "HarvestInterrupted",
    "HarvestOptions",
    "HarvestResult",
    "HarvestStream",
    "HarvestSummary",
    "JournalRow",
    "JournalStore",
    "RateLimiter",
    "RetryFailed",
    "RetryPolicy",
    "check_integrity",
    "harvest",
    "harvest_sync",
]
