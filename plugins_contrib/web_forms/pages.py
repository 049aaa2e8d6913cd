"""The public form pages: ``/forms/{slug}`` (GET shows, POST submits) and ``/forms/{slug}/thanks``.

No login and no session cookie: the page embeds a signed form token instead of a CSRF token.
Invalid input re-renders the form (422) with every value kept and a message next to each field.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any
from urllib.parse import urlencode

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import FileResponse, HTMLResponse, RedirectResponse, Response
from starlette.routing import Route

from crmkit.web.i18n import Translator, choose_language, plugin_strings
from crmkit.web.site import admin_site
from plugins_contrib.web_forms import submit as S
from plugins_contrib.web_forms.definitions import LANGS, WebForm, same_site, text_of

STATIC = Path(__file__).parent / "static"
HEADERS = {"cache-control": "no-store", "referrer-policy": "strict-origin-when-cross-origin"}
MAX_BODY = 64 * 1024
INPUT_TYPES = {"email": "email", "phone": "tel", "url": "url", "integer": "number", "decimal": "text",
               "money": "text", "date": "date", "string": "text"}


def routes() -> list[Route]:
    """The public routes (and the form stylesheet)."""
    return [
        Route("/forms/static/web_forms.css", stylesheet, methods=["GET", "HEAD"]),
        Route("/forms/{slug}", form_page, methods=["GET", "HEAD", "POST"]),
        Route("/forms/{slug}/thanks", thanks_page, methods=["GET", "HEAD"]),
    ]


def forms(crm: Any) -> dict[str, WebForm]:
    """The project's forms (loaded and checked when the CRM started)."""
    from plugins_contrib.web_forms import project_forms

    return project_forms(crm)


async def stylesheet(request: Request) -> Response:
    """The form pages' few styles (a local file: the CSP allows no inline styles)."""
    return FileResponse(STATIC / "web_forms.css", media_type="text/css")


def _lang(request: Request, crm: Any, posted: Any = None) -> str:
    for value in (posted, request.query_params.get("lang")):
        if value in LANGS:
            return value
    return choose_language(request, None, crm.config.locale)


def _render(request: Request, template: str, lang: str, status: int = 200, **variables: Any) -> HTMLResponse:
    crm = request.app.state.crm
    site = admin_site(crm)
    _ = Translator(lang, plugin_strings(crm))
    html = site.env.get_template(template).render(
        {"lang": lang, "_": _, "static": site.static_url, "request": request, **variables}
    )
    return HTMLResponse(html, status_code=status, headers=HEADERS)


def _not_found(request: Request, lang: str) -> HTMLResponse:
    _ = Translator(lang, plugin_strings(request.app.state.crm))
    return _render(request, "web_forms/message.html", lang, 404, title=_("web_forms_not_found_title"),
                   message=_("web_forms_not_found_text"))


def _fields(crm: Any, form: WebForm, lang: str, values: dict[str, Any], errors: dict[str, str]) -> list[dict]:
    ent = crm.catalog[form.entity]
    _ = Translator(lang, plugin_strings(crm))
    out = []
    for f in form.fields:
        spec = ent.fields[f.name]
        kind = spec.type
        message = errors.get(f.name)
        if message == "required":
            message = _("web_forms_required")
        value = values.get(f.name)
        out.append({
            "name": f.name,
            "id": f"f-{f.name}",
            "label": text_of(f.spec.get("label"), lang) or spec.text(lang),
            "help": text_of(f.spec.get("help"), lang) or text_of(dict(spec.spec.get("help") or {}), lang),
            "placeholder": text_of(f.spec.get("placeholder"), lang)
            or text_of(dict(spec.spec.get("placeholder") or {}), lang),
            "required": f.required,
            "kind": "textarea" if kind == "text" else "select" if kind == "enum" else "multi" if kind == "multi_enum"
            else "checkbox" if kind == "boolean" else "input",
            "type": INPUT_TYPES.get(kind, "text"),
            "options": [(o.value, o.text(lang)) for o in spec.options],
            "value": value if value is not None else "",
            "values": value if isinstance(value, list) else [],
            "checked": bool(value) and value not in ("0", "false", "off"),
            "error": message,
            "autocomplete": {"email": "email", "phone": "tel", "last_name": "family-name",
                             "first_name": "given-name", "company": "organization", "title": "organization-title",
                             "website": "url"}.get(f.name, "on"),
        })
    return out


