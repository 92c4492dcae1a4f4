"""apidistill's benchmark suite: ``python -m benchmarks [--quick] [--only NAME ...]``.

Nothing here is imported by apidistill itself, and this file imports nothing but the
standard library: ``benchmarks.harvest_clients`` also runs under the separate peers venv,
which has no apidistill installed.
"""
