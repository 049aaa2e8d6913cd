"""The admin site object and the page wrapper every admin route goes through.

:class:`AdminSite` holds what all pages share (the Jinja2 environment, the login throttle, the
menu); :func:`admin_page` turns a plain synchronous handler ``handler(ctx) -> Response`` into a
Starlette endpoint that enforces login and CSRF, picks the language, runs the handler in a worker
thread (the database calls are synchronous) and turns crmkit's errors into proper 4xx pages.
Plugins adding admin pages through ``register_routes`` use the same wrapper::

    from crmkit.web.site import admin_page
    Route("/admin/my-report", admin_page(my_report))
"""

from __future__ import annotations

import datetime as dt
import hashlib
import weakref
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any
from urllib.parse import urlencode

from markupsafe import Markup
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import FormData
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, RedirectResponse, Response

from crmkit.core.actors import Actor
from crmkit.core.errors import CRMError, PermissionDenied
from crmkit.plugins import PluginError, call_each
from crmkit.web import auth
from crmkit.web.i18n import Translator, choose_language, plugin_strings
from crmkit.web.templating import html_text, is_builtin_template, make_environment, palette_css, static_dir, zone

if TYPE_CHECKING:
    from jinja2 import Environment

    from crmkit.app import CRM
    from crmkit.core.catalog import Entity
    from crmkit.core.records import RecordStore

MAX_FORM_FILES = 20
MAX_FORM_FIELDS = 5000


