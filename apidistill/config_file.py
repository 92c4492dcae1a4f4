"""Reading a run file: YAML text → :class:`~apidistill.config.RunConfig`, errors that name
the file, the line, the key path and the allowed values.

A typo never becomes a silently ignored setting: every section forbids unknown keys, a key
given twice is an error (:func:`apidistill.yamlfile.load_yaml`), and pydantic's first error
is turned into one :class:`ConfigError` pointing at the line in the file.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from apidistill.config import RunConfig
from apidistill.errors import ConfigError, register_secret
from apidistill.yamlfile import load_yaml

__all__ = ["load_config", "parse_config"]


def _yaml_line(text: str, loc: tuple[Any, ...]) -> int | None:
    """Line (1-based) of the key path ``loc`` in YAML ``text``; the deepest node found."""
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError:
        return None
    line = None
    for part in loc:
        if isinstance(node, yaml.MappingNode):
            for k, v in node.value:
                if k.value == str(part):
                    line, node = k.start_mark.line + 1, v
                    break
            else:
                return line
        elif isinstance(node, yaml.SequenceNode) and isinstance(part, int):
            if part >= len(node.value):
                return line
            node = node.value[part]
            line = node.start_mark.line + 1
        else:
            return line
    return line


def _allowed(err: dict[str, Any]) -> str:
    ctx = err.get("ctx") or {}
    if "expected" in ctx:
        return f" (allowed: {ctx['expected']})"
    return ""


def _format_errors(exc: ValidationError, text: str, file: str) -> ConfigError:
    errs = exc.errors()
    first = errs[0]
    loc = tuple(p for p in first["loc"] if not (isinstance(p, str) and p.startswith("function")))
    key = ".".join(str(p) for p in loc) or "(top level)"
    line = _yaml_line(text, loc)
    kind = first["type"]
    if kind == "extra_forbidden":
        msg = f"unknown key {loc[-1]!r}"
        hint = "check the spelling; docs/config.md lists every key"
    elif kind == "missing":
        msg = "required key is missing"
        hint = None
    else:
        got = first.get("input")
        got_s = repr(got) if not isinstance(got, dict | list) else type(got).__name__
        msg = f"{first['msg']}{_allowed(first)}; got {got_s}"
        hint = None
    more = f" (and {len(errs) - 1} more problem(s))" if len(errs) > 1 else ""
    return ConfigError(msg + more, file=file, key=key, line=line, hint=hint)


def parse_config(text: str, file: str = "<string>") -> RunConfig:
    """Validate YAML text as a :class:`RunConfig`; errors name ``file``, line and key."""
    data = load_yaml(text, file)  # a key given twice is an error, never "the last one wins"
    if not isinstance(data, dict):
        raise ConfigError(
            f"the run file must be a mapping of sections, got {type(data).__name__}",
            file=file,
            hint="start from the demo's run file, apidistill/demo_data/migrate.yaml",
        )
    try:
        cfg = RunConfig.model_validate(data)
    except ValidationError as exc:
        raise _format_errors(exc, text, file) from None
    cfg.source = file
    _register_key_envs(cfg)
    return cfg


def _register_key_envs(cfg: RunConfig) -> None:
    """The keys the run file points at are secrets from the moment it is read: anything
    that prints, logs or stores a message from then on redacts them by value."""
    for env in (cfg.teacher.api_key_env, cfg.serve.api_key_env):
        if env:
            register_secret(os.environ.get(env))


def load_config(path: str | Path) -> RunConfig:
    p = Path(path)
    if not p.is_file():
        raise ConfigError("file not found", file=str(p), hint="give the path of a YAML run file")
    try:
        text = p.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read: {exc}", file=str(p)) from None
    return parse_config(text, file=str(p))