def _form_response(request: Request, form: WebForm, lang: str, *, status: int = 200,
                   values: dict[str, Any] | None = None, errors: dict[str, str] | None = None,
                   notice: str | None = None) -> HTMLResponse:
    crm = request.app.state.crm
    _ = Translator(lang, plugin_strings(crm))
    errors = errors or {}
    consent = form.data.get("consent")
    general = errors.get("")
    return _render(
        request, "web_forms/form.html", lang, status,
        title=form.text("title", lang, form.slug), intro=form.text("intro", lang), form=form,
        fields=_fields(crm, form, lang, values or {}, errors), token=S.form_token(crm, form),
        honeypot=S.HONEYPOT, action=f"/forms/{form.slug}",
        consent={"label": text_of(consent["label"], lang), "url": consent.get("url"),
                 "error": _("web_forms_consent_required") if errors.get("_consent") else None,
                 "checked": bool((values or {}).get("_consent"))} if consent else None,
        submit_label=form.text("submit_label", lang, _("web_forms_submit")),
        other_lang="en" if lang == "ja" else "ja", general=general, notice=notice,
        error_count=len(errors),
    )


async def form_page(request: Request) -> Response:
    """Show the form (GET) or take a submission (POST)."""
    crm = request.app.state.crm
    form = forms(crm).get(request.path_params["slug"])
    if request.method != "POST":
        lang = _lang(request, crm)
        if form is None:
            return _not_found(request, lang)
        return _form_response(request, form, lang)
    length = request.headers.get("content-length") or "0"
    if not length.isdigit() or int(length) > MAX_BODY:
        return HTMLResponse("request too large", status_code=413)
    try:
        data = await request.form(max_files=0, max_fields=200)
    except Exception:  # malformed or file-carrying multipart: not something our form sends
        return HTMLResponse("bad request", status_code=400)
    lang = _lang(request, crm, data.get("_lang"))
    _ = Translator(lang, plugin_strings(crm))
    if form is None:
        return _not_found(request, lang)
    values = {k: data.get(k) for k in data.keys()}
    if not S.token_ok(crm, form, data.get("_token")):
        # An expired page or a forged post: show the form again with a fresh token, values kept.
        return _form_response(request, form, lang, status=400, values=values, notice=_("web_forms_expired"))
    address = request.client.host if request.client else None
    outcome = await run_in_threadpool(S.submit, crm, form, data, client_address=address, lang=lang)
    if outcome.status == "limited":
        return _form_response(request, form, lang, status=429, values=values, notice=_("web_forms_rate_limited"))
    if outcome.status == "invalid":
        kept = {**outcome.values, "_consent": data.get("_consent")}
        return _form_response(request, form, lang, status=422, values=kept, errors=outcome.errors)
    redirect = (form.data.get("thank_you") or {}).get("redirect")
    if redirect and same_site(redirect, crm.config.base_url):
        return RedirectResponse(redirect, status_code=303)
    return RedirectResponse(f"/forms/{form.slug}/thanks?" + urlencode({"lang": lang}), status_code=303)


async def thanks_page(request: Request) -> Response:
    """The thank-you page."""
    crm = request.app.state.crm
    lang = _lang(request, crm)
    form = forms(crm).get(request.path_params["slug"])
    if form is None:
        return _not_found(request, lang)
    _ = Translator(lang, plugin_strings(crm))
    thanks = form.data.get("thank_you") or {}
    return _render(request, "web_forms/message.html", lang,
                   title=text_of(thanks.get("title"), lang) or _("web_forms_thanks_title"),
                   message=text_of(thanks.get("message"), lang) or _("web_forms_thanks_text"))
