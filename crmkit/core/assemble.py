"""Assemble the Catalog from schema files: parse, validate, merge overlays, apply plugins, check.

Every problem is collected (never the first only) and reported as ``file:line: path: message``,
so ``crmkit check`` shows a company all its mistakes at once. Nothing here touches the database.
"""

from __future__ import annotations

import copy
import difflib
import json
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from types import MappingProxyType
from typing import Any

import jsonschema

from crmkit.core import conditions
from crmkit.core.catalog import (
    SYSTEM_FIELDS,
    Catalog,
    Entity,
    Field,
    FormSection,
    ListSpec,
    ListView,
    Relation,
    freeze,
    humanize,
    make_label,
)
from crmkit.core.fieldtypes import FieldTypeRegistry
from crmkit.core.loader import SchemaError, SchemaProblem, SourceDoc, format_path, load_yaml

COMMON_FIELD_KEYS = frozenset(
    ("type", "label", "help", "placeholder", "required", "required_if", "visible_if", "default", "unique",
     "index", "readonly", "compute", "renamed_from", "deprecated", "search", "widget")
)


_LABEL_KEYS = ("label", "plural_label", "help", "placeholder", "description")


def builtin_schema_dir() -> Path:
    """Directory of the built-in entity YAML files (inside the installed package)."""
    return Path(str(resources.files("crmkit.schemas")))


def meta_schema(field_types: FieldTypeRegistry) -> dict[str, Any]:
    """The entity meta-schema, with every registered type's option keys added to fields."""
    schema = json.loads((builtin_schema_dir() / "entity.schema.json").read_text(encoding="utf-8"))
    props = schema["$defs"]["field"]["properties"]
    for key, sub in field_types.option_keys().items():
        props.setdefault(key, sub)
    return schema


def yaml_files(paths: Iterable[str | Path]) -> list[Path]:
    """Expand directories into their ``*.yaml``/``*.yml`` files, sorted; keep files as given."""
    out: list[Path] = []
    for p in paths:
        p = Path(p)
        if p.is_dir():
            out += sorted(x for x in p.iterdir() if x.suffix in (".yaml", ".yml"))
        elif p.exists():
            out.append(p)
    return out


@dataclass
class _Origin:
    doc: SourceDoc
    path: tuple

    def problem(self, message: str, *sub: str | int) -> SchemaProblem:
        return self.doc.problem(self.path + sub, message)

    @property
    def where(self) -> str:
        return f"{self.doc.file}:{self.doc.line_of(self.path)}"


