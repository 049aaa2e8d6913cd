"""Visits and activities: schedule, log, complete, report a result with a reviewer's confirmation
task, the "my agenda" page (time zones, CSRF, escaping), on SQLite and PostgreSQL; one browser test."""

from __future__ import annotations

import datetime as dt
import re
from zoneinfo import ZoneInfo

import pytest
import sqlalchemy as sa

from crmkit import hookimpl
from crmkit.core.actors import SYSTEM
from crmkit.core.errors import NotFound, PermissionDenied
from crmkit.plugins import PluginError
from crmkit.plugins.activities import complete_activity
from tests.conftest import need
from tests.support import XSS, actor_of, csrf_of, login, make_crm, make_org, owned


def api(crm, username):
    from starlette.testclient import TestClient

    from crmkit.core.tokens import create_token

    secret, _info = create_token(crm, username, "test")
    return TestClient(crm.asgi(), headers={"authorization": f"Bearer {secret}"})


def uid(org, name):
    return org["users"][name]["id"]


def visit(crm, org, user="alice", **values):
    account = crm.records.create("account", {"name": "訪問先株式会社", **owned(org, user)}, actor=SYSTEM)
    base = {"subject": "提案内容の説明", "type": "visit", "status": "planned", "account": account["id"],
            "due_at": dt.datetime.now(dt.UTC) + dt.timedelta(hours=2), "purpose": "課題のヒアリング",
            "location": "先方本社", "assignee": uid(org, user)}
    return crm.records.create("activity", {**base, **values}, actor=actor_of(org["users"][user]))


def tasks_for(crm, user_id):
    return crm.records.list("activity", actor=SYSTEM, filter={"type": "task", "assignee": user_id}).items


# ---------------------------------------------------------------------------------------------
# Scheduling and logging
# ---------------------------------------------------------------------------------------------
def test_schedule_a_visit_with_participants_over_the_api(crm, org):
    account = crm.records.create("account", {"name": "API訪問先", **owned(org, "alice")}, actor=SYSTEM)
    when = dt.datetime(2027, 4, 5, 10, 30, tzinfo=ZoneInfo("Asia/Tokyo"))
    response = api(crm, "alice").post("/api/v1/activity", json={
        "subject": "定例訪問", "type": "visit", "account": account["id"], "due_at": when.isoformat(),
        "purpose": "次期提案", "assignee": uid(org, "alice"), "participants": [{"id": uid(org, "mia")}]})
    assert response.status_code == 201, response.text
    body = response.json()
    assert body["status"] == "planned" and body["completed_at"] is None
    assert dt.datetime.fromisoformat(body["due_at"]) == when
    assert body["participants"] == [{"id": uid(org, "mia")}]
    assert body["owner"] == uid(org, "alice")


def test_a_logged_call_is_done_now(crm, org):
    alice = actor_of(org["users"]["alice"])
    before = dt.datetime.now(dt.UTC)
    call = crm.records.create("activity", {"subject": "電話でヒアリング", "type": "call", "status": "done",
                                           "result": "来月に再訪問"}, actor=alice)
    assert call["completed_at"] >= before and call["due_at"] == call["completed_at"]
    reopened = crm.records.update("activity", call["id"], {"status": "planned"}, actor=alice)
    assert reopened["completed_at"] is None


def test_the_assignee_owns_the_activity_so_they_can_complete_it(crm, org):
    alice, bob = actor_of(org["users"]["alice"]), actor_of(org["users"]["bob"])
    task = crm.records.create("activity", {"subject": "見積書を送る", "type": "task", "assignee": uid(org, "bob")},
                              actor=alice)
    assert task["owner"] == uid(org, "bob") and task["team"] == org["users"]["bob"]["primary_team"]
    out = complete_activity(crm, task["id"], bob)
    assert out["activity"]["status"] == "done"
    # handed over: alice (another team) no longer sees it
    with pytest.raises(NotFound):
        crm.records.get("activity", task["id"], actor=alice)


def test_record_pages_offer_schedule_and_log_buttons_prefilled(crm, org):
    account = crm.records.create("account", {"name": "ボタン株式会社", **owned(org, "alice")}, actor=SYSTEM)
    contact = crm.records.create("contact", {"account": account["id"], "last_name": "鈴木", **owned(org, "alice")},
                                 actor=SYSTEM)
    client = login(crm, "alice")
    html = client.get(f"/admin/contact/{contact['id']}").text
    href = f"/admin/activity/new?contact={contact['id']}&amp;account={account['id']}&amp;type=visit&amp;status=planned"
    assert href in html and "Schedule visit" in html and "Log call" in html and "Log email" in html
    form = client.get(href.replace("&amp;", "&")).text
    assert re.search(r'name="type" value="visit" checked', form)


