"""The signed-in user's own profile page (/admin/profile), over HTTP on SQLite and PostgreSQL.

Display name, language and time zone; password change with the current password, argon2, and
the user's other sessions ended. Sales reps may use it although they may not edit user records.
"""

from __future__ import annotations

import re
import warnings

import pytest

from crmkit.core.actors import SYSTEM
from crmkit.core.passwords import verify_password
from crmkit.hookspecs import hookimpl
from crmkit.web.auth import load_user
from tests.support import PASSWORD, XSS, csrf_of, login, make_crm

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    from starlette.testclient import TestClient

NEW_PASSWORD = "a much better secret"


class Events:
    """Records every committed event (to see who changed what, and from where)."""

    def __init__(self):
        self.seen = []

    @hookimpl
    def track_event(self, crm, event):
        self.seen.append(event)


@pytest.fixture
def events():
    return Events()


@pytest.fixture
def crm(tmp_path, db_url, events):
    crm = make_crm(tmp_path, db_url, plugins=[events])
    yield crm
    crm.close()


def user_row(crm, org, name):
    return load_user(crm, user_id=org["users"][name]["id"])


def post_settings(client, **values):
    data = {"display_name": "Alice", "locale": "en", "time_zone": "Asia/Tokyo", **values}
    data.setdefault("_csrf", csrf_of(client.get("/admin/profile").text))
    return client.post("/admin/profile", data=data)


def post_password(client, current=PASSWORD, new=NEW_PASSWORD, confirm=None):
    csrf = csrf_of(client.get("/admin/profile").text)
    return client.post(
        "/admin/profile/password",
        data={
            "current_password": current,
            "new_password": new,
            "confirm_password": new if confirm is None else confirm,
            "_csrf": csrf,
        },
    )


def field_error(html: str, field_id: str) -> str:
    m = re.search(rf'<p class="error" id="{field_id}-err">([^<]*)</p>', html)
    return m.group(1) if m else ""


# ---------------------------------------------------------------------------------------------
# The page and the header link
# ---------------------------------------------------------------------------------------------
def test_a_sales_rep_sees_their_profile_and_the_header_links_to_it(crm, org):
    client = login(crm, "alice")
    dashboard = client.get("/admin/").text
    assert dashboard.count('href="/admin/profile"') == 2  # sidebar (wide screens) and top bar (phones)
    page = client.get("/admin/profile")
    assert page.status_code == 200
    html = page.text
    assert "<h1>My profile</h1>" in html
    assert 'aria-current="page"' in html.split('class="me-actions"')[1].split("</div>")[0]
    assert '<input id="display-name" name="display_name" value="Alice"' in html
    assert '<option value="en" lang="en" selected>English</option>' in html
    assert '<option value="Asia/Tokyo" selected>Asia/Tokyo (UTC+09:00)</option>' in html
    assert "Sales rep" in html and "East" in html  # role and team, read-only
    for label_for in ("display-name", "locale", "time-zone", "current-password", "new-password", "confirm-password"):
        assert f'<label for="{label_for}"' in html and f'id="{label_for}"' in html
    # sales reps may not edit user records: the profile is the only way to change their settings
    assert client.get(f"/admin/user/{org['users']['alice']['id']}/edit").status_code == 403


def test_the_profile_page_is_in_japanese_for_a_japanese_user(crm, org):
    html = login(crm, "mia").get("/admin/profile").text
    assert '<html lang="ja">' in html
    assert "<h1>プロフィール</h1>" in html and "パスワードの変更" in html and "タイムゾーン" in html


def test_the_profile_requires_login(crm, org):
    client = TestClient(crm.asgi(), follow_redirects=False)
    response = client.get("/admin/profile")
    assert response.status_code == 303 and response.headers["location"].startswith("/admin/login?next=")
    csrf = csrf_of(client.get("/admin/login").text)
    assert client.post("/admin/profile", data={"display_name": "x", "_csrf": csrf}).status_code == 401
    assert client.post("/admin/profile/password", data={"_csrf": csrf}).status_code == 401


