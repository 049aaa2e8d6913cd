"""Duplicate detection and merging.

Rules come from the entity YAML::

    duplicates:
      rules:
        - name: email
          label: {en: Same email, ja: メールアドレスが同じ}
          keys: [{field: email, normalize: email}]
        - name: company_name
          keys: [{field: company, normalize: company}]
          similar: {fields: [last_name, first_name], min_score: 85}

A rule's **key** is its normalised ``keys`` values joined (every one must be present): e-mail
lower-cased, phone numbers in E.164 (``phonenumbers``, default region JP), company names with
株式会社/(株)/Inc. folded away (:func:`crmkit.core.text.normalize_company`), other text NFKC-,
width-, kana- and case-folded. Keys are kept in the ``duplicates_key`` table (one row per record
and rule, indexed by ``(entity, rule, key)``), so finding the candidates of a record is an index
lookup, never a scan. A rule with ``similar`` also needs the listed fields to be alike
(rapidfuzz; 0-100, ``min_score`` default 85) — a fuzzy comparison among the few records that
share the key.

:func:`merge` folds records into a winner in one transaction: the winner takes the chosen value
of each field, every reference to a loser (reference fields and many-to-many link tables alike)
is moved to the winner through RecordStore (validated and audited), plugins move their own rows
(``records_merged`` hook), and the losers are deleted. Their audit history stays in the audit
table, linked to the winner by ``merge`` entries, and :func:`merged_history` reads it back.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import re
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa

from crmkit.core import permissions, text
from crmkit.core.audit import encode
from crmkit.core.audit import entries as audit_entries
from crmkit.core.errors import BadRequest, NotFound, PermissionDenied, ValidationError
from crmkit.core.events import Event

if TYPE_CHECKING:
    from crmkit.app import CRM
    from crmkit.core.actors import Actor
    from crmkit.core.catalog import Entity
    from crmkit.core.records import Tx

KEY_TABLE = "duplicates_key"
NORMALIZERS = ("email", "phone", "company", "text", "exact")
DEFAULT_SCORE = 85
DEFAULT_REGION = "JP"
MAX_CANDIDATES = 20
KEY_MAX = 255
_SPACES = re.compile(r"\s+")


# ---------------------------------------------------------------------------------------------
# Rules
# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Key:
    """One part of a rule's key: a field and how its value is normalised."""

    field: str
    normalize: str = "text"


@dataclass(frozen=True)
class Rule:
    """A duplicate rule of one entity (see the module docstring)."""

    entity: str
    name: str
    label: Mapping[str, str]
    keys: tuple[Key, ...]
    similar: tuple[str, ...] = ()
    min_score: int = DEFAULT_SCORE

    def text(self, lang: str = "en") -> str:
        return self.label.get(lang) or self.label.get("en") or self.name

    def key_of(self, record: Mapping[str, Any], region: str = DEFAULT_REGION) -> str | None:
        """The record's key under this rule, or None when a key field is empty."""
        parts = []
        for k in self.keys:
            value = normalize(k.normalize, record.get(k.field), region)
            if not value:
                return None
            parts.append(value)
        key = "\u001f".join(parts)
        if len(key) > KEY_MAX:  # long values still match exactly, through a digest
            key = "#" + hashlib.sha256(key.encode()).hexdigest()
        return key

    def similar_text(self, record: Mapping[str, Any]) -> str:
        """The folded text the fuzzy comparison looks at."""
        return " ".join(
            normalize("text", record.get(f)) for f in self.similar if record.get(f) not in (None, "")
        )


@contextmanager
def _writing(crm: CRM) -> Iterator[sa.Connection]:
    """A write transaction that takes SQLite's write lock up front (as RecordStore's do)."""
    from crmkit.core.db import write_connection

    with write_connection(crm.engine) as conn, conn.begin():
        yield conn


