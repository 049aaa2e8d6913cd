"""Hooks the assignment plugin publishes for other plugins (added through ``register_hookspecs``)."""

from __future__ import annotations

from typing import Any

from crmkit.hookspecs import hookspec


@hookspec(firstresult=True)
def assign_owner(crm: Any, entity: Any, record: dict[str, Any], conn: Any, actor: Any) -> Any:
    """Choose the owner of a record being created without one; return None to leave it to others.

    Called in ``before_save`` (inside the write transaction, ``conn``) for every new record of an
    ownable ``entity`` whose owner is empty — from the admin, the API, imports and web forms
    alike. Return a user id, or a dict ``{"owner": id, "rule", "strategy", "reason",
    "candidates"}`` which is also written to the assignment log. firstresult: the first non-None
    answer wins; the YAML rule engine of ``assignment_rules`` is the trylast implementation.

    .. versionadded:: 0.1
    """


@hookspec
def register_assignment_strategies(crm: Any) -> dict[str, Any] | None:
    """Return ``{name: callable(ctx) -> (user_id, reason) | None}`` to add assignment strategies.

    ``ctx`` is a :class:`plugins_contrib.assignment_rules.engine.AssignContext`: the record, the
    rule's target, the candidates with their availability, ``now``, and helpers to lock and
    update the rule's turn state. Rule files name the strategy (``strategy: my_name``).

    .. versionadded:: 0.1
    """
