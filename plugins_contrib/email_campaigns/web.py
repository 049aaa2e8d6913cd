"""HTTP: the public tracking/unsubscribe endpoints, the admin results and suppression pages, the bounce API.

Public endpoints (``/t/…``) need no login and no session: the signed token is the authority. A
token that was altered, truncated or made for another purpose answers 400 and changes nothing.
The unsubscribe URL accepts RFC 8058 one-click POSTs from mail clients (no CSRF token: the mail
client cannot have one, and the signed token already proves the request came from the mail),
and shows a confirmation page with a button on GET, so link scanners that fetch every URL never
unsubscribe anyone.
"""

from __future__ import annotations

import base64
import datetime as dt
from typing import Any

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from starlette.routing import Route

from crmkit.core.errors import CRMError, NotFound, PermissionDenied, ValidationError
from crmkit.web.i18n import Translator, choose_language, plugin_strings
from crmkit.web.site import PageContext, admin_page, admin_site
from plugins_contrib.email_campaigns import bounces, campaigns, links, results, tracking

PIXEL = base64.b64decode("R0lGODlhAQABAIAAAAAAAP///yH5BAEAAAAALAAAAAABAAEAAAIBRAA7")
NO_STORE = {"cache-control": "no-store, max-age=0", "referrer-policy": "no-referrer"}
MAX_BOUNCE_BYTES = 10 * 1024 * 1024


def routes() -> list[Route]:
    """Every route of the plugin."""
    return [
        Route("/t/o/{token}.gif", open_pixel, methods=["GET", "HEAD"]),
        Route("/t/c/{token}", click, methods=["GET", "HEAD"]),
        Route("/t/u/{token}", unsubscribe, methods=["GET", "HEAD", "POST"]),
        Route("/admin/email_campaign/{id:int}/results", admin_page(results_page), methods=["GET", "HEAD"]),
        Route("/admin/email_campaign/{id:int}/do/{action}", admin_page(action_page), methods=["POST"]),
        Route("/admin/email-suppression", admin_page(suppression_page), methods=["GET", "HEAD", "POST"]),
        Route("/api/v1/email_campaigns/bounces", bounce_api, methods=["POST"]),
    ]


# ---------------------------------------------------------------------------------------------
# Public pages
# ---------------------------------------------------------------------------------------------
def _public(request: Request, template: str, lang: str, status: int = 200, **variables: Any) -> HTMLResponse:
    crm = request.app.state.crm
    site = admin_site(crm)
    _ = Translator(lang, plugin_strings(crm))
    html = site.env.get_template(template).render(
        {"lang": lang, "_": _, "static": site.static_url, "request": request, **variables}
    )
    return HTMLResponse(html, status_code=status, headers=NO_STORE)


def _bad_link(request: Request, lang: str | None = None) -> HTMLResponse:
    crm = request.app.state.crm
    lang = lang or choose_language(request, None, crm.config.locale)
    _ = Translator(lang, plugin_strings(crm))
    return _public(request, "email_campaigns/public.html", lang, 400, title=_("email_campaigns_bad_link_title"),
                   message=_("email_campaigns_bad_link_text"))


async def open_pixel(request: Request) -> Response:
    """The 1x1 GIF: records an open (flagged when a proxy or scanner fetched it)."""
    crm = request.app.state.crm
    try:
        (send_id,) = links.read_ids(crm, "open", request.path_params["token"], 1)
    except links.BadToken:
        return Response(b"bad link", status_code=400, media_type="text/plain")
    if request.method == "GET":
        try:
            await run_in_threadpool(tracking.record_open, crm, send_id, request.headers.get("user-agent"))
        except NotFound:
            return Response(b"not found", status_code=404, media_type="text/plain")
    return Response(PIXEL, media_type="image/gif", headers=NO_STORE)


async def click(request: Request) -> Response:
    """Record a click and redirect to the campaign link the token names (never elsewhere)."""
    crm = request.app.state.crm
    try:
        send_id, link_id = links.read_ids(crm, "click", request.path_params["token"], 2)
    except links.BadToken:
        return _bad_link(request)
    try:
        url = await run_in_threadpool(tracking.record_click, crm, send_id, link_id, request.headers.get("user-agent"))
    except NotFound:
        return _bad_link(request)
    return RedirectResponse(url, status_code=302, headers=NO_STORE)


async def unsubscribe(request: Request) -> Response:
    """GET: a confirmation page with a button. POST (the button, or a one-click mail client): unsubscribe."""
    crm = request.app.state.crm
    token = request.path_params["token"]
    try:
        email, send_id = links.read_unsubscribe(crm, token)
    except links.BadToken:
        return _bad_link(request)
    if send_id is not None:
        email = await run_in_threadpool(tracking.send_email, crm, send_id)
        if email is None:  # the campaign was deleted: nothing left to unsubscribe from
            return _bad_link(request)
    stored = await run_in_threadpool(tracking.send_language, crm, send_id)
    lang = request.query_params.get("lang")
    if lang not in ("en", "ja"):
        lang = stored or choose_language(request, None, crm.config.locale)
    _ = Translator(lang, plugin_strings(crm))
    if request.method == "POST":
        # "List-Unsubscribe=One-Click" from a mail client (RFC 8058), or our confirmation button.
        body = (await request.body())[:200].decode("utf-8", "replace").lower()
        reason = "one_click" if "list-unsubscribe=one-click" in body else "unsubscribe"
        await run_in_threadpool(tracking.unsubscribe, crm, email, send_id=send_id, reason=reason)
        return _public(request, "email_campaigns/public.html", lang, title=_("email_campaigns_unsubscribed_title"),
                       message=_("email_campaigns_unsubscribed_text", email=_mask(email)))
    already = await run_in_threadpool(tracking.is_opted_out, crm, email)
    return _public(request, "email_campaigns/unsubscribe.html", lang, title=_("email_campaigns_unsubscribe_title"),
                   email=_mask(email), action=f"/t/u/{token}", already=already,
                   other_lang="en" if lang == "ja" else "ja")