def rules_of(entity: Entity) -> list[Rule]:
    """The duplicate rules in an entity's YAML (``duplicates.rules``); [] when it has none."""
    spec = entity.spec.get("duplicates") or {}
    out = []
    for item in spec.get("rules") or ():
        label = item.get("label") or {}
        if isinstance(label, str):
            label = {"en": label}
        similar = item.get("similar") or {}
        out.append(
            Rule(
                entity=entity.name,
                name=item["name"],
                label=dict(label),
                keys=tuple(Key(k["field"], k.get("normalize", "text")) for k in item.get("keys") or ()),
                similar=tuple(similar.get("fields") or ()),
                min_score=int(similar.get("min_score", DEFAULT_SCORE)),
            )
        )
    return out


def check_rules(entity: Entity) -> list[str]:
    """Problems with an entity's rules (unknown fields, no key): refused at load time."""
    problems = []
    names = set()
    for rule in rules_of(entity):
        where = f"{entity.name}: duplicates rule {rule.name!r}"
        if rule.name in names:
            problems.append(f"{where} is defined twice")
        names.add(rule.name)
        if not rule.keys:
            problems.append(f"{where} needs at least one key (exact matches find the candidates)")
        for k in rule.keys:
            if k.field not in entity.fields:
                problems.append(f"{where}: {entity.name} has no field {k.field!r}")
            if k.normalize not in NORMALIZERS:
                problems.append(f"{where}: unknown normalize {k.normalize!r} (one of {', '.join(NORMALIZERS)})")
        for f in rule.similar:
            if f not in entity.fields:
                problems.append(f"{where}: similar: {entity.name} has no field {f!r}")
    return problems


# ---------------------------------------------------------------------------------------------
# Normalisation
# ---------------------------------------------------------------------------------------------
def normalize(kind: str, value: Any, region: str = DEFAULT_REGION) -> str:
    """A value folded for matching (``email``, ``phone``, ``company``, ``text`` or ``exact``)."""
    raw = _stripped(value)
    if not raw:
        return ""
    if kind == "email":
        return raw.lower()
    if kind == "phone":
        return normalize_phone(raw, region)
    if kind == "company":
        return text.normalize_company(raw)
    if kind == "exact":
        return raw
    return _fold_text(raw)


def _stripped(value: Any) -> str:
    """The text a key value is normalised from (a mapping's non-empty values joined)."""
    if value.__class__ is str:
        return value.strip()
    if value is None:
        return ""
    if isinstance(value, Mapping):
        value = " ".join(str(v) for v in value.values() if v)
    return str(value).strip()


def _fold_text(raw: str) -> str:
    # normalize_search leaves single spaces as its only whitespace, so removing spaces removes \s+
    return text.normalize_search(raw).replace(" ", "")


def _normalizer(kind: str, region: str) -> Any:
    """``value -> normalize(kind, value, region)``, with the choice of ``kind`` made once."""
    if kind == "email":
        return lambda value: _stripped(value).lower()
    if kind == "phone":
        return lambda value: normalize_phone(raw, region) if (raw := _stripped(value)) else ""
    if kind == "company":
        return lambda value: text.normalize_company(_stripped(value))
    if kind == "exact":
        return _stripped
    return lambda value: _fold_text(raw) if (raw := _stripped(value)) else ""


_JP_NATIONAL = re.compile(r"0(?!10)[1-9][0-9]{8,9}")  # trunk 0 + 9-10 digits (010 dials abroad)
_PHONE_PUNCT = re.compile(r"[\s\-().]+")


def normalize_phone(raw: str, region: str = DEFAULT_REGION) -> str:
    """E.164 (``+81312345678``) when the number parses; its digits otherwise."""
    # (normalize_search's result for ASCII text, without the call)
    folded = " ".join(raw.casefold().split()) if raw and raw.isascii() else text.normalize_search(raw)
    if region == "JP":
        # The common case without phonenumbers' full parse (it runs on every saved record):
        # a national number is the trunk 0 plus 9-10 digits, and E.164 drops the 0 for +81.
        # (_PHONE_PUNCT.sub("", folded), by replace: a folded text's only whitespace is " ")
        compact = folded.replace(" ", "").replace("-", "").replace("(", "").replace(")", "").replace(".", "")
        if _JP_NATIONAL.fullmatch(compact):
            return "+81" + compact[1:]
    import phonenumbers

    try:
        number = phonenumbers.parse(folded, region)
        if phonenumbers.is_possible_number(number):
            return phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)
    except phonenumbers.NumberParseException:
        pass
    return "".join(c for c in folded if c.isdigit())


