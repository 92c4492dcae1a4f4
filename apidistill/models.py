"""Moved to :mod:`apidistill.model_loading` in session 6 (loads models, so the name says so).

An alias only, so branches written before the move still import; nothing in the package
imports it (tests/foundation/test_import_contracts.py) and it goes once they are merged.
"""

from apidistill.model_loading import *  # noqa: F403
from apidistill.model_loading import __all__  # noqa: F401
