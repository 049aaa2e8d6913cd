"""Login, sessions, CSRF and login throttling for the admin.

- Sessions are Starlette's signed cookie (itsdangerous; HttpOnly, SameSite=Lax, Secure over HTTPS,
  set up in :mod:`crmkit.web.app`). The session holds the user id, the login time, the last time
  it was seen and a fingerprint of the password hash: changing a password, deactivating the user,
  the absolute lifetime (``session_max_age``) or an idle period (``admin.session_idle``) ends it.
- Users are rows of the ``user`` entity; the :class:`~crmkit.core.actors.Actor` is built from the
  row and the user's team memberships (``team.members`` plus ``primary_team``).
- Every state-changing request carries the session's CSRF token (form field ``_csrf`` or header
  ``X-CSRF-Token``); a request whose ``Origin`` is another site is refused as well.
- Repeated failed logins lock the username (and, more loosely, the client address) for a while;
  the counters are kept in the database (:mod:`crmkit.web.throttle`), so several app processes
  share one lock-out.
"""

from __future__ import annotations

import hashlib
import secrets
import time
import weakref
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import sqlalchemy as sa

from crmkit.core.actors import SYSTEM, Actor
from crmkit.core.passwords import needs_rehash, verify_password
from crmkit.web.throttle import DatabaseLoginThrottle, LoginThrottle, login_throttle  # noqa: F401 - old home

if TYPE_CHECKING:
    from starlette.requests import Request

    from crmkit.app import CRM

SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS", "TRACE"})
CSRF_FIELD = "_csrf"  # the hidden form field
CSRF_SESSION_KEY = "csrf"  # where the session keeps the token (the REST API reads it too)
CSRF_HEADER = "x-csrf-token"
DEFAULT_IDLE_SECONDS = 12 * 3600
_SEEN_RESOLUTION = 300  # refresh "seen" in the cookie at most every 5 minutes


# ---------------------------------------------------------------------------------------------
# Users and actors
# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class UserRow:
    """The parts of a ``user`` row that authentication needs (password hash included)."""

    id: int
    username: str
    display_name: str
    role: str
    primary_team: int | None
    locale: str
    time_zone: str | None
    active: bool
    password: str | None

    @property
    def fingerprint(self) -> str:
        """A short digest of the password hash: a new password ends existing sessions."""
        return hashlib.sha256((self.password or "").encode()).hexdigest()[:16]


def load_user(crm: CRM, *, user_id: int | None = None, username: str | None = None) -> UserRow | None:
    """Read a user row directly (RecordStore never hands out password hashes)."""
    table = crm.table("user")
    stmt = sa.select(table)
    if user_id is not None:
        stmt = stmt.where(table.c.id == user_id)
    elif username is not None:
        stmt = stmt.where(sa.func.lower(table.c.username) == username.strip().lower())
    else:
        return None
    with crm.records.reads.connect() as conn:  # one statement, on every admin request: no BEGIN
        row = conn.execute(stmt.limit(1)).mappings().first()
    return _user_row(crm, row) if row is not None else None


def _user_row(crm: CRM, row: Mapping[str, Any]) -> UserRow:
    return UserRow(
        id=row["id"],
        username=row["username"],
        display_name=row.get("display_name") or row["username"],
        role=row.get("role") or "sales_rep",
        primary_team=row.get("primary_team"),
        locale=row.get("locale") or crm.config.locale,
        time_zone=row.get("time_zone"),
        active=row.get("active") is not False,
        password=row.get("password"),
    )


def team_ids(crm: CRM, user_id: int) -> frozenset[int]:
    """Teams the user belongs to through ``team.members`` (link table ``team__members``)."""
    link = crm.schema.link_tables.get(("team", "members"))
    if link is None:
        return frozenset()
    with crm.records.reads.connect() as conn:  # one statement, on every admin request: no BEGIN
        rows = conn.execute(sa.select(link.c.source_id).where(link.c.target_id == user_id))
        return frozenset(r[0] for r in rows)


_TEAM_COLUMN = "crmkit_member_of"
_SESSION_STATEMENTS: weakref.WeakKeyDictionary[Any, sa.Select] = weakref.WeakKeyDictionary()


def load_session_user(crm: CRM, user_id: int) -> tuple[UserRow | None, frozenset[int]]:
    """A user row and its ``team.members`` teams in one statement (every admin request needs both).

    The same as :func:`load_user` plus :func:`team_ids`: the user left-joined to the link table,
    one row per team (one row with a NULL team for a user in none). The statement is built once
    per CRM, with the id as a bound parameter.
    """
    stmt = _SESSION_STATEMENTS.get(crm)
    if stmt is None:
        table = crm.table("user")
        link = crm.schema.link_tables.get(("team", "members"))
        if link is None:
            stmt = sa.select(table, sa.null().label(_TEAM_COLUMN))
        else:
            stmt = sa.select(table, link.c.source_id.label(_TEAM_COLUMN)).select_from(
                table.outerjoin(link, link.c.target_id == table.c.id)
            )
        stmt = _SESSION_STATEMENTS[crm] = stmt.where(table.c.id == sa.bindparam("crmkit_uid"))
    with crm.records.reads.connect() as conn:  # one statement, on every admin request: no BEGIN
        rows = conn.execute(stmt, {"crmkit_uid": user_id}).mappings().all()
    if not rows:
        return None, frozenset()
    return _user_row(crm, rows[0]), frozenset(r[_TEAM_COLUMN] for r in rows if r[_TEAM_COLUMN] is not None)


