"""The admin over HTTP (Starlette's TestClient on the real ASGI app), on SQLite and PostgreSQL.

Login, sessions, CSRF, security headers, escaping, permissions, forms (validation, optimistic
locking, visible_if), lists (search, filters, paging, saved views, bulk actions, export), the
kanban move endpoint and the dashboard. Browser behaviour is in test_browser.py.
"""

from __future__ import annotations

import csv
import datetime as dt
import io
import re
import warnings

import pytest

from crmkit import CRM, hookimpl
from crmkit.core.actors import SYSTEM
from crmkit.plugins.admin_commands import migrate
from tests.conftest import run_cli

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    from starlette.testclient import TestClient

from tests.support import PASSWORD, PASSWORD_HASH, XSS, csrf_of, login, make_crm, make_org, owned, token  # noqa: E402,F401

# ---------------------------------------------------------------------------------------------
# Login, sessions, headers
# ---------------------------------------------------------------------------------------------
ADMIN_PAGES = [
    "/admin/",
    "/admin/account/",
    "/admin/account/1",
    "/admin/account/new",
    "/admin/account/1/edit",
    "/admin/deal/kanban",
    "/admin/account/export.csv",
    "/admin/account/autocomplete?q=a",
    "/admin/account/1/delete",
    "/admin/user/",
]


def test_every_admin_page_requires_login(crm, org):
    client = TestClient(crm.asgi(), follow_redirects=False)
    for path in ADMIN_PAGES:
        response = client.get(path)
        assert response.status_code == 303, path
        assert response.headers["location"].startswith("/admin/login?next="), path
    # scripts get a 401, not a redirect
    assert (
        client.get("/admin/account/autocomplete?q=a", headers={"accept": "application/json"}).status_code
        == 401
    )
    # unsafe methods without a session are refused outright
    assert client.post("/admin/account/new", data={"name": "x"}).status_code == 403
    assert crm.records.list("account", actor=SYSTEM).count == 0


def test_login_sets_a_hardened_session_cookie_and_logout_ends_it(crm, org):
    client = TestClient(crm.asgi(), follow_redirects=False)
    page = client.get("/admin/login?next=/admin/account/")
    assert "<title>Sign in to crmkit · crmkit</title>" in page.text  # the tab says what the page is
    response = client.post(
        "/admin/login",
        data={
            "username": "admin",
            "password": PASSWORD,
            "_csrf": csrf_of(page.text),
            "next": "/admin/account/",
        },
    )
    assert response.status_code == 303 and response.headers["location"] == "/admin/account/"
    cookie = response.headers["set-cookie"].lower()
    assert "httponly" in cookie and "samesite=lax" in cookie and "secure" not in cookie
    assert client.get("/admin/account/").status_code == 200
    user = crm.records.get("user", org["users"]["admin"]["id"], actor=SYSTEM)
    assert user["last_login_at"] is not None
    # logout: GET only asks, POST (with CSRF) ends the session
    confirm = client.get("/admin/logout")
    assert confirm.status_code == 200 and "<title>Sign out · crmkit</title>" in confirm.text
    assert client.post("/admin/logout", data={}).status_code == 403
    assert client.post("/admin/logout", data={"_csrf": token(client)}).status_code == 303
    assert client.get("/admin/").status_code == 303


def test_secure_cookie_over_https(tmp_path, db_url, org, crm):
    crm.config.base_url = "https://crm.example.com"
    client = login(crm, base_url="https://testserver")
    response = client.post("/admin/lang", data={"lang": "ja", "_csrf": token(client), "next": "/admin/"})
    assert "secure" in response.headers["set-cookie"].lower()
    assert "strict-transport-security" in client.get("/admin/").headers


def test_wrong_password_and_open_redirect(crm, org):
    client = TestClient(crm.asgi(), follow_redirects=False)
    page = client.get("/admin/login")
    bad = client.post(
        "/admin/login", data={"username": "admin", "password": "nope", "_csrf": csrf_of(page.text)}
    )
    assert bad.status_code == 401 and "Wrong username or password" in bad.text
    ok = client.post(
        "/admin/login",
        data={
            "username": "admin",
            "password": PASSWORD,
            "_csrf": csrf_of(page.text),
            "next": "https://evil.example/admin",
        },
    )
    assert ok.headers["location"] == "/admin/"


def test_inactive_user_cannot_sign_in(crm, org):
    crm.records.update("user", org["users"]["bob"]["id"], {"active": False}, actor=SYSTEM)
    client = TestClient(crm.asgi(), follow_redirects=False)
    page = client.get("/admin/login")
    response = client.post(
        "/admin/login", data={"username": "bob", "password": PASSWORD, "_csrf": csrf_of(page.text)}
    )
    assert response.status_code == 401


def test_repeated_failed_logins_are_throttled(crm, org):
    client = TestClient(crm.asgi(), follow_redirects=False)
    csrf = csrf_of(client.get("/admin/login").text)
    for _ in range(5):
        assert (
            client.post(
                "/admin/login", data={"username": "alice", "password": "wrong", "_csrf": csrf}
            ).status_code
            == 401
        )
    locked = client.post("/admin/login", data={"username": "alice", "password": PASSWORD, "_csrf": csrf})
    assert locked.status_code == 429 and "Too many failed attempts" in locked.text
    # other users are not locked out by alice's failures
    assert (
        client.post("/admin/login", data={"username": "bob", "password": PASSWORD, "_csrf": csrf}).status_code
        == 303
    )


