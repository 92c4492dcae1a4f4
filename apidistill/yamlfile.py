"""YAML that means what it says: a key given twice in one mapping is an error.

PyYAML's ``safe_load`` keeps the last of two equal keys without a word, so a second
``budget:`` section further down a run file silently replaced the first (a $1 cap became
$500). :func:`load_yaml` reads like ``safe_load`` but refuses a repeated key with a
:class:`~apidistill.errors.ConfigError` naming the file, the key path and both lines.
"""

from __future__ import annotations

from typing import Any

import yaml

from apidistill.errors import ConfigError

__all__ = ["DuplicateKeyError", "load_yaml"]


class DuplicateKeyError(yaml.YAMLError):
    """A mapping names one key twice; ``first``/``second`` are 1-based lines."""

    def __init__(self, key: str, first: int, second: int) -> None:
        self.key, self.first, self.second = key, first, second
        super().__init__(f"key {key!r} appears twice (lines {first} and {second})")


class _UniqueKeyLoader(yaml.SafeLoader):
    """``SafeLoader`` that remembers each mapping's key lines and rejects a repeat."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        if isinstance(node, yaml.MappingNode):
            # Only the keys written in this mapping: a key that overrides one merged in with
            # ``<<: *anchor`` is YAML's way to override, not a repeat.
            seen: dict[Any, int] = {}
            for key_node, _ in node.value:
                if not isinstance(key_node, yaml.ScalarNode) or key_node.tag.endswith(":merge"):
                    continue
                key = self.construct_object(key_node, deep=True)
                line = key_node.start_mark.line + 1
                if key in seen:
                    raise DuplicateKeyError(str(key), seen[key], line)
                seen[key] = line
        return super().construct_mapping(node, deep=deep)


def _key_path(text: str, line: int) -> str | None:
    """The dotted path of the key on ``line`` (1-based), from the composed document."""
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError:
        return None

    def walk(node: yaml.Node, path: tuple[str, ...]) -> str | None:
        if isinstance(node, yaml.MappingNode):
            for k, v in node.value:
                here = (*path, str(getattr(k, "value", "?")))
                if k.start_mark.line + 1 == line:
                    return ".".join(here)
                found = walk(v, here)
                if found:
                    return found
        elif isinstance(node, yaml.SequenceNode):
            for i, v in enumerate(node.value):
                found = walk(v, (*path, str(i)))
                if found:
                    return found
        return None

    return walk(root, ()) if root is not None else None


def load_yaml(text: str, file: str) -> Any:
    """Parse YAML ``text`` (from ``file``) like ``yaml.safe_load``, refusing repeated keys.

    Syntax errors and repeated keys raise :class:`ConfigError` with the file and line.
    """
    loader: _UniqueKeyLoader | None = None
    try:
        loader = _UniqueKeyLoader(text)  # yaml.safe_load's steps, with the SafeLoader subclass
        return loader.get_single_data()
    except DuplicateKeyError as exc:
        path = _key_path(text, exc.second) or exc.key
        raise ConfigError(
            f"key {exc.key!r} appears twice, on lines {exc.first} and {exc.second}; "
            "YAML would silently keep only the last one",
            file=file,
            key=path,
            line=exc.second,
            hint="keep one of them (merge the two sections into one)",
        ) from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = mark.line + 1 if mark is not None else None
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ConfigError(f"not valid YAML: {problem}", file=file, line=line) from None
    finally:
        if loader is not None:
            loader.dispose()
