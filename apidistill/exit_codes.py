"""The exit codes of the ``apidistill`` command, one meaning each (docs/harvest.md lists them).

Scripts and CI branch on these, so they never change meaning:

====  =====================================================================================
0     everything asked was done (a ``--max-requests`` stop counts: the user asked for it)
1     an unexpected internal error (a traceback: please report it)
2     the command could not run as asked: a bad run file or flag, a refused policy, a
      journal or run folder it must not touch, a teacher error that stops the whole run
3     the command finished, but some requests failed (the summary shows the first errors of
      each kind and the fix; ``--retry-failed`` sends them again once fixed)
4     the budget stopped the harvest (everything answered is saved; raise the budget and
      re-run)
130   interrupted (Ctrl-C / SIGTERM); everything finished so far is saved
====  =====================================================================================
"""

from __future__ import annotations

__all__ = ["BUDGET_STOP", "ERROR", "INTERRUPTED", "OK", "SOME_FAILED"]

OK = 0
ERROR = 2
SOME_FAILED = 3
BUDGET_STOP = 4
INTERRUPTED = 130