def _suggest(name: str, choices: Iterable[str]) -> str:
    close = difflib.get_close_matches(name, list(choices), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _problem_paths(doc: SourceDoc, problems: list[SchemaProblem]) -> list[tuple[str, ...]]:
    return [tuple(p.path.replace("[", ".[").split(".")) if p.path else () for p in problems]


def _schema_problems(doc: SourceDoc, validator: jsonschema.protocols.Validator) -> list[SchemaProblem]:
    out = []
    data = doc.data
    for err in validator.iter_errors(data):
        path = tuple(err.absolute_path)
        if err.validator == "additionalProperties" and isinstance(err.instance, dict):
            allowed = set(err.schema.get("properties", {}))
            for key in err.instance:
                if key not in allowed and not (path == () and str(key).startswith("x-")):
                    out.append(doc.problem(path + (key,), f"unknown key {key!r}{_suggest(str(key), allowed)}"))
            continue
        if err.validator == "oneOf" and path == ():
            msg = "an entity file needs exactly one of `entity:` (a new entity) or `extends:` (an overlay)"
        elif err.validator == "oneOf" and path and path[-1] in _LABEL_KEYS:
            msg = "a label is a string or a mapping {en: ..., ja: ...}"
        elif err.validator == "pattern" and isinstance(err.instance, str):
            msg = f"{err.instance!r} is not a valid name (lower_snake_case, starting with a letter)"
        else:
            msg = err.message
        out.append(doc.problem(path, msg))
    return out


class _Builder:
    """Collects definitions and problems; one instance per catalog build."""

    def __init__(self, field_types: FieldTypeRegistry):
        self.types = field_types
        self.problems: list[SchemaProblem] = []
        self.defs: dict[str, dict[str, Any]] = {}
        self.entity_origin: dict[str, _Origin] = {}
        self.field_origin: dict[tuple[str, str], _Origin] = {}
        self.sources: dict[str, list[str]] = {}
        # Overlays' ``form.add_sections``/``form.add_fields``, applied to the final sections in
        # build_entity (so they also work on an entity whose form is the automatic single section).
        self.form_additions: dict[str, list[tuple[SourceDoc, dict[str, Any]]]] = {}
        self.validator = jsonschema.Draft202012Validator(meta_schema(field_types))
        self.field_validator = jsonschema.Draft202012Validator(
            {"$defs": self.validator.schema["$defs"], "$ref": "#/$defs/field"}
        )

    # -- loading ---------------------------------------------------------------------------------
    def load(self, files: Sequence[Path]) -> list[SourceDoc]:
        docs = []
        for f in files:
            try:
                doc = load_yaml(f)
            except SchemaError as exc:
                self.problems += exc.problems
                continue
            if not isinstance(doc.data, dict):
                self.problems.append(doc.problem((), "an entity file must be a mapping (`entity: name` ...)"))
                continue
            self.problems += doc.problems
            found = _schema_problems(doc, self.validator)
            self.problems += found
            # Problems confined to single fields drop just those fields, so the rest of the
            # file is still checked and every mistake is reported in one run.
            bad_fields = {p[1] for p in _problem_paths(doc, found) if len(p) >= 2 and p[0] == "fields"}
            if any(len(p) < 2 or p[0] != "fields" for p in _problem_paths(doc, found)):
                continue
            for name in bad_fields:
                doc.data["fields"].pop(name, None)
            docs.append(doc)
        return docs

    def add_base(self, doc: SourceDoc) -> None:
        name = doc.data["entity"]
        if name in self.defs:
            first = self.entity_origin[name]
            self.problems.append(doc.problem(("entity",), f"entity {name!r} is already defined at {first.where}"))
            return
        self.defs[name] = copy.deepcopy(doc.data)
        self.entity_origin[name] = _Origin(doc, ("entity",))
        self.sources[name] = [doc.file]
        for fname in doc.data.get("fields", {}) or {}:
            self.field_origin[(name, fname)] = _Origin(doc, ("fields", fname))

    def add_overlay(self, doc: SourceDoc) -> None:
        name = doc.data["extends"]
        if name not in self.defs:
            self.problems.append(
                doc.problem(("extends",), f"cannot extend unknown entity {name!r}{_suggest(name, self.defs)}")
            )
            return
        base = self.defs[name]
        self.sources[name].append(doc.file)
        for key, value in doc.data.items():
            if key in ("extends", "fields"):
                continue
            if key == "list" and isinstance(base.get("list"), dict):
                base["list"] = {**base["list"], **value}
            elif key == "conversion" and isinstance(base.get(key), dict) and isinstance(value, dict):
                base[key] = _merge_conversion(base[key], value)
            elif key == "form" and isinstance(value, dict):
                # `sections:` replaces the form; `add_sections:`/`add_fields:` add to it.
                if "sections" in value:
                    base["form"] = {"sections": copy.deepcopy(value["sections"])}
                if value.get("add_sections") or value.get("add_fields"):
                    self.form_additions.setdefault(name, []).append((doc, copy.deepcopy(value)))
            else:
                base[key] = copy.deepcopy(value)
        self.merge_fields(name, doc.data.get("fields") or {}, lambda f: _Origin(doc, ("fields", f)))

    def merge_fields(self, entity: str, fields: dict[str, Any], origin_of: Callable[[str], _Origin]) -> None:
        base_fields = self.defs[entity].setdefault("fields", {})
        for fname, fdef in fields.items():
            origin = origin_of(fname)
            if fname in base_fields:
                first = self.field_origin[(entity, fname)]
                if "type" in fdef:
                    self.problems.append(
                        origin.problem(
                            f"field {entity}.{fname} is already defined at {first.where}; "
                            "leave out `type:` to change its labels or add options, or choose another name"
                        )
                    )
                    continue
                self._merge_existing(entity, fname, base_fields[fname], fdef, origin)
            else:
                if "type" not in fdef:
                    self.problems.append(origin.problem(f"new field {entity}.{fname} needs a `type:`"))
                    continue
                base_fields[fname] = copy.deepcopy(fdef)
                self.field_origin[(entity, fname)] = origin

    def _merge_existing(self, entity, fname, base, overlay, origin: _Origin) -> None:
        for key, value in overlay.items():
            if key == "options":
                have = {o["value"] for o in base.get("options", [])}
                for i, opt in enumerate(value):
                    if opt["value"] in have:
                        self.problems.append(
                            origin.problem(f"option {opt['value']!r} already exists on {entity}.{fname}", "options", i)
                        )
                    else:
                        base.setdefault("options", []).append(copy.deepcopy(opt))
            elif key in ("label", "help", "placeholder", "required", "default", "index", "search", "widget",
                         "deprecated", "visible_if", "required_if"):
                base[key] = copy.deepcopy(value)
            else:
                self.problems.append(
                    origin.problem(f"an overlay cannot change {key!r} of the existing field {entity}.{fname}", key)
                )

    # -- checking --------------------------------------------------------------------------------
    def check_field(self, entity: str, fname: str, fdef: dict[str, Any], origin: _Origin) -> None:
        if fname in SYSTEM_FIELDS:
            self.problems.append(origin.problem(f"{fname!r} is a system column and cannot be declared as a field"))
            return
        tname = fdef.get("type")
        ftype = self.types.get(tname) if tname else None
        if ftype is None:
            self.problems.append(
                origin.problem(
                    f"unknown field type {tname!r}{_suggest(str(tname), self.types.names())}; "
                    f"known types: {', '.join(self.types.names())}",
                    "type",
                )
            )
            return
        for key in fdef:
            if key not in COMMON_FIELD_KEYS and key not in ftype.options:
                self.problems.append(origin.problem(f"option {key!r} does not apply to type {tname!r}", key))
        for key in ftype.required_options:
            if key not in fdef:
                self.problems.append(origin.problem(f"a {tname} field needs `{key}:`"))
        if "to" in fdef and fdef["to"] not in self.defs:
            self.problems.append(
                origin.problem(f"references unknown entity {fdef['to']!r}{_suggest(fdef['to'], self.defs)}", "to")
            )
        seen_options: set[str] = set()
        for i, opt in enumerate(fdef.get("options", []) or []):
            if opt["value"] in seen_options:
                self.problems.append(origin.problem(f"duplicate option {opt['value']!r}", "options", i))
            seen_options.add(opt["value"])
        for tfname, tdef in (fdef.get("through") or {}).items():
            if not isinstance(tdef, dict):
                continue
            sub = _Origin(origin.doc, origin.path + ("through", tfname))
            if tdef.get("type") in ("references", "reference") and tdef.get("type") == "references":
                self.problems.append(sub.problem("a link-table field cannot itself be many-to-many"))
            elif tdef.get("type") not in self.types:
                self.problems.append(sub.problem(f"unknown field type {tdef.get('type')!r}", "type"))

    def build_entity(self, name: str) -> Entity:
        d = self.defs[name]
        fields: dict[str, Field] = {}
        ownable = d.get("ownable", True)
        for sf in _system_fields(ownable):
            fields[sf.name] = sf
        for fname, fdef in (d.get("fields") or {}).items():
            origin = self.field_origin.get((name, fname))
            fields[fname] = Field(
                name=fname,
                type=fdef.get("type", "string"),
                label=make_label(fdef.get("label"), humanize(fname)),
                spec=freeze(fdef),
                source=origin.where if origin else "",
            )
        lst = d.get("list") or {}
        user_names = [f for f in fields if not fields[f].system]
        title = d.get("title_field") or next(
            (f for f in ("name", "title", "subject", "username") if f in fields),
            next((f for f in user_names if fields[f].type == "string"), "id"),
        )
        visible = [f for f in user_names if not fields[f].spec.get("deprecated")]
        columns = tuple(lst.get("columns") or [title] + [f for f in visible if f != title][:4])
        sections = self.build_form(name, d, fields, visible)
        return Entity(
            name=name,
            label=make_label(d.get("label"), humanize(name)),
            plural_label=make_label(d.get("plural_label") or d.get("label"), humanize(name) + "s"),
            fields=MappingProxyType(fields),
            title_field=title,
            audit=bool(d.get("audit", False)),
            ownable=ownable,
            menu=d.get("menu", True),
            icon=d.get("icon"),
            list=ListSpec(
                columns=columns,
                sort=tuple(lst.get("sort") or ["-id"]),
                filters=tuple(lst.get("filters") or ()),
                search=tuple(lst.get("search") or ()),
                page_size=lst.get("page_size", 50),
                sortable=tuple(lst["sortable"]) if lst.get("sortable") is not None else None,
                views=tuple(
                    ListView(
                        name=v["name"],
                        label=make_label(v.get("label"), humanize(v["name"])),
                        filter=freeze(v.get("filter") or {}),
                        sort=tuple(v.get("sort") or ()),
                        default=bool(v.get("default")),
                    )
                    for v in lst.get("views") or ()
                ),
            ),
            form=sections,
            permissions=freeze(d.get("permissions") or {}),
            indexes=tuple(tuple(ix) for ix in d.get("indexes") or ()),
            spec=freeze(d),
            sources=tuple(self.sources.get(name, ())),
        )

    def build_form(self, name: str, d: dict[str, Any], fields: Mapping[str, Field],
                   visible: list[str]) -> tuple[FormSection, ...]:
        """The form sections: the YAML's (or one automatic section), then the overlays' additions,
        then a last section for fields an overlay added but placed nowhere (a company that adds a
        field in YAML sees it on the form without repeating the built-in layout)."""
        editable = [f for f in visible if not fields[f].readonly]
        explicit = (d.get("form") or {}).get("sections") or []
        sections: list[dict[str, Any]] = [
            {"label": s.get("label"), "fields": list(s["fields"]), "columns": s.get("columns", 2)} for s in explicit
        ] or [{"label": {"en": "Details", "ja": "詳細"}, "fields": list(editable), "columns": 2, "auto": True}]

        def find(label: str) -> int | None:
            wanted = label.casefold()
            for i, s in enumerate(sections):
                lab = make_label(s.get("label"), "")
                if wanted in {lab["en"].casefold(), lab.get("ja", "").casefold()}:
                    return i
            return None

        def known() -> str:
            return ", ".join(repr(make_label(s.get("label"), "")["en"]) for s in sections)

        def take(fname: str) -> None:  # a field moved into an added place leaves its old one
            for s in sections:
                if fname in s["fields"]:
                    s["fields"].remove(fname)

        for doc, form in self.form_additions.get(name, ()):
            for i, added in enumerate(form.get("add_sections") or ()):
                for fname in added["fields"]:
                    take(fname)
                section = {"label": added.get("label"), "fields": list(added["fields"]),
                           "columns": added.get("columns", 2)}
                after = added.get("after")
                at = len(sections) if after is None else find(after)
                if at is None:
                    self.problems.append(doc.problem(("form", "add_sections", i, "after"),
                                                     f"{name} has no form section {after!r}; its sections: "
                                                     f"{known()}"))
                    at = len(sections)
                elif after is not None:
                    at += 1
                sections.insert(at, section)
            for label, names in (form.get("add_fields") or {}).items():
                at = find(label)
                if at is None:
                    self.problems.append(doc.problem(("form", "add_fields", label),
                                                     f"{name} has no form section {label!r}; its sections: "
                                                     f"{known()}"))
                    continue
                for fname in names:
                    take(fname)
                sections[at]["fields"].extend(names)
        placed = {f for s in sections for f in s["fields"]}
        unplaced = [f for f in editable if f not in placed and self._from_overlay(name, f)]
        if unplaced:
            sections.append({"label": {"en": "More details", "ja": "その他の項目"}, "fields": unplaced, "columns": 2})
        return tuple(
            FormSection(make_label(s.get("label"), ""), tuple(s["fields"]), s.get("columns", 2))
            for s in sections
            if s["fields"] or not s.get("auto")
        )

    def _from_overlay(self, entity: str, fname: str) -> bool:
        origin = self.field_origin.get((entity, fname))
        return origin is not None and "extends" in (origin.doc.data or {})

    def check_entity(self, entity: Entity, catalog: Catalog) -> None:
        origin = self.entity_origin[entity.name]
        doc, d = origin.doc, self.defs[entity.name]

        def where(*path) -> SchemaProblem:  # problems at entity level point at the defining file
            return doc.problem(path, "")

        def add(path: tuple, message: str) -> None:
            self.problems.append(SchemaProblem(doc.file, where(*path).line, format_path(path), message))

        if d.get("title_field") and d["title_field"] not in entity.fields:
            add(("title_field",), f"title_field {d['title_field']!r} is not a field of {entity.name}")
        lst = d.get("list") or {}
        for key in ("columns", "filters", "search", "sortable"):
            for i, path in enumerate(lst.get(key) or ()):
                self._check_path(entity, catalog, path, lambda m, i=i, key=key: add(("list", key, i), m))
        for i, item in enumerate(lst.get("sort") or ()):
            path = item.lstrip("-")
            self._check_path(entity, catalog, path, lambda m, i=i: add(("list", "sort", i), m))
        seen_views: set[str] = set()
        for i, view in enumerate(lst.get("views") or ()):
            if view.get("name") in seen_views:
                add(("list", "views", i, "name"), f"two views are called {view.get('name')!r}")
            seen_views.add(view.get("name"))
            for sub, msg in conditions.check(view.get("filter") or {}, entity, catalog):
                add(("list", "views", i, "filter") + tuple(sub), msg)
            for j, item in enumerate(view.get("sort") or ()):
                self._check_path(entity, catalog, item.lstrip("-"),
                                 lambda m, i=i, j=j: add(("list", "views", i, "sort", j), m))
        if sum(1 for v in lst.get("views") or () if v.get("default")) > 1:
            add(("list", "views"), "only one view may be the default")
        for s, section in enumerate((d.get("form") or {}).get("sections") or ()):
            for i, fname in enumerate(section.get("fields", ())):
                if fname not in entity.fields:
                    add(("form", "sections", s, "fields", i),
                        f"{entity.name} has no field {fname!r}{_suggest(fname, entity.fields)}")
        for fdoc, form in self.form_additions.get(entity.name, ()):
            places = [(("form", "add_sections", s, "fields", i), fname)
                      for s, section in enumerate(form.get("add_sections") or ())
                      for i, fname in enumerate(section.get("fields", ()))]
            places += [(("form", "add_fields", label, i), fname)
                       for label, names in (form.get("add_fields") or {}).items() for i, fname in enumerate(names)]
            for path, fname in places:
                if fname not in entity.fields:
                    self.problems.append(fdoc.problem(
                        path, f"{entity.name} has no field {fname!r}{_suggest(fname, entity.fields)}"))
        for i, ix in enumerate(d.get("indexes") or ()):
            for j, fname in enumerate(ix):
                if fname not in entity.fields:
                    add(("indexes", i, j), f"{entity.name} has no field {fname!r}")
        for role, rules in (d.get("permissions") or {}).items():
            if "where" in rules:
                for sub, msg in conditions.check(rules["where"], entity, catalog):
                    add(("permissions", role, "where") + tuple(sub), msg)
            for fname in rules.get("fields") or {}:
                if fname not in entity.fields:
                    add(("permissions", role, "fields", fname), f"{entity.name} has no field {fname!r}")
        for f in entity.user_fields:
            forigin = self.field_origin.get((entity.name, f.name))
            if forigin is None:
                continue
            for key in ("required_if", "visible_if"):
                cond = f.spec.get(key)
                if cond is not None:
                    for sub, msg in conditions.check(cond, entity, catalog):
                        self.problems.append(forigin.problem(msg, key, *sub))
            inverse = f.spec.get("inverse")
            if inverse and f.to in catalog and inverse in catalog[f.to].fields:
                self.problems.append(
                    forigin.problem(f"inverse name {inverse!r} clashes with the field {f.to}.{inverse}", "inverse")
                )
            if f.compute:
                for name in _names_in_expression(f.compute):
                    if name not in entity.fields:
                        self.problems.append(
                            forigin.problem(f"compute refers to unknown field {name!r}", "compute")
                        )

    def _check_path(self, entity: Entity, catalog: Catalog, path: str, add: Callable[[str], None]) -> None:
        try:
            catalog.resolve_path(entity.name, path)
        except KeyError as exc:
            add(str(exc.args[0]) + _suggest(path.split(".")[0], entity.fields))


def _merge_conversion(base: dict[str, Any], overlay: dict[str, Any]) -> dict[str, Any]:
    """An overlay's ``conversion:`` adds to the base one (so a company maps just its own fields)."""
    out = copy.deepcopy(base)
    added_map, added_ignore = overlay.get("map") or {}, list(overlay.get("ignore") or [])
    # The overlay's word wins: a field it maps is no longer ignored, and the other way round.
    mapped = {k: v for k, v in (out.get("map") or {}).items() if k not in added_ignore}
    out["map"] = {**mapped, **copy.deepcopy(added_map)}
    ignore = [f for f in out.get("ignore") or [] if f not in added_map]
    out["ignore"] = ignore + [f for f in added_ignore if f not in ignore]
    for key, value in overlay.items():
        if key not in ("map", "ignore"):
            out[key] = copy.deepcopy(value)
    return out


def _names_in_expression(expr: str) -> set[str]:
    """Variable names a compute expression reads (Jinja2's own parser, so no guessing)."""
    from jinja2 import meta
    from jinja2.sandbox import SandboxedEnvironment

    try:
        return set(meta.find_undeclared_variables(SandboxedEnvironment().parse("{{ " + expr + " }}")))
    except Exception:  # a syntax error is reported as such by the caller's compile step
        return set()


def _system_fields(ownable: bool) -> list[Field]:
    def sf(name, type_, en, ja, **spec):
        return Field(name, type_, make_label({"en": en, "ja": ja}, name), freeze(spec), system=True)

    out = [
        sf("id", "integer", "ID", "ID"),
        sf("created_at", "datetime", "Created", "作成日時"),
        sf("updated_at", "datetime", "Updated", "更新日時"),
        sf("created_by", "reference", "Created by", "作成者", to="user", on_delete="set_null"),
        sf("version", "integer", "Version", "バージョン"),
    ]
    if ownable:
        out += [
            sf("owner", "reference", "Owner", "所有者", to="user", on_delete="set_null"),
            sf("team", "reference", "Team", "チーム", to="team", on_delete="set_null"),
        ]
    return out


def build_catalog(
    files: Sequence[Path],
    field_types: FieldTypeRegistry,
    extend: Callable[[str, dict[str, Any]], list[tuple[str, dict[str, Any]]]] | None = None,
    after: Callable[[Catalog], list[str]] | None = None,
) -> Catalog:
    """Build the Catalog from entity files (built-ins, plugin paths, then overlays, in that order).

    ``extend(name, definition)`` returns ``[(plugin_name, {"fields": {...}})]`` from the
    ``extend_entity`` hook; ``after(catalog)`` returns problem messages from ``schema_loaded``.
    Raises :class:`SchemaError` listing every problem found.
    """
    b = _Builder(field_types)
    docs = b.load(files)
    for doc in docs:
        if "entity" in doc.data:
            b.add_base(doc)
    for doc in docs:
        if "extends" in doc.data:
            b.add_overlay(doc)
    if extend is not None:
        for name in list(b.defs):
            for plugin, extra in extend(name, copy.deepcopy(b.defs[name])):
                plugin_doc = SourceDoc(f"<plugin {plugin}>", extra, {(): 1})
                for fname, fdef in (extra or {}).get("fields", {}).items():
                    errs = list(b.field_validator.iter_errors(fdef))
                    for err in errs:
                        b.problems.append(plugin_doc.problem(("fields", fname), err.message))
                    if not errs:
                        b.merge_fields(name, {fname: fdef}, lambda f, d=plugin_doc: _Origin(d, ("fields", f)))
    for name, d in b.defs.items():
        for fname, fdef in list((d.get("fields") or {}).items()):
            before = len(b.problems)
            b.check_field(name, fname, fdef, b.field_origin[(name, fname)])
            if len(b.problems) > before:  # leave the broken field out and keep checking the rest
                del d["fields"][fname]
    entities = {name: b.build_entity(name) for name in b.defs}
    relations = tuple(
        Relation(e.name, f.name, f.to, f.is_many, f.spec.get("inverse"), f.on_delete)
        for e in entities.values()
        for f in e.fields.values()
        if f.type in ("reference", "references") and f.to
    )
    catalog = Catalog(MappingProxyType(entities), relations)
    for entity in entities.values():
        b.check_entity(entity, catalog)
    if not b.problems and after is not None:
        for message in after(catalog):
            b.problems.append(SchemaProblem("<plugins>", 0, "", message))
    if b.problems:
        raise SchemaError(b.problems)
    return catalog
