"""The Catalog: frozen Entity, Field and Relation objects built from the YAML schemas.

Everything generated (tables, migrations, API, admin screens) reads the Catalog, never the YAML.
Objects are frozen so a plugin cannot change the schema behind the core's back; plugins shape the
schema through the ``extend_entity`` hook instead.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from functools import cached_property
from types import MappingProxyType
from typing import Any

SYSTEM_FIELDS = ("id", "created_at", "updated_at", "created_by", "version", "owner", "team", "search_text")
LANGUAGES = ("en", "ja")


def freeze(value: Any) -> Any:
    """Deep-freeze YAML data: dicts become read-only mappings, lists become tuples."""
    if isinstance(value, Mapping):
        return MappingProxyType({k: freeze(v) for k, v in value.items()})
    if isinstance(value, list | tuple):
        return tuple(freeze(v) for v in value)
    return value


def thaw(value: Any) -> Any:
    """The inverse of :func:`freeze`, for JSON output and snapshots."""
    if isinstance(value, Mapping):
        return {k: thaw(v) for k, v in value.items()}
    if isinstance(value, tuple):
        return [thaw(v) for v in value]
    return value


def humanize(name: str) -> str:
    """``close_date`` -> ``Close date``."""
    return name.replace("_", " ").capitalize()


def make_label(value: Any, fallback: str) -> Mapping[str, str]:
    """Normalise a YAML label (string or {en, ja}) into a mapping with both languages."""
    if isinstance(value, str):
        value = {"en": value}
    value = dict(value or {})
    en = value.get("en") or value.get("ja") or fallback
    return MappingProxyType({"en": en, "ja": value.get("ja") or en})


@dataclass(frozen=True)
class Option:
    """One choice of an enum or multi_enum field."""

    value: str
    label: Mapping[str, str]
    color: str | None = None
    system: bool = False  # set by a workflow only: never offered as a choice in forms

    def text(self, lang: str = "en") -> str:
        """The label in ``lang`` (falling back to English)."""
        return self.label.get(lang) or self.label["en"]


@dataclass(frozen=True)
class Field:
    """One field of an entity. ``spec`` keeps the YAML mapping for type-specific options."""

    name: str
    type: str
    label: Mapping[str, str]
    spec: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}))
    system: bool = False
    source: str = ""

    # Common options, lifted out of ``spec`` for convenience.
    @property
    def required(self) -> bool:
        return bool(self.spec.get("required"))

    @property
    def unique(self) -> bool:
        return bool(self.spec.get("unique"))

    @property
    def readonly(self) -> bool:
        return bool(self.spec.get("readonly")) or self.system or self.compute is not None

    @property
    def deprecated(self) -> bool:
        return bool(self.spec.get("deprecated"))

    @property
    def compute(self) -> str | None:
        return self.spec.get("compute")

    @property
    def default(self) -> Any:
        return self.spec.get("default")

    @property
    def required_if(self) -> Any:
        return self.spec.get("required_if")

    @property
    def visible_if(self) -> Any:
        return self.spec.get("visible_if")

    @property
    def renamed_from(self) -> str | None:
        return self.spec.get("renamed_from")

    @property
    def to(self) -> str | None:
        """Target entity of a reference/references field."""
        return self.spec.get("to")

    @property
    def on_delete(self) -> str:
        return self.spec.get("on_delete") or ("restrict" if self.required else "set_null")

    @cached_property  # frozen, so computed once: coercing an enum cell must not rebuild every option
    def options(self) -> tuple[Option, ...]:
        return tuple(
            Option(o["value"], make_label(o.get("label"), str(o["value"])), o.get("color"), bool(o.get("system")))
            for o in self.spec.get("options", ())
        )

    def option(self, value: Any) -> Option | None:
        """The option whose value is ``value``, or None."""
        for opt in self.options:
            if opt.value == value:
                return opt
        return None

    @property
    def is_reference(self) -> bool:
        return self.type == "reference"

    @property
    def is_many(self) -> bool:
        """True for many-to-many fields, which live in a link table rather than a column."""
        return self.type == "references"

    @property
    def sortable(self) -> bool:
        """Whether a list can be ordered by this field (one comparable value per record)."""
        return not self.is_many and self.type not in UNSORTABLE_TYPES

    def text(self, lang: str = "en") -> str:
        """The field's label in ``lang``."""
        return self.label.get(lang) or self.label["en"]


@dataclass(frozen=True)
class Relation:
    """A reference between entities: ``entity.field`` points at ``target``."""

    entity: str
    field: str
    target: str
    many: bool
    inverse: str | None
    on_delete: str

    @property
    def link_table(self) -> str | None:
        """Name of the link table of a many-to-many relation."""
        return f"{self.entity}__{self.field}" if self.many else None


