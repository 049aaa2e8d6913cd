"""Hooks the reminders plugin publishes for other plugins."""

from __future__ import annotations

from typing import Any

from crmkit.hookspecs import hookspec


@hookspec(firstresult=True)
def format_reminder(
    crm: Any, entity: Any, record: dict[str, Any], user: dict[str, Any], trigger: str, lang: str, tz: Any
) -> dict[str, str] | None:
    """Return ``{"subject": ..., "body": ...}`` for one reminder, or None for the default wording.

    Called inside the reminder job's transaction for each recipient. ``trigger`` is ``at`` (the
    record's reminder time), ``before<N>`` (N minutes before the due time), ``snooze`` or
    ``escalate`` (overdue, sent to the team manager); ``lang`` (``en``/``ja``) and ``tz`` (a
    ``tzinfo``) are the recipient's. firstresult: the first non-None answer is used.

    .. versionadded:: 0.1
    """
