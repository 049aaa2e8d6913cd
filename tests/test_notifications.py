"""Notifications (in-app bell + email) and the admin's jobs/outbox pages, through the public surface."""

from __future__ import annotations

import datetime as dt

import pytest
import sqlalchemy as sa
import yaml

from crmkit import hookimpl
from crmkit.core import jobs, mail, notifications
from crmkit.core.actors import SYSTEM
from crmkit.core.db import write_connection
from tests.mailserver import SmtpSink
from tests.support import XSS, login, make_crm, make_org, token

LATER = jobs.utcnow() + dt.timedelta(days=1)


@pytest.fixture
def sink():
    with SmtpSink() as s:
        yield s


def setup(tmp_path, db_url, sink, plugins=()):
    (tmp_path / "crmkit.yaml").write_text(
        yaml.safe_dump({"smtp": sink.settings, "base_url": "http://testserver"}), encoding="utf-8")
    crm = make_crm(tmp_path, db_url, plugins=list(plugins))
    org = make_org(crm)
    for name in ("alice", "mia"):
        crm.records.update("user", org["users"][name]["id"], {"email": f"{name}@example.com"}, actor=SYSTEM)
    return crm, org


def test_notify_shows_in_app_and_mails_the_user_once(tmp_path, db_url, sink):
    crm, org = setup(tmp_path, db_url, sink)
    alice = org["users"]["alice"]["id"]
    nid = notifications.notify(crm, alice, subject="Call Tanaka", body="Due today", link="/admin/activity/5",
                               key="demo:1")
    assert notifications.notify(crm, alice, subject="Call Tanaka", key="demo:1") is None  # idempotent
    assert notifications.unread_count(crm, alice) == 1
    (row,) = notifications.list_for(crm, alice)
    assert row["id"] == nid and row["subject"] == "Call Tanaka" and row["read_at"] is None
    jobs.run_once(crm, now=LATER, names=[mail.SEND_JOB])
    (msg,) = sink.wait_for(1)
    assert msg["To"] == "alice@example.com" and msg["Subject"] == "Call Tanaka"
    text = msg.get_body(("plain",)).get_content()
    assert "Due today" in text and "http://testserver/admin/activity/5" in text
    assert notifications.mark_read(crm, org["users"]["bob"]["id"], [nid]) == 0  # not bob's
    assert notifications.mark_read(crm, alice, [nid]) == 1
    assert notifications.unread_count(crm, alice) == 0
    crm.close()


def test_channels_users_without_email_and_bad_input(tmp_path, db_url, sink):
    crm, org = setup(tmp_path, db_url, sink)
    bob = org["users"]["bob"]["id"]  # no email address
    assert notifications.notify(crm, bob, subject="Hi") is not None
    email_only = notifications.notify(crm, org["users"]["alice"]["id"], subject="Mail only", channels=["email"])
    assert notifications.unread_count(crm, org["users"]["alice"]["id"]) == 0  # not under the bell
    assert mail.list_messages(crm)[0]["meta"]["notification_id"] == email_only
    assert len(mail.list_messages(crm)) == 1  # bob got no mail
    assert notifications.notify(crm, 999999, subject="Nobody") is None
    with pytest.raises(ValueError, match="unknown notification channel"):
        notifications.notify(crm, bob, subject="x", channels=["pigeon"])
    with pytest.raises(ValueError):
        notifications.notify(crm, bob, subject="")
    crm.close()


def test_plugin_channels_run_in_the_same_transaction(tmp_path, db_url, sink):
    seen = []

    class Chat:
        __name__ = "chat_channel"

        @hookimpl
        def register_notification_channels(self, crm):
            def post(crm, user, notification, conn):
                seen.append((user["username"], notification["subject"]))
                jobs.enqueue(crm, "chat.post", {"n": notification["id"]}, key=f"chat:{notification['id']}", conn=conn)

            return {"chat": post}

    crm, org = setup(tmp_path, db_url, sink, plugins=[Chat()])
    alice = org["users"]["alice"]["id"]
    with pytest.raises(RuntimeError), write_connection(crm.engine) as conn, conn.begin():
        notifications.notify(crm, alice, subject="Rolled back", channels=["in_app", "chat"], conn=conn)
        raise RuntimeError("the caller's write failed")
    assert notifications.list_for(crm, alice) == [] and jobs.list_jobs(crm, name="chat.post") == []
    notifications.notify(crm, alice, subject="Kept", channels=["in_app", "chat"])
    assert seen == [("alice", "Rolled back"), ("alice", "Kept")]
    assert len(jobs.list_jobs(crm, name="chat.post")) == 1
    crm.close()


