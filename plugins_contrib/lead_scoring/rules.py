"""Lead scoring rules: the compiled form of ``rules/lead_scoring.yaml`` and its checks.

The file is validated by ``rules.schema.json`` (shape) and by :func:`compile_rules` (meaning):
every condition is checked against the catalog, every field a rule names must exist on the
lead (or the activity), names are unique, checkpoints fall inside their KPI's period. Each
problem names the file and line.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from crmkit.core import conditions
from crmkit.core.fieldtypes import InvalidValue
from crmkit.core.loader import SchemaError, SchemaProblem, SourceDoc
from plugins_contrib.rule_files import RuleKind, condition_problems

HERE = Path(__file__).resolve().parent
LEAD = "lead"
ACTIVITY = "activity"
DEFAULT_DATES = ("completed_at", "due_at", "created_at")
DATE_TYPES = ("date", "datetime")


def _label(value: Any, default: str) -> dict[str, str]:
    if isinstance(value, dict):
        return {"en": value["en"], "ja": value.get("ja") or value["en"]}
    if isinstance(value, str):
        return {"en": value, "ja": value}
    return {"en": default, "ja": default}


@dataclass(frozen=True)
class Window:
    """Items count when their time is within ``[from + start, from + end)`` days, or the last N days."""

    from_field: str | None = None
    start_days: float = 0
    end_days: float = 0
    rolling_days: float | None = None


@dataclass(frozen=True)
class Rule:
    name: str
    label: dict[str, str]
    points: float
    when: conditions.ParsedCondition | None
    event: str | None
    cap: float | None
    once_per: str | None
    half_life_days: float | None


@dataclass(frozen=True)
class Group:
    name: str
    label: dict[str, str]
    source: str  # lead | activity | event
    rules: tuple[Rule, ...]
    cap: float | None
    window: Window | None
    half_life_days: float | None
    link: str  # the activity's reference to the lead
    dates: tuple[str, ...]  # activity date fields, first non-null wins

    def rule(self, name: str) -> Rule | None:
        return next((r for r in self.rules if r.name == name), None)


@dataclass(frozen=True)
class Threshold:
    name: str
    label: dict[str, str]
    min: float
    set: dict[str, Any]
    notify: tuple[str, ...]


@dataclass(frozen=True)
class KPI:
    name: str
    label: dict[str, str]
    group: str
    target: float
    from_field: str
    days: int
    checkpoints: tuple[int, ...]
    pace: str
    only_if: conditions.ParsedCondition | None
    subject: dict[str, str]
    due_in_days: float
    priority: str

    def expected(self, day: float) -> float:
        """Points a lead should have by ``day`` of the period."""
        if self.pace == "target":
            return self.target
        return self.target * min(day, self.days) / self.days


@dataclass(frozen=True)
class ScoringRules:
    """Everything the scoring engine needs, checked against the catalog."""

    groups: tuple[Group, ...]
    max_score: float | None
    grades: tuple[tuple[str, float], ...]  # highest min first
    thresholds: tuple[Threshold, ...]
    kpis: tuple[KPI, ...]
    source: str
    digest: str

    def group(self, name: str) -> Group | None:
        return next((g for g in self.groups if g.name == name), None)

    @property
    def time_dependent(self) -> bool:
        """True when scores change with time alone (rolling windows, decay): recompute periodically."""
        for g in self.groups:
            if g.half_life_days or (g.window and g.window.rolling_days):
                return True
            if any(r.half_life_days for r in g.rules):
                return True
        return False

    @property
    def events(self) -> set[str]:
        return {r.event for g in self.groups if g.source == "event" for r in g.rules if r.event}


def compile_rules(crm: Any, doc: SourceDoc) -> ScoringRules:
    """Turn a schema-valid document into :class:`ScoringRules`; SchemaError lists every problem."""
    catalog = crm.catalog
    data = doc.data
    problems: list[SchemaProblem] = []
    if LEAD not in catalog:
        raise SchemaError([doc.problem((), "lead scoring needs a `lead` entity")])
    lead = catalog[LEAD]

    def date_field(path: tuple, entity: Any, name: str) -> None:
        f = entity.fields.get(name)
        if f is None:
            problems.append(doc.problem(path, f"{entity.name} has no field {name!r}"))
        elif f.type not in DATE_TYPES:
            problems.append(doc.problem(path, f"{entity.name}.{name} is a {f.type}, not a date or datetime"))

    def unique(items: list[dict], path: tuple, what: str) -> None:
        seen: set[str] = set()
        for i, item in enumerate(items):
            if item["name"] in seen:
                problems.append(doc.problem(path + (i, "name"), f"duplicate {what} name {item['name']!r}"))
            seen.add(item["name"])

    groups: list[Group] = []
    unique(data["groups"], ("groups",), "group")
    for gi, g in enumerate(data["groups"]):
        gpath = ("groups", gi)
        source = g["source"]
        unique(g["rules"], gpath + ("rules",), "rule")
        link = g.get("link", LEAD)
        dates = tuple(g.get("date") or DEFAULT_DATES)
        target_entity = None
        if source == "activity":
            if ACTIVITY not in catalog:
                problems.append(doc.problem(gpath + ("source",), "source activity needs an `activity` entity"))
            else:
                target_entity = catalog[ACTIVITY]
                lf = target_entity.fields.get(link)
                if lf is None or lf.type != "reference" or lf.to != LEAD:
                    problems.append(doc.problem(gpath + ("link",) if "link" in g else gpath + ("source",),
                                                f"activity has no reference field {link!r} to lead"))
                for di, name in enumerate(dates):
                    date_field(gpath + ("date", di) if "date" in g else gpath, target_entity, name)
        elif source == "lead":
            target_entity = lead
            for key in ("window", "half_life_days"):
                if key in g:
                    problems.append(doc.problem(gpath + (key,), f"{key} does not apply to fit rules (source: lead)"))
        for key in ("link", "date"):
            if key in g and source != "activity":
                problems.append(doc.problem(gpath + (key,), f"{key} applies to source: activity only"))
        window = None
        if "window" in g and source != "lead":
            w = g["window"]
            if "from" in w:
                date_field(gpath + ("window", "from"), lead, w["from"])
                start, end = w["days"]
                if end <= start:
                    problems.append(doc.problem(gpath + ("window", "days"), "days: [start, end] needs end > start"))
                window = Window(w["from"], float(start), float(end))
            else:
                window = Window(rolling_days=float(w["rolling_days"]))
        rules: list[Rule] = []
        for ri, r in enumerate(g["rules"]):
            rpath = gpath + ("rules", ri)
            when = None
            if source == "event":
                if "event" not in r:
                    problems.append(doc.problem(rpath, "rules of an event group need `event:` (e.g. email.opened)"))
                if "when" in r:
                    problems.append(doc.problem(rpath + ("when",), "event rules match by `event:`, not `when:`"))
            else:
                if "event" in r:
                    problems.append(doc.problem(rpath + ("event",), "`event:` applies to source: event only"))
                if "when" not in r:
                    problems.append(doc.problem(rpath, f"rules on {source} need a `when:` condition"))
                elif target_entity is not None:
                    found = condition_problems(doc, rpath + ("when",), r["when"], target_entity.name, catalog)
                    problems.extend(found)
                    if not found:
                        when = conditions.parse(r["when"], target_entity.name, catalog)
            if source == "lead":
                for key in ("once_per", "half_life_days"):
                    if key in r:
                        problems.append(doc.problem(rpath + (key,), f"{key} does not apply to fit rules"))
            rules.append(Rule(
                r["name"], _label(r.get("label"), r["name"]), float(r["points"]), when, r.get("event"),
                float(r["cap"]) if "cap" in r else None, r.get("once_per"),
                float(r["half_life_days"]) if "half_life_days" in r else None,
            ))
        groups.append(Group(
            g["name"], _label(g.get("label"), g["name"]), source, tuple(rules),
            float(g["cap"]) if "cap" in g else None, window,
            float(g["half_life_days"]) if "half_life_days" in g else None, link, dates,
        ))

    grades = sorted(((x["name"], float(x["min"])) for x in data.get("grades", [])), key=lambda t: -t[1])
    if len({n for n, _ in grades}) != len(grades):
        problems.append(doc.problem(("grades",), "grade names must be unique"))
    if "scoring_grade" in lead.fields:
        width = lead.fields["scoring_grade"].spec.get("max_length") or 20
        for i, (name, _) in enumerate(data.get("grades", [])):
            if len(name) > width:
                problems.append(doc.problem(("grades", i, "name"), f"longer than {width} characters"))

    thresholds = []
    unique(data.get("thresholds", []), ("thresholds",), "threshold")
    for ti, t in enumerate(data.get("thresholds", [])):
        tpath = ("thresholds", ti)
        values = dict(t.get("set") or {})
        for name, value in values.items():
            f = lead.fields.get(name)
            if f is None or name in ("id", "created_at", "updated_at", "created_by", "version"):
                problems.append(doc.problem(tpath + ("set", name), f"lead has no settable field {name!r}"))
                continue
            if f.readonly and name not in ("owner", "team"):
                problems.append(doc.problem(tpath + ("set", name), f"lead.{name} is read-only"))
                continue
            try:
                crm.field_types[f.type].coerce(f, value)
            except InvalidValue as exc:
                problems.append(doc.problem(tpath + ("set", name), f"lead.{name}: {exc}"))
            except Exception:  # field types without a strict coerce: the save itself validates
                pass
        thresholds.append(Threshold(t["name"], _label(t.get("label"), t["name"]), float(t["min"]), values,
                                    tuple(t.get("notify") or ())))

    kpis = []
    unique(data.get("kpis", []), ("kpis",), "KPI")
    names = {g.name: g for g in groups}
    for ki, k in enumerate(data.get("kpis", [])):
        kpath = ("kpis", ki)
        grp = names.get(k["group"])
        if grp is None:
            problems.append(doc.problem(kpath + ("group",), f"no group {k['group']!r} in this file"))
        elif grp.source == "lead":
            problems.append(doc.problem(kpath + ("group",), "a KPI counts activity or event points, not fit"))
        from_field = k.get("from", "created_at")
        date_field(kpath + ("from",) if "from" in k else kpath, lead, from_field)
        cps = list(k["checkpoints"])
        if cps != sorted(set(cps)):
            problems.append(doc.problem(kpath + ("checkpoints",), "checkpoints must be ascending and distinct"))
        if any(c >= k["days"] for c in cps):
            problems.append(doc.problem(kpath + ("checkpoints",), f"checkpoints must fall before day {k['days']}"))
        only_if = None
        if "only_if" in k:
            found = condition_problems(doc, kpath + ("only_if",), k["only_if"], LEAD, catalog)
            problems.extend(found)
            if not found:
                only_if = conditions.parse(k["only_if"], LEAD, catalog)
        task = k.get("task") or {}
        kpis.append(KPI(
            k["name"], _label(k.get("label"), k["name"]), k["group"], float(k["target"]), from_field,
            int(k["days"]), tuple(cps), k.get("pace", "linear"), only_if,
            _label(task.get("subject"), "Lead behind its goal: follow up"),
            float(task.get("due_in_days", 1)), task.get("priority", "high"),
        ))
        if ACTIVITY in catalog and "task" in k:
            type_field = catalog[ACTIVITY].fields.get("type")
            opts = [o.value for o in type_field.options] if type_field is not None else []
            if "task" not in opts:
                problems.append(doc.problem(kpath + ("task",), "activity.type has no option `task`"))

    if problems:
        raise SchemaError(problems)
    digest = hashlib.sha256(json.dumps(data, sort_keys=True, default=str).encode()).hexdigest()[:12]
    return ScoringRules(tuple(groups), float(data["max_score"]) if "max_score" in data else None,
                        tuple(grades), tuple(thresholds), tuple(kpis), doc.file, digest)


def _dry_run(crm: Any, rules: ScoringRules, *, sample: int, now: Any, echo: Any) -> None:
    from plugins_contrib.lead_scoring.engine import dry_run

    dry_run(crm, rules, sample=sample, now=now, echo=echo)


KIND = RuleKind(
    name="scoring",
    plugin="lead_scoring",
    section="lead_scoring",
    default_path="rules/lead_scoring.yaml",
    schema=json.loads((HERE / "rules.schema.json").read_text(encoding="utf-8")),
    compile=compile_rules,
    detect_keys=("groups", "grades", "kpis", "thresholds"),
    fallback=HERE / "default_rules.yaml",
    dry_run=_dry_run,
)
"""The scoring rule file kind (see :mod:`plugins_contrib.rule_files`)."""
