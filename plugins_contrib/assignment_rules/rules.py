"""Assignment rules: the compiled form of ``rules/assignment.yaml`` and its checks.

Shape is checked by ``rules.schema.json``; meaning by :func:`compile_rules`: conditions against
the catalog (a field that does not exist is an error), sticky matches name real fields, the
strategy exists (built-in or registered by a plugin), each strategy has what it needs (a user,
members or a team), absences end after they start. Users and teams are data, not schema: they
are looked up when a record is assigned (and checked by ``crmkit check`` when the database is
reachable), so a rule file can be written before the users exist.
"""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

from crmkit.core import conditions
from crmkit.core.loader import SchemaError, SchemaProblem, SourceDoc
from plugins_contrib.rule_files import RuleKind, condition_problems

HERE = Path(__file__).resolve().parent
DAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
DEFAULT_OPEN = {"lead": {"status": {"not_in": ["converted", "unqualified"]}}, "deal": {"status": "open"}}
NEEDS = {"direct": "user", "round_robin": "pool", "least_loaded": "pool", "weighted": "pool", "sticky": "match"}


@dataclass(frozen=True)
class Hours:
    days: frozenset[int]  # 0 = Monday
    start: dt.time
    end: dt.time | None  # None: until midnight ("24:00")

    def contains(self, local: dt.datetime) -> bool:
        if local.weekday() not in self.days:
            return False
        t = local.time()
        return t >= self.start and (self.end is None or t < self.end)


@dataclass(frozen=True)
class Target:
    """Who a rule (or the fallback) chooses among, and how."""

    strategy: str
    user: str | None = None
    members: tuple[str, ...] = ()
    weights: dict[str, float] = field(default_factory=dict)
    team: str | None = None
    match: tuple[dict[str, str], ...] = ()
    ignore_availability: bool = False


@dataclass(frozen=True)
class Rule:
    name: str
    entity: str
    when: conditions.ParsedCondition | None
    target: Target


@dataclass(frozen=True)
class Member:
    capacity_per_day: int | None = None
    max_open: int | None = None
    hours: Hours | None = None


@dataclass(frozen=True)
class AssignmentRules:
    rules: tuple[Rule, ...]
    fallback: Target
    entities: tuple[str, ...]
    zone: dt.tzinfo
    hours: Hours | None
    japanese_holidays: bool
    company_holidays: frozenset[dt.date]
    absences: tuple[tuple[str, dt.date, dt.date], ...]
    absence_field: str | None
    open: dict[str, conditions.ParsedCondition]
    load_entities: tuple[str, ...]
    members: dict[str, Member]
    teams: dict[str, tuple[str, ...]]
    source: str

    def usernames(self) -> set[str]:
        """Every username the file names (checked against the database by ``crmkit check``)."""
        names = set(self.members) | {a[0] for a in self.absences}
        for members in self.teams.values():
            names.update(members)
        for target in [r.target for r in self.rules] + [self.fallback]:
            names.update(target.members)
            if target.user:
                names.add(target.user)
        return names

    def team_names(self) -> set[str]:
        """Team record names the file refers to (not defined under ``teams:``)."""
        return {t.team for t in [r.target for r in self.rules] + [self.fallback]
                if t.team and t.team not in self.teams}


def _time(text: str) -> dt.time | None:
    if text == "24:00":
        return None
    h, m = text.split(":")
    return dt.time(int(h), int(m))


def _hours(spec: dict[str, Any]) -> Hours:
    return Hours(frozenset(DAYS.index(d) for d in spec["days"]), _time(spec["start"]) or dt.time(0),
                 _time(spec["end"]))


