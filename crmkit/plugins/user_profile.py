"""Built-in plugin: the signed-in user's own profile page, ``/admin/profile``.

Every user, whatever their role, changes their display name, language, time zone and password
here; no permission to edit ``user`` records is needed. The page decides which fields may change
(only these, only on the user's own row), so the write goes through RecordStore (validation,
hooks, audit) as the user with system rights, recorded in the audit log under the user's own name
with the source ``profile``.

Changing the password asks for the current one (wrong guesses count towards the login throttle,
so a hijacked session cannot be used to guess it), stores a new argon2 hash and signs the user
out everywhere else: every session carries a fingerprint of the password hash
(:func:`crmkit.web.auth.session_user`), and this session is started afresh with the new one.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import functools
import zoneinfo
from typing import TYPE_CHECKING, Any

from starlette.responses import Response
from starlette.routing import Route

from crmkit.core.actors import SYSTEM, Actor
from crmkit.core.errors import NotFound, ValidationError
from crmkit.core.passwords import hash_password, verify_password
from crmkit.hookspecs import hookimpl
from crmkit.web import auth
from crmkit.web.i18n import LANGUAGES, Translator, plugin_strings, t

if TYPE_CHECKING:
    from crmkit.web.site import PageContext

PATH = "/admin/profile"
PASSWORD_PATH = "/admin/profile/password"
MIN_PASSWORD = 8
MAX_PASSWORD = 1024  # the login form reads at most this many characters
MAX_DISPLAY_NAME = 100
SETTINGS_FIELDS = ("display_name", "locale", "time_zone")
LANGUAGE_NAMES = {"en": "English", "ja": "日本語"}
# Zone names users pick from: the canonical areas (no "US/…", "Etc/GMT+9" or other legacy aliases).
REGIONS = ("Africa", "America", "Antarctica", "Arctic", "Asia", "Atlantic", "Australia", "Europe", "Indian", "Pacific")

UI_STRINGS = {
    "profile_title": ("My profile", "プロフィール"),
    "profile_link": ("My profile", "プロフィール"),
    "profile_intro": (
        "Your name as others see it, your language and time zone, and your password.",
        "ほかの人に表示される名前、言語とタイムゾーン、パスワードを変更できます。",
    ),
    "profile_account": ("Account", "アカウント"),
    "profile_email": ("Email", "メールアドレス"),
    "profile_role": ("Role", "ロール"),
    "profile_team": ("Team", "所属チーム"),
    "profile_last_login": ("Last sign-in", "最終ログイン"),
    "profile_managed_by_admin": (
        "Your username, email, role and team are managed by an administrator.",
        "ユーザー名・メールアドレス・ロール・所属チームは管理者が管理します。",
    ),
    "profile_settings": ("Settings", "個人設定"),
    "profile_display_name": ("Display name", "表示名"),
    "profile_language": ("Language", "言語"),
    "profile_time_zone": ("Time zone", "タイムゾーン"),
    "profile_time_zone_help": (
        "Dates and times in the admin are shown in this zone.",
        "管理画面の日時はこのタイムゾーンで表示されます。",
    ),
    "profile_save": ("Save settings", "設定を保存"),
    "profile_saved": ("Your settings were saved.", "設定を保存しました。"),
    "profile_password": ("Change password", "パスワードの変更"),
    "profile_current_password": ("Current password", "現在のパスワード"),
    "profile_new_password": ("New password", "新しいパスワード"),
    "profile_confirm_password": ("New password again", "新しいパスワード（確認）"),
    "profile_password_help": (
        "At least {n} characters. Changing it signs you out on every other device.",
        "{n}文字以上。変更すると、ほかの端末ではログアウトされます。",
    ),
    "profile_change_password": ("Change password", "パスワードを変更"),
    "profile_password_changed": (
        "Your password was changed. Other sessions were signed out.",
        "パスワードを変更しました。ほかのセッションはログアウトされました。",
    ),
    "profile_err_required": ("Enter a value.", "入力してください。"),
    "profile_err_too_long": ("At most {n} characters.", "{n}文字以内で入力してください。"),
    "profile_err_language": ("Choose English or Japanese.", "英語または日本語を選んでください。"),
    "profile_err_time_zone": ("Choose a time zone from the list.", "一覧からタイムゾーンを選んでください。"),
    "profile_err_current_wrong": ("The current password is not correct.", "現在のパスワードが正しくありません。"),
    "profile_err_too_short": ("At least {n} characters.", "{n}文字以上で入力してください。"),
    "profile_err_mismatch": ("The two new passwords differ.", "新しいパスワードが一致しません。"),
    "profile_err_same": (
        "Choose a password different from the current one.",
        "現在と異なるパスワードを指定してください。",
    ),
    "profile_err_username": (
        "The password must not be your username.",
        "ユーザー名と同じパスワードは使えません。",
    ),
}


# ---------------------------------------------------------------------------------------------
# Hooks
# ---------------------------------------------------------------------------------------------
@hookimpl
def register_ui_strings(crm):
    """The profile page's words (en, ja)."""
    return UI_STRINGS


