"""Column mapping: which spreadsheet column goes into which field.

A column maps by its header: the field name (``last_name``), its English or Japanese label
(``Last name`` / ``姓``) — compared after width, case, kana and spacing folding — or a saved
mapping. Columns that cannot be written (computed and system fields such as ``Created``, the
``_row``/``_column``/``_error`` columns of an error file) are ignored *and reported*; a column
that matches nothing is ``unmapped`` and stops the import until it is mapped or ignored, so no
data is silently dropped.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

from crmkit.core.text import normalize_search

if TYPE_CHECKING:
    from crmkit.core.catalog import Entity, Field

ERROR_COLUMNS = ("_row", "_column", "_error")
READONLY_SYSTEM = ("created_at", "updated_at", "created_by", "version", "search_text")
WRITABLE_SYSTEM = ("id", "owner", "team")
IGNORE = None  # a mapping value: leave this column out on purpose

_FOLD = re.compile(r"[\s_\-・:：()（）]+")


def fold(name: str) -> str:
    """A header or label folded for matching: ``Last Name``, ``last_name`` and ``ＬＡＳＴ　ＮＡＭＥ`` agree."""
    return _FOLD.sub("", normalize_search(name))


@dataclass(frozen=True)
class Column:
    """One column of the file and what happens to it."""

    index: int
    header: str
    field: str | None  # the field written, or None
    status: str  # mapped | ignored | readonly | error_column | unmapped
    reason: str = ""

    @property
    def problem(self) -> bool:
        """True when this column stops the import (it maps to nothing and was not ignored)."""
        return self.status == "unmapped"


def importable(entity: Entity, f: Field) -> bool:
    """Whether an import may write ``f`` at all (computed, read-only and system fields may not)."""
    if f.name in WRITABLE_SYSTEM:
        return True  # id: matches existing records (update); owner/team: assignment
    if f.system or f.compute or f.readonly or f.deprecated:
        return False
    return f.type not in ("password", "file", "image")


def candidates(entity: Entity) -> dict[str, str]:
    """Folded name/label -> field name, for every field a header may name."""
    out: dict[str, str] = {}
    for f in entity.fields.values():
        if f.name == "search_text":
            continue
        for key in (f.name, f.label.get("en", ""), f.label.get("ja", "")):
            if key:
                out.setdefault(fold(key), f.name)
    return out


def map_columns(entity: Entity, header: list[str], given: Mapping[str, str | None] | None = None) -> list[Column]:
    """Map every header: ``given`` (saved or chosen: header -> field, or None to ignore) first.

    ``given`` values that are not fields of the entity are reported as unmapped with the reason.
    """
    given = dict(given or {})
    lookup = candidates(entity)
    out: list[Column] = []
    used: dict[str, str] = {}
    for i, header_name in enumerate(header):
        if header_name in given:
            choice = given[header_name]
            if choice is IGNORE or choice == "":
                out.append(Column(i, header_name, None, "ignored", "ignored on request"))
                continue
            f = entity.fields.get(choice)
            if f is None:
                out.append(Column(i, header_name, None, "unmapped", f"{entity.name} has no field {choice!r}"))
                continue
        elif header_name in ERROR_COLUMNS:
            out.append(Column(i, header_name, None, "error_column", "column of an error file"))
            continue
        else:
            name = lookup.get(fold(header_name))
            if name is None:
                out.append(Column(i, header_name, None, "unmapped", "matches no field name or label"))
                continue
            f = entity.fields[name]
        if not importable(entity, f):
            out.append(Column(i, header_name, None, "readonly", f"{f.text('en')} is set by crmkit, not imported"))
            continue
        if f.name in used:
            out.append(
                Column(i, header_name, None, "unmapped", f"{f.name} is already filled from column {used[f.name]!r}")
            )
            continue
        used[f.name] = header_name
        out.append(Column(i, header_name, f.name, "mapped"))
    return out


def as_saved(columns: list[Column]) -> dict[str, str | None]:
    """The mapping to store (header -> field or None), from the columns as mapped now."""
    return {c.header: c.field for c in columns if c.status in ("mapped", "ignored")}


__all__ = ["Column", "ERROR_COLUMNS", "IGNORE", "as_saved", "candidates", "fold", "importable", "map_columns"]