def compile_rules(crm: Any, doc: SourceDoc) -> AssignmentRules:
    """Turn a schema-valid document into :class:`AssignmentRules`; SchemaError lists every problem."""
    from plugins_contrib.assignment_rules.strategies import strategies

    catalog = crm.catalog
    data = doc.data
    problems: list[SchemaProblem] = []
    known = strategies(crm)

    def hours_ok(path: tuple, spec: dict[str, Any]) -> None:
        start, end = _time(spec["start"]), _time(spec["end"])
        if start is None or (end is not None and end <= start):
            problems.append(doc.problem(path, "end must be after start"))

    def target(path: tuple, spec: dict[str, Any], entity: str) -> Target:
        strategy = spec.get("strategy", "direct")
        if strategy not in known:
            problems.append(doc.problem(path + ("strategy",),
                                        f"unknown strategy {strategy!r}; known: {', '.join(sorted(known))}"))
        need = NEEDS.get(strategy)
        if need == "user" and not spec.get("user"):
            problems.append(doc.problem(path, f"strategy {strategy} needs `user:`"))
        if need == "pool" and not (spec.get("members") or spec.get("team")):
            problems.append(doc.problem(path, f"strategy {strategy} needs `members:` or `team:`"))
        if spec.get("members") and spec.get("team"):
            problems.append(doc.problem(path + ("team",), "give `members:` or `team:`, not both"))
        if need == "match" and not spec.get("match"):
            problems.append(doc.problem(path, "strategy sticky needs `match:`"))
        members = spec.get("members") or []
        weights = dict(members) if isinstance(members, dict) else {}
        if strategy == "weighted" and spec.get("team"):
            pass  # equal weights over the team
        for mi, m in enumerate(spec.get("match") or []):
            mpath = path + ("match", mi)
            if m["entity"] not in catalog:
                problems.append(doc.problem(mpath + ("entity",), f"no entity {m['entity']!r}"))
            else:
                tgt = catalog[m["entity"]]
                if m["field"] not in tgt.fields:
                    problems.append(doc.problem(mpath + ("field",), f"{m['entity']} has no field {m['field']!r}"))
                if not tgt.ownable:
                    problems.append(doc.problem(mpath + ("entity",), f"{m['entity']} records have no owner"))
            if entity in catalog and m["value"] not in catalog[entity].fields:
                problems.append(doc.problem(mpath + ("value",), f"{entity} has no field {m['value']!r}"))
        return Target(strategy, spec.get("user"), tuple(members), weights, spec.get("team"),
                      tuple(dict(m) for m in spec.get("match") or []), bool(spec.get("ignore_availability")))

    rules: list[Rule] = []
    seen: dict[str, int] = {}
    for ri, r in enumerate(data["rules"]):
        rpath = ("rules", ri)
        entity = r.get("entity", "lead")
        if r["name"] in seen:
            problems.append(doc.problem(rpath + ("name",), f"duplicate rule name {r['name']!r}"))
        seen[r["name"]] = ri
        when = None
        if entity not in catalog:
            problems.append(doc.problem(rpath + ("entity",), f"no entity {entity!r}"))
        elif not catalog[entity].ownable:
            problems.append(doc.problem(rpath + ("entity",), f"{entity} records have no owner to assign"))
        elif "when" in r:
            found = condition_problems(doc, rpath + ("when",), r["when"], entity, catalog)
            problems.extend(found)
            if not found:
                when = conditions.parse(r["when"], entity, catalog)
        rules.append(Rule(r["name"], entity, when, target(rpath, r, entity)))
    entities = tuple(dict.fromkeys([r.entity for r in rules] or ["lead"]))
    fallback = target(("fallback",), data["fallback"], entities[0])

    zone_name = data.get("time_zone") or crm.config.time_zone
    try:
        zone: dt.tzinfo = ZoneInfo(zone_name)
    except Exception:
        problems.append(doc.problem(("time_zone",) if "time_zone" in data else (), f"unknown time zone {zone_name!r}"))
        zone = dt.UTC
    hours = None
    if "working_hours" in data:
        hours_ok(("working_hours",), data["working_hours"])
        hours = _hours(data["working_hours"])
    members: dict[str, Member] = {}
    for name, spec in (data.get("members") or {}).items():
        if "working_hours" in spec:
            hours_ok(("members", name, "working_hours"), spec["working_hours"])
        members[name] = Member(spec.get("capacity_per_day"), spec.get("max_open"),
                               _hours(spec["working_hours"]) if "working_hours" in spec else None)
    absences = []
    for ai, a in enumerate(data.get("absences") or []):
        try:
            start, end = dt.date.fromisoformat(a["from"]), dt.date.fromisoformat(a["to"])
        except ValueError as exc:
            problems.append(doc.problem(("absences", ai), f"not a date: {exc}"))
            continue
        if end < start:
            problems.append(doc.problem(("absences", ai, "to"), "an absence must end on or after its start"))
        absences.append((a["user"], start, end))
    company = set()
    for hi, d in enumerate(data.get("company_holidays") or []):
        try:
            company.add(dt.date.fromisoformat(d))
        except ValueError as exc:
            problems.append(doc.problem(("company_holidays", hi), f"not a date: {exc}"))
    absence_field = data.get("absence_field")
    if absence_field:
        user_fields = catalog["user"].fields if "user" in catalog else {}
        f = user_fields.get(absence_field)
        if f is None:
            problems.append(doc.problem(("absence_field",), f"user has no field {absence_field!r}"))
        elif f.type not in ("date", "datetime"):
            problems.append(doc.problem(("absence_field",), f"user.{absence_field} is a {f.type}, not a date"))
    load_entities = tuple(data.get("load_entities") or [e for e in ("lead", "deal") if e in catalog])
    for li, name in enumerate(load_entities):
        if name not in catalog or not catalog[name].ownable:
            problems.append(doc.problem(("load_entities", li), f"{name!r} is not an entity with owners"))
    open_specs = {**{k: v for k, v in DEFAULT_OPEN.items() if k in catalog}, **(data.get("open") or {})}
    open_conds: dict[str, conditions.ParsedCondition] = {}
    for name, cond in open_specs.items():
        path = ("open", name)
        if name not in catalog:
            problems.append(doc.problem(path, f"no entity {name!r}"))
            continue
        if "open" not in data or name not in data["open"]:  # a default: only if its fields exist
            if conditions.check(cond, name, catalog):
                continue
        found = condition_problems(doc, path, cond, name, catalog)
        problems.extend(found)
        if not found:
            open_conds[name] = conditions.parse(cond, name, catalog)
    teams = {k: tuple(v) for k, v in (data.get("teams") or {}).items()}
    if problems:
        raise SchemaError(problems)
    return AssignmentRules(
        tuple(rules), fallback, entities, zone, hours, data.get("holidays", "jp") == "jp", frozenset(company),
        tuple(absences), absence_field, open_conds, load_entities, members, teams, doc.file,
    )


def _dry_run(crm: Any, rules: AssignmentRules, *, sample: int, now: Any, echo: Any) -> None:
    from plugins_contrib.assignment_rules.engine import dry_run

    dry_run(crm, rules, sample=sample, now=now, echo=echo)


KIND = RuleKind(
    name="assignment",
    plugin="assignment_rules",
    section="assignment_rules",
    default_path="rules/assignment.yaml",
    schema=json.loads((HERE / "rules.schema.json").read_text(encoding="utf-8")),
    compile=compile_rules,
    detect_keys=("fallback", "working_hours", "absences", "members", "teams"),
    fallback=None,  # no shipped default: assignment needs the company's own users
    dry_run=_dry_run,
)
"""The assignment rule file kind (see :mod:`plugins_contrib.rule_files`)."""
