"""The field-type contract.

A field type tells every layer what to do with one kind of field: which column to create, how to
turn user input into a stored value, which YAML options it accepts and which widget edits it.
The built-in types are registered by :mod:`crmkit.plugins.field_types` through the same
``register_field_types`` hook a third-party plugin uses.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa

if TYPE_CHECKING:
    from crmkit.core.catalog import Field


class InvalidValue(ValueError):
    """A value that a field type cannot accept; the message is shown to the user as-is."""


def _no_coerce(f: Field, value: Any) -> Any:
    return value


@dataclass(frozen=True)
class FieldType:
    """What crmkit needs to know about one field type.

    ``column`` returns the SQLAlchemy type of the field's column, or None when the field has no
    column of its own (many-to-many ``references``). ``coerce`` turns input (JSON, form strings,
    CSV cells) into the stored Python value or raises :class:`InvalidValue`. ``options`` maps the
    type-specific YAML keys to JSON Schema fragments; the meta-schema is extended with them.
    ``operators`` are the condition operators that make sense for the type.
    """

    name: str
    column: Callable[[Field], sa.types.TypeEngine | None]
    coerce: Callable[[Field, Any], Any] = _no_coerce
    options: Mapping[str, Any] = field(default_factory=dict)
    required_options: tuple[str, ...] = ()
    widget: str = "text"
    operators: tuple[str, ...] = ("eq", "ne", "in", "is_null")
    searchable: bool = False
    sortable: bool = True
    to_json: Callable[[Field, Any], Any] | None = None
    description: str = ""


class FieldTypeRegistry:
    """Field types by name, filled from the ``register_field_types`` hook."""

    def __init__(self, types: list[FieldType] | None = None):
        self._types: dict[str, FieldType] = {}
        for t in types or ():
            self.add(t)

    def add(self, ftype: FieldType) -> None:
        """Register a type; a second type with the same name is an error, not a silent override."""
        if ftype.name in self._types:
            raise ValueError(f"field type {ftype.name!r} is registered twice")
        self._types[ftype.name] = ftype

    def get(self, name: str) -> FieldType | None:
        """The type called ``name``, or None."""
        return self._types.get(name)

    def __getitem__(self, name: str) -> FieldType:
        return self._types[name]

    def __contains__(self, name: object) -> bool:
        return name in self._types

    def names(self) -> list[str]:
        """All type names, sorted."""
        return sorted(self._types)

    def option_keys(self) -> dict[str, Any]:
        """Every type-specific option key with its JSON Schema (the union over all types)."""
        out: dict[str, Any] = {}
        for t in self._types.values():
            for key, schema in t.options.items():
                out.setdefault(key, schema)
        return out