def similarity(a: str, b: str) -> int:
    """0-100: how alike two folded texts are (order of words ignored)."""
    from rapidfuzz import fuzz

    if not a or not b:
        return 0
    return int(round(max(fuzz.ratio(a, b), fuzz.token_sort_ratio(a, b))))


# ---------------------------------------------------------------------------------------------
# The key table
# ---------------------------------------------------------------------------------------------
def define_key_table(metadata: sa.MetaData) -> sa.Table:
    """``duplicates_key``: one row per record and rule with a key."""
    return sa.Table(
        KEY_TABLE,
        metadata,
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("entity", sa.String(64), nullable=False),
        sa.Column("record_id", sa.Integer, nullable=False),
        sa.Column("rule", sa.String(64), nullable=False),
        sa.Column("key", sa.String(KEY_MAX + 1), nullable=False),
        sa.Index("ix_duplicates_key_lookup", "entity", "rule", "key"),
        sa.Index("ix_duplicates_key_record", "entity", "record_id"),
    )


_KEYS: Any = None


def keys_for(crm: CRM) -> Keys:
    """The (cached) :class:`Keys` of ``crm``: rules are parsed once, not on every save."""
    global _KEYS
    import weakref

    if _KEYS is None:
        _KEYS = weakref.WeakKeyDictionary()
    keys = _KEYS.get(crm)
    if keys is None:
        keys = _KEYS[crm] = Keys(crm)
    return keys


class Keys:
    """Reads and writes the key rows of one CRM (rules are read once per entity)."""

    def __init__(self, crm: CRM):
        self.crm = crm
        self.table = crm.system_tables[KEY_TABLE]
        self.rules = {e.name: rules_of(e) for e in crm.catalog}
        self.region = str(crm.config.section("duplicates").get("default_region") or DEFAULT_REGION)
        self._insert_sql: str | None = None
        self._plans: dict[str, tuple[Any, int, list[tuple[str, list[tuple[str, Any]]]]]] = {}  # see keys_of

    def keys_of(self, entity: str, record: Mapping[str, Any]) -> list[tuple[str, str]]:
        """``[(rule, key)]`` of a record (what each rule's :meth:`Rule.key_of` gives)."""
        rules = self.rules.get(entity, ())
        entry = self._plans.get(entity)
        if entry is None or entry[0] is not rules or entry[1] != len(rules):  # rules replaced or added to
            entry = self._plans[entity] = (rules, len(rules), [
                (rule.name, [(k.field, _normalizer(k.normalize, self.region)) for k in rule.keys]) for rule in rules
            ])
        plan = entry[2]
        out = []
        get = record.get
        for name, parts in plan:
            if len(parts) == 1:  # the usual rule of one key
                field, fold = parts[0]
                key = fold(get(field))
                if not key:
                    continue
            else:
                values = [fold(get(field)) for field, fold in parts]
                if not all(values):
                    continue
                key = "\u001f".join(values)
            if len(key) > KEY_MAX:  # long values still match exactly, through a digest
                key = "#" + hashlib.sha256(key.encode()).hexdigest()
            out.append((name, key))
        return out

    def write(self, conn: sa.Connection, entity: str, record: Mapping[str, Any], *, new: bool) -> None:
        """Store a record's keys (replacing its old ones unless it is ``new``)."""
        if not self.rules.get(entity):
            return
        if not new:
            conn.execute(sa.delete(self.table).where(self.table.c.entity == entity,
                                                     self.table.c.record_id == record["id"]))
        rows = [(entity, record["id"], rule, key) for rule, key in self.keys_of(entity, record)]
        if rows:
            # the driver's executemany directly: this runs once per saved record, imports included
            conn.exec_driver_sql(self._sql(conn), rows if len(rows) > 1 else rows[0])

    def write_many(self, conn: sa.Connection, entity: str, records: list[Mapping[str, Any]]) -> None:
        """Store the keys of many new records with one executemany (bulk creates, imports)."""
        if not self.rules.get(entity):
            return
        rows = [(entity, r["id"], rule, key) for r in records for rule, key in self.keys_of(entity, r)]
        if rows:
            conn.exec_driver_sql(self._sql(conn), rows)

    def _sql(self, conn: sa.Connection) -> str:
        if self._insert_sql is None:
            mark = "?" if conn.dialect.paramstyle == "qmark" else "%s"
            self._insert_sql = (
                f'INSERT INTO {KEY_TABLE} (entity, record_id, rule, "key") VALUES ({mark}, {mark}, {mark}, {mark})'
            )
        return self._insert_sql

    def forget(self, conn: sa.Connection, entity: str, record_id: int) -> None:
        """Remove a deleted record's keys."""
        if self.rules.get(entity):
            conn.execute(sa.delete(self.table).where(self.table.c.entity == entity,
                                                     self.table.c.record_id == record_id))

    def rebuild(self, entity: str, batch: int = 2000) -> int:
        """Recompute every key of ``entity`` (after rules change or data loaded around crmkit)."""
        rules = self.rules.get(entity) or []
        t = self.table
        with _writing(self.crm) as conn:
            conn.execute(sa.delete(t).where(t.c.entity == entity))
            if not rules:
                return 0
            table = self.crm.table(entity)
            cols = {"id"} | {k.field for r in rules for k in r.keys}
            stmt = sa.select(*[table.c[c] for c in sorted(cols) if c in table.c]).order_by(table.c.id)
            n = 0
            last = 0
            while True:
                rows = conn.execute(stmt.where(table.c.id > last).limit(batch)).mappings().all()
                if not rows:
                    break
                params = [(entity, r["id"], rule, key) for r in rows for rule, key in self.keys_of(entity, r)]
                if params:
                    conn.exec_driver_sql(self._sql(conn), params)
                n += len(rows)
                last = rows[-1]["id"]
        return n


