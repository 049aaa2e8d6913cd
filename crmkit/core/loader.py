"""Read YAML files while remembering where every value came from.

Schema errors must name ``file:line: path``; PyYAML forgets positions once it has built Python
objects, so we compose the node tree ourselves and keep a map from JSON paths to line numbers.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

Path_ = tuple[str | int, ...]


@dataclass(frozen=True, order=True)
class SchemaProblem:
    """One problem found in a schema or rule file, printed as ``file:line: path: message``."""

    file: str
    line: int
    path: str
    message: str

    def __str__(self) -> str:
        return f"{self.file}:{self.line}: {self.path or '(top)'}: {self.message}"


class SchemaError(Exception):
    """Raised with every problem found, so callers can report them all at once."""

    def __init__(self, problems: Iterable[SchemaProblem]):
        self.problems = sorted(set(problems))
        super().__init__("\n".join(str(p) for p in self.problems))


@dataclass
class SourceDoc:
    """A parsed YAML document and the line of each key/item in it (1-based)."""

    file: str
    data: Any
    lines: dict[Path_, int] = field(default_factory=dict)
    problems: list[SchemaProblem] = field(default_factory=list)  # non-fatal: duplicate keys

    def line_of(self, path: Iterable[str | int]) -> int:
        """Line of the value at ``path``, or of its nearest ancestor that has one."""
        p = tuple(path)
        while p:
            if p in self.lines:
                return self.lines[p]
            p = p[:-1]
        return self.lines.get((), 1)

    def problem(self, path: Iterable[str | int], message: str) -> SchemaProblem:
        """Build a problem pointing at ``path`` in this document."""
        p = tuple(path)
        return SchemaProblem(self.file, self.line_of(p), format_path(p), message)


def format_path(path: Iterable[str | int]) -> str:
    """``("fields", "email", "type")`` -> ``fields.email.type``; list items as ``[2]``."""
    out = ""
    for part in path:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + str(part)
    return out


# libyaml's parser is several times faster than the pure-Python one (schema load time is on the
# start-up path of every command and worker); positions and node trees are the same.
_BaseLoader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


class _Loader(_BaseLoader):  # type: ignore[valid-type,misc]
    """The YAML loader for schema and rule files (safe: no Python objects)."""


def _walk(node: yaml.Node, path: Path_, lines: dict[Path_, int], problems: list[tuple[Path_, int, str]]):
    lines.setdefault(path, node.start_mark.line + 1)
    if isinstance(node, yaml.MappingNode):
        seen: dict[str, int] = {}
        for key_node, value_node in node.value:
            key = str(key_node.value)
            line = key_node.start_mark.line + 1
            if key in seen:
                problems.append((path + (key,), line, f"duplicate key {key!r} (first at line {seen[key]})"))
            seen[key] = line
            lines[path + (key,)] = line
            _walk(value_node, path + (key,), lines, problems)
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            lines[path + (i,)] = item.start_mark.line + 1
            _walk(item, path + (i,), lines, problems)


def parse_yaml(text: str, file: str) -> SourceDoc:
    """Parse one YAML document; raise SchemaError naming the line of a syntax error or duplicate key."""
    loader = _Loader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return SourceDoc(file, None, {(): 1})
        lines: dict[Path_, int] = {}
        dupes: list[tuple[Path_, int, str]] = []
        _walk(node, (), lines, dupes)
        data = loader.construct_document(node)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark else 1
        msg = f"YAML syntax error: {exc.problem or exc}"
        if exc.context:
            msg += f" ({exc.context})"
        raise SchemaError([SchemaProblem(file, line, "", msg)]) from None
    except yaml.YAMLError as exc:  # pragma: no cover - PyYAML raises marked errors for text input
        raise SchemaError([SchemaProblem(file, 1, "", f"YAML error: {exc}")]) from None
    finally:
        loader.dispose()
    # Duplicate keys are reported but the document is kept, so the rest of it is checked too.
    return SourceDoc(file, data, lines, [SchemaProblem(file, line, format_path(p), msg) for p, line, msg in dupes])


def load_yaml(path: str | Path) -> SourceDoc:
    """Read and parse a YAML file (UTF-8)."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise SchemaError([SchemaProblem(str(p), 1, "", f"not UTF-8 text: {exc}")]) from None
    return parse_yaml(text, str(p))