class AdminSite:
    """Everything the admin pages of one CRM share."""

    def __init__(self, crm: CRM):
        self.crm = crm
        self.env: Environment = make_environment(crm)
        self.throttle = auth.login_throttle(crm)  # in the database when registered: shared by all processes
        self.widgets: dict[str, str] = {}
        for _plugin, widgets in call_each(crm.pm, "register_field_widgets", crm=crm):
            self.widgets.update(widgets)
        # Built-in widget templates nobody overrides render as macros of widgets/_macros.html
        # (imported once per form); an overridden one is included, so its own markup shows.
        from crmkit.web.forms import BUILTIN_WIDGETS, PYTHON_WIDGETS

        self.widget_macros: dict[str, str] = {
            name: name.rsplit("/", 1)[-1].removesuffix(".html")
            for name in set(BUILTIN_WIDGETS.values())
            if is_builtin_template(self.env, name)
        }
        # ... and those of them forms.py draws itself, unless _macros.html is overridden as well.
        self.python_widgets: frozenset[str] = (
            frozenset(PYTHON_WIDGETS) if is_builtin_template(self.env, "widgets/_macros.html") else frozenset()
        )
        # forms.FormBuilder's per-field widget settings, by (id(field), language): see _static there.
        self.widget_statics: dict[tuple[int, str], Any] = {}
        self.static_version = _static_version()
        self.icons_url = self.static_url("icons.svg")
        colors: set[str] = set()
        for ent in crm.catalog:
            for f in ent.fields.values():
                colors.update(o.color for o in f.options if o.color)
        self.palette = palette_css(colors)

    # -- requests --------------------------------------------------------------------------------
    def actor(self, request: Request) -> Actor | None:
        """The actor of a request: the ``actor_from_request`` hooks (session login is built in)."""
        return self.crm.pm.hook.actor_from_request(crm=self.crm, request=request)

    def static_url(self, path: str) -> str:
        """URL of a file under admin_ui/static, with a cache-busting version."""
        return f"/admin/static/{path}?v={self.static_version}"

    # -- menu ------------------------------------------------------------------------------------
    def menu(self, ctx: PageContext) -> list[dict[str, Any]]:
        """Menu sections: records, then master data, each entity the actor may read, plus hook links."""
        store = self.crm.records
        extra: dict[str, list[dict[str, Any]]] = {}
        tail: list[dict[str, Any]] = []
        for _plugin, links in call_each(
            self.crm.pm, "menu_links", crm=self.crm, actor=ctx.actor, request=ctx.request
        ):
            for link in links:
                item = {"href": link["href"], "label": link["label"], "icon": link.get("icon", "dot")}
                if link.get("after"):
                    extra.setdefault(link["after"], []).append(item)
                else:
                    tail.append(item)
        sections: list[dict[str, Any]] = [
            {"label": ctx._("records"), "items": []},
            {"label": ctx._("master_data"), "items": []},
        ]
        path = ctx.request.url.path
        for ent in self.crm.catalog:
            if not ent.menu or not store.can(ctx.actor, "read", ent.name):
                continue
            href = f"/admin/{ent.name}/"
            item = {
                "href": href,
                "label": ent.text(ctx.lang, plural=True),
                "icon": ent.icon or "dot",
                "entity": ent.name,
            }
            section = sections[0] if ent.ownable else sections[1]
            section["items"].append(item)
            section["items"] += extra.pop(ent.name, [])
        for items in extra.values():
            tail += items
        if tail:
            sections[0]["items"] += tail
        # The current item is the one whose URL is the longest prefix of this page's path.
        items = [item for section in sections for item in section["items"]]
        matches = [i for i in items if path.startswith(i["href"].split("?")[0])]
        best = max(matches, key=lambda i: len(i["href"]), default=None)
        for item in items:
            item["current"] = item is best
        return [s for s in sections if s["items"]]

    def menu_html(self, menu: list[dict[str, Any]], icons: str | None = None) -> Markup:
        """The menu sections as base.html's loop draws them (``menu_html``), built in Python.

        A page has a score of menu items: one string instead of a template loop with four escaped
        values per item. base.html keeps the loop for callers that pass only ``menu``.
        """
        icons = html_text(self.icons_url if icons is None else icons)
        out = []
        for section in menu:
            # .get(key, ""): a missing key prints nothing, as Jinja's Undefined does in the loop.
            out.append('    <h2 class="nav-h">' + html_text(section.get("label", "")) + "</h2>\n    <ul>\n")
            for item in section["items"]:
                out.append(
                    '      <li><a href="' + html_text(item.get("href", "")) + '"'
                    + (' aria-current="page"' if item.get("current") else "")
                    + '><svg class="i" aria-hidden="true"><use href="' + icons + "#"
                    + html_text(item.get("icon", "")) + '"></use></svg>' + html_text(item.get("label", ""))
                    + "</a></li>\n"
                )
            out.append("    </ul>\n")
        return Markup("".join(out))

    def role_label(self, ctx: PageContext) -> str:
        """The actor's role as the ``user.role`` option label (``営業担当``), or the role name."""
        if ctx.actor is None:
            return ""
        role = self.crm.catalog["user"].fields.get("role") if "user" in self.crm.catalog else None
        option = role.option(ctx.actor.role) if role is not None else None
        return option.text(ctx.lang) if option else ctx.actor.role

    # -- rendering -------------------------------------------------------------------------------
    def render(self, ctx: PageContext, template: str, status: int = 200, **variables: Any) -> HTMLResponse:
        """Render an admin template with the shared context and the hooks' extra variables/assets."""
        request = ctx.request
        base: dict[str, Any] = {
            "request": request,
            "ctx": ctx,
            "crm": self.crm,
            "actor": ctx.actor,
            "lang": ctx.lang,
            "_": ctx._,
            "static": self.static_url,
            "icons": self.icons_url,  # static('icons.svg'): every icon of every page
            "csrf_token": auth.csrf_token(request) if "session" in request.scope else "",
            "messages": ctx.pop_messages(),
            "menu": self.menu(ctx) if ctx.actor is not None else [],
            "role_label": self.role_label(ctx),
            "extra_css": [],
            "extra_js": [],
            "current_path": request.url.path,
            "current_url": str(request.url.path) + (f"?{request.url.query}" if request.url.query else ""),
        }
        for _p, urls in call_each(
            self.crm.pm, "extra_css_urls", crm=self.crm, template=template, request=request
        ):
            base["extra_css"] += list(urls)
        for _p, urls in call_each(
            self.crm.pm, "extra_js_urls", crm=self.crm, template=template, request=request
        ):
            base["extra_js"] += list(urls)
        base.update(variables)
        for _p, extra in call_each(
            self.crm.pm, "extra_template_vars", crm=self.crm, template=template, request=request
        ):
            base.update(extra)
        if "menu_html" not in base:  # drawn from the final ``menu`` (a handler or hook may replace it)
            base["menu_html"] = self.menu_html(base["menu"], base["icons"])
        html = self.env.get_template(template).render(base)
        return HTMLResponse(html, status_code=status, headers={"cache-control": "no-store"})


_SITES: weakref.WeakKeyDictionary[Any, AdminSite] = weakref.WeakKeyDictionary()


def admin_site(crm: CRM) -> AdminSite:
    """The (cached) AdminSite of ``crm``."""
    site = _SITES.get(crm)
    if site is None:
        site = _SITES[crm] = AdminSite(crm)
    return site


def _static_version() -> str:
    digest = hashlib.sha1()
    root = static_dir()
    if root.is_dir():
        for path in sorted(root.rglob("*")):
            if path.is_file():
                digest.update(path.name.encode())
                digest.update(str(path.stat().st_mtime_ns).encode())
    return digest.hexdigest()[:10]