def _mask(email: str) -> str:
    """``t***@example.com``: enough for people to recognise their address, not to harvest it."""
    local, _, domain = email.partition("@")
    return f"{local[:1]}***@{domain}"


# ---------------------------------------------------------------------------------------------
# Admin pages
# ---------------------------------------------------------------------------------------------
def results_page(ctx: PageContext) -> Response:
    """The results of one campaign."""
    campaign = ctx.store.get(campaigns.CAMPAIGN, ctx.params["id"], actor=ctx.actor)
    numbers = results.campaign_results(ctx.crm, campaign)
    ent = ctx.crm.catalog[campaigns.CAMPAIGN]
    status = ent.fields["status"].option(campaign["status"])
    return ctx.render(
        "email_campaigns/results.html",
        title=f"{campaign['name']} · {ctx._('email_campaigns_results')}",
        campaign=campaign, r=numbers, status_label=status.text(ctx.lang) if status else campaign["status"],
        entity=ent,
    )


def action_page(ctx: PageContext) -> Response:
    """schedule / pause / resume / cancel from the campaign's page (POST with the CSRF token)."""
    action = ctx.params["action"]
    cid = ctx.params["id"]
    if action not in campaigns.ACTIONS:
        raise NotFound(f"no action {action!r}")
    try:
        campaigns.run_action(ctx.crm, cid, action, ctx.actor)
    except ValidationError as exc:
        message = "; ".join(f"{e['field']}: {e['message']}" if e.get("field") else e["message"] for e in exc.errors)
        return ctx.redirect(f"/admin/email_campaign/{cid}", message, "error")
    return ctx.redirect(f"/admin/email_campaign/{cid}", ctx._(f"email_campaigns_done_{action}"))


def suppression_page(ctx: PageContext) -> Response:
    """The global opt-out list and the invalid (bounced) addresses; admins add and remove entries."""
    from plugins_contrib.email_campaigns import suppression

    if ctx.actor is None or not ctx.actor.is_admin:
        raise PermissionDenied(ctx._("forbidden_text"))
    error = None
    if ctx.form is not None:
        op = ctx.form.get("op")
        address = str(ctx.form.get("email") or "").strip()
        try:
            if op == "add":
                suppression.add_optout(ctx.crm, address, actor=ctx.actor)
                return ctx.redirect("/admin/email-suppression", ctx._("email_campaigns_optout_added", email=address))
            if op == "remove":
                tracking.resubscribe(ctx.crm, address)
                return ctx.redirect("/admin/email-suppression", ctx._("email_campaigns_optout_removed", email=address))
            if op == "clear_invalid":
                suppression.clear_invalid(ctx.crm, address)
                return ctx.redirect("/admin/email-suppression", ctx._("email_campaigns_invalid_cleared", email=address))
        except ValueError:
            error = ctx._("email_campaigns_bad_email")
    q = (ctx.query.get("q") or "").strip()
    data = suppression.listing(ctx.crm, q=q or None)
    return ctx.render("email_campaigns/suppression.html", status=422 if error else 200,
                      title=ctx._("email_campaigns_suppression"), q=q, error=error, **data)


# ---------------------------------------------------------------------------------------------
# Bounce API
# ---------------------------------------------------------------------------------------------
async def bounce_api(request: Request) -> Response:
    """``POST /api/v1/email_campaigns/bounces``: a raw DSN (or an mbox of them) as the body.

    Needs an API token (or session) of someone who may update campaigns. Answers
    ``{"hard": n, "soft": n, "matched": n, "not_dsn": n}``.
    """
    crm = request.app.state.crm
    actor = await run_in_threadpool(admin_site(crm).actor, request)
    if actor is None:
        return JSONResponse({"errors": [{"field": "", "message": "authentication required"}]}, status_code=401)
    if not crm.records.can(actor, "update", campaigns.CAMPAIGN):
        return JSONResponse({"errors": [{"field": "", "message": "you may not record bounces"}]}, status_code=403)
    if "session" in request.scope and request.headers.get("authorization") is None:
        from crmkit.web import auth

        if not auth.csrf_ok(request):
            return JSONResponse({"errors": [{"field": "", "message": "CSRF check failed"}]}, status_code=403)
    body = await request.body()
    if not body:
        return JSONResponse({"errors": [{"field": "body", "message": "send the DSN message as the body"}]},
                            status_code=422)
    if len(body) > MAX_BOUNCE_BYTES:
        return JSONResponse({"errors": [{"field": "body", "message": "too large"}]}, status_code=413)
    try:
        summary = await run_in_threadpool(process_bounces, crm, body)
    except CRMError as exc:
        return JSONResponse({"errors": [{"field": "", "message": str(exc)}]}, status_code=exc.status)
    return JSONResponse(summary)


def process_bounces(crm: Any, data: bytes, now: dt.datetime | None = None) -> dict[str, int]:
    """Parse a message or mbox of DSNs and record them; a summary of what was found."""
    found: list[bounces.Bounce] = []
    not_dsn = 0
    for _i, result in bounces.parse_many(data):
        if isinstance(result, bounces.NotADSN):
            not_dsn += 1
        else:
            found += result
    summary = bounces.record_bounces(crm, found, now=now) if found else {"hard": 0, "soft": 0, "matched": 0}
    summary["not_dsn"] = not_dsn
    return summary
