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
    if not events:
        return
    # the implementations and the arguments each takes, looked up once for all the events (an
    # import dispatches a record.created per row)
    impls = [(impl, "crm" in impl.argnames, "event" in impl.argnames)
             for impl in reversed(crm.pm.hook.track_event.get_hookimpls())]
    if not impls:
        return
    for event in events:
        for impl, takes_crm, takes_event in impls:
            try:
                if takes_crm and takes_event:
                    impl.function(crm=crm, event=event)
                else:
                    kwargs: dict[str, Any] = {}
                    if takes_crm:
                        kwargs["crm"] = crm
                    if takes_event:
                        kwargs["event"] = event
                    impl.function(**kwargs)
            except Exception:
                log.exception("plugin %s failed in track_event for %s", impl.plugin_name, event.name)
