"""Moved to :mod:`apidistill.records` in session 6 (the record types every layer exchanges sit at the bottom layer, docs/architecture.md).

An alias only, so branches written before the move still import; nothing in the package
imports it (tests/foundation/test_import_contracts.py) and it goes once they are merged.
"""

from apidistill.records import *  # noqa: F403
from apidistill.records import __all__  # noqa: F401