@hookimpl
def register_routes(crm):
    """The profile page and its password form."""
    from crmkit.web.site import admin_page

    return [
        Route(PATH, admin_page(profile_page), methods=["GET", "HEAD", "POST"]),
        Route(PASSWORD_PATH, admin_page(password_page), methods=["POST"]),
    ]


@hookimpl
def extra_template_vars(crm, template, request):
    """``profile_url`` and ``profile_label`` for the header's link (base.html shows it when set)."""
    ctx = getattr(request.state, "crmkit_ctx", None)
    if ctx is None or ctx.actor is None or ctx.actor.id is None:
        return {}
    return {"profile_url": PATH, "profile_label": t("profile_link", ctx.lang, extra=UI_STRINGS)}


@hookimpl
def extra_css_urls(crm, template, request):
    """The header link's and the page's styles (the link is on every page)."""
    from crmkit.web.site import admin_site

    return [admin_site(crm).static_url("profile.css")]


# ---------------------------------------------------------------------------------------------
# Time zones
# ---------------------------------------------------------------------------------------------
@functools.cache
def zone_names() -> frozenset[str]:
    """Zone names offered in the list: ``UTC`` and the canonical ``Area/City`` names."""
    names = {name for name in ("UTC", "Asia/Tokyo") if _zone_ok(name)}  # even without a zone list
    for name in zoneinfo.available_timezones():
        region, sep, _rest = name.partition("/")
        if sep and region in REGIONS:
            names.add(name)
    return frozenset(names)


def zone_groups(current: str | None, now: dt.datetime | None = None) -> list[dict[str, Any]]:
    """``[{label, zones: [{value, label}]}]`` by area, each zone with today's UTC offset."""
    now = now or dt.datetime.now(dt.UTC)
    names = set(zone_names())
    if current and _zone_ok(current):
        names.add(current)  # a legacy name set by an admin stays selectable
    groups: dict[str, list[dict[str, str]]] = {}
    for name in sorted(names):
        area = name.partition("/")[0] if "/" in name else "UTC"
        offset = now.astimezone(zoneinfo.ZoneInfo(name)).strftime("%z")
        label = f"{name.replace('_', ' ')} (UTC{offset[:3]}:{offset[3:]})"
        groups.setdefault(area, []).append({"value": name, "label": label})
    order = {area: i for i, area in enumerate(("UTC", *REGIONS))}
    return [{"label": a, "zones": groups[a]} for a in sorted(groups, key=lambda a: (order.get(a, len(order)), a))]


def _zone_ok(name: str) -> bool:
    try:
        zoneinfo.ZoneInfo(name)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        return False
    return True


# ---------------------------------------------------------------------------------------------
# Pages
# ---------------------------------------------------------------------------------------------
def _me(ctx: PageContext) -> auth.UserRow:
    """The signed-in user's row (a token or system actor has no profile page)."""
    user = getattr(ctx.request.state, "crmkit_user", None)
    if ctx.actor is None or ctx.actor.id is None or ctx.actor.system:
        raise NotFound("no profile")
    if user is None or user.id != ctx.actor.id:
        user = auth.load_user(ctx.crm, user_id=ctx.actor.id)
    if user is None:
        raise NotFound("no profile")
    return user


def _as_self(ctx: PageContext) -> Actor:
    """The user's own actor, with system rights: this page, not the role, limits what changes."""
    assert ctx.actor is not None
    return dataclasses.replace(ctx.actor, system=True)


def _settings_values(user: auth.UserRow) -> dict[str, str]:
    return {"display_name": user.display_name, "locale": user.locale, "time_zone": user.time_zone or ""}


