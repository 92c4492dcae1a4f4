"""Moved: the journal store lives in :mod:`apidistill.storage.journal` (below harvest and costs).

This re-export keeps old imports working; new code imports from ``apidistill.storage.journal``.
"""

from apidistill.storage.journal import (
    RETRYABLE_REASONS,
    CachedRow,
    Claim,
    JournalRow,
    JournalStore,
    JournalTotals,
    JournalWriteError,
    Recovery,
    check_integrity,
)

__all__ = [
    "RETRYABLE_REASONS",
    "CachedRow",
    "Claim",
    "JournalRow",
    "JournalStore",
    "JournalTotals",
    "JournalWriteError",
    "Recovery",
    "check_integrity",
]
