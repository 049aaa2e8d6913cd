"""The ``conversion:`` section of lead.yaml: where each lead field goes when a lead is converted.

```yaml
conversion:
  map:                      # lead field -> entity.field (or a list of them)
    company: [account.name, deal.name]
    email:   contact.email
  ignore: [status, rating]  # lead fields deliberately left behind
```

:func:`conversion_map` reads it from the catalog; :func:`check_conversion` is what ``crmkit check``
runs (through the lead conversion plugin's ``check_project`` hook): every lead field must be mapped
or ignored, and every target must exist and accept the lead field's values. Problems name the file
and line of the map entry, or of the lead field that would be dropped.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from crmkit.core.catalog import Catalog, Entity, Field
from crmkit.core.loader import SchemaError, SchemaProblem, SourceDoc, format_path, load_yaml

LEAD = "lead"
TARGETS = ("account", "contact", "deal")
#: Lead fields the conversion itself fills in: never mapped, never reported.
BOOKKEEPING = ("converted_at", "converted_account", "converted_contact", "converted_deal")

_TEXTUAL = {"string", "text", "email", "phone", "url"}
# Which target types take a lead field's values unchanged (beyond the same type).
_COMPATIBLE = {
    "string": {"text"},
    "email": {"string", "text"},
    "phone": {"string", "text"},
    "url": {"string", "text"},
    "integer": {"decimal", "money", "percent"},
    "decimal": {"money"},
    "money": {"decimal"},
    "percent": {"decimal"},
    "enum": {"string", "text"},
    "date": {"datetime"},
    "image": {"file"},
}


@dataclass(frozen=True)
class ConversionMap:
    """``targets[entity] = {target_field: lead_field}`` and the lead fields ignored on purpose."""

    targets: Mapping[str, Mapping[str, str]]
    ignore: frozenset[str]

    def values_for(self, entity: str, lead: Mapping[str, Any]) -> dict[str, Any]:
        """The values a lead gives the new ``entity`` record (empty lead values are left out)."""
        out: dict[str, Any] = {}
        for target_field, lead_field in self.targets.get(entity, {}).items():
            value = lead.get(lead_field)
            if value is None or value == "" or value == []:
                continue
            out[target_field] = value
        return out


def conversion_map(catalog: Catalog) -> ConversionMap:
    """The lead's conversion map from the catalog (entries with unknown targets left out)."""
    spec = (catalog[LEAD].spec.get("conversion") or {}) if LEAD in catalog else {}
    targets: dict[str, dict[str, str]] = {t: {} for t in TARGETS}
    for lead_field, dest in (spec.get("map") or {}).items():
        for item in _as_list(dest):
            entity, _, field = str(item).partition(".")
            if entity in targets and entity in catalog and field in catalog[entity].fields:
                targets[entity][field] = lead_field
    return ConversionMap(targets, frozenset(spec.get("ignore") or ()))


def _as_list(value: Any) -> list[Any]:
    return list(value) if isinstance(value, list | tuple) else [value]


def check_conversion(catalog: Catalog) -> list[SchemaProblem]:
    """Every problem of the lead's ``conversion:`` section, each with its file and line."""
    if LEAD not in catalog:
        return []
    lead = catalog[LEAD]
    spec = lead.spec.get("conversion") or {}
    where = _Locator(lead)
    problems: list[SchemaProblem] = []
    mapped = dict(spec.get("map") or {})
    ignored = list(spec.get("ignore") or ())
    seen_targets: dict[str, str] = {}
    for lead_field, dest in mapped.items():
        path = ("conversion", "map", lead_field)
        if lead_field not in lead.fields or lead.fields[lead_field].system:
            problems.append(where.problem(path, f"lead has no field {lead_field!r} to map"))
            continue
        if lead_field in ignored:
            problems.append(where.problem(path, f"lead.{lead_field} is both mapped and ignored"))
        for i, item in enumerate(_as_list(dest)):
            sub = path + (i,) if isinstance(dest, list | tuple) else path
            message = _target_problem(catalog, lead.fields[lead_field], str(item))
            if message:
                problems.append(where.problem(sub, message))
                continue
            if item in seen_targets:
                problems.append(
                    where.problem(sub, f"{item} is already filled from lead.{seen_targets[item]}")
                )
            seen_targets[str(item)] = lead_field
    for name in ignored:
        if name not in lead.fields:
            problems.append(where.ignore_problem(name, f"lead has no field {name!r} to ignore"))
    for f in lead.user_fields:
        if f.name in mapped or f.name in ignored or _exempt(f):
            continue
        problems.append(
            where.field_problem(
                f,
                f"lead.{f.name} would be dropped when a lead is converted: map it under conversion.map "
                f"(e.g. `{f.name}: contact.{f.name}`) or list it under conversion.ignore",
            )
        )
    return problems


