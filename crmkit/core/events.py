"""Events: what happened to records, delivered to ``track_event`` after the commit."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from crmkit.core.actors import Actor

if TYPE_CHECKING:
    from crmkit.app import CRM

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Event:
    """``name`` is ``record.created``/``record.updated``/``record.deleted`` or a plugin's own."""

    name: str
    entity: str | None = None
    record_id: int | None = None
    actor: Actor | None = None
    data: dict[str, Any] = field(default_factory=dict)
    source: str = "api"


def dispatch(crm: CRM, events: list[Event]) -> None:
    """Deliver events to every ``track_event`` implementation; a failure is logged, never raised.

    Called only after the transaction that produced the events committed, so a plugin never
    hears of a write that was rolled back, and cannot undo one that was not.
    """
    for event in events:
        for impl in reversed(crm.pm.hook.track_event.get_hookimpls()):
            try:
                impl.function(**{k: v for k, v in {"crm": crm, "event": event}.items() if k in impl.argnames})
            except Exception:
                log.exception("plugin %s failed in track_event for %s", impl.plugin_name, event.name)
