"""Built-in permissions: the role rules of each entity's YAML, through the public security hooks."""

from __future__ import annotations

from crmkit.core import conditions, permissions
from crmkit.hookspecs import hookimpl


@hookimpl
def restrict_query(crm, entity, actor):
    """Limit every list/API/export query to the records the actor's role may read."""
    return permissions.scope_condition(crm.catalog[entity], actor, "read")


@hookimpl
def permission_allowed(crm, actor, action, entity, record):
    """Deny actions whose scope is ``none``, and record actions outside the actor's scope."""
    ent = crm.catalog[entity]
    if permissions.scope(ent, actor, action) == "none":
        return False
    if record is not None:
        cond = permissions.scope_condition(ent, actor, action)
        if cond is not None and not conditions.evaluate(
            cond, record, entity, crm.catalog, fetch=None, params=actor.params()
        ):
            return False
    return None