# ---------------------------------------------------------------------------------------------
# Complete and report result
# ---------------------------------------------------------------------------------------------
def test_report_result_completes_and_creates_the_reviewers_confirmation_task(crm, org):
    v = visit(crm, org, reviewer=uid(org, "mia"))
    response = api(crm, "alice").post(f"/api/v1/activity/{v['id']}/report_result",
                                      json={"result": "先方は導入に前向き。", "outcome": "positive"})
    assert response.status_code == 200, response.text
    body = response.json()
    done = body["activity"]
    assert done["status"] == "done" and done["result"] == "先方は導入に前向き。" and done["outcome"] == "positive"
    assert done["completed_at"] is not None
    [task] = tasks_for(crm, uid(org, "mia"))
    assert body["confirmation_task"]["id"] == task["id"]  # mia is in alice's team: alice sees it
    assert task["confirms"] == v["id"] and task["owner"] == uid(org, "mia") and task["status"] == "planned"
    assert task["subject"] == "結果確認: 提案内容の説明"  # in the reviewer's language (mia: ja)
    assert task["account"] == v["account"] and "先方は導入に前向き。" in task["description"]
    completed = dt.datetime.fromisoformat(done["completed_at"])
    assert task["due_at"] == completed + dt.timedelta(days=1)
    # the manager sees it through the API
    mine = api(crm, "mia").get("/api/v1/activity", params={"filter": f'{{"assignee": {uid(org, "mia")}}}'})
    assert [a["id"] for a in mine.json()["items"]] == [task["id"]]


def test_a_reviewer_task_is_created_whichever_way_the_activity_is_completed(crm, org):
    alice = actor_of(org["users"]["alice"])
    v = visit(crm, org, reviewer=uid(org, "admin"))
    crm.records.update("activity", v["id"], {"status": "done", "result": "フォームから"}, actor=alice)
    assert len(tasks_for(crm, uid(org, "admin"))) == 1
    # reopened and completed again: no second confirmation task
    crm.records.update("activity", v["id"], {"status": "planned"}, actor=alice)
    crm.records.update("activity", v["id"], {"status": "done"}, actor=alice)
    assert len(tasks_for(crm, uid(org, "admin"))) == 1
    # reporting your own visit with yourself as reviewer asks nobody
    own = visit(crm, org, reviewer=uid(org, "alice"))
    complete_activity(crm, own["id"], alice, result="自分で確認済み", require_result=True)
    assert [t for t in tasks_for(crm, uid(org, "alice")) if t.get("confirms") == own["id"]] == []


def test_reporting_needs_a_result_and_a_done_activity_cannot_be_completed_again(crm, org):
    v = visit(crm, org)
    client = api(crm, "alice")
    missing = client.post(f"/api/v1/activity/{v['id']}/report_result", json={"result": "   "})
    assert missing.status_code == 422 and missing.json()["errors"][0]["field"] == "result"
    bad = client.post(f"/api/v1/activity/{v['id']}/report_result", json={"result": "ok", "outcome": "great"})
    assert bad.status_code == 422 and bad.json()["errors"][0]["field"] == "outcome"
    typo = client.post(f"/api/v1/activity/{v['id']}/report_result", json={"result": "ok", "reviwer": 1})
    assert typo.status_code == 422 and typo.json()["errors"][0]["field"] == "reviwer"
    assert crm.records.get("activity", v["id"], actor=SYSTEM)["status"] == "planned"
    assert client.post(f"/api/v1/activity/{v['id']}/complete", json={}).status_code == 200
    again = client.post(f"/api/v1/activity/{v['id']}/complete", json={})
    assert again.status_code == 422 and "already done" in again.json()["errors"][0]["message"]
    cancelled = visit(crm, org, status="cancelled")
    refused = client.post(f"/api/v1/activity/{cancelled['id']}/report_result", json={"result": "x"})
    assert refused.status_code == 422 and "cancelled" in refused.json()["errors"][0]["message"]
    stale = visit(crm, org)
    conflict = client.post(f"/api/v1/activity/{stale['id']}/complete", json={"version": stale["version"] + 5})
    assert conflict.status_code == 409


def test_a_failing_confirmation_task_rolls_the_report_back(tmp_path, db_url):
    class RefuseConfirmations:
        __name__ = "refuse-confirmations"

        @hookimpl
        def after_save(self, crm, entity, record, old, conn, actor):
            if entity.name == "activity" and record.get("confirms"):
                raise RuntimeError("the reviewer's calendar is full")

    crm = make_crm(tmp_path, db_url, plugins=[RefuseConfirmations()])
    org = make_org(crm)
    v = visit(crm, org, reviewer=uid(org, "mia"))
    with pytest.raises(PluginError):
        complete_activity(crm, v["id"], actor_of(org["users"]["alice"]), result="結果", require_result=True)
    stored = crm.records.get("activity", v["id"], actor=SYSTEM)
    assert stored["status"] == "planned" and stored["result"] is None and stored["completed_at"] is None
    assert tasks_for(crm, uid(org, "mia")) == []
    crm.close()