@dataclass
class PageContext:
    """What a handler gets: the request, the actor, the language and the parsed form (on POST)."""

    request: Request
    site: AdminSite
    actor: Actor | None
    lang: str
    form: FormData | None = None
    tz: dt.tzinfo = dt.UTC
    _messages: list[dict[str, str]] | None = field(default=None, repr=False)

    @property
    def crm(self) -> CRM:
        return self.site.crm

    @property
    def store(self) -> RecordStore:
        return self.site.crm.records

    @property
    def _(self) -> Translator:  # noqa: N802 - the conventional gettext name
        return Translator(self.lang, plugin_strings(self.site.crm))

    @property
    def params(self) -> dict[str, Any]:
        """Path parameters of the route."""
        return self.request.path_params

    @property
    def query(self):
        """Query string parameters (a multi-dict)."""
        return self.request.query_params

    def entity(self, name: str | None = None) -> Entity:
        """The catalog entity named in the path (404 for an unknown name)."""
        from crmkit.core.errors import NotFound

        name = name or self.params.get("entity", "")
        if name not in self.crm.catalog:
            raise NotFound(f"no entity {name!r}")
        return self.crm.catalog[name]

    def render(self, template: str, status: int = 200, **variables: Any) -> HTMLResponse:
        """Render ``template`` with the admin's shared context."""
        return self.site.render(self, template, status=status, **variables)

    def flash(self, message: str, kind: str = "success") -> None:
        """Show ``message`` on the next page rendered for this session."""
        session = self.request.scope.get("session")
        if session is not None:
            session.setdefault("flash", [])
            session["flash"] = [*session["flash"][-4:], {"kind": kind, "text": message}]

    def pop_messages(self) -> list[dict[str, str]]:
        """Messages waiting in the session (shown once)."""
        if self._messages is None:
            session = self.request.scope.get("session")
            self._messages = list(session.pop("flash", [])) if session else []
        return self._messages

    def redirect(self, url: str, message: str | None = None, kind: str = "success") -> RedirectResponse:
        """A 303 redirect (after a POST), optionally with a flash message."""
        if message:
            self.flash(message, kind)
        return RedirectResponse(url, status_code=303)

    def require(self, action: str, entity: str, record: dict[str, Any] | None = None) -> None:
        """Raise PermissionDenied (403) unless the actor may ``action`` the entity or record."""
        if self.actor is None or not self.store.can(self.actor, action, entity, record):
            raise PermissionDenied(self._("forbidden_text"))

    def wants_json(self) -> bool:
        """True for fetch() calls from the admin's scripts."""
        accept = self.request.headers.get("accept", "")
        return "application/json" in accept and "text/html" not in accept


Handler = Callable[[PageContext], Response]


def admin_page(handler: Handler, *, login: bool = True) -> Callable[[Request], Any]:
    """Wrap a synchronous page handler: CSRF, login, language, threadpool and error pages."""

    async def endpoint(request: Request) -> Response:
        site = admin_site(request.app.state.crm)
        form = None
        if request.method not in auth.SAFE_METHODS:
            try:
                form = await request.form(max_files=MAX_FORM_FILES, max_fields=MAX_FORM_FIELDS)
            except Exception:  # malformed multipart: treat as an empty form (CSRF will refuse it)
                form = FormData()
        # Everything after the form is synchronous (database reads, rendering): one trip to the
        # thread pool per request, not one per step.
        return await run_in_threadpool(_serve, site, request, form, handler, login)

    endpoint.__name__ = getattr(handler, "__name__", "admin_page")
    endpoint.__doc__ = handler.__doc__
    return endpoint


def _serve(site: AdminSite, request: Request, form: FormData | None, handler: Handler, login: bool) -> Response:
    """Actor, language, CSRF and login checks, then the handler (in a worker thread)."""
    actor = site.actor(request)
    user = getattr(request.state, "crmkit_user", None)
    lang = choose_language(request, actor, site.crm.config.locale)
    tz = zone(user.time_zone if user else None, site.crm.config.time_zone)
    ctx = PageContext(request, site, actor, lang, form, tz)
    request.state.crmkit_ctx = ctx  # for hooks that get only the request (widgets, menu links)
    request.state.crmkit_lang = lang
    if form is not None and not auth.csrf_ok(request, form):
        return _error(ctx, 403, ctx._("csrf_failed"))
    if login and actor is None:
        if request.method in ("GET", "HEAD") and not ctx.wants_json():
            target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
            return RedirectResponse("/admin/login?" + urlencode({"next": target}), status_code=303)
        return _error(ctx, 401, ctx._("session_expired"))
    try:
        return handler(ctx)
    except CRMError as exc:
        return _error(ctx, exc.status, str(exc))
    except PluginError as exc:
        return _error(ctx, 500, str(exc))


def _error(ctx: PageContext, status: int, message: str) -> Response:
    """An error page (or JSON for scripts) that never shows record data."""
    if ctx.wants_json():
        return JSONResponse({"error": message, "status": status}, status_code=status)
    titles = {403: "forbidden_title", 404: "not_found_title", 401: "sign_in"}
    title = ctx._(titles.get(status, "error"))
    if status == 403 and not message:
        message = ctx._("forbidden_text")
    if status == 404:
        message = ctx._("not_found_text")
    return ctx.render("error.html", status=status, title=title, message=message, status_code=status)