def test_login_throttle_unlocks_after_the_lockout():
    from crmkit.web.auth import LoginThrottle

    now = [1000.0]
    throttle = LoginThrottle(max_failures=3, window=60, lockout=120, clock=lambda: now[0])
    for _ in range(3):
        throttle.failure("user:a")
    assert throttle.retry_after("user:a") == pytest.approx(120)
    now[0] += 121
    assert throttle.retry_after("user:a") == 0


def test_sessions_expire(crm, org, monkeypatch):
    import crmkit.web.auth as auth

    client = login(crm)
    assert client.get("/admin/").status_code == 200
    real = auth.time.time
    monkeypatch.setattr(auth.time, "time", lambda: real() + crm.config.session_max_age + 10)
    response = client.get("/admin/")
    assert response.status_code == 303 and "/admin/login" in response.headers["location"]


def test_password_change_ends_other_sessions(crm, org):
    client = login(crm, "alice")
    crm.records.update("user", org["users"]["alice"]["id"], {"password": "another secret"}, actor=SYSTEM)
    assert client.get("/admin/").status_code == 303


def test_the_session_user_and_teams_are_one_statement(crm, org):
    import sqlalchemy as sa

    from crmkit.web.auth import actor_for, load_session_user, load_user, team_ids

    users, teams = org["users"], org["teams"]
    # alice: primary team East and a member of West too; bob: in no team.members at all.
    crm.records.update("team", teams["west"]["id"], {"members": [{"id": users["alice"]["id"]}]}, actor=SYSTEM)
    crm.records.update("team", teams["east"]["id"], {"members": [{"id": users["alice"]["id"]}]}, actor=SYSTEM)
    for name in ("alice", "bob", "admin"):
        uid = users[name]["id"]
        user, member_of = load_session_user(crm, uid)
        assert user == load_user(crm, user_id=uid) and member_of == team_ids(crm, uid)
        assert actor_for(crm, user, member_of) == actor_for(crm, user)
    assert load_session_user(crm, 10**9) == (None, frozenset())
    assert load_session_user(crm, users["alice"]["id"])[1] == {teams["east"]["id"], teams["west"]["id"]}

    client = login(crm, "alice")
    statements: list[str] = []

    def count(conn, cursor, statement, parameters, context, executemany):
        statements.append(statement)

    sa.event.listen(crm.engine, "before_cursor_execute", count)
    try:
        assert client.get("/admin/login").status_code == 303  # signed in: straight on, no page drawn
    finally:
        sa.event.remove(crm.engine, "before_cursor_execute", count)
    assert len([s for s in statements if "team__members" in s or " user" in s.lower()]) == 1, statements


def test_the_bells_count_is_the_unread_count(crm, org):
    from crmkit.core import notifications
    from crmkit.plugins.notifications_ui import bell_count

    alice, bob = org["users"]["alice"]["id"], org["users"]["bob"]["id"]
    assert bell_count(crm, alice) == notifications.unread_count(crm, alice) == 0
    ids = [notifications.notify(crm, alice, subject=f"n{i}", channels=["in_app"]) for i in range(101)]
    notifications.notify(crm, bob, subject="bob's", channels=["in_app"])
    assert bell_count(crm, alice) == notifications.unread_count(crm, alice) == notifications.UNREAD_CAP + 1
    assert 'aria-label="Notifications, 99+ unread"' in login(crm, "alice").get("/admin/").text
    notifications.mark_read(crm, alice, ids[:99])
    assert bell_count(crm, alice) == notifications.unread_count(crm, alice) == 2
    assert bell_count(crm, bob) == notifications.unread_count(crm, bob) == 1
    assert 'aria-label="Notifications, 2 unread"' in login(crm, "alice").get("/admin/").text


def test_security_headers(crm, org):
    client = login(crm)
    for path in ("/admin/", "/admin/login", "/admin/static/admin.css"):
        headers = client.get(path).headers
        csp = headers["content-security-policy"]
        assert "frame-ancestors 'none'" in csp and "script-src 'self'" in csp and "unsafe-inline" not in csp
        assert headers["x-content-type-options"] == "nosniff"
        assert headers["referrer-policy"] == "same-origin"
        assert headers["x-frame-options"] == "DENY"


def test_no_cdn_assets(crm, org):
    html = login(crm).get("/admin/").text
    for url in re.findall(r'(?:src|href)="([^"]+)"', html):
        assert not url.startswith(("http:", "https:", "//")), url


# ---------------------------------------------------------------------------------------------
# CSRF
# ---------------------------------------------------------------------------------------------
def test_post_without_valid_csrf_token_is_refused(crm, org):
    client = login(crm)
    for data in ({"name": "No token"}, {"name": "Bad token", "_csrf": "forged"}):
        response = client.post("/admin/account/new", data=data)
        assert response.status_code == 403
        assert "Reload the page" in response.text
    other = login(crm, "alice")  # another session's token is no good either
    assert client.post("/admin/account/new", data={"name": "x", "_csrf": token(other)}).status_code == 403
    # a valid token from a cross-site page is refused too
    response = client.post(
        "/admin/account/new",
        data={"name": "x", "_csrf": token(client)},
        headers={"origin": "https://evil.example"},
    )
    assert response.status_code == 403
    assert crm.records.list("account", actor=SYSTEM).count == 0
    response = client.post(
        "/admin/account/new",
        data={"name": "With token", "_csrf": token(client)},
        headers={"origin": "http://testserver"},
    )
    assert response.status_code == 303


