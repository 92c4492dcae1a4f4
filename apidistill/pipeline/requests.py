"""Moved to :mod:`apidistill.pipeline.teacher_requests` in session 6 (it builds teacher requests from prompts).

An alias only, so branches written before the move still import; nothing in the package
imports it (tests/foundation/test_import_contracts.py) and it goes once they are merged.
"""

from apidistill.pipeline.teacher_requests import *  # noqa: F403
from apidistill.pipeline.teacher_requests import __all__  # noqa: F401