def test_others_cannot_report_on_a_visit_they_may_not_change(crm, org):
    v = visit(crm, org, user="mia")
    with pytest.raises(PermissionDenied):
        complete_activity(crm, v["id"], actor_of(org["users"]["alice"]), result="x")
    assert api(crm, "bob").post(f"/api/v1/activity/{v['id']}/complete", json={}).status_code == 404


# ---------------------------------------------------------------------------------------------
# Admin: report page
# ---------------------------------------------------------------------------------------------
def test_admin_report_result_form(crm, org):
    v = visit(crm, org, subject=XSS)
    client = login(crm, "alice")
    page = client.get(f"/admin/activity/{v['id']}")
    assert f"/admin/activity/{v['id']}/report?next=" in page.text and "Report result" in page.text
    form = client.get(f"/admin/activity/{v['id']}/report?next=/admin/agenda")
    assert form.status_code == 200 and "<script>alert" not in form.text and "&lt;script&gt;" in form.text
    url = f"/admin/activity/{v['id']}/report"
    assert client.post(url, data={"result": "x"}).status_code == 403  # no CSRF token
    empty = client.post(url, data={"_csrf": csrf_of(form.text), "result": "", "next": "/admin/agenda"})
    assert empty.status_code == 422 and 'id="result-err"' in empty.text
    evil = client.post(url, data={"_csrf": csrf_of(form.text), "result": "x", "next": "https://evil.example/"})
    assert evil.headers.get("location", "").startswith("/admin/")  # never an open redirect
    crm.records.update("activity", v["id"], {"status": "planned"}, actor=SYSTEM)
    fresh = crm.records.get("activity", v["id"], actor=SYSTEM)
    done = client.post(url, data={"_csrf": csrf_of(form.text), "result": "合意しました", "outcome": "positive",
                                  "reviewer": str(uid(org, "mia")), "version": str(fresh["version"]),
                                  "next": "/admin/agenda"})
    assert done.status_code == 303 and done.headers["location"] == "/admin/agenda"
    stored = crm.records.get("activity", v["id"], actor=SYSTEM)
    assert stored["status"] == "done" and stored["reviewer"] == uid(org, "mia") and stored["outcome"] == "positive"
    assert "The reviewer got a confirmation task." in client.get("/admin/agenda").text
    assert len(tasks_for(crm, uid(org, "mia"))) == 1


# ---------------------------------------------------------------------------------------------
# My agenda
# ---------------------------------------------------------------------------------------------
def test_agenda_shows_today_overdue_and_upcoming_in_the_users_time_zone(crm, org):
    la = ZoneInfo("America/Los_Angeles")
    crm.records.update("user", uid(org, "alice"), {"time_zone": "America/Los_Angeles"}, actor=SYSTEM)
    alice = actor_of(org["users"]["alice"])
    now = dt.datetime.now(la)
    today = dt.datetime(now.year, now.month, now.day, tzinfo=la)

    def task(subject, when, **extra):
        values = {"subject": subject, "type": "task", "due_at": when, "assignee": uid(org, "alice"), **extra}
        return crm.records.create("activity", values, actor=alice)

    task("Late report", today - dt.timedelta(hours=14))
    task("Early today", today + dt.timedelta(minutes=5))
    task("Late tonight", today + dt.timedelta(hours=23, minutes=55))
    task("In three days", today + dt.timedelta(days=3, hours=10))
    task("In twenty days", today + dt.timedelta(days=20, hours=10))
    task("No date", None)
    task("Finished today", today + dt.timedelta(hours=1), status="done")
    crm.records.create("activity", {"subject": "Bob's own", "type": "task", "due_at": today + dt.timedelta(hours=3),
                                    "assignee": uid(org, "bob")}, actor=SYSTEM)
    crm.records.create("activity", {"subject": "Team visit (participant)", "type": "visit",
                                    "due_at": today + dt.timedelta(hours=4), "assignee": uid(org, "mia"),
                                    "participants": [{"id": uid(org, "alice")}]}, actor=SYSTEM)
    client = login(crm, "alice")
    html = client.get("/admin/agenda").text

    def section(key):
        return re.search(rf'id="agenda-{key}".*?</section>', html, re.S).group(0)

    assert "Late report" in section("overdue")
    today_html = section("today")
    assert "Early today" in today_html and "Late tonight" in today_html and "Finished today" in today_html
    assert ">00:05</time>" in today_html and ">23:55</time>" in today_html  # Los Angeles wall time
    assert "Team visit (participant)" in today_html
    assert "In three days" in section("upcoming") and "In twenty days" not in html
    assert "No date" in section("undated")
    assert "Bob's own" not in html
    assert "America/Los_Angeles" in html
    assert "In twenty days" in client.get("/admin/agenda?days=30").text
    assert client.get("/admin/agenda?days=abc").status_code == 200
    # the menu links to it
    assert 'href="/admin/agenda"' in client.get("/admin/").text