# ---------------------------------------------------------------------------------------------
# Finding duplicates
# ---------------------------------------------------------------------------------------------
@dataclass
class Candidate:
    """A record that may be a duplicate: why (the rules) and how sure (100 = same key, no fuzz)."""

    id: int
    title: str
    rules: list[str] = field(default_factory=list)
    score: int = 100

    def as_dict(self) -> dict[str, Any]:
        return {"id": self.id, "title": self.title, "rules": self.rules, "score": self.score}


def find_candidates(crm: CRM, entity: str, record: Mapping[str, Any], *, actor: Actor,
                    exclude: Iterable[int] = (), limit: int = MAX_CANDIDATES) -> list[Candidate]:
    """Records of ``entity`` the actor may read that look like ``record`` (values as typed)."""
    keys = keys_for(crm)
    rules = keys.rules.get(entity) or []
    if not rules:
        return []
    t = keys.table
    excluded = {int(i) for i in exclude if i is not None}
    found: dict[int, Candidate] = {}
    with crm.engine.connect() as conn:
        for rule in rules:
            key = rule.key_of(record, keys.region)
            if key is None:
                continue
            ids = [i for i in conn.execute(
                sa.select(t.c.record_id).where(t.c.entity == entity, t.c.rule == rule.name, t.c.key == key)
                .limit(limit * 5)
            ).scalars() if i not in excluded]
            if not ids:
                continue
            scores = {i: 100 for i in ids}
            if rule.similar:
                mine = rule.similar_text(record)
                table = crm.table(entity)
                cols = [table.c.id] + [table.c[f] for f in rule.similar if f in table.c]
                scores = {}
                for row in conn.execute(sa.select(*cols).where(table.c.id.in_(ids))).mappings():
                    score = similarity(mine, rule.similar_text(row))
                    if score >= rule.min_score:
                        scores[row["id"]] = score
            for rid, score in scores.items():
                cand = found.setdefault(rid, Candidate(rid, ""))
                cand.rules.append(rule.name)
                cand.score = min(cand.score, score) if len(cand.rules) > 1 else score
    if not found:
        return []
    visible = crm.records.list(entity, actor=actor, filter={"id": {"in": sorted(found)}}, limit=limit,
                               with_count=False, columns=[crm.catalog[entity].title_field]).items
    titles = crm.records.titles(entity, [r["id"] for r in visible])
    out = []
    for r in visible:
        cand = found[r["id"]]
        cand.title = titles.get(r["id"], f"#{r['id']}")
        out.append(cand)
    out.sort(key=lambda c: (-len(c.rules), -c.score, c.id))
    return out[:limit]


