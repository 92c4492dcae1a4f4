"""Load the demo's scripts from examples/demo (they are files, not an installed package)."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path
from types import ModuleType

import pytest

from apidistill.resources import demo_data_dir

DEMO = Path(__file__).resolve().parents[2] / "examples" / "demo"


def load_demo_module(name: str) -> ModuleType:
    """Import ``examples/demo/<name>.py`` under a prefixed name so it cannot shadow others."""
    key = f"apidistill_demo_{name}"
    if key in sys.modules:
        return sys.modules[key]
    spec = importlib.util.spec_from_file_location(key, DEMO / f"{name}.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[key] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="session")
def make_tickets() -> ModuleType:
    return load_demo_module("make_tickets")


@pytest.fixture(scope="session")
def task() -> ModuleType:
    return load_demo_module("task")


@pytest.fixture(scope="session")
def measure_teacher() -> ModuleType:
    """Imports torch and puts examples/demo on sys.path (it imports ``task`` by name)."""
    return load_demo_module("measure_teacher")


@pytest.fixture(scope="session")
def rows() -> list[dict[str, str]]:
    """The shipped tickets.jsonl (apidistill/demo_data)."""
    lines = (demo_data_dir() / "tickets.jsonl").read_text(encoding="utf-8").splitlines()
    return [json.loads(line) for line in lines]
