"""The ASGI application: admin pages, REST API and plugin routes, behind the security middleware."""

from __future__ import annotations

from typing import TYPE_CHECKING

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.sessions import SessionMiddleware
from starlette.requests import Request
from starlette.responses import RedirectResponse
from starlette.routing import BaseRoute, Route

if TYPE_CHECKING:
    from crmkit.app import CRM

SESSION_COOKIE = "crmkit_session"


def build_app(crm: CRM) -> Starlette:
    """Assemble the Starlette app for ``crm``: routes as data, middleware as data."""
    from crmkit.web.admin import admin_routes
    from crmkit.web.api import api_routes
    from crmkit.web.security import SecurityHeadersMiddleware

    async def root(request: Request) -> RedirectResponse:
        return RedirectResponse("/admin/", status_code=302)

    routes: list[BaseRoute] = [Route("/", root)]
    for extra in crm.pm.hook.register_routes(crm=crm):
        routes += list(extra or ())
    routes += api_routes(crm)
    routes += admin_routes(crm)
    middleware = [
        Middleware(SecurityHeadersMiddleware),
        Middleware(
            SessionMiddleware,
            secret_key=crm.secret_key,
            session_cookie=SESSION_COOKIE,
            max_age=crm.config.session_max_age,
            same_site="lax",
            https_only=crm.config.base_url.startswith("https://"),
        ),
    ]
    for extra in crm.pm.hook.register_middleware(crm=crm):
        middleware += list(extra or ())
    app = Starlette(routes=routes, middleware=middleware)
    app.state.crm = crm
    return app