@dataclass
class Group:
    """Records that share a rule's key (and, for fuzzy rules, look alike)."""

    rule: Rule
    key: str
    ids: list[int]
    scores: dict[int, int] = field(default_factory=dict)


def groups(crm: CRM, entity: str, *, actor: Actor, rule: str | None = None, limit: int = 50,
           after: str | None = None) -> list[Group]:
    """Groups of probable duplicates the actor may see, from the key index (GROUP BY, not a scan)."""
    keys = keys_for(crm)
    rules = {r.name: r for r in keys.rules.get(entity) or []}
    if rule is not None and rule not in rules:
        raise BadRequest(f"{entity} has no duplicate rule {rule!r}")
    t = keys.table
    stmt = (
        sa.select(t.c.rule, t.c.key)
        .where(t.c.entity == entity)
        .group_by(t.c.rule, t.c.key)
        .having(sa.func.count() > 1)
        .order_by(t.c.rule, t.c.key)
        .limit(limit * 3)
    )
    if rule is not None:
        stmt = stmt.where(t.c.rule == rule)
    if after:
        stmt = stmt.where((t.c.rule + "\u001e" + t.c.key) > after)
    out: list[Group] = []
    with crm.engine.connect() as conn:
        pairs = conn.execute(stmt).all()
        for rule_name, key in pairs:
            if rule_name not in rules:
                continue
            ids = list(conn.execute(
                sa.select(t.c.record_id).where(t.c.entity == entity, t.c.rule == rule_name, t.c.key == key)
                .order_by(t.c.record_id).limit(MAX_CANDIDATES)
            ).scalars())
            out.append(Group(rules[rule_name], key, ids))
    table = crm.table(entity)
    for g in out:
        if g.rule.similar:
            with crm.engine.connect() as conn:
                cols = [table.c.id] + [table.c[f] for f in g.rule.similar if f in table.c]
                rows = {r["id"]: r for r in conn.execute(sa.select(*cols).where(table.c.id.in_(g.ids))).mappings()}
            texts = {i: g.rule.similar_text(rows[i]) for i in g.ids if i in rows}
            keep: set[int] = set()
            for i in texts:
                for j in texts:
                    if i < j and similarity(texts[i], texts[j]) >= g.rule.min_score:
                        keep |= {i, j}
                        g.scores[j] = similarity(texts[i], texts[j])
            g.ids = [i for i in g.ids if i in keep]
    out = [g for g in out if len(g.ids) > 1]
    # only records the actor may read, and only groups that still have two of them
    readable = set()
    ids = sorted({i for g in out for i in g.ids})
    for start in range(0, len(ids), 500):
        page = crm.records.list(entity, actor=actor, filter={"id": {"in": ids[start:start + 500]}}, limit=500,
                                with_count=False, columns=[crm.catalog[entity].title_field])
        readable.update(r["id"] for r in page.items)
    for g in out:
        g.ids = [i for i in g.ids if i in readable]
    return [g for g in out if len(g.ids) > 1][:limit]


# ---------------------------------------------------------------------------------------------
# Merging
# ---------------------------------------------------------------------------------------------
@dataclass
class MergeResult:
    """The merged record, the losers' ids and how many related records moved, per relation."""

    record: dict[str, Any]
    merged: list[int]
    moved: dict[str, int]