# ---------------------------------------------------------------------------------------------
# Settings
# ---------------------------------------------------------------------------------------------
def test_change_display_name_language_and_time_zone(crm, org, events):
    client = login(crm, "alice")
    response = post_settings(client, display_name="Alice Liddell", locale="ja", time_zone="Europe/Paris")
    assert response.status_code == 303 and response.headers["location"] == "/admin/profile"
    user = user_row(crm, org, "alice")
    assert (user.display_name, user.locale, user.time_zone) == ("Alice Liddell", "ja", "Europe/Paris")
    page = client.get("/admin/profile").text
    assert '<html lang="ja">' in page and "設定を保存しました。" in page  # the new language at once
    assert '<option value="Europe/Paris" selected>' in page
    assert "Alice Liddell" in client.get("/admin/").text  # the header shows the new name
    # the write went through RecordStore, as alice, from the profile page
    update = [e for e in events.seen if e.name == "record.updated" and e.entity == "user"][-1]
    assert update.record_id == user.id and update.actor.id == user.id and update.source == "profile"
    assert set(update.data["changed"]) == {"display_name", "locale", "time_zone"}


def test_bad_settings_come_back_with_messages_and_the_input_kept(crm, org):
    client = login(crm, "alice")
    before = user_row(crm, org, "alice")
    response = post_settings(client, display_name="  ", locale="fr", time_zone="Mars/Olympus_Mons")
    assert response.status_code == 422
    html = response.text
    assert 'id="settings-errors"' in html
    assert field_error(html, "display-name") == "Enter a value."
    assert field_error(html, "locale") == "Choose English or Japanese."
    assert field_error(html, "time-zone") == "Choose a time zone from the list."
    assert 'aria-invalid="true" aria-describedby="display-name-err"' in html
    long = post_settings(client, display_name="x" * 101)
    assert long.status_code == 422 and field_error(long.text, "display-name") == "At most 100 characters."
    assert 'value="' + "x" * 101 + '"' in long.text
    assert user_row(crm, org, "alice") == before


def test_display_name_with_markup_is_stored_and_shown_escaped(crm, org):
    client = login(crm, "alice")
    assert post_settings(client, display_name=XSS[:100]).status_code == 303
    html = client.get("/admin/profile").text
    assert "<script>alert" not in html and "&lt;script&gt;alert" in html
    assert user_row(crm, org, "alice").display_name == XSS[:100]


def test_only_the_profile_fields_change(crm, org):
    client = login(crm, "alice")
    response = post_settings(
        client, display_name="Alice", role="admin", username="root", active="false", password="owned-by-me!"
    )
    assert response.status_code == 303
    user = user_row(crm, org, "alice")
    assert (user.role, user.username, user.active) == ("sales_rep", "alice", True)
    assert verify_password(user.password, PASSWORD)


def test_settings_post_without_csrf_is_refused(crm, org):
    client = login(crm, "alice")
    response = client.post("/admin/profile", data={"display_name": "Mallory", "locale": "en", "time_zone": "UTC"})
    assert response.status_code == 403
    forged = client.post(
        "/admin/profile",
        data={"display_name": "Mallory", "locale": "en", "time_zone": "UTC", "_csrf": "guess"},
    )
    assert forged.status_code == 403
    assert user_row(crm, org, "alice").display_name == "Alice"


def test_a_legacy_time_zone_set_by_an_admin_stays_selectable(crm, org):
    crm.records.update("user", org["users"]["alice"]["id"], {"time_zone": "US/Eastern"}, actor=SYSTEM)
    client = login(crm, "alice")
    assert '<option value="US/Eastern" selected>' in client.get("/admin/profile").text
    assert post_settings(client, time_zone="US/Eastern").status_code == 303
    assert post_settings(client, time_zone="US/Pacific").status_code == 422  # not offered: not accepted