def test_bell_and_notifications_page(tmp_path, db_url, sink):
    crm, org = setup(tmp_path, db_url, sink)
    alice = org["users"]["alice"]["id"]
    first = notifications.notify(crm, alice, subject=XSS, body="body <b>", link="/admin/activity/1",
                                 channels=["in_app"])
    evil = notifications.notify(crm, alice, subject="Off-site", link="https://evil.example/x", channels=["in_app"])
    notifications.notify(crm, org["users"]["bob"]["id"], subject="Bob's secret", channels=["in_app"])
    client = login(crm, "alice")
    home = client.get("/admin/")
    assert 'aria-label="Notifications, 2 unread"' in home.text and 'class="bell-count"' in home.text
    page = client.get("/admin/notifications")
    assert page.status_code == 200
    assert XSS not in page.text and "&lt;script&gt;" in page.text
    assert "Bob&#39;s secret" not in page.text and "Bob's secret" not in page.text
    assert client.get("/admin/notifications/count", headers={"accept": "application/json"}).json() == {"unread": 2}
    # Opening follows local links only and marks read; someone else's notification is a 404.
    opened = client.post(f"/admin/notifications/{first}/open", data={"_csrf": token(client)})
    assert opened.status_code == 303 and opened.headers["location"] == "/admin/activity/1"
    off = client.post(f"/admin/notifications/{evil}/open", data={"_csrf": token(client)})
    assert off.headers["location"] == "/admin/notifications"
    bobs = notifications.list_for(crm, org["users"]["bob"]["id"])[0]["id"]
    assert client.post(f"/admin/notifications/{bobs}/open", data={"_csrf": token(client)}).status_code == 404
    assert notifications.unread_count(crm, alice) == 0
    # No CSRF token, no change.
    notifications.notify(crm, alice, subject="Another", channels=["in_app"])
    assert client.post("/admin/notifications/read", data={"all": "1"}).status_code == 403
    assert notifications.unread_count(crm, alice) == 1
    done = client.post("/admin/notifications/read", data={"all": "1", "_csrf": token(client),
                                                          "next": "https://evil.example/"})
    assert done.headers["location"] == "/admin/notifications"
    assert notifications.unread_count(crm, alice) == 0
    assert "bell-count" not in client.get("/admin/").text
    crm.close()


def test_notifications_page_in_japanese_and_actions(tmp_path, db_url, sink):
    crm, org = setup(tmp_path, db_url, sink)
    mia = org["users"]["mia"]["id"]  # locale ja
    notifications.notify(crm, mia, subject="訪問予定", channels=["in_app"],
                         actions=[{"label": {"en": "Snooze", "ja": "スヌーズ"}, "href": "/admin/x/{id}"},
                                  {"label": "Evil", "href": "https://evil.example/"}])
    client = login(crm, "mia")
    page = client.get("/admin/notifications")
    assert "通知" in page.text and "すべて既読にする" in page.text and "スヌーズ" in page.text
    nid = notifications.list_for(crm, mia)[0]["id"]
    assert f'action="/admin/x/{nid}"' in page.text and "evil.example" not in page.text
    assert 'aria-label="通知（未読 1 件）"' in page.text
    crm.close()


def test_failed_jobs_page_with_retry_is_for_admins_only(tmp_path, db_url, sink):
    crm, org = setup(tmp_path, db_url, sink)
    job_id = jobs.enqueue(crm, "nobody.handles.this", {"x": XSS}, max_attempts=1)
    jobs.run_once(crm, now=LATER)
    admin = login(crm, "admin")
    page = admin.get("/admin/jobs")
    assert page.status_code == 200 and "nobody.handles.this" in page.text and "no handler for job" in page.text
    detail = admin.get(f"/admin/jobs/{job_id}")
    assert "Traceback" in detail.text and XSS not in detail.text
    assert admin.post(f"/admin/jobs/{job_id}/retry", data={}).status_code == 403  # CSRF
    assert jobs.get(crm, job_id)["status"] == "failed"
    retried = admin.post(f"/admin/jobs/{job_id}/retry", data={"_csrf": token(admin)})
    assert retried.status_code == 303 and jobs.get(crm, job_id)["status"] == "queued"
    again = admin.post(f"/admin/jobs/{job_id}/retry", data={"_csrf": token(admin)})
    assert again.status_code == 303 and jobs.get(crm, job_id)["attempts"] == 0
    assert admin.get("/admin/jobs/999999").status_code == 404
    rep = login(crm, "alice")
    assert rep.get("/admin/jobs").status_code == 403
    assert rep.post(f"/admin/jobs/{job_id}/retry", data={"_csrf": token(rep)}).status_code == 403
    assert rep.get("/admin/outbox").status_code == 403
    assert "/admin/jobs" not in rep.get("/admin/").text and "/admin/jobs" in admin.get("/admin/").text
    crm.close()


def test_outbox_page_and_resend(tmp_path, db_url, sink):
    crm, org = setup(tmp_path, db_url, sink)
    sink.refuse_rcpt = 550
    oid = mail.queue_mail(crm, to="gone@example.com", subject="件名テスト", text="body")
    jobs.run_once(crm, now=LATER, names=[mail.SEND_JOB])
    admin = login(crm, "admin")
    page = admin.get("/admin/outbox?status=failed")
    assert "件名テスト" in page.text and "gone@example.com" in page.text
    detail = admin.get(f"/admin/outbox/{oid}")
    assert "550" in detail.text and mail.get_message(crm, oid)["message_id"].strip("<>") in detail.text
    sink.refuse_rcpt = None
    assert admin.post(f"/admin/outbox/{oid}/resend", data={"_csrf": token(admin)}).status_code == 303
    jobs.run_once(crm, now=LATER + dt.timedelta(minutes=1), names=[mail.SEND_JOB])
    assert [m["Subject"] for m in sink.wait_for(1)] == ["件名テスト"]
    assert mail.get_message(crm, oid)["status"] == "sent"
    t = mail.outbox_table(crm)
    with crm.engine.connect() as conn:
        assert conn.execute(sa.select(sa.func.count()).select_from(t)).scalar_one() == 1
    crm.close()
