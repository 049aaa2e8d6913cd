"""Hooks the email campaigns plugin publishes (added with ``register_hookspecs``)."""

from __future__ import annotations

from typing import Any

from crmkit.hookspecs import hookspec


@hookspec
def campaign_merge_fields(crm: Any, entity: str) -> dict[str, Any] | None:
    """Return extra top-level merge fields for campaigns sent to ``entity`` ("lead" or "contact").

    The result maps a name to ``callable(crm, record, conn) -> value``; templates use it as
    ``{{ name }}`` (or ``{{ name.attr }}``). The names are known when a campaign is saved, so a
    template using an unknown one is refused then; the callables run once per recipient while the
    message is rendered, inside the send transaction (``conn``).

    .. versionadded:: 0.1
    """


@hookspec
def campaign_should_send(crm: Any, campaign: dict[str, Any], entity: str, record: dict[str, Any],
                         conn: Any) -> bool | None:
    """Return False to leave ``record`` out of ``campaign`` (it is marked skipped, naming the plugin).

    Called for each recipient just before its message is queued, after the built-in checks
    (opt-out list, invalid addresses, ``do_not_email``). None means no opinion.

    .. versionadded:: 0.1
    """