def actor_for(crm: CRM, user: UserRow, member_of: frozenset[int] | None = None) -> Actor:
    """The Actor of a user row: role, teams (members + primary team), locale, display name.

    ``member_of``: the user's ``team.members`` teams when already read (:func:`load_session_user`).
    """
    teams = set(team_ids(crm, user.id) if member_of is None else member_of)
    if user.primary_team:
        teams.add(user.primary_team)
    return Actor(
        id=user.id,
        username=user.username,
        role=user.role,
        team_ids=frozenset(teams),
        primary_team=user.primary_team,
        locale=user.locale,
        display_name=user.display_name,
    )


def authenticate(crm: CRM, username: str, password: str) -> UserRow | None:
    """The active user with this username and password, or None (always doing the hash work)."""
    user = load_user(crm, username=username) if username else None
    if user is None or not user.active:
        verify_password(None, password)  # same cost as a real check: no user enumeration by timing
        return None
    if not verify_password(user.password, password):
        return None
    if user.password and needs_rehash(user.password):
        crm.records.update("user", user.id, {"password": password}, actor=SYSTEM, source="login")
        user = load_user(crm, user_id=user.id) or user
    return user


# ---------------------------------------------------------------------------------------------
# Sessions
# ---------------------------------------------------------------------------------------------
def idle_seconds(crm: CRM) -> int:
    """How long a session may sit unused (``admin: {session_idle: seconds}``, default 12 hours)."""
    value = crm.config.section("admin").get("session_idle", DEFAULT_IDLE_SECONDS)
    return int(value) if isinstance(value, int | float) and value > 0 else DEFAULT_IDLE_SECONDS


def start_session(request: Request, user: UserRow, now: float | None = None) -> None:
    """Log ``user`` in: a fresh session (new CSRF token), keeping only the chosen language."""
    now = time.time() if now is None else now
    lang = request.session.get("lang")
    request.session.clear()
    request.session.update(
        {
            "uid": user.id,
            "login_at": int(now),
            "seen": int(now),
            "pw": user.fingerprint,
            CSRF_SESSION_KEY: secrets.token_urlsafe(32),
        }
    )
    if lang:
        request.session["lang"] = lang


def end_session(request: Request) -> None:
    """Log out: forget everything in the session."""
    request.session.clear()


def session_user(crm: CRM, request: Request, now: float | None = None) -> UserRow | None:
    """The logged-in user of ``request``'s session, or None (expired, inactive, password changed)."""
    return _session_user(crm, request, now)[0]


def _session_user(crm: CRM, request: Request, now: float | None = None) -> tuple[UserRow | None, frozenset[int]]:
    """:func:`session_user` and the user's ``team.members`` teams (read in the same statement)."""
    session = request.scope.get("session")
    if not session or "uid" not in session:
        return None, frozenset()
    now = time.time() if now is None else now
    login_at, seen = session.get("login_at", 0), session.get("seen", 0)
    if now - login_at > crm.config.session_max_age or now - seen > idle_seconds(crm):
        session.clear()
        session["expired"] = True
        return None, frozenset()
    try:
        user, member_of = load_session_user(crm, int(session["uid"]))
    except (TypeError, ValueError):
        user, member_of = None, frozenset()
    if user is None or not user.active or session.get("pw") != user.fingerprint:
        session.clear()
        return None, frozenset()
    if now - seen > _SEEN_RESOLUTION:
        session["seen"] = int(now)
    return user, member_of


def session_actor(crm: CRM, request: Request) -> Actor | None:
    """The Actor of the session's user (cached on the request), or None."""
    cached = getattr(request.state, "crmkit_session_actor", False)
    if cached is not False:
        return cached
    user, member_of = _session_user(crm, request)
    actor = actor_for(crm, user, member_of) if user else None
    request.state.crmkit_session_actor = actor
    request.state.crmkit_user = user
    return actor


# ---------------------------------------------------------------------------------------------
# CSRF
# ---------------------------------------------------------------------------------------------
def csrf_token(request: Request) -> str:
    """The session's CSRF token, created on first use."""
    session = request.session
    token = session.get(CSRF_SESSION_KEY)
    if not token:
        token = secrets.token_urlsafe(32)
        session[CSRF_SESSION_KEY] = token
    return token