def test_csrf_is_checked_for_every_unsafe_admin_route(crm, org):
    deal = crm.records.create("account", {"name": "A"}, actor=SYSTEM)
    client = login(crm)
    for path in (
        "/admin/account/bulk",
        f"/admin/account/{deal['id']}/edit",
        f"/admin/account/{deal['id']}/delete",
        "/admin/account/views",
        "/admin/lang",
        "/admin/logout",
        "/admin/deal/1/move",
    ):
        assert (
            client.post(path, data={"action": "delete", "ids": [deal["id"]], "confirm": "1"}).status_code
            == 403
        ), path
    assert crm.records.get("account", deal["id"], actor=SYSTEM)


# ---------------------------------------------------------------------------------------------
# Escaping
# ---------------------------------------------------------------------------------------------
def assert_escaped(html: str) -> None:
    assert "<script>alert" not in html and "<img src=x" not in html
    assert "&lt;script&gt;alert" in html


def test_stored_html_is_escaped_everywhere(crm, org):
    store = crm.records
    acc = store.create(
        "account", {"name": XSS, "description": XSS, "website": "https://example.com/?q=<b>"}, actor=SYSTEM
    )
    contact = store.create(
        "contact",
        {"account": acc["id"], "last_name": XSS, "first_name": "", "title": '=HYPERLINK("http://evil")'},
        actor=SYSTEM,
    )
    deal = store.create(
        "deal",
        {
            "name": XSS,
            "account": acc["id"],
            "stage": org["stages"][0]["id"],
            "amount": 5,
            "probability": 10,
            "next_step": XSS,
        },
        actor=SYSTEM,
    )
    store.create(
        "activity",
        {
            "subject": XSS,
            "type": "visit",
            "account": acc["id"],
            "contact": contact["id"],
            "deal": deal["id"],
            "result": XSS,
            "status": "done",
            "due_at": dt.datetime.now(dt.UTC),
        },
        actor=SYSTEM,
    )
    store.create(
        "activity",
        {
            "subject": XSS,
            "type": "task",
            "status": "planned",
            "assignee": org["users"]["admin"]["id"],
            "due_at": dt.datetime.now(dt.UTC),
        },
        actor=SYSTEM,
    )
    client = login(crm)
    for path in (
        "/admin/account/",
        f"/admin/account/{acc['id']}",
        f"/admin/account/{acc['id']}/edit",
        f"/admin/contact/{contact['id']}",
        "/admin/contact/",
        "/admin/deal/kanban",
        "/admin/deal/",
        f"/admin/deal/{deal['id']}",
        "/admin/activity/",
        "/admin/",
        f"/admin/account/{acc['id']}/delete",
        f"/admin/deal/{deal['id']}/edit",
    ):
        response = client.get(path)
        assert response.status_code == 200, path
        assert_escaped(response.text)
    # the bulk delete confirmation lists titles, escaped
    confirm = client.post(
        "/admin/contact/bulk", data={"action": "delete", "ids": [contact["id"]], "_csrf": token(client)}
    )
    assert_escaped(confirm.text)
    # CSV: plain text, formulas defused, served as an attachment (never rendered as HTML)
    export = client.get("/admin/contact/export.csv")
    assert export.headers["content-type"].startswith("text/csv")
    assert export.headers["content-disposition"].startswith("attachment")
    rows = list(csv.reader(io.StringIO(export.text.lstrip("\ufeff"))))
    assert '\'=HYPERLINK("http://evil")' in rows[1]
    # autocomplete answers JSON (escaped by the browser's textContent, never innerHTML)
    ac = client.get("/admin/account/autocomplete?q=script", headers={"accept": "application/json"})
    assert ac.headers["content-type"].startswith("application/json")


# ---------------------------------------------------------------------------------------------
# Permissions
# ---------------------------------------------------------------------------------------------
def test_permission_denied_is_403_without_data(crm, org):
    store = crm.records
    secret = store.create("account", {"name": "East Secret KK", **owned(org, "mia")}, actor=SYSTEM)
    client = login(crm, "alice")
    for path in (
        "/admin/user/new",
        "/admin/product/new",
        "/admin/deal_stage/new",
        "/admin/account/export.csv",
        f"/admin/account/{secret['id']}/edit",
        f"/admin/account/{secret['id']}/delete",
        f"/admin/user/{org['users']['bob']['id']}/edit",
    ):
        response = client.get(path)
        assert response.status_code == 403, path
        assert "East Secret KK" not in response.text and "permission" in response.text
    # a POST is refused the same way, and nothing changes
    response = client.post(
        f"/admin/account/{secret['id']}/edit", data={"name": "Hacked", "_csrf": token(client)}
    )
    assert response.status_code == 403
    assert store.get("account", secret["id"], actor=SYSTEM)["name"] == "East Secret KK"
    assert client.post("/admin/product/new", data={"name": "X", "_csrf": token(client)}).status_code == 403
    # the menu does not offer what the role cannot do; the list has no bulk delete
    html = client.get("/admin/account/").text
    assert 'value="delete"' not in html and "export.csv" not in html


