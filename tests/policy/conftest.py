"""Helpers to write small policy files for tests."""

from __future__ import annotations

from pathlib import Path

import pytest


def policy_yaml(
    pid: str = "acme-agreement",
    provider: str = "openai",
    channel: str = "api",
    models: str = '["gpt-4.1-mini"]',
    decision: str = "allow",
    extra: str = "",
) -> str:
    """One policy under ``policies:``; ``extra`` lines go just before ``rules:``."""
    return (
        "policies:\n"
        f"  - id: {pid}\n"
        f"    provider: {provider}\n"
        f"    channel: {channel}\n"
        f"    models: {models}\n"
        "    document: ACME–OpenAI Enterprise Agreement\n"
        "    effective_date: 2026-03-01\n"
        "    checked_on: 2026-11-24\n"
        f"{extra}"
        "    rules:\n"
        f'      commercial: {{decision: {decision}, clause: "§7.2", reason: "signed agreement"}}\n'
    )


@pytest.fixture
def make_policy():
    """Text of a one-policy file; arguments change provider, patterns and the decision."""
    return policy_yaml


@pytest.fixture
def write_policy(tmp_path: Path):
    def write(name: str, text: str, folder: str = "user") -> Path:
        d = tmp_path / folder
        d.mkdir(exist_ok=True)
        (d / name).write_text(text, encoding="utf-8")
        return d

    return write
