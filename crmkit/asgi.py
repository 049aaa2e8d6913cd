"""The ASGI application factory for running crmkit under an ASGI server with several processes.

``crmkit serve`` runs one uvicorn process. In production run several, each building its own CRM
from the project named by ``CRMKIT_PROJECT`` (default: the current directory)::

    CRMKIT_PROJECT=/srv/acme uvicorn --factory crmkit.asgi:create_app --workers 4 --proxy-headers

Every worker process calls :func:`create_app` once. The returned app answers the ASGI lifespan
protocol: the plugins' ``startup`` hooks run when the server starts the process and ``shutdown``
(with the database pool closed) when it stops it.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from crmkit.app import CRM

Scope = dict[str, Any]


class CRMApp:
    """The CRM's Starlette app plus the lifespan events that start and close the CRM."""

    def __init__(self, crm: CRM):
        self.crm = crm
        self.app = crm.asgi()

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        if scope["type"] != "lifespan":
            await self.app(scope, receive, send)
            return
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                try:
                    self.crm.startup()
                except Exception as exc:  # the server reports it and does not start this process
                    await send({"type": "lifespan.startup.failed", "message": f"crmkit startup failed: {exc}"})
                    return
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                self.crm.close()
                await send({"type": "lifespan.shutdown.complete"})
                return


def create_app(project: str | Path | None = None) -> CRMApp:
    """Build the CRM of ``project`` (default ``$CRMKIT_PROJECT`` or the current directory) as an ASGI app.

    Schema problems raise :class:`crmkit.SchemaError` (the server then refuses to start), so a
    broken deployment fails at boot rather than on the first request. So does a missing
    ``secret_key``: each process would invent its own, and a session signed by one process would
    be refused by the next.
    """
    directory = Path(project if project is not None else os.environ.get("CRMKIT_PROJECT") or ".")
    crm = CRM(directory)
    if not crm.config.secret_key:
        crm.close()
        raise RuntimeError(
            f"no secret_key for {directory.resolve()}: set CRMKIT_SECRET_KEY or secret_key in crmkit.yaml "
            "(every app process must sign sessions and links with the same key)"
        )
    return CRMApp(crm)