def test_records_outside_the_actors_scope_are_not_shown(crm, org):
    store = crm.records
    west = store.create("account", {"name": "West Only KK", **owned(org, "bob")}, actor=SYSTEM)
    client = login(crm, "alice")
    assert client.get(f"/admin/account/{west['id']}").status_code == 404
    assert "West Only KK" not in client.get("/admin/account/").text
    assert "West Only KK" not in client.get("/admin/account/autocomplete?q=west").text


# ---------------------------------------------------------------------------------------------
# Forms
# ---------------------------------------------------------------------------------------------
def test_invalid_input_rerenders_the_form_with_messages_and_input_kept(crm, org):
    client = login(crm)
    csrf = token(client)
    response = client.post(
        "/admin/account/new",
        data={
            "name": "",
            "email": "not-an-email",
            "employees": "12x",
            "phone": "03-1111-2222",
            "_csrf": csrf,
        },
    )
    assert response.status_code == 422
    html = response.text
    assert "must be an email address" in html and "must be a whole number" in html
    assert 'value="not-an-email"' in html and 'value="12x"' in html and 'value="03-1111-2222"' in html
    assert 'aria-invalid="true"' in html
    response = client.post("/admin/account/new", data={"name": "", "phone": "03-1111-2222", "_csrf": csrf})
    assert (
        response.status_code == 422
        and "is required" in response.text
        and 'value="03-1111-2222"' in response.text
    )
    response = client.post(
        "/admin/account/new",
        data={"name": "株式会社テスト", "email": "info@test.jp", "employees": "1,200", "_csrf": csrf},
    )
    assert response.status_code == 303
    acc = crm.records.list("account", actor=SYSTEM, q="テスト").items[0]
    assert acc["employees"] == 1200 and acc["owner"] == org["users"]["admin"]["id"]


def test_japanese_validation_messages(crm, org):
    client = login(crm, "mia")
    response = client.post("/admin/account/new", data={"name": "", "_csrf": token(client)})
    assert response.status_code == 422 and "必須項目です。" in response.text


def test_optimistic_lock_conflict_shows_both_versions(crm, org):
    store = crm.records
    acc = store.create("account", {"name": "Original KK", "phone": "03-0000-0000"}, actor=SYSTEM)
    client = login(crm)
    form = client.get(f"/admin/account/{acc['id']}/edit").text
    assert 'name="version" value="1"' in form
    store.update("account", acc["id"], {"name": "Their Name KK"}, actor=SYSTEM)
    response = client.post(
        f"/admin/account/{acc['id']}/edit",
        data={"name": "My Name KK", "phone": "03-0000-0000", "version": "1", "_csrf": token(client)},
    )
    assert response.status_code == 409
    assert "Someone else changed this record" in response.text
    assert "My Name KK" in response.text and "Their Name KK" in response.text
    assert 'name="version" value="2"' in response.text
    assert store.get("account", acc["id"], actor=SYSTEM)["name"] == "Their Name KK"
    ok = client.post(
        f"/admin/account/{acc['id']}/edit",
        data={"name": "My Name KK", "phone": "03-0000-0000", "version": "2", "_csrf": token(client)},
    )
    assert ok.status_code == 303
    assert store.get("account", acc["id"], actor=SYSTEM)["name"] == "My Name KK"


def test_visible_if_and_required_if_on_the_server(crm, org):
    acc = crm.records.create("account", {"name": "A"}, actor=SYSTEM)
    client = login(crm)
    base = {
        "name": "Deal",
        "account": str(acc["id"]),
        "stage": str(org["stages"][0]["id"]),
        "amount": "1,000",
        "probability": "10",
        "_csrf": token(client),
    }
    # lost needs a lost reason (required_if) and a close date
    response = client.post("/admin/deal/new", data={**base, "status": "lost"})
    assert response.status_code == 422 and "is required" in response.text
    # lost_reason is only visible (so only written) when status is lost
    response = client.post("/admin/deal/new", data={**base, "status": "open", "lost_reason": "ignored"})
    assert response.status_code == 303
    deal = crm.records.list("deal", actor=SYSTEM, columns=["name", "lost_reason", "amount"]).items[0]
    assert deal["lost_reason"] is None and deal["amount"] == 1000
    form = client.get(f"/admin/deal/{deal['id']}/edit").text
    assert "data-visible-if=" in form and "data-required-if=" in form


def test_references_and_many_to_many_rows(crm, org):
    store = crm.records
    alice, bob = org["users"]["alice"], org["users"]["bob"]
    client = login(crm)
    response = client.post(
        "/admin/team/new",
        data={
            "name": "With members",
            "manager": str(alice["id"]),
            "members.0.id": str(alice["id"]),
            "members.0.role": "manager",
            "members.1.id": "",
            "members.3.id": str(bob["id"]),
            "members.3.role": "member",
            "_csrf": token(client),
        },
    )
    assert response.status_code == 303, response.text[:2000]
    team = store.get("team", store.list("team", actor=SYSTEM, filter={"name": "With members"}).items[0]["id"],
                     actor=SYSTEM)
    assert [(m["id"], m["role"]) for m in team["members"]] == [(alice["id"], "manager"), (bob["id"], "member")]
    detail = client.get(f"/admin/team/{team['id']}").text
    assert "Alice" in detail and "Bob" in detail