def test_complete_from_the_agenda_needs_csrf(crm, org):
    alice = actor_of(org["users"]["alice"])
    task = crm.records.create("activity", {"subject": XSS, "type": "task", "assignee": uid(org, "alice"),
                                           "due_at": dt.datetime.now(dt.UTC)}, actor=alice)
    client = login(crm, "alice")
    page = client.get("/admin/agenda")
    assert "<script>alert" not in page.text and "&lt;script&gt;" in page.text
    url = f"/admin/activity/{task['id']}/complete"
    assert client.post(url, data={"next": "/admin/agenda"}).status_code == 403
    assert crm.records.get("activity", task["id"], actor=SYSTEM)["status"] == "planned"
    done = client.post(url, data={"_csrf": csrf_of(page.text), "version": str(task["version"]),
                                  "next": "/admin/agenda"})
    assert done.status_code == 303 and done.headers["location"] == "/admin/agenda"
    assert crm.records.get("activity", task["id"], actor=SYSTEM)["status"] == "done"
    again = client.post(url, data={"_csrf": csrf_of(page.text), "next": "/admin/agenda"})
    assert "already done" in client.get(again.headers["location"]).text
    # bob cannot complete alice's task: 404, not a silent success
    bob = login(crm, "bob")
    other = crm.records.create("activity", {"subject": "alice only", "type": "task", "assignee": uid(org, "alice")},
                               actor=alice)
    assert bob.post(f"/admin/activity/{other['id']}/complete",
                    data={"_csrf": csrf_of(bob.get("/admin/").text)}).status_code == 404


def test_agenda_in_japanese_and_without_read_rights(crm, org):
    client = login(crm, "mia")
    html = client.get("/admin/agenda").text
    assert "マイ予定" in html and "期限切れ" in html
    with crm.engine.begin() as conn:
        conn.execute(sa.update(crm.table("user")).where(crm.table("user").c.id == uid(org, "bob"))
                     .values(role="guest"))
    guest = login(crm, "bob")
    assert guest.get("/admin/agenda").status_code == 403


# ---------------------------------------------------------------------------------------------
# Browser
# ---------------------------------------------------------------------------------------------
@pytest.mark.browser
def test_browser_report_a_visit_result_from_the_agenda(tmp_path):
    from pathlib import Path

    from crmkit.web.liveserver import live_server
    from crmkit.web.screenshots import CHROMIUM_ARGS
    from tests.support import PASSWORD

    need(Path("/usr/bin/chromium").exists(), "chromium not installed")
    from playwright.sync_api import sync_playwright

    crm = make_crm(tmp_path, f"sqlite:///{tmp_path / 'crm.db'}")
    org = make_org(crm)
    v = visit(crm, org, subject="月例訪問", due_at=dt.datetime.now(dt.UTC) + dt.timedelta(minutes=1))
    with live_server(crm.asgi()) as base, sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path="/usr/bin/chromium", args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 375, "height": 800}, locale="en-US", base_url=base)
        errors = []
        page.on("pageerror", lambda exc: errors.append(str(exc)))
        page.goto("/admin/login")
        page.get_by_label("Username").fill("alice")
        page.get_by_label("Password").fill(PASSWORD)
        page.get_by_role("button", name="Sign in").click()
        page.wait_for_url(f"{base}/admin/")
        page.goto("/admin/agenda")
        page.get_by_role("link", name="Report result: 月例訪問").click()
        page.wait_for_url(re.compile(r"/report\?"))
        page.get_by_role("button", name="Report and complete").click()  # empty: the field error comes back
        page.locator("#result-err").wait_for()
        page.get_by_label("Result").fill("導入時期は来期。見積もりを提出する。")
        page.get_by_role("radio", name="Positive").check()
        page.get_by_label("Reviewer").select_option(label="Mia")
        page.get_by_role("button", name="Report and complete").click()
        page.wait_for_url(f"{base}/admin/agenda")
        assert "Done: 月例訪問." in page.content() and "The reviewer got a confirmation task." in page.content()
        browser.close()
        assert not errors, errors
    stored = crm.records.get("activity", v["id"], actor=SYSTEM)
    assert stored["status"] == "done" and stored["outcome"] == "positive"
    assert stored["result"] == "導入時期は来期。見積もりを提出する。"
    assert len(tasks_for(crm, uid(org, "mia"))) == 1
    crm.close()