@dataclass(frozen=True)
class ListView:
    """A predefined list view from YAML (``list.views``): a named filter, optionally the default."""

    name: str
    label: Mapping[str, str]
    filter: Mapping[str, Any]
    sort: tuple[str, ...] = ()
    default: bool = False

    def text(self, lang: str = "en") -> str:
        return self.label.get(lang) or self.label["en"]


# Field types a list cannot be ordered by: long text, structured and many-valued values.
UNSORTABLE_TYPES = frozenset({"multi_enum", "json", "address", "text", "password", "file", "image"})


@dataclass(frozen=True)
class ListSpec:
    columns: tuple[str, ...] = ()
    sort: tuple[str, ...] = ("-id",)
    filters: tuple[str, ...] = ()
    search: tuple[str, ...] = ()
    page_size: int = 50
    views: tuple[ListView, ...] = ()
    sortable: tuple[str, ...] | None = None  # None: the listed columns (see Entity.sortable_columns)

    def view(self, name: str | None) -> ListView | None:
        """The view called ``name``, or None."""
        return next((v for v in self.views if v.name == name), None)

    @property
    def default_view(self) -> ListView | None:
        """The view applied when a list is opened plainly (no search, filter or view)."""
        return next((v for v in self.views if v.default), None)


@dataclass(frozen=True)
class FormSection:
    label: Mapping[str, str]
    fields: tuple[str, ...]
    columns: int = 2


@dataclass(frozen=True)
class Entity:
    """One entity: its fields (system ones first), list and form layout, and permissions."""

    name: str
    label: Mapping[str, str]
    plural_label: Mapping[str, str]
    fields: Mapping[str, Field]
    title_field: str
    audit: bool = False
    ownable: bool = True
    menu: bool = True
    icon: str | None = None
    list: ListSpec = field(default_factory=ListSpec)
    form: tuple[FormSection, ...] = ()
    permissions: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}))
    indexes: tuple[tuple[str, ...], ...] = ()
    spec: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}))
    sources: tuple[str, ...] = ()

    @property
    def table_name(self) -> str:
        return self.name

    def field(self, name: str) -> Field:
        """The field called ``name`` (system fields included); KeyError names the entity."""
        try:
            return self.fields[name]
        except KeyError:
            raise KeyError(f"{self.name} has no field {name!r}") from None

    def has_field(self, name: str) -> bool:
        return name in self.fields

    @property
    def sortable_columns(self) -> tuple[str, ...]:
        """Columns the list pages offer sorting by (``list.sortable``, else the sortable list columns)."""
        names = self.list.sortable if self.list.sortable is not None else self.list.columns
        return tuple(n for n in names if n in self.fields and self.fields[n].sortable)

    @property
    def user_fields(self) -> tuple[Field, ...]:
        """Fields defined in YAML (not system columns), deprecated ones included."""
        return tuple(f for f in self.fields.values() if not f.system)

    @property
    def visible_fields(self) -> tuple[Field, ...]:
        """User fields that screens and the API show."""
        return tuple(f for f in self.user_fields if not f.deprecated)

    @property
    def search_paths(self) -> tuple[str, ...]:
        """Paths folded into the search text: list.search plus fields marked ``search: true``."""
        paths = list(self.list.search)
        paths += [f.name for f in self.user_fields if f.spec.get("search") and f.name not in paths]
        return tuple(paths)

    def text(self, lang: str = "en", plural: bool = False) -> str:
        label = self.plural_label if plural else self.label
        return label.get(lang) or label["en"]


@dataclass(frozen=True)
class Catalog:
    """All entities, and the relations between them, of one CRM."""

    entities: Mapping[str, Entity]
    relations: tuple[Relation, ...] = ()

    def __getitem__(self, name: str) -> Entity:
        try:
            return self.entities[name]
        except KeyError:
            raise KeyError(f"no entity {name!r}") from None

    def __contains__(self, name: object) -> bool:
        return name in self.entities

    def __iter__(self) -> Iterator[Entity]:
        return iter(self.entities.values())

    def names(self) -> list[str]:
        return list(self.entities)

    def relations_to(self, target: str) -> tuple[Relation, ...]:
        """Relations whose target is ``target`` (the related lists of a 360° page)."""
        return tuple(r for r in self.relations if r.target == target)

    def relations_from(self, entity: str) -> tuple[Relation, ...]:
        return tuple(r for r in self.relations if r.entity == entity)

    def resolve_path(self, entity: str, path: str) -> list[tuple[Entity, Field]]:
        """Follow a dotted path (``account.industry``) through references.

        Returns the (entity, field) pairs along the way; raises KeyError naming the first part that
        does not exist or that cannot be followed (only ``reference`` fields can be traversed).
        """
        steps: list[tuple[Entity, Field]] = []
        current = self[entity]
        parts = path.split(".")
        for i, part in enumerate(parts):
            f = current.field(part)
            steps.append((current, f))
            if i < len(parts) - 1:
                if f.type != "reference" or not f.to:
                    raise KeyError(f"{current.name}.{part} is not a reference, so {path!r} cannot go through it")
                current = self[f.to]
        return steps