def test_new_form_prefills_from_query_and_related_lists_link_to_it(crm, org):
    acc = crm.records.create("account", {"name": "Parent KK"}, actor=SYSTEM)
    client = login(crm)
    detail = client.get(f"/admin/account/{acc['id']}").text
    assert f"/admin/contact/new?account={acc['id']}" in detail
    form = client.get(f"/admin/contact/new?account={acc['id']}").text
    assert "Parent KK" in form


def test_image_upload_is_checked_and_served_behind_login(crm, org, tmp_path):
    crm.config.upload_dir = tmp_path / "uploads"
    acc = crm.records.create("account", {"name": "A"}, actor=SYSTEM)
    client = login(crm)
    png = b"\x89PNG\r\n\x1a\n" + b"\x00" * 64
    data = {"account": str(acc["id"]), "last_name": "Card", "_csrf": token(client)}
    bad = client.post(
        "/admin/contact/new",
        data=data,
        files={"business_card": ("x.svg", b"<svg onload=alert(1)>", "image/svg+xml")},
    )
    assert bad.status_code == 422 and "Upload an image" in bad.text
    ok = client.post("/admin/contact/new", data=data, files={"business_card": ("card.png", png, "image/png")})
    assert ok.status_code == 303
    contact = crm.records.list("contact", actor=SYSTEM).items[0]
    assert contact["business_card"].endswith(".png")
    url = f"/admin/contact/{contact['id']}/file/business_card"
    served = client.get(url)
    assert (
        served.status_code == 200 and served.content == png and served.headers["content-type"] == "image/png"
    )
    assert TestClient(crm.asgi(), follow_redirects=False).get(url).status_code == 303


# ---------------------------------------------------------------------------------------------
# Lists
# ---------------------------------------------------------------------------------------------
def test_search_understands_half_width_katakana(crm, org):
    crm.records.create(
        "lead",
        {
            "last_name": "山田",
            "first_name": "太郎",
            "last_name_kana": "ヤマダ",
            "company": "株式会社サンプル",
        },
        actor=SYSTEM,
    )
    crm.records.create("lead", {"last_name": "Smith", "company": "Other Inc."}, actor=SYSTEM)
    client = login(crm)
    html = client.get("/admin/lead/", params={"q": "ﾔﾏﾀﾞ"}).text
    assert "山田" in html and "Smith" not in html
    assert "山田" in client.get("/admin/lead/", params={"q": "さんぷる"}).text


def test_filters_sort_paging_and_count(crm, org):
    store = crm.records
    for i in range(60):
        store.create(
            "account",
            {
                "name": f"Account {i:02d}",
                "rank": "A" if i % 3 == 0 else "B",
                **owned(org, "alice" if i % 2 else "admin"),
            },
            actor=SYSTEM,
        )
    client = login(crm)
    first = client.get("/admin/account/").text
    assert "60 records" in first
    assert first.count('name="ids"') == 50
    next_url = re.search(r'href="([^"]+)" rel="next"', first).group(1).replace("&amp;", "&")
    second = client.get(next_url).text
    assert second.count('name="ids"') == 10 and "Account 59" in second and "Account 00" not in second
    filtered = client.get("/admin/account/", params={"f.rank": "A"}).text
    assert "20 records" in filtered
    mine = client.get("/admin/account/", params={"f.owner": "me", "f.rank": "A"}).text
    assert "10 records" in mine
    desc = client.get("/admin/account/", params={"sort": "-name"}).text
    assert desc.index("Account 59") < desc.index("Account 58")
    assert 'aria-sort="descending"' in desc
    assert client.get("/admin/account/", params={"sort": "-nope"}).status_code == 400
    assert client.get("/admin/account/", params={"f.nope": "1"}).status_code == 400


class _OnlyMyself:
    """A restrict_query hook: a non-admin lists (and picks from) only their own user record."""

    __name__ = "only-myself"

    @hookimpl
    def restrict_query(self, entity, actor):
        if entity == "user" and not actor.is_admin:
            return {"id": "$me"}
        return None


def test_list_reference_titles_match_whether_or_not_the_owner_filter_read_them(crm, org):
    """The list names owners from the user choices its filters already read, and the rest by query:
    the same names either way, also for users the reader's choices leave out."""
    store = crm.records
    for name, who in (("Acc A", "alice"), ("Acc B", "bob"), ("Acc M", "mia")):
        store.create("account", {"name": name, **owned(org, who)}, actor=SYSTEM)
    users = org["users"]
    links = {u: f'<a href="/admin/user/{users[u]["id"]}">{users[u]["display_name"]}</a>' for u in users}
    page = login(crm).get("/admin/account/").text
    assert all(links[u] in page for u in ("alice", "bob", "mia"))
    crm.pm.register(_OnlyMyself(), name="only-myself")
    try:
        page = login(crm, "mia").get("/admin/account/").text
    finally:
        crm.pm.unregister(name="only-myself")
    owner_filter = page.split('name="f.owner"', 1)[1].split("</select>", 1)[0]
    assert users["mia"]["display_name"] in owner_filter and users["alice"]["display_name"] not in owner_filter
    assert links["alice"] in page and links["mia"] in page  # alice named by query, mia from the choices


