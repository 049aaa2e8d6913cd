"""Find the fenced code blocks of docs/ and the ``<!-- test: ... -->`` marker that says how each is tested.

A marker is an HTML comment on the last non-blank line before a block (invisible on a rendered page)::

    <!-- test: console -->
    ```console
    $ crmkit check
    OK: 14 entities, ...
    ```

Kinds (``key=value`` arguments, a reason in parentheses):

- ``file path=P``: write the block to ``P`` (relative to the page's working directory) in the page's session.
- ``patch path=P``: apply the block (a diff hunk: `` ``/``-``/``+`` lines) to ``P`` in the page's session.
- ``console [exit=N] [backend=sqlite|postgresql]``: run the ``$`` commands of the block in the page's
  session and compare what they print with the lines shown under each (see :func:`output_matches`).
- ``server probe=/path``: start the block's command, wait until ``probe`` answers 200, stop it.
- ``syntax [plugins=a,b]``: every ``crmkit …`` line must parse against the real command line
  (commands, options, argument types) — for lists of commands that cannot run as written.
- ``config [plugins=a,b] [copy=SRC:DEST]``: a crmkit.yaml (or a section of one) that ``crmkit check``
  accepts (``copy`` puts a repository file the block names, such as a rule file, into the project).
- ``schema [extends=E] [plugins=a,b]``: an entity file (or, with ``extends``, a section of an overlay of
  ``E``) that ``crmkit check`` accepts.
- ``plugin [enable=a,b]``: Python defining hook implementations, loaded into a real, migrated CRM.
- ``tested-by tests/test_x.py::test_name``: another test runs this block.
- ``skip (reason)``: not run, and the reason says why.

Blocks of kinds ``file``/``patch``/``console``/``server`` form the page's *session*: they run in page order in
one temporary directory, like a reader typing them.
"""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"

KINDS = ("file", "patch", "console", "server", "syntax", "config", "schema", "plugin", "tested-by", "skip")
SESSION_KINDS = ("file", "patch", "console", "server")
_MARKER = re.compile(r"^\s*<!--\s*test:\s*(.*?)\s*-->\s*$")
_FENCE = re.compile(r"^(```+|~~~+)\s*([\w+-]*)")


@dataclass(frozen=True)
class Directive:
    """What a ``<!-- test: ... -->`` marker says: the kind, its arguments, a reason."""

    kind: str
    args: dict[str, str] = field(default_factory=dict)
    positional: tuple[str, ...] = ()
    reason: str = ""

    def names(self, key: str) -> list[str]:
        """A comma-separated argument as a list (``plugins=a,b``)."""
        return [v for v in self.args.get(key, "").split(",") if v]


@dataclass(frozen=True)
class Block:
    """One fenced block of a docs page."""

    page: str  # "docs/tutorial.md"
    line: int  # line of the opening fence (1-based)
    lang: str
    text: str
    directive: Directive | None

    @property
    def where(self) -> str:
        return f"{self.page}:{self.line}"


def parse_directive(text: str) -> Directive:
    """``console exit=1 (why)`` -> Directive("console", {"exit": "1"}, (), "why")."""
    reason = ""
    m = re.search(r"\((.*)\)\s*$", text)
    if m:
        reason, text = m.group(1).strip(), text[: m.start()]
    words = shlex.split(text)
    if not words:
        raise ValueError("empty test marker")
    args = dict(w.split("=", 1) for w in words[1:] if "=" in w)
    positional = tuple(w for w in words[1:] if "=" not in w)
    return Directive(words[0], args, positional, reason)


def page_blocks(path: Path) -> list[Block]:
    """Every fenced block of a Markdown file with its marker (None when it has none)."""
    rel = path.relative_to(ROOT).as_posix()
    lines = path.read_text(encoding="utf-8").splitlines()
    out: list[Block] = []
    i = 0
    while i < len(lines):
        m = _FENCE.match(lines[i])
        if not m:
            i += 1
            continue
        fence, lang = m.group(1), m.group(2)
        end = i + 1
        while end < len(lines) and not lines[end].startswith(fence):
            end += 1
        prev = i - 1
        while prev >= 0 and not lines[prev].strip():
            prev -= 1
        marker = _MARKER.match(lines[prev]) if prev >= 0 else None
        directive = parse_directive(marker.group(1)) if marker else None
        text = "\n".join(lines[i + 1 : end]) + "\n"
        out.append(Block(rel, i + 1, lang, text, directive))
        i = end + 1
    return out


def doc_pages() -> list[Path]:
    """Every Markdown page under docs/."""
    return sorted(DOCS.rglob("*.md"))


def all_blocks() -> list[Block]:
    return [b for p in doc_pages() for b in page_blocks(p)]


# ---------------------------------------------------------------------------------------------
# Console blocks
# ---------------------------------------------------------------------------------------------
@dataclass
class Command:
    """One ``$`` line (with its ``\\`` continuations) and the output lines shown under it."""

    line: str
    expected: list[str]


def console_commands(text: str) -> list[Command]:
    """Split a console block into commands and their expected output."""
    out: list[Command] = []
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        line = lines[i]
        if line.startswith("$ "):
            cmd = line[2:]
            while cmd.endswith("\\") and i + 1 < len(lines):
                i += 1
                cmd = cmd[:-1] + " " + lines[i].strip()
            out.append(Command(cmd.strip(), []))
        elif out:
            out[-1].expected.append(line)
        elif line.strip():
            raise ValueError(f"output before the first $ command: {line!r}")
        i += 1
    return out


def _line_pattern(expected: str) -> re.Pattern[str]:
    """``...``/``…`` match any text and every number matches any number."""
    parts = re.split(r"(\.\.\.|…|\d+)", expected.rstrip())
    regex = ""
    for part in parts:
        if part in ("...", "…"):
            regex += ".*"
        elif part.isdigit():
            regex += r"\d+"
        else:
            regex += re.escape(part)
    return re.compile(regex)


def output_matches(expected: list[str], actual: str, *, backend: str = "sqlite") -> str | None:
    """None when the expected lines appear, in order, among the actual output lines; else why not.

    A line that is only ``...`` stands for lines left out, blank lines are ignored, ``...`` inside a
    line matches anything and numbers match any number (counts and ids vary). A line naming the
    SQLite backend (``(sqlite)``) is checked only when running on SQLite.
    """
    lines = [line.rstrip() for line in actual.splitlines()]
    pos = 0
    for want in expected:
        if not want.strip() or want.strip() in ("...", "…"):
            continue
        if backend != "sqlite" and "(sqlite)" in want:
            continue
        pattern = _line_pattern(want)
        for j in range(pos, len(lines)):
            if pattern.fullmatch(lines[j]) or pattern.fullmatch(lines[j].strip()) and want == want.strip():
                pos = j + 1
                break
        else:
            return f"expected line not found (in order): {want!r}\n--- actual output ---\n{actual}"
    return None
