"""Data files that ship inside the package: the policy library and the offline demo's inputs.

They live under ``apidistill/`` (``policies/``, ``demo_data/``) and are listed as package data
in ``pyproject.toml``, so a wheel installed with ``pip install`` finds them exactly like a
source checkout does. They are located with :mod:`importlib.resources`, never relative to the
repository, because an installed package has no repository around it.
"""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path

from apidistill.errors import ConfigError

__all__ = ["builtin_policy_dir", "demo_data_dir", "demo_run_file"]


def _package_folder(name: str) -> Path:
    """The shipped folder ``apidistill/<name>`` as a real path.

    The policy loader keys its parse cache on file modification times and the run file
    resolves relative paths from its folder, so both need files on disk; a package imported
    from a zip archive has none, and that is said plainly rather than failing later.
    """
    res = files("apidistill").joinpath(name)
    if not isinstance(res, Path) or not res.is_dir():
        raise ConfigError(
            f"the package's {name}/ folder is missing",
            file=str(res),
            hint="reinstall apidistill from a wheel or a source checkout "
            "(a zipped install cannot serve data files)",
        )
    return res


def builtin_policy_dir() -> Path:
    """The built-in policy library (``apidistill/policies/*.yaml``)."""
    return _package_folder("policies")


def demo_data_dir() -> Path:
    """The offline demo's inputs: run file, tickets and the prototype prompt."""
    return _package_folder("demo_data")


def demo_run_file() -> Path:
    """``migrate.yaml``, the demo's run file (its relative paths resolve from its folder)."""
    return demo_data_dir() / "migrate.yaml"
