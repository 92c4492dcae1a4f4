"""Importers: existing answers (OpenAI fine-tuning files, stored completions, Batch outputs,
the proxy's captures, a generic chat JSONL) → dataset records with provenance and the terms
decision of the model that wrote them. One module per source; :mod:`.run` ties them to a
dataset folder. See docs/import.md."""

from apidistill.importers.base import ImportedExchange, ImportLoad, to_record
from apidistill.importers.run import (
    ImportResult,
    decide_imports,
    import_records,
    load_source,
    write_import,
)

__all__ = [
    "ImportLoad",
    "ImportResult",
    "ImportedExchange",
    "decide_imports",
    "import_records",
    "load_source",
    "to_record",
    "write_import",
]
