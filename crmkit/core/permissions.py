"""Role rules from the entity YAML: action scopes (all/team/own/none) and field access.

The rules are turned into condition-language data, so the same rule filters a SQL query (lists,
API, export) and checks one record in Python (get, update, delete). The built-in plugin
:mod:`crmkit.plugins.role_permissions` applies them through the public ``restrict_query`` and
``permission_allowed`` hooks, where any plugin can add its own rules.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from crmkit.core.actors import Actor
from crmkit.core.catalog import Entity

ACTIONS = ("read", "create", "update", "delete", "export")
FIELD_ACCESS = ("write", "read", "mask", "none")
NEVER = {"id": {"is_null": True}}  # a condition no stored row satisfies (ids are never NULL)

# Used when an entity's YAML says nothing about a role. Unknown (company-defined) roles get
# nothing by default: a role must be granted access explicitly.
DEFAULT_SCOPES: Mapping[str, Mapping[str, str]] = {
    "admin": {"read": "all", "create": "all", "update": "all", "delete": "all", "export": "all"},
    "manager": {"read": "all", "create": "all", "update": "all", "delete": "team", "export": "all"},
    "sales_rep": {"read": "all", "create": "all", "update": "own", "delete": "none", "export": "none"},
}


def scope(entity: Entity, actor: Actor, action: str) -> str:
    """The scope (all/team/own/none) of ``action`` on ``entity`` for the actor's role."""
    if actor.system:
        return "all"
    rules = entity.permissions.get(actor.role)
    if rules is not None and action in rules:
        value = rules[action]
    elif rules is not None and action == "export" and "read" in rules:
        value = rules["read"]
    else:
        value = DEFAULT_SCOPES.get(actor.role, {}).get(action, "none")
    if value is True:
        return "all"
    if value is False:
        return "none"
    if value in ("own", "team") and not entity.ownable:
        return "all"  # master data has no owner: own/team scopes mean the whole table
    return str(value)


def scope_condition(entity: Entity, actor: Actor, action: str) -> Any:
    """The condition a record must meet for ``action``; None means every record."""
    s = scope(entity, actor, action)
    conds: list[Any] = []
    if s == "none":
        return NEVER
    if s == "own":
        conds.append({"owner": actor.id} if actor.id is not None else NEVER)
    elif s == "team":
        teams = sorted(actor.team_ids | ({actor.primary_team} if actor.primary_team else set()))
        any_of: list[Any] = [{"owner": actor.id}] if actor.id is not None else []
        if teams:
            any_of.append({"team": {"in": teams}})
        conds.append({"any": any_of} if any_of else NEVER)
    rules = entity.permissions.get(actor.role) if not actor.system else None
    if rules is not None and rules.get("where") is not None:
        conds.append(_thaw(rules["where"]))
    if not conds:
        return None
    return conds[0] if len(conds) == 1 else {"all": conds}


def field_access(entity: Entity, actor: Actor) -> dict[str, str]:
    """Access per field for the actor: write, read, mask or none.

    Passwords are never readable; system and computed fields are read-only.
    """
    rules = {} if actor.system else dict((entity.permissions.get(actor.role) or {}).get("fields") or {})
    out: dict[str, str] = {}
    for name, f in entity.fields.items():
        access = rules.get(name, "write")
        if f.type == "password":
            access = "write" if access == "write" and (actor.is_admin or actor.system) else "none"
            out[name] = access if access == "none" else "write-only"
            continue
        if f.readonly and access == "write" and not actor.system and name not in ("owner", "team"):
            access = "read"
        out[name] = access
    return out


def mask_value(value: Any) -> Any:
    """Hide most of a value: keep the last 4 characters of long text so people can tell records apart."""
    if value is None:
        return None
    text = str(value)
    if len(text) <= 4:
        return "••••"
    return "••••" + text[-4:]


def _thaw(value: Any) -> Any:
    from crmkit.core.catalog import thaw

    return thaw(value)
