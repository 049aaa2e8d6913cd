"""The generated admin: one generic set of routes keyed by entity name.

Adding an entity in YAML adds its list, detail, form, export and autocomplete pages without code
(SQLAdmin's idea, without subclassing). Every page is a plain handler wrapped by
:func:`crmkit.web.site.admin_page` (login, CSRF, language, error pages); plugins add pages through
``register_routes`` with the same wrapper, and dashboard widgets through ``dashboard_widgets``.

=====================================  ===============================================
URL                                    Page
=====================================  ===============================================
/admin/                                dashboard (``dashboard_widgets`` hooks)
/admin/login, /admin/logout            sign in / out;  POST /admin/lang: language
/admin/static/...                      CSS, JS and icons (served locally, no CDN)
/admin/{entity}/                       list (search, filters, sort, keyset paging)
/admin/{entity}/new                    create form
/admin/{entity}/{id}                   360° detail page
/admin/{entity}/{id}/edit              edit form;  /delete: delete with confirmation
/admin/{entity}/bulk                   POST: bulk actions;  /export.csv: CSV export
/admin/{entity}/autocomplete?q=        JSON for reference widgets
/admin/{entity}/views                  POST: save the current list as a view
=====================================  ===============================================
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from markupsafe import Markup
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import BaseRoute, Mount, Route
from starlette.staticfiles import StaticFiles

from crmkit.plugins import call_each
from crmkit.web import auth, listing, record_pages
from crmkit.web.site import PageContext, admin_page, admin_site
from crmkit.web.templating import static_dir

if TYPE_CHECKING:
    from crmkit.app import CRM

GET = ["GET", "HEAD"]
GET_POST = ["GET", "HEAD", "POST"]
POST = ["POST"]


def dashboard_page(ctx: PageContext) -> Response:
    """GET /admin/ — the widgets of every ``dashboard_widgets`` hook."""
    widgets = []
    for _plugin, items in call_each(
        ctx.crm.pm, "dashboard_widgets", crm=ctx.crm, actor=ctx.actor, request=ctx.request
    ):
        for w in items:
            html = w.get("html", "")
            if "template" in w:
                html = Markup(
                    ctx.site.env.get_template(w["template"]).render(
                        {
                            **w.get("context", {}),
                            "_": ctx._,
                            "lang": ctx.lang,
                            "request": ctx.request,
                            "actor": ctx.actor,
                        }
                    )
                )
            widgets.append(
                {
                    "title": w.get("title", ""),
                    "html": html,
                    "wide": bool(w.get("wide")),
                    "link": w.get("link"),
                    "link_label": w.get("link_label"),
                }
            )
    name = ctx.actor.display_name or ctx.actor.username
    return ctx.render(
        "dashboard.html", title=ctx._("dashboard"), widgets=widgets, greeting=ctx._("welcome", name=name)
    )


def palette_page(request: Request) -> Response:
    """GET /admin/palette.css — one class per option colour of the catalog (no inline styles)."""
    site = admin_site(request.app.state.crm)
    return Response(site.palette, media_type="text/css", headers={"cache-control": "public, max-age=3600"})


def _slash(request: Request) -> RedirectResponse:
    return RedirectResponse(request.url.path + "/", status_code=307)


def admin_routes(crm: CRM) -> list[BaseRoute]:
    """All admin routes of ``crm`` (generic: the entity is a path parameter)."""
    admin_site(crm)  # build the Jinja environment and widgets once, at start-up
    return [
        Route("/admin", _slash, methods=GET),
        Route("/admin/", admin_page(dashboard_page), methods=GET),
        Route("/admin/login", admin_page(auth.login_page, login=False), methods=GET_POST),
        Route("/admin/logout", admin_page(auth.logout_page, login=False), methods=GET_POST),
        Route("/admin/lang", admin_page(auth.language_page, login=False), methods=POST),
        Route("/admin/palette.css", palette_page, methods=GET),
        Mount("/admin/static", StaticFiles(directory=str(static_dir())), name="admin_static"),
        Route("/admin/{entity}", _slash, methods=GET),
        Route("/admin/{entity}/", admin_page(listing.list_page), methods=GET),
        Route("/admin/{entity}/new", admin_page(record_pages.new_page), methods=GET_POST),
        Route("/admin/{entity}/bulk", admin_page(listing.bulk_page), methods=POST),
        Route("/admin/{entity}/export.csv", admin_page(listing.export_page), methods=GET),
        Route("/admin/{entity}/autocomplete", admin_page(listing.autocomplete_page), methods=GET),
        Route("/admin/{entity}/views", admin_page(listing.save_view), methods=POST),
        Route("/admin/{entity}/views/{view_id:int}/delete", admin_page(listing.delete_view), methods=POST),
        Route("/admin/{entity}/{id:int}", admin_page(record_pages.detail_page), methods=GET),
        Route("/admin/{entity}/{id:int}/edit", admin_page(record_pages.edit_page), methods=GET_POST),
        Route("/admin/{entity}/{id:int}/delete", admin_page(record_pages.delete_page), methods=GET_POST),
        Route("/admin/{entity}/{id:int}/file/{field}", admin_page(record_pages.file_page), methods=GET),
    ]