def test_list_html_stays_small(crm, org):
    store = crm.records
    for i in range(55):
        store.create(
            "contact",
            {
                "account": store.create("account", {"name": f"株式会社テスト{i}"}, actor=SYSTEM)["id"],
                "last_name": "山田",
                "first_name": f"太郎{i}",
                "title": "部長",
                "department": "営業部",
                "email": f"taro{i}@example.co.jp",
                "phone": "03-1234-5678",
                **owned(org, "admin"),
            },
            actor=SYSTEM,
        )
    client = login(crm)
    response = client.get("/admin/contact/")
    assert response.text.count('name="ids"') == 50
    assert len(response.content) < 40 * 1024, len(response.content)


def test_saved_views(crm, org):
    client = login(crm, "alice")
    response = client.post(
        "/admin/account/views", data={"name": "Rank A", "query": "f.rank=A", "_csrf": token(client)}
    )
    assert response.status_code == 303
    html = client.get("/admin/account/").text
    assert "Rank A" in html
    view_id = re.search(
        r"/admin/account/views/(\d+)/delete", client.get(response.headers["location"]).text
    ).group(1)
    assert "Rank A" not in login(crm, "bob").get("/admin/account/").text  # views are per user
    assert (
        client.post(f"/admin/account/views/{view_id}/delete", data={"_csrf": token(client)}).status_code
        == 303
    )
    assert "Rank A" not in client.get("/admin/account/").text


def test_bulk_actions(crm, org):
    store = crm.records
    ids = [store.create("account", {"name": f"Bulk {i}"}, actor=SYSTEM)["id"] for i in range(3)]
    client = login(crm)
    csrf = token(client)
    alice = org["users"]["alice"]["id"]
    assert (
        client.post(
            "/admin/account/bulk",
            data={"action": "assign_owner", "owner": str(alice), "ids": ids[:2], "_csrf": csrf},
        ).status_code
        == 303
    )
    assert [store.get("account", i, actor=SYSTEM)["owner"] for i in ids] == [alice, alice, None]
    assert (
        client.post(
            "/admin/account/bulk",
            data={"action": "set_field", "field": "rank", "value": "A", "ids": ids, "_csrf": csrf},
        ).status_code
        == 303
    )
    assert {store.get("account", i, actor=SYSTEM)["rank"] for i in ids} == {"A"}
    export = client.post("/admin/account/bulk", data={"action": "export", "ids": ids[:1], "_csrf": csrf})
    assert "Bulk 0" in export.text and "Bulk 1" not in export.text
    confirm = client.post("/admin/account/bulk", data={"action": "delete", "ids": ids[:2], "_csrf": csrf})
    assert confirm.status_code == 200 and "Delete 2 record(s)?" in confirm.text
    assert store.list("account", actor=SYSTEM).count == 3
    done = client.post(
        "/admin/account/bulk", data={"action": "delete", "ids": ids[:2], "confirm": "1", "_csrf": csrf}
    )
    assert done.status_code == 303
    assert store.list("account", actor=SYSTEM).count == 1
    assert "2 record(s) deleted." in client.get("/admin/account/").text


def test_export_csv_respects_filters_and_language(crm, org):
    store = crm.records
    store.create("account", {"name": "株式会社エー", "rank": "A", "annual_revenue": 1000}, actor=SYSTEM)
    store.create("account", {"name": "Bee Inc.", "rank": "B"}, actor=SYSTEM)
    client = login(crm, "mia")
    response = client.get("/admin/account/export.csv", params={"f.rank": "A"})
    assert response.status_code == 200 and response.text.startswith("\ufeff")
    rows = list(csv.reader(io.StringIO(response.text.lstrip("\ufeff"))))
    assert "取引先名" in rows[0] and len(rows) == 2 and "株式会社エー" in rows[1]


def test_delete_with_confirmation_and_restrict(crm, org):
    store = crm.records
    acc = store.create("account", {"name": "Keep KK"}, actor=SYSTEM)
    store.create("contact", {"account": acc["id"], "last_name": "Child"}, actor=SYSTEM)
    client = login(crm)
    assert "This cannot be undone" in client.get(f"/admin/account/{acc['id']}/delete").text
    response = client.post(f"/admin/account/{acc['id']}/delete", data={"_csrf": token(client)})
    assert response.status_code == 303 and response.headers["location"] == f"/admin/account/{acc['id']}"
    assert "cannot delete" in client.get(response.headers["location"]).text
    lonely = store.create("account", {"name": "Gone KK"}, actor=SYSTEM)
    assert (
        client.post(f"/admin/account/{lonely['id']}/delete", data={"_csrf": token(client)}).status_code == 303
    )
    assert store.list("account", actor=SYSTEM).count == 1