def same_origin(request: Request) -> bool:
    """False when the browser says the request comes from another origin (Origin/Referer)."""
    origin = request.headers.get("origin")
    if origin is None or origin == "null":
        referer = request.headers.get("referer")
        if not referer:
            return origin is None  # "null" origin (sandboxed frames, file://) is refused
        origin = referer
    parts = urlsplit(origin)
    host = request.headers.get("host", "")
    return bool(parts.netloc) and parts.netloc.lower() == host.lower()


def csrf_ok(request: Request, form: Mapping[str, Any] | None = None) -> bool:
    """Whether an unsafe request carries this session's CSRF token and comes from our own origin."""
    if request.method in SAFE_METHODS:
        return True
    session = request.scope.get("session") or {}
    expected = session.get(CSRF_SESSION_KEY)
    if not expected:
        return False
    sent = request.headers.get(CSRF_HEADER)
    if not sent and form is not None:
        value = form.get(CSRF_FIELD)
        sent = value if isinstance(value, str) else None
    if not sent or not secrets.compare_digest(str(sent), str(expected)):
        return False
    return same_origin(request)


# ---------------------------------------------------------------------------------------------
# Throttling (the counters live in crmkit.web.throttle: in the database, shared by all processes)
# ---------------------------------------------------------------------------------------------
def throttle_keys(request: Request, username: str) -> tuple[str, str]:
    """The throttle keys of a login attempt: the username and the client address."""
    client = request.client.host if request.client else "unknown"
    return f"user:{username.strip().lower()}", f"ip:{client}"


def safe_next(value: str | None, default: str = "/admin/") -> str:
    """A redirect target after login: only paths on this site under /admin (no open redirect)."""
    if not value or not value.startswith("/admin") or value.startswith("//") or "\\" in value:
        return default
    parts = urlsplit(value)
    if parts.scheme or parts.netloc:
        return default
    return value


# ---------------------------------------------------------------------------------------------
# Pages: login, logout, language (handlers for crmkit.web.site.admin_page)
# ---------------------------------------------------------------------------------------------
def login_page(ctx: Any) -> Any:
    """GET shows the login form; POST checks the password (throttled) and starts a session."""
    request = ctx.request
    crm = ctx.crm
    next_url = safe_next(ctx.query.get("next") or (ctx.form.get("next") if ctx.form else None))
    if ctx.actor is not None and request.method == "GET":
        return ctx.redirect(next_url)
    if request.method == "GET":
        expired = request.session.pop("expired", False)
        return ctx.render(
            "login.html", title=ctx._("sign_in_title"), next=next_url, username="",
            error=ctx._("session_expired") if expired else "",
        )
    form = ctx.form
    username = str(form.get("username") or "").strip()[:150]
    password = str(form.get("password") or "")[:1024]
    keys = throttle_keys(request, username)
    wait = ctx.site.throttle.retry_after(*keys)
    if wait > 0:
        minutes = max(1, int(wait // 60) + (1 if wait % 60 else 0))
        return ctx.render(
            "login.html",
            title=ctx._("sign_in_title"),
            status=429,
            next=next_url,
            username=username,
            error=ctx._("login_throttled", minutes=minutes),
        )
    user = authenticate(crm, username, password)
    if user is None:
        ctx.site.throttle.failure(*keys)
        return ctx.render(
            "login.html", status=401, title=ctx._("sign_in_title"), next=next_url, username=username,
            error=ctx._("login_failed"),
        )
    ctx.site.throttle.success(keys[0])
    start_session(request, user)
    try:
        import datetime as dt

        crm.records.update(
            "user", user.id, {"last_login_at": dt.datetime.now(dt.UTC)}, actor=SYSTEM, source="login"
        )
    except Exception:  # a failed bookkeeping write must not stop the login
        pass
    return ctx.redirect(next_url)


def logout_page(ctx: Any) -> Any:
    """GET asks for confirmation (a form with the CSRF token); POST ends the session."""
    if ctx.request.method == "GET":
        if ctx.actor is None:
            return ctx.redirect("/admin/login")
        return ctx.render("logout.html", title=ctx._("sign_out"))
    end_session(ctx.request)
    return ctx.redirect("/admin/login", ctx._("signed_out"))


def language_page(ctx: Any) -> Any:
    """POST ``lang``: remember the language in the session and, when logged in, in the user's setting."""
    from crmkit.web.i18n import LANGUAGES

    lang = str(ctx.form.get("lang") or "")
    target = safe_next(str(ctx.form.get("next") or ""), "/admin/")
    if lang not in LANGUAGES:
        return ctx.redirect(target)
    ctx.request.session["lang"] = lang
    if ctx.actor is not None and ctx.actor.id is not None:
        ctx.crm.records.update("user", ctx.actor.id, {"locale": lang}, actor=SYSTEM, source="ui")
    return ctx.redirect(target)
