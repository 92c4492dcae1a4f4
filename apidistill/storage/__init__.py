"""storage: the one durable record of a run (below harvest, costs, data and eval).

:class:`~apidistill.storage.journal.JournalStore` is the SQLite journal of what was asked,
sent, paid and answered. The harvest engine writes it; the ledger (costs), the dataset
stage (data) and the eval report read it. It imports nothing of the project but
:mod:`apidistill.errors`, so every stage may read it without pulling in the engine.
"""
