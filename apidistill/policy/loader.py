"""Read the built-in ``apidistill/policies/*.yaml`` (and a user's own policy folders) into
:class:`Policy` objects.

Policy files are legal citations, so a mistake in one must never be skipped silently: every
problem (bad YAML, an unknown key or use, a bad date, two equally specific rules claiming the
same checkpoint) is a :class:`ConfigError` naming the file and line. YAML is composed into
nodes rather than loaded so that every key keeps its line, and scalars are typed by the YAML
resolver except dates, which pydantic checks (so ``2026-13-01`` is an error with a line, not a
crash inside the YAML library).

A file holds either one policy (top-level ``provider:``) or a list under ``policies:``.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from functools import cache, lru_cache
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from apidistill.errors import ConfigError
from apidistill.policy.schema import Policy
from apidistill.resources import builtin_policy_dir

__all__ = [
    "builtin_policy_dir",
    "find_overlaps",
    "load_policies",
    "load_policy_file",
    "pattern_specificity",
    "validate_dirs",
]

_WILDCARDS = frozenset("*?[")
_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def pattern_specificity(pattern: str) -> tuple[int, int]:
    """Sort key: an exact name beats any glob; then the glob with more literal characters."""
    exact = 0 if any(c in _WILDCARDS for c in pattern) else 1
    literal = sum(1 for c in pattern if c not in _WILDCARDS)
    return (exact, literal)


# --------------------------------------------------------------------------- YAML with lines


def _scalar(node: yaml.ScalarNode) -> Any:
    tag = node.tag.rsplit(":", 1)[-1]
    if tag == "null":
        return None
    if tag == "bool":
        return node.value.lower() in ("true", "yes", "on")
    if tag == "int":
        try:
            return int(node.value.replace("_", ""), 0)
        except ValueError:
            return node.value
    if tag == "float":
        try:
            return float(node.value.replace("_", ""))
        except ValueError:
            return node.value
    return node.value  # str and timestamp: pydantic parses dates and reports bad ones


def _plain(node: yaml.Node, path: tuple[Any, ...], lines: dict[tuple[Any, ...], int], file: str):
    """Node → plain data; ``lines`` gets the line of every key path."""
    lines.setdefault(path, node.start_mark.line + 1)
    if isinstance(node, yaml.MappingNode):
        out: dict[str, Any] = {}
        for key_node, value_node in node.value:
            key = _scalar(key_node) if isinstance(key_node, yaml.ScalarNode) else None
            if not isinstance(key, str):
                raise ConfigError(
                    "keys must be plain words", file=file, line=key_node.start_mark.line + 1
                )
            if key in out:
                raise ConfigError(
                    f"key {key!r} appears twice", file=file, line=key_node.start_mark.line + 1
                )
            lines[(*path, key)] = key_node.start_mark.line + 1
            out[key] = _plain(value_node, (*path, key), lines, file)
        return out
    if isinstance(node, yaml.SequenceNode):
        return [_plain(v, (*path, i), lines, file) for i, v in enumerate(node.value)]
    return _scalar(node)


def _compose(text: str, file: str) -> tuple[Any, dict[tuple[Any, ...], int]]:
    try:
        node = yaml.compose(text, Loader=_LOADER)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ConfigError(
            f"not valid YAML: {problem}",
            file=file,
            line=mark.line + 1 if mark is not None else None,
            hint="fix the YAML syntax (indentation, quotes, colons)",
        ) from None
    lines: dict[tuple[Any, ...], int] = {}
    if node is None:
        return None, lines
    return _plain(node, (), lines, file), lines


def _line_of(lines: dict[tuple[Any, ...], int], loc: tuple[Any, ...]) -> int | None:
    """Line of the deepest known prefix of ``loc``."""
    for n in range(len(loc), -1, -1):
        if loc[:n] in lines:
            return lines[loc[:n]]
    return None


def _validation_error(
    exc: ValidationError, prefix: tuple[Any, ...], lines: dict[tuple[Any, ...], int], file: str
) -> ConfigError:
    err = exc.errors()[0]
    loc = tuple(p for p in err["loc"] if not str(p).startswith("function"))
    full = (*prefix, *loc)
    key = ".".join(str(p) for p in full) or "(top level)"
    if err["type"] == "extra_forbidden":
        msg = f"unknown key {loc[-1]!r}"
        hint = "docs/policies.md lists the keys of a policy file"
    elif err["type"] == "missing":
        msg = "required key is missing"
        hint = "docs/policies.md lists the keys of a policy file"
    else:
        ctx = err.get("ctx") or {}
        allowed = f" (allowed: {ctx['expected']})" if "expected" in ctx else ""
        got = err.get("input")
        got_s = repr(got) if not isinstance(got, dict | list) else type(got).__name__
        msg = f"{err['msg']}{allowed}; got {got_s}"
        hint = None
        if len(loc) >= 2 and loc[0] == "rules" and err["type"] == "literal_error":
            hint = "rules are keyed by use: internal, commercial, competing, redistribute, research_noncommercial"
    more = len(exc.errors()) - 1
    if more:
        msg += f" (and {more} more problem(s))"
    return ConfigError(msg, file=file, key=key, line=_line_of(lines, full), hint=hint)


# --------------------------------------------------------------------------- loading


def load_policy_file(path: Path, *, user: bool = False) -> list[Policy]:
    """Every policy in one YAML file, each carrying its file and line."""
    try:
        st = path.stat()
    except OSError as exc:
        raise ConfigError(f"cannot read policy file: {exc}", file=str(path)) from None
    return [p.model_copy() for p in _parse_file(str(path), st.st_mtime_ns, st.st_size, user)]


@lru_cache(maxsize=256)
def _parse_file(file: str, mtime_ns: int, size: int, user: bool) -> tuple[Policy, ...]:
    """Parsing memo: keyed by modification time and size, so an edited file is re-read."""
    try:
        text = Path(file).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read policy file: {exc}", file=file) from None
    data, lines = _compose(text, file)
    if isinstance(data, dict) and "policies" in data:
        extra = sorted(set(data) - {"policies"})
        if extra:
            raise ConfigError(
                f"unknown top-level key {extra[0]!r} next to 'policies'",
                file=file,
                line=lines.get((extra[0],)),
                hint="a file is either one policy or a list under 'policies:'",
            )
        entries, prefix = data["policies"], ("policies",)
        if not isinstance(entries, list) or not entries:
            raise ConfigError(
                "'policies' must be a non-empty list", file=file, line=lines.get(prefix)
            )
    elif isinstance(data, dict):
        entries, prefix = [data], ()
    else:
        raise ConfigError(
            "a policy file must be a mapping (one policy) or have a 'policies:' list",
            file=file,
            line=1,
            hint="see docs/policies.md for the format",
        )
    out = []
    for i, entry in enumerate(entries):
        where = (*prefix, i) if prefix else ()
        if not isinstance(entry, dict):
            raise ConfigError("each policy must be a mapping", file=file, line=lines.get(where))
        try:
            policy = Policy.model_validate(entry)
        except ValidationError as exc:
            raise _validation_error(exc, where, lines, file) from None
        policy.file, policy.line, policy.user = file, lines.get(where, 1), user
        out.append(policy)
    return tuple(out)


def _yaml_files(folder: Path) -> list[Path]:
    if folder.is_file():
        return [folder]
    if not folder.is_dir():
        raise ConfigError(
            "policy folder not found",
            file=str(folder),
            hint="check --policy-dir, or policy.policy_dirs in the run file (paths resolve from the "
            "run file)",
        )
    return sorted([*folder.glob("*.yaml"), *folder.glob("*.yml")])


def load_policies(folders: Iterable[Path], *, user: bool = False) -> list[Policy]:
    """All policies in the given folders (or single files), sorted by file name."""
    out: list[Policy] = []
    for folder in folders:
        for path in _yaml_files(Path(folder)):
            out.extend(load_policy_file(path, user=user))
    return out


def _glob_tokens(pattern: str) -> list[str]:
    """``*``, ``?`` and literal characters; a ``[...]`` class counts as ``?`` (which can only
    make the overlap check stricter, never miss one)."""
    tokens, i = [], 0
    while i < len(pattern):
        c = pattern[i]
        end = pattern.find("]", i + 2) if c == "[" else -1
        if end != -1:
            tokens.append("?")
            i = end + 1
            continue
        tokens.append(c)
        i += 1
    return tokens


def _patterns_overlap(a: str, b: str) -> bool:
    """Is there a name that both globs match? Walks both patterns at once (memoized)."""
    ta, tb = _glob_tokens(a), _glob_tokens(b)

    @cache
    def meet(i: int, j: int) -> bool:
        if i == len(ta) and j == len(tb):
            return True
        if i < len(ta) and ta[i] == "*":
            return meet(i + 1, j) or (j < len(tb) and meet(i, j + 1))
        if j < len(tb) and tb[j] == "*":
            return meet(i, j + 1) or (i < len(ta) and meet(i + 1, j))
        if i == len(ta) or j == len(tb):
            return False
        same = ta[i] == tb[j] or "?" in (ta[i], tb[j])
        return same and meet(i + 1, j + 1)

    return meet(0, 0)


def find_overlaps(policies: Sequence[Policy]) -> list[ConfigError]:
    """Pairs of policies for the same provider, channel and use whose patterns are equally
    specific and can match the same checkpoint: the engine could not pick one."""
    problems = []
    for i, p in enumerate(policies):
        for q in policies[i + 1 :]:
            if (p.provider, p.channel, p.user) != (q.provider, q.channel, q.user):
                continue
            if not set(p.rules) & set(q.rules):
                continue
            keys = [("model", a, b) for a in p.models for b in q.models]
            keys += [("license", a, b) for a in p.licenses for b in q.licenses if a == b]
            for kind, a, b in keys:
                if pattern_specificity(a) == pattern_specificity(b) and _patterns_overlap(a, b):
                    problems.append(
                        ConfigError(
                            f"{kind} pattern {a!r} of policy {p.id!r} and {b!r} of policy "
                            f"{q.id!r} ({q.file}:{q.line}) are equally specific and overlap",
                            file=p.file,
                            line=p.line,
                            hint="make one pattern more specific or merge the two policies",
                        )
                    )
    return problems


def validate_dirs(folders: Iterable[Path]) -> tuple[list[Policy], list[ConfigError]]:
    """Load every file, collecting problems instead of stopping at the first file."""
    policies: list[Policy] = []
    problems: list[ConfigError] = []
    seen_ids: dict[str, Policy] = {}
    for folder in folders:
        try:
            files = _yaml_files(Path(folder))
        except ConfigError as exc:
            problems.append(exc)
            continue
        for path in files:
            try:
                loaded = load_policy_file(path)
            except ConfigError as exc:
                problems.append(exc)
                continue
            for pol in loaded:
                if pol.id in seen_ids:
                    first = seen_ids[pol.id]
                    problems.append(
                        ConfigError(
                            f"policy id {pol.id!r} is already used at {first.file}:{first.line}",
                            file=pol.file,
                            line=pol.line,
                            hint="give every policy a unique id",
                        )
                    )
                seen_ids[pol.id] = pol
            policies.extend(loaded)
    problems.extend(find_overlaps(policies))
    return policies, problems