# ---------------------------------------------------------------------------------------------
# Password
# ---------------------------------------------------------------------------------------------
def test_change_password_ends_the_other_sessions_only(crm, org):
    here = login(crm, "alice")
    elsewhere = login(crm, "alice")
    response = post_password(here)
    assert response.status_code == 303
    user = user_row(crm, org, "alice")
    assert user.password.startswith("$argon2id$") and verify_password(user.password, NEW_PASSWORD)
    assert "Your password was changed." in here.get("/admin/profile").text
    assert here.get("/admin/").status_code == 200  # this session goes on
    gone = elsewhere.get("/admin/")
    assert gone.status_code == 303 and gone.headers["location"].startswith("/admin/login")
    # the new password signs in; the old one does not
    login(crm, "alice", password=NEW_PASSWORD)
    fresh = TestClient(crm.asgi(), follow_redirects=False)
    csrf = csrf_of(fresh.get("/admin/login").text)
    old = fresh.post("/admin/login", data={"username": "alice", "password": PASSWORD, "_csrf": csrf})
    assert old.status_code == 401


def test_the_session_gets_a_new_csrf_token_after_a_password_change(crm, org):
    client = login(crm, "alice")
    before = csrf_of(client.get("/admin/profile").text)
    assert post_password(client).status_code == 303
    assert csrf_of(client.get("/admin/profile").text) != before
    stale = client.post("/admin/profile", data={"display_name": "x", "locale": "en", "time_zone": "UTC",
                                                "_csrf": before})
    assert stale.status_code == 403


@pytest.mark.parametrize(
    "current, new, confirm, field, message",
    [
        ("", NEW_PASSWORD, None, "current-password", "Enter a value."),
        ("not my password", NEW_PASSWORD, None, "current-password", "The current password is not correct."),
        (PASSWORD, "", None, "new-password", "Enter a value."),
        (PASSWORD, "short", None, "new-password", "At least 8 characters."),
        (PASSWORD, "x" * 1025, None, "new-password", "At most 1024 characters."),
        (PASSWORD, PASSWORD, None, "new-password", "Choose a password different from the current one."),
        (PASSWORD, "ALICE", None, "new-password", "At least 8 characters."),
        (PASSWORD, NEW_PASSWORD, NEW_PASSWORD + "!", "confirm-password", "The two new passwords differ."),
    ],
)
def test_bad_password_changes_are_refused_with_a_message(crm, org, current, new, confirm, field, message):
    client = login(crm, "alice")
    before = user_row(crm, org, "alice").password
    response = post_password(client, current=current, new=new, confirm=confirm)
    assert response.status_code == 422
    assert field_error(response.text, field) == message
    assert 'value="' + PASSWORD not in response.text  # passwords are never echoed back
    assert user_row(crm, org, "alice").password == before
    assert client.get("/admin/").status_code == 200  # a failed change keeps the session


def test_the_password_may_not_be_the_username(crm, org):
    crm.records.update("user", org["users"]["alice"]["id"], {"username": "alice.long"}, actor=SYSTEM)
    client = login(crm, "alice.long")
    response = post_password(client, new="Alice.Long")
    assert response.status_code == 422
    assert field_error(response.text, "new-password") == "The password must not be your username."


def test_guessing_the_current_password_is_throttled_like_logins(crm, org):
    client = login(crm, "alice")
    for _ in range(5):
        assert post_password(client, current="guess").status_code == 422
    locked = post_password(client)  # even the right password is refused now
    assert locked.status_code == 429 and "Too many failed attempts" in locked.text
    assert verify_password(user_row(crm, org, "alice").password, PASSWORD)
    # and the login form is locked for alice too (the same counter, in the database)
    other = TestClient(crm.asgi(), follow_redirects=False)
    csrf = csrf_of(other.get("/admin/login").text)
    response = other.post("/admin/login", data={"username": "alice", "password": PASSWORD, "_csrf": csrf})
    assert response.status_code == 429


def test_password_change_in_japanese(crm, org):
    client = login(crm, "mia")
    response = post_password(client, current="wrong password")
    assert response.status_code == 422
    assert field_error(response.text, "current-password") == "現在のパスワードが正しくありません。"
    assert post_password(client).status_code == 303
    assert "パスワードを変更しました。" in client.get("/admin/profile").text
