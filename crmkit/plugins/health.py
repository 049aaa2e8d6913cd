"""Built-in plugin: health checks for load balancers, orchestrators and uptime monitors.

- ``GET /livez`` answers ``200 ok`` while the process serves requests (no database access), for
  liveness probes that restart a hung process.
- ``GET /readyz`` answers ``200`` with ``{"status": "ok", "checks": {...}}`` when the database
  answers and its schema is the one this process was built for (``crmkit migrate`` has been run),
  and ``503`` with the failing check otherwise, so a reverse proxy or orchestrator sends traffic
  only to processes that can serve it (e.g. during an upgrade, before the migration ran).

Neither needs a login, and neither reveals more than which check failed (details go to the log).
"""

from __future__ import annotations

import logging
import threading
import time
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

from crmkit.hookspecs import hookimpl

if TYPE_CHECKING:
    from crmkit.app import CRM

log = logging.getLogger(__name__)

# A passing schema check is trusted this long: the catalog of a running process never changes,
# so the check only has to notice a database that was migrated to (or restored from) another one.
SCHEMA_CHECK_TTL = 60.0


@hookimpl
def register_routes(crm):
    """``/livez`` and ``/readyz``."""
    state = _SchemaState()

    async def livez(request: Request) -> Response:
        return PlainTextResponse("ok", headers={"cache-control": "no-store"})

    def readyz(request: Request) -> Response:  # sync: Starlette runs it in the thread pool
        checks = readiness(crm, state)
        ok = all(v == "ok" for v in checks.values())
        return JSONResponse({"status": "ok" if ok else "error", "checks": checks}, status_code=200 if ok else 503,
                            headers={"cache-control": "no-store"})

    return [Route("/livez", livez, methods=["GET", "HEAD"]), Route("/readyz", readyz, methods=["GET", "HEAD"])]


class _SchemaState:
    """When the schema check last passed (per app, shared by the server's threads)."""

    def __init__(self) -> None:
        self.passed_at = float("-inf")
        self.lock = threading.Lock()


def readiness(crm: CRM, state: Any = None) -> dict[str, str]:
    """``{"database": ..., "schema": ...}``: "ok" or a short reason for each check."""
    from crmkit.core.migrations import catalog_snapshot, load_snapshot

    checks = {"database": "ok", "schema": "ok"}
    fresh = state is not None and time.monotonic() - state.passed_at < SCHEMA_CHECK_TTL
    try:
        with crm.engine.connect() as conn:
            conn.execute(sa.text("SELECT 1"))
            if not fresh:
                stored = load_snapshot(conn)
                problem = schema_problem(catalog_snapshot(crm, conn.dialect), stored)
                if problem:
                    checks["schema"] = problem
                elif state is not None:
                    with state.lock:
                        state.passed_at = time.monotonic()
    except Exception:  # any failure to reach the database means "not ready"
        log.exception("readiness check: the database did not answer")
        return {"database": "unreachable", "schema": "unknown"}
    return checks


def schema_problem(current: dict[str, Any], stored: dict[str, Any] | None) -> str | None:
    """Why the database's last applied snapshot does not cover the current catalog, or None."""
    if stored is None:
        return "not migrated: run crmkit migrate"
    for name, ent in current["entities"].items():
        have = (stored.get("entities") or {}).get(name)
        if have is None or have.get("removed"):
            return "migration pending: run crmkit migrate"
        for fname, spec in ent["fields"].items():
            old = (have.get("fields") or {}).get(fname)
            if old is None or old.get("removed") or any(old.get(k) != v for k, v in spec.items()):
                return "migration pending: run crmkit migrate"
    for name, table in current["tables"].items():
        have = (stored.get("tables") or {}).get(name)
        if have is None or have.get("removed") or have.get("columns") != table["columns"]:
            return "migration pending: run crmkit migrate"
    return None