# ---------------------------------------------------------------------------------------------
# Detail, dashboard, kanban, language
# ---------------------------------------------------------------------------------------------
def test_detail_shows_related_lists_timeline_rollup_and_links(crm, org):
    store = crm.records
    acc = store.create(
        "account",
        {
            "name": "Hub KK",
            "website": "hub.example.com",
            "email": "info@hub.example.com",
            "phone": "03-1234-5678",
        },
        actor=SYSTEM,
    )
    contact = store.create(
        "contact", {"account": acc["id"], "last_name": "Tanaka", "email": "t@hub.example.com"}, actor=SYSTEM
    )
    deal = store.create(
        "deal",
        {
            "name": "Hub deal",
            "account": acc["id"],
            "stage": org["stages"][0]["id"],
            "amount": 100,
            "probability": 10,
        },
        actor=SYSTEM,
    )
    now = dt.datetime.now(dt.UTC)
    store.create(
        "activity",
        {"subject": "Called the contact", "type": "call", "contact": contact["id"], "due_at": now},
        actor=SYSTEM,
    )
    store.create(
        "activity",
        {"subject": "Visited for the deal", "type": "visit", "deal": deal["id"], "due_at": now},
        actor=SYSTEM,
    )
    store.create("activity", {"subject": "Unrelated", "type": "call", "due_at": now}, actor=SYSTEM)
    html = login(crm).get(f"/admin/account/{acc['id']}").text
    assert "Tanaka" in html and "Hub deal" in html  # related lists
    assert "Called the contact" in html and "Visited for the deal" in html and "Unrelated" not in html
    assert 'href="mailto:info@hub.example.com"' in html and 'href="tel:0312345678"' in html
    assert 'href="https://hub.example.com" target="_blank" rel="noopener noreferrer"' in html
    contact_html = login(crm).get(f"/admin/contact/{contact['id']}").text
    assert "Called the contact" in contact_html and "Visited for the deal" not in contact_html


def test_record_panels_and_actions_hooks(tmp_path, db_url):
    from markupsafe import Markup

    from crmkit import hookimpl

    class Panels:
        __name__ = "panels-test"

        @hookimpl
        def record_panels(self, crm, entity, record, actor, request):
            if entity.name == "account":
                return [{"title": "Score", "html": Markup("<b>42</b>")}]

        @hookimpl
        def record_actions(self, crm, entity, record, actor, request):
            return [{"name": "ping", "label": "Ping it", "href": f"/admin/{entity.name}/{record['id']}/ping"}]

        @hookimpl
        def menu_links(self, crm, actor, request):
            return [{"href": "/admin/report", "label": "My report"}]

        @hookimpl
        def dashboard_widgets(self, crm, actor, request):
            return [{"title": "Hello widget", "html": Markup("<p>hi</p>")}]

    crm = CRM(tmp_path, database_url=db_url, entry_points=False, plugins=[Panels()])
    migrate(crm)
    crm.records.create(
        "user",
        {"username": "admin", "display_name": "A", "role": "admin", "password": PASSWORD_HASH},
        actor=SYSTEM,
    )
    acc = crm.records.create("account", {"name": "A"}, actor=SYSTEM)
    client = login(crm)
    html = client.get(f"/admin/account/{acc['id']}").text
    assert "<b>42</b>" in html and "Ping it" in html and "My report" in html
    assert "Hello widget" in client.get("/admin/").text
    crm.close()


def test_dashboard_widgets(crm, org):
    store = crm.records
    admin = org["users"]["admin"]["id"]
    acc = store.create("account", {"name": "Visit KK"}, actor=SYSTEM)
    from zoneinfo import ZoneInfo

    noon = dt.datetime.now(ZoneInfo(crm.config.time_zone)).replace(hour=12, minute=0, second=0, microsecond=0)
    store.create(
        "activity",
        {
            "subject": "Visit today",
            "type": "visit",
            "assignee": admin,
            "account": acc["id"],
            "due_at": noon,
            "owner": admin,
        },
        actor=SYSTEM,
    )
    store.create(
        "activity",
        {
            "subject": "Visit tomorrow",
            "type": "visit",
            "assignee": admin,
            "due_at": noon + dt.timedelta(days=1),
            "owner": admin,
        },
        actor=SYSTEM,
    )
    store.create(
        "activity",
        {
            "subject": "Write the quote",
            "type": "task",
            "assignee": admin,
            "due_at": noon - dt.timedelta(days=2),
            "owner": admin,
        },
        actor=SYSTEM,
    )
    store.create(
        "activity",
        {"subject": "Someone else's task", "type": "task", "assignee": org["users"]["bob"]["id"]},
        actor=SYSTEM,
    )
    store.create(
        "deal",
        {
            "name": "Pipeline deal",
            "account": acc["id"],
            "stage": org["stages"][2]["id"],
            "amount": 1_000_000,
            "probability": 80,
        },
        actor=SYSTEM,
    )
    html = login(crm).get("/admin/").text
    assert "Visit today" in html and "Visit tomorrow" not in html
    assert "Write the quote" in html and "overdue" in html and "Someone else" not in html
    assert "Pipeline summary" in html and "¥1,000,000" in html and "¥800,000" in html