def _render(
    ctx: PageContext,
    user: auth.UserRow,
    *,
    values: dict[str, str] | None = None,
    errors: dict[str, str] | None = None,
    pw_errors: dict[str, str] | None = None,
    status: int = 200,
) -> Response:
    record = ctx.store.get("user", user.id, actor=SYSTEM)
    team = record.get("primary_team")
    team_name = ctx.store.titles("team", [team]).get(team, "") if team and "team" in ctx.crm.catalog else ""
    last = record.get("last_login_at")
    values = values or _settings_values(user)
    return ctx.render(
        "profile.html",
        status=status,
        title=ctx._("profile_title"),
        user=user,
        email=record.get("email") or "",
        team_name=team_name,
        last_login=last.astimezone(ctx.tz).strftime("%Y-%m-%d %H:%M") if isinstance(last, dt.datetime) else "",
        values=values,
        errors=errors or {},
        pw_errors=pw_errors or {},
        languages=[{"value": code, "label": LANGUAGE_NAMES.get(code, code)} for code in LANGUAGES],
        zone_groups=zone_groups(values.get("time_zone") or user.time_zone),
        min_password=MIN_PASSWORD,
        max_password=MAX_PASSWORD,
        max_display_name=MAX_DISPLAY_NAME,
    )


def profile_page(ctx: PageContext) -> Response:
    """GET shows the profile; POST saves display name, language and time zone."""
    user = _me(ctx)
    if ctx.request.method != "POST":
        return _render(ctx, user)
    form = ctx.form or {}
    values = {name: str(form.get(name) or "").strip() for name in SETTINGS_FIELDS}
    errors: dict[str, str] = {}
    if not values["display_name"]:
        errors["display_name"] = ctx._("profile_err_required")
    elif len(values["display_name"]) > MAX_DISPLAY_NAME:
        errors["display_name"] = ctx._("profile_err_too_long", n=MAX_DISPLAY_NAME)
    if values["locale"] not in LANGUAGES:
        errors["locale"] = ctx._("profile_err_language")
    if values["time_zone"] not in zone_names() and not (
        values["time_zone"] == (user.time_zone or "") and _zone_ok(values["time_zone"])
    ):
        errors["time_zone"] = ctx._("profile_err_time_zone")
    if not errors:
        try:
            ctx.store.update("user", user.id, values, actor=_as_self(ctx), source="profile")
        except ValidationError as exc:
            for e in exc.errors:
                field = e.get("field") if e.get("field") in SETTINGS_FIELDS else ""
                errors[field] = f"{errors[field]} {e['message']}" if field in errors else e["message"]
    if errors:
        return _render(ctx, user, values=values, errors=errors, status=422)
    ctx.request.session["lang"] = values["locale"]
    message = Translator(values["locale"], plugin_strings(ctx.crm))("profile_saved")
    return ctx.redirect(PATH, message)


def password_page(ctx: PageContext) -> Response:
    """POST: change the password (current one required); other sessions of the user end."""
    user = _me(ctx)
    form = ctx.form or {}
    current = str(form.get("current_password") or "")[:MAX_PASSWORD]
    new = str(form.get("new_password") or "")
    confirm = str(form.get("confirm_password") or "")
    throttle_key = f"user:{user.username.strip().lower()}"
    errors: dict[str, str] = {}
    wait = ctx.site.throttle.retry_after(throttle_key)
    if wait > 0:
        minutes = max(1, int(wait // 60) + (1 if wait % 60 else 0))
        errors["current_password"] = ctx._("login_throttled", minutes=minutes)
        return _render(ctx, user, pw_errors=errors, status=429)
    if not current:
        errors["current_password"] = ctx._("profile_err_required")
    elif not verify_password(user.password, current):
        ctx.site.throttle.failure(throttle_key)
        errors["current_password"] = ctx._("profile_err_current_wrong")
    if not new:
        errors["new_password"] = ctx._("profile_err_required")
    elif len(new) < MIN_PASSWORD:
        errors["new_password"] = ctx._("profile_err_too_short", n=MIN_PASSWORD)
    elif len(new) > MAX_PASSWORD:
        errors["new_password"] = ctx._("profile_err_too_long", n=MAX_PASSWORD)
    elif new.strip().lower() == user.username.lower():
        errors["new_password"] = ctx._("profile_err_username")
    elif current and new == current:
        errors["new_password"] = ctx._("profile_err_same")
    if new and confirm != new and "new_password" not in errors:
        errors["confirm_password"] = ctx._("profile_err_mismatch")
    if not errors:
        try:
            # Hashed here (argon2): the stored value is never the typed text, whatever it looks like.
            ctx.store.update("user", user.id, {"password": hash_password(new)}, actor=_as_self(ctx),
                             source="profile")
        except ValidationError as exc:
            errors["new_password"] = " ".join(e["message"] for e in exc.errors)
    if errors:
        return _render(ctx, user, pw_errors=errors, status=422)
    fresh = auth.load_user(ctx.crm, user_id=user.id)
    if fresh is not None:
        auth.start_session(ctx.request, fresh)  # a new fingerprint (and CSRF token) for this session only
    ctx.site.throttle.success(throttle_key)
    return ctx.redirect(PATH, ctx._("profile_password_changed"))
