"""Evaluation stage: student vs. teacher on the held-out split, the report and the verdict.

Public entry points (imported from their modules so ``apidistill --help`` stays fast):

- :func:`apidistill.eval.runner.run_eval` — query student endpoints, measure quality, latency
  and cost next to the cached teacher → :class:`apidistill.eval.types.EvalResult`
- :func:`apidistill.eval.report.write_report` — ``report.html`` + ``report.json``
- :func:`apidistill.eval.verdict.verdict` — go / no-go with a reason per failed threshold
- :func:`apidistill.eval.scoring.heldout_kl` — KL of a local student to the teacher's tokens
- :mod:`apidistill.eval.metrics` — scorers and bootstrap intervals
"""
