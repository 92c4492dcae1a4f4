"""Loopback servers and helpers for tests and benchmarks (never used at run time)."""