def test_kanban_move_goes_through_recordstore(crm, org):
    store = crm.records
    stages = org["stages"]
    acc = store.create("account", {"name": "Board KK", **owned(org, "alice")}, actor=SYSTEM)
    mine = store.create(
        "deal",
        {
            "name": "Alice deal",
            "account": acc["id"],
            "stage": stages[0]["id"],
            "amount": 10,
            "probability": 10,
            **owned(org, "alice"),
        },
        actor=SYSTEM,
    )
    theirs = store.create(
        "deal",
        {
            "name": "Mia deal",
            "account": acc["id"],
            "stage": stages[0]["id"],
            "amount": 10,
            "probability": 10,
            **owned(org, "mia"),
        },
        actor=SYSTEM,
    )
    client = login(crm, "alice")
    board = client.get("/admin/deal/kanban").text
    assert "Alice deal" in board and "Mia deal" in board and 'data-color="#7c3aed"' in board
    headers = {"x-csrf-token": token(client), "accept": "application/json"}
    moved = client.post(
        f"/admin/deal/{mine['id']}/move", data={"value": stages[1]["id"], "version": 1}, headers=headers
    )
    assert moved.status_code == 200 and moved.json()["version"] == 2
    assert store.get("deal", mine["id"], actor=SYSTEM)["stage"] == stages[1]["id"]
    stale = client.post(
        f"/admin/deal/{mine['id']}/move", data={"value": stages[2]["id"], "version": 1}, headers=headers
    )
    assert stale.status_code == 409 and stale.json()["version"] == 2
    denied = client.post(f"/admin/deal/{theirs['id']}/move", data={"value": stages[1]["id"]}, headers=headers)
    assert denied.status_code == 403
    assert store.get("deal", theirs["id"], actor=SYSTEM)["stage"] == stages[0]["id"]
    assert (
        client.post(
            f"/admin/deal/{mine['id']}/move",
            data={"value": stages[2]["id"]},
            headers={"accept": "application/json"},
        ).status_code
        == 403
    )  # no CSRF header
    history = store.history("deal", mine["id"], actor=SYSTEM)
    assert any(h["field"] == "stage" and h["source"] == "ui" for h in history)


def test_language_switch_and_accept_language(crm, org):
    client = TestClient(crm.asgi(), follow_redirects=False)
    assert "ログイン" in client.get("/admin/login", headers={"accept-language": "ja,en;q=0.5"}).text
    assert "Sign in" in client.get("/admin/login", headers={"accept-language": "en-US,en;q=0.9"}).text
    crm.records.create("account", {"name": "Lang KK"}, actor=SYSTEM)
    client = login(crm)
    assert "Accounts" in client.get("/admin/account/").text
    response = client.post(
        "/admin/lang", data={"lang": "ja", "next": "/admin/account/", "_csrf": token(client)}
    )
    assert response.headers["location"] == "/admin/account/"
    html = client.get("/admin/account/").text
    assert "取引先名" in html and "業種" in html and "新規作成" in html and 'lang="ja"' in html
    assert crm.records.get("user", org["users"]["admin"]["id"], actor=SYSTEM)["locale"] == "ja"
    assert "取引先" in login(crm).get("/admin/account/").text  # the user's setting wins on the next login


# ---------------------------------------------------------------------------------------------
# Commands
# ---------------------------------------------------------------------------------------------
def test_user_create_command(tmp_path, db_url, crm, org):
    project = tmp_path / "proj"
    project.mkdir()
    env = {"CRMKIT_DATABASE_URL": db_url}
    result = run_cli(
        "user",
        "create",
        "carol",
        "--role",
        "sales_rep",
        "--team",
        "West",
        "--password-stdin",
        cwd=project,
        env=env,
        input="carol's secret\n",
    )
    assert result.returncode == 0, result.stderr
    assert "created user carol" in result.stdout
    client = login(crm, "carol", "carol's secret")
    assert client.get("/admin/").status_code == 200
    carol = crm.records.list("user", actor=SYSTEM, filter={"username": "carol"}).items[0]
    west = crm.records.get("team", org["teams"]["west"]["id"], actor=SYSTEM)
    assert carol["primary_team"] == west["id"] and carol["id"] in [m["id"] for m in west["members"]]
    dupe = run_cli(
        "user", "create", "carol", "--role", "admin", "--password", "whatever1", cwd=project, env=env
    )
    assert dupe.returncode == 1 and "username" in dupe.stderr


def test_demo_command_fills_once_and_prints_the_login(tmp_path):
    db = tmp_path / "demo" / "demo.db"
    first = run_cli("demo", "--db", str(db), "--password", "demo-pass-1", "--no-serve", cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    assert "login: admin / demo-pass-1" in first.stdout and "http://127.0.0.1:8000/admin/" in first.stdout
    assert (db.parent / "crmkit.yaml").exists()
    again = run_cli("demo", "--db", str(db), "--no-serve", cwd=tmp_path)  # reuse; a new random password
    assert again.returncode == 0, again.stderr
    password = re.search(r"login: admin / (\S+)", again.stdout).group(1)
    crm = CRM(db.parent, entry_points=False)
    try:
        counts = {
            e: crm.records.list(e, actor=SYSTEM, columns=["id"]).count for e in ("account", "deal", "lead")
        }
        assert counts["account"] >= 30 and counts["deal"] >= 40 and counts["lead"] >= 30
        names = [
            a["name"] for a in crm.records.list("account", actor=SYSTEM, columns=["name"], limit=500).items
        ]
        assert any(n.startswith("株式会社") for n in names) and any(n.isascii() for n in names)
        client = login(crm, "admin", password)
        for path in ("/admin/", "/admin/deal/kanban", "/admin/account/", "/admin/activity/"):
            assert client.get(path).status_code == 200
        assert "今日" in login(crm, "sato", password).get("/admin/").text  # Japanese user, Japanese UI
    finally:
        crm.close()