def _exempt(f: Field) -> bool:
    """Fields that need no mapping: computed ones, conversion bookkeeping, deprecated ones and
    fields plugins add (a plugin carries its own data over in its ``lead_converted`` hook)."""
    return bool(
        f.compute or f.name in BOOKKEEPING or f.deprecated or f.source.startswith("<plugin")
    )


def _target_problem(catalog: Catalog, source: Field, target: str) -> str | None:
    entity, _, name = target.partition(".")
    if entity not in TARGETS or entity not in catalog:
        return f"{target!r}: conversion creates only {', '.join(TARGETS)} records"
    ent: Entity = catalog[entity]
    if name not in ent.fields or ent.fields[name].system:
        close = [f for f in ent.fields if f.startswith(name[:3])][:1]
        hint = f" (did you mean {entity}.{close[0]}?)" if close else ""
        return f"{entity} has no field {name!r}{hint}"
    dest = ent.fields[name]
    if dest.compute:
        return f"{target} is computed and cannot be filled from the lead"
    if dest.type != source.type and dest.type not in _COMPATIBLE.get(source.type, ()):
        return f"lead.{source.name} is {source.type} but {target} is {dest.type}"
    if source.type in ("reference", "references") and source.to != dest.to:
        return f"lead.{source.name} refers to {source.to} but {target} refers to {dest.to}"
    # Enum options are not compared: overlays often add one to lead.source only. A lead value the
    # target lacks is refused loudly at conversion (422 naming e.g. deal.source), never dropped.
    if source.type in _TEXTUAL and dest.type in _TEXTUAL:
        src_max, dest_max = source.spec.get("max_length"), dest.spec.get("max_length")
        if dest_max and (not src_max or src_max > dest_max) and dest.type != "text":
            return f"{target} holds at most {dest_max} characters, lead.{source.name} up to {src_max or 'any'}"
    return None


class _Locator:
    """File and line of things in the lead's YAML files (the catalog keeps values, not lines)."""

    def __init__(self, lead: Entity):
        self.lead = lead
        self.docs: list[SourceDoc] = []
        for file in lead.sources:
            try:
                self.docs.append(load_yaml(file))
            except (OSError, SchemaError):  # reported by the schema loader already
                continue

    def problem(self, path: tuple, message: str) -> SchemaProblem:
        # Overlays merge their conversion entries in: the last file that has the entry defines it.
        for doc in reversed(self.docs):
            if isinstance(doc.data, dict) and _has(doc.data, path):
                return doc.problem(path, message)
        for doc in reversed(self.docs):
            if isinstance(doc.data, dict) and "conversion" in doc.data:
                return doc.problem(("conversion",), message)
        first = self.docs[0].file if self.docs else "<lead>"
        return SchemaProblem(first, 1, format_path(path), message)

    def ignore_problem(self, name: str, message: str) -> SchemaProblem:
        # ``ignore`` lists are concatenated across files: find the file and index that name it.
        for doc in reversed(self.docs):
            items = (doc.data.get("conversion") or {}).get("ignore") if isinstance(doc.data, dict) else None
            if isinstance(items, list) and name in items:
                return doc.problem(("conversion", "ignore", items.index(name)), message)
        return self.problem(("conversion", "ignore"), message)

    def field_problem(self, f: Field, message: str) -> SchemaProblem:
        file, _, line = f.source.rpartition(":")
        return SchemaProblem(file or f.source, int(line) if line.isdigit() else 1, f"fields.{f.name}", message)


def _has(data: Any, path: tuple) -> bool:
    for part in path:
        if isinstance(part, int):
            if not isinstance(data, list) or part >= len(data):
                return False
        elif not isinstance(data, dict) or part not in data:
            return False
        data = data[part]
    return True