def merge(crm: CRM, entity: str, winner_id: int, loser_ids: Iterable[int], *, actor: Actor,
          choose: Mapping[str, int] | None = None, source: str = "ui") -> MergeResult:
    """Merge ``loser_ids`` into ``winner_id`` in one transaction (see the module docstring).

    ``choose`` maps a field to the id of the record whose value the winner takes (the winner's
    own value otherwise). The actor must be allowed to update the winner and delete the losers;
    related records are moved as the actor, so a reference they may not change refuses the merge.
    """
    if entity not in crm.catalog:
        raise NotFound(f"no entity {entity!r}")
    ent = crm.catalog[entity]
    winner_id = int(winner_id)
    losers = [int(i) for i in dict.fromkeys(loser_ids) if int(i) != winner_id]
    if not losers:
        raise ValidationError([{"field": "", "message": "choose at least two different records to merge"}])
    choose = dict(choose or {})
    store = crm.records
    moved: dict[str, int] = {}
    with store.transaction(actor=actor, source=source) as tx:
        winner = tx.get(entity, winner_id)
        if not store.can(actor, "update", entity, winner):
            raise PermissionDenied(f"you may not change this {ent.text(actor.locale)}")
        others = {i: tx.get(entity, i) for i in losers}
        for i, rec in others.items():
            if not store.can(actor, "delete", entity, rec):
                raise PermissionDenied(f"you may not delete {ent.text(actor.locale)} #{i}, so it cannot be merged")
        records = {winner_id: winner, **others}
        values = _chosen_values(crm, ent, actor, records, winner, choose)
        _mark(tx, ent, actor, winner_id, {"merged": losers}, "merge")
        for loser in losers:
            moved_here = _move_references(crm, tx, ent, loser, winner_id)
            for name, n in moved_here.items():
                moved[name] = moved.get(name, 0) + n
        for _plugin, _result in _call_merged(crm, ent, winner, losers, tx, actor):
            pass
        for loser in losers:
            _mark(tx, ent, actor, loser, {"into": winner_id}, "merge")
            tx.delete(entity, loser)
        stored = tx.update(entity, winner_id, values) if values else tx.get(entity, winner_id)
        tx.events.append(Event("record.merged", entity, winner_id, actor, {"merged": losers, "moved": moved},
                               tx.source))
    return MergeResult(stored, losers, moved)


def _chosen_values(crm: CRM, ent: Entity, actor: Actor, records: Mapping[int, Mapping[str, Any]],
                   winner: Mapping[str, Any], choose: Mapping[str, int]) -> dict[str, Any]:
    access = permissions.field_access(ent, actor)
    out: dict[str, Any] = {}
    for name, source_id in choose.items():
        f = ent.fields.get(name)
        if f is None:
            raise ValidationError([{"field": name, "message": f"unknown field of {ent.name}"}])
        if int(source_id) not in records:
            raise ValidationError([{"field": name, "message": f"#{source_id} is not one of the merged records"}])
        if f.readonly and name not in ("owner", "team"):
            continue
        if access.get(name, "write") not in ("write", "write-only"):
            continue
        value = records[int(source_id)].get(name)
        if f.is_many:
            value = [dict(v) for v in value or []]
        if encode(value) != encode(winner.get(name)):
            out[name] = value
    return out


def _move_references(crm: CRM, tx: Tx, ent: Entity, loser: int, winner: int) -> dict[str, int]:
    """Point every reference to ``loser`` at ``winner``, through RecordStore updates."""
    moved: dict[str, int] = {}
    for rel in crm.catalog.relations_to(ent.name):
        if rel.field in ("created_by",):
            continue  # who created a record is history, not a relationship to move
        source = crm.catalog[rel.entity]
        if rel.many:
            link = crm.schema.link_tables[(rel.entity, rel.field)]
            owners = list(tx.conn.execute(
                sa.select(link.c.source_id).where(link.c.target_id == loser).distinct()
            ).scalars())
            for source_id in owners:
                if rel.entity == ent.name and source_id == loser:
                    continue  # the loser's own links go with it
                current = tx.get(rel.entity, source_id)
                items, seen = [], set()
                for item in current.get(rel.field) or []:
                    target = winner if item["id"] == loser else item["id"]
                    if target in seen:
                        continue
                    seen.add(target)
                    items.append({**item, "id": target})
                tx.update(rel.entity, source_id, {rel.field: items})
                moved[f"{rel.entity}.{rel.field}"] = moved.get(f"{rel.entity}.{rel.field}", 0) + 1
            continue
        table = crm.table(rel.entity)
        ids = list(tx.conn.execute(sa.select(table.c.id).where(table.c[rel.field] == loser)).scalars())
        for rid in ids:
            if rel.entity == ent.name and rid == loser:
                continue
            # a winner pointing at a loser would end up pointing at itself: clear it instead
            target = None if (rel.entity == ent.name and rid == winner) else winner
            tx.update(rel.entity, rid, {rel.field: target})
            moved[f"{source.name}.{rel.field}"] = moved.get(f"{source.name}.{rel.field}", 0) + 1
    return moved


