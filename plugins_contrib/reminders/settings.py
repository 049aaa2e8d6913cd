"""The ``reminders:`` section of crmkit.yaml, with defaults, checked against the catalog."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from crmkit.core import conditions

DEFAULT_ENTITY: dict[str, Any] = {
    "due_field": "due_at",
    "reminder_field": "reminder_at",
    "offsets": [],
    "recipients": ["assignee", "participants"],
    "fallback": "owner",
    "when": {"status": "planned"},
    "escalate_after_minutes": 1440,
}
# Tasks and planned activities (both are ``activity`` records with status "planned").
DEFAULT_ENTITIES = {"activity": {}}

CONFIG_SCHEMA: dict[str, Any] = {
    "type": "object",
    "additionalProperties": False,
    "properties": {
        "channels": {"type": "array", "items": {"type": "string"}, "uniqueItems": True},
        "grace_minutes": {"type": "integer", "minimum": 0},
        "entities": {
            "type": "object",
            "additionalProperties": {
                "type": "object",
                "additionalProperties": False,
                "properties": {
                    "due_field": {"type": ["string", "null"]},
                    "reminder_field": {"type": ["string", "null"]},
                    "offsets": {"type": "array", "items": {"type": "integer", "minimum": 0, "maximum": 60 * 24 * 30}},
                    "recipients": {"type": "array", "items": {"type": "string"}},
                    "fallback": {"type": ["string", "null"]},
                    "when": {"type": ["object", "null"]},
                    "escalate_after_minutes": {"type": ["integer", "null"], "minimum": 0},
                },
            },
        },
    },
}


@dataclass(frozen=True)
class EntityRule:
    """How one entity's records produce reminders."""

    entity: str
    due_field: str | None
    reminder_field: str | None
    offsets: tuple[int, ...]
    recipients: tuple[str, ...]
    fallback: str | None
    when: Any
    escalate_after_minutes: int | None


@dataclass(frozen=True)
class Settings:
    """Every opted-in entity, the channels and the grace period for times already past."""

    entities: dict[str, EntityRule] = field(default_factory=dict)
    channels: tuple[str, ...] = ("in_app", "email")
    grace_minutes: int = 15


def load(crm: Any) -> Settings:
    """The settings of ``crm`` (cached); entities missing from the catalog are left out."""
    cached = crm.__dict__.get("_reminders_settings")
    if cached is not None:
        return cached
    section = crm.config.section("reminders")
    entities = section.get("entities") if "entities" in section else DEFAULT_ENTITIES
    rules = {}
    for name, spec in (entities or {}).items():
        if name not in crm.catalog:
            continue
        merged = {**DEFAULT_ENTITY, **(spec or {})}
        rules[name] = EntityRule(
            entity=name, due_field=merged["due_field"], reminder_field=merged["reminder_field"],
            offsets=tuple(sorted(set(merged["offsets"]))), recipients=tuple(merged["recipients"]),
            fallback=merged["fallback"], when=merged["when"], escalate_after_minutes=merged["escalate_after_minutes"],
        )
    settings = Settings(rules, tuple(section.get("channels", ("in_app", "email"))),
                        int(section.get("grace_minutes", 15)))
    crm.__dict__["_reminders_settings"] = settings
    return settings


def problems(crm: Any, catalog: Any) -> list[str]:
    """What is wrong with the configuration for this catalog (unknown entities, wrong field types)."""
    section = crm.config.section("reminders")
    out = []
    for name, spec in (section.get("entities") or {}).items():
        if name not in catalog:
            out.append(f"reminders: unknown entity {name!r}")
            continue
        ent = catalog[name]
        merged = {**DEFAULT_ENTITY, **(spec or {})}
        for key in ("due_field", "reminder_field"):
            fname = merged[key]
            if fname is not None and (fname not in ent.fields or ent.fields[fname].type != "datetime"):
                out.append(f"reminders: {name}.{fname} ({key}) must be a datetime field of {name}")
        if merged["due_field"] is None and merged["reminder_field"] is None:
            out.append(f"reminders: {name} needs a due_field or a reminder_field")
        for fname in [*merged["recipients"], *([merged["fallback"]] if merged["fallback"] else [])]:
            if fname == "owner" and ent.ownable:
                continue
            f = ent.fields.get(fname)
            if f is None or f.type not in ("reference", "references") or f.to != "user":
                out.append(f"reminders: {name}.{fname} must be a reference to user (recipients/fallback)")
        if merged["when"]:
            out += [f"reminders: {name}.when: {msg}" for _path, msg in conditions.check(merged["when"], name, catalog)]
    return out