def _call_merged(crm: CRM, ent: Entity, winner: Mapping[str, Any], losers: list[int], tx: Tx, actor: Actor):
    from crmkit.plugins import call_each

    return call_each(crm.pm, "records_merged", crm=crm, entity=ent, winner=dict(winner), losers=list(losers),
                     tx=tx, actor=actor)


def _mark(tx: Tx, ent: Entity, actor: Actor, record_id: int, data: dict[str, Any], action: str) -> None:
    """An audit entry linking merged records (kept even when the entity has no field audit)."""
    tx.conn.execute(sa.insert(tx.store.audit_table).values(
        entity=ent.name, record_id=record_id, action=action, field=None, old_value=None,
        new_value=json.dumps(data), actor_id=actor.id, actor_name=actor.display_name or actor.username,
        source=tx.source, at=dt.datetime.now(dt.UTC),
    ))


def merged_ids(crm: CRM, entity: str, record_id: int) -> list[int]:
    """Ids of the records merged into ``record_id``, directly or through earlier merges."""
    t = crm.records.audit_table
    out: list[int] = []
    todo = [int(record_id)]
    with crm.engine.connect() as conn:
        while todo:
            current = todo.pop()
            rows = conn.execute(
                sa.select(t.c.new_value).where(t.c.entity == entity, t.c.record_id == current, t.c.action == "merge")
            ).scalars()
            for value in rows:
                try:
                    merged = json.loads(value or "{}").get("merged") or []
                except ValueError:
                    continue
                for i in merged:
                    if i not in out and i != record_id:
                        out.append(int(i))
                        todo.append(int(i))
    return out


def merged_history(crm: CRM, entity: str, record_id: int, *, actor: Actor) -> dict[int, list[dict[str, Any]]]:
    """The audit history of every record merged into ``record_id``: ``{merged_id: entries}``.

    The actor must be able to read the surviving record; masked and hidden fields stay masked and
    hidden exactly as in :meth:`RecordStore.history`.
    """
    crm.records.get(entity, record_id, actor=actor)  # permission: no history of records you can't see
    access = crm.records.field_access(actor, entity)
    t = crm.records.audit_table
    out: dict[int, list[dict[str, Any]]] = {}
    ids = merged_ids(crm, entity, record_id)
    if not ids:
        return out
    with crm.engine.connect() as conn:
        rows = conn.execute(
            sa.select(t).where(t.c.entity == entity, t.c.record_id.in_(ids)).order_by(t.c.id)
        ).mappings().all()
    by_record: dict[int, list[Any]] = {}
    for r in rows:
        by_record.setdefault(r["record_id"], []).append(r)
    for merged_id, group in by_record.items():
        out[merged_id] = audit_entries(group, access)
    return out


def possible_duplicates(crm: CRM, entity: str, record: Mapping[str, Any], actor: Actor) -> list[dict[str, Any]]:
    """What the ``duplicate_candidates`` hooks say about a record about to be created (deduplicated)."""
    from crmkit.plugins import call_each

    if entity not in crm.catalog:
        return []
    out: list[dict[str, Any]] = []
    seen: set[Any] = set()
    for _plugin, items in call_each(crm.pm, "duplicate_candidates", crm=crm, entity=crm.catalog[entity],
                                    record=dict(record), actor=actor):
        for item in items or ():
            if item.get("id") not in seen:
                seen.add(item.get("id"))
                out.append(dict(item))
    return out


def allowed_flag(value: Any) -> bool:
    """Whether a request parameter or header confirms creating despite duplicates."""
    return str(value or "").strip().lower() in ("1", "true", "yes", "on")


__all__ = [
    "Candidate", "Group", "KEY_TABLE", "Key", "Keys", "MergeResult", "Rule", "check_rules", "define_key_table",
    "allowed_flag", "find_candidates", "groups", "merge", "merged_history", "merged_ids", "normalize",
    "normalize_phone", "possible_duplicates", "rules_of", "similarity",
]
