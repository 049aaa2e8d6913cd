"""The reminders contrib plugin: scheduling, rescheduling, recipients, escalation, snooze, exactly once."""

from __future__ import annotations

import datetime as dt
import os
import subprocess
import sys
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
import sqlalchemy as sa
import yaml

from crmkit import CRM, SchemaError, hookimpl
from crmkit.core import jobs, mail, notifications
from crmkit.core.actors import SYSTEM
from crmkit.core.db import write_connection
from tests.mailserver import SmtpSink
from tests.support import actor_of, login, make_crm, make_org, token

ROOT = Path(__file__).resolve().parents[1]
FIRE = "reminders.fire"
# A due time safely in the future, so the grace period for past reminders never drops one.
DUE = (jobs.utcnow() + dt.timedelta(days=10)).replace(hour=9, minute=0, second=0, microsecond=0)


def minutes(n: float) -> dt.timedelta:
    return dt.timedelta(minutes=n)


@pytest.fixture
def sink():
    with SmtpSink() as s:
        yield s


def setup(project: Path, db_url: str, sink: SmtpSink, reminders: dict | None = None, plugins=()):
    config = {"plugins": ["reminders"], "smtp": sink.settings, "base_url": "http://testserver"}
    if reminders is not None:
        config["reminders"] = reminders
    project.mkdir(parents=True, exist_ok=True)
    (project / "crmkit.yaml").write_text(yaml.safe_dump(config), encoding="utf-8")
    crm = make_crm(project, db_url, plugins=list(plugins))
    org = make_org(crm)
    users = org["users"]
    carol = crm.records.create("user", {"username": "carol", "display_name": "Carol", "role": "sales_rep",
                                        "primary_team": org["teams"]["east"]["id"], "locale": "en",
                                        "time_zone": "America/New_York"}, actor=SYSTEM)
    users["carol"] = carol
    for name in ("alice", "bob", "carol", "mia"):
        crm.records.update("user", users[name]["id"], {"email": f"{name}@example.com"}, actor=SYSTEM)
    crm.records.update("team", org["teams"]["east"]["id"], {"manager": users["mia"]["id"]}, actor=SYSTEM)
    return crm, org


def task(crm, org, **values):
    alice = org["users"]["alice"]
    base = {"subject": "Call Tanaka", "type": "task", "due_at": DUE, "assignee": alice["id"]}
    return crm.records.create("activity", {**base, **values}, actor=actor_of(alice))


def inbox(crm, username, org) -> list[dict]:
    return notifications.list_for(crm, org["users"][username]["id"], limit=200)


def fire(crm, at: dt.datetime) -> int:
    return jobs.run_once(crm, now=at, names=[FIRE])


def queued_keys(crm) -> list[str]:
    return sorted(j["key"] for j in jobs.list_jobs(crm, status="queued", name=FIRE, limit=500))


def test_reminder_at_notifies_assignee_and_participants_once_in_their_language_and_zone(tmp_path, db_url, sink):
    crm, org = setup(tmp_path / "p", db_url, sink)
    users = org["users"]
    act = task(crm, org, reminder_at=DUE - minutes(60),
               participants=[{"id": users["bob"]["id"]}, {"id": users["mia"]["id"]}])
    assert fire(crm, DUE - minutes(61)) == 0  # not yet
    assert fire(crm, DUE - minutes(60)) == 1
    (note,) = inbox(crm, "alice", org)
    assert note["subject"] == "Reminder: Call Tanaka" and note["link"] == f"/admin/activity/{act['id']}"
    tokyo = DUE.astimezone(ZoneInfo("Asia/Tokyo"))
    assert note["body"] == f"Due: {tokyo:%a} {tokyo.day} {tokyo:%b %Y, %H:%M} (Asia/Tokyo)"
    (ja,) = inbox(crm, "mia", org)  # mia reads Japanese
    assert ja["subject"] == "リマインダー: Call Tanaka" and f"{tokyo.month}月{tokyo.day}日" in ja["body"]
    assert len(inbox(crm, "bob", org)) == 1 and inbox(crm, "carol", org) == []
    assert fire(crm, DUE - minutes(30)) == 0  # sent exactly once
    jobs.run_once(crm, now=DUE, names=[mail.SEND_JOB])
    arrived = sorted(m["To"] for m in sink.wait_for(3))
    assert arrived == ["alice@example.com", "bob@example.com", "mia@example.com"]
    crm.close()


def test_times_are_shown_in_each_users_time_zone(tmp_path, db_url, sink):
    crm, org = setup(tmp_path / "p", db_url, sink)
    task(crm, org, assignee=org["users"]["carol"]["id"], reminder_at=DUE - minutes(5))
    fire(crm, DUE)
    (note,) = inbox(crm, "carol", org)
    ny = DUE.astimezone(ZoneInfo("America/New_York"))
    assert f"{ny:%H:%M} (America/New_York)" in note["body"]
    crm.close()


def test_offsets_before_the_due_time(tmp_path, db_url, sink):
    crm, org = setup(tmp_path / "p", db_url, sink, {"entities": {"activity": {"offsets": [15, 60]}}})
    task(crm, org)
    assert fire(crm, DUE - minutes(60)) == 1
    assert fire(crm, DUE - minutes(15)) == 1
    subjects = [n["body"] for n in inbox(crm, "alice", org)]
    assert subjects[0].startswith("Due in 15 minutes") and subjects[1].startswith("Due in 60 minutes")
    crm.close()


def test_a_changed_due_time_reschedules_and_moving_back_revives(tmp_path, db_url, sink):
    crm, org = setup(tmp_path / "p", db_url, sink, {"entities": {"activity": {"offsets": [30]}}})
    alice = actor_of(org["users"]["alice"])
    act = task(crm, org)
    old_keys = queued_keys(crm)
    moved = DUE + dt.timedelta(hours=3)
    crm.records.update("activity", act["id"], {"due_at": moved}, actor=alice)
    assert queued_keys(crm) != old_keys and all(moved.isoformat() in k for k in queued_keys(crm))
    assert fire(crm, DUE - minutes(30)) == 0  # the old reminder was cancelled
    assert inbox(crm, "alice", org) == []
    crm.records.update("activity", act["id"], {"subject": "Call Tanaka (agenda)"}, actor=alice)
    assert len(queued_keys(crm)) == 2  # an unrelated edit changes nothing (before30 + escalate)
    crm.records.update("activity", act["id"], {"due_at": DUE}, actor=alice)  # back again
    assert fire(crm, DUE - minutes(30)) == 1
    assert fire(crm, moved - minutes(30)) == 0
    assert [n["subject"] for n in inbox(crm, "alice", org)] == ["Reminder: Call Tanaka (agenda)"]
    crm.close()


def test_completing_or_deleting_the_task_calls_reminders_off(tmp_path, db_url, sink):
    crm, org = setup(tmp_path / "p", db_url, sink)
    done = task(crm, org, reminder_at=DUE - minutes(10))
    gone = task(crm, org, subject="Visit", reminder_at=DUE - minutes(10))
    crm.records.update("activity", done["id"], {"status": "done"}, actor=SYSTEM)
    crm.records.delete("activity", gone["id"], actor=SYSTEM)
    assert queued_keys(crm) == []
    assert fire(crm, DUE + dt.timedelta(days=3)) == 0
    assert inbox(crm, "alice", org) == [] and inbox(crm, "mia", org) == []
    crm.close()


def test_a_deleted_participant_never_stops_the_other_reminders(tmp_path, db_url, sink):
    crm, org = setup(tmp_path / "p", db_url, sink)
    users = org["users"]
    task(crm, org, reminder_at=DUE - minutes(10),
         participants=[{"id": users["carol"]["id"]}, {"id": users["bob"]["id"]}])
    crm.records.delete("user", users["carol"]["id"], actor=SYSTEM)
    fire(crm, DUE)
    assert len(inbox(crm, "alice", org)) == 1 and len(inbox(crm, "bob", org)) == 1
    assert jobs.counts(crm)["failed"] == 0
    crm.close()


def test_overdue_escalates_to_the_team_manager(tmp_path, db_url, sink):
    crm, org = setup(tmp_path / "p", db_url, sink, {"entities": {"activity": {"escalate_after_minutes": 120}}})
    open_task = task(crm, org)
    finished = task(crm, org, subject="Finished in time")
    crm.records.update("activity", finished["id"], {"status": "done"}, actor=SYSTEM)
    assert fire(crm, DUE + minutes(119)) == 0
    assert fire(crm, DUE + minutes(120)) == 1
    (note,) = inbox(crm, "mia", org)
    assert note["subject"] == "期限超過: Call Tanaka（Alice）" and "まだ完了していません" in note["body"]
    assert note["actions"] == [] and note["data"]["id"] == open_task["id"]
    assert inbox(crm, "alice", org) == []
    crm.close()


def test_snooze_from_the_notification(tmp_path, db_url, sink):
    crm, org = setup(tmp_path / "p", db_url, sink)
    users = org["users"]
    task(crm, org, assignee=users["carol"]["id"], reminder_at=DUE - minutes(10),
         participants=[{"id": users["alice"]["id"]}])
    fire(crm, DUE - minutes(10))
    (note,) = inbox(crm, "alice", org)
    client = login(crm, "alice")
    page = client.get("/admin/notifications")
    assert f'action="/admin/reminders/snooze/{note["id"]}?for=1h"' in page.text and "Snooze 1 hour" in page.text
    before = jobs.utcnow()
    r = client.post(f"/admin/reminders/snooze/{note['id']}?for=1h", data={"_csrf": token(client)})
    assert r.status_code == 303 and r.headers["location"] == "/admin/notifications"
    snoozed = [j for j in jobs.list_jobs(crm, status="queued", name=FIRE) if ":snooze:" in j["key"]]
    assert len(snoozed) == 1
    assert before + minutes(60) <= snoozed[0]["run_at"] <= jobs.utcnow() + minutes(60)
    assert notifications.unread_count(crm, users["alice"]["id"]) == 0  # snoozing marks it read
    fire(crm, snoozed[0]["run_at"])
    assert len(inbox(crm, "alice", org)) == 2 and len(inbox(crm, "carol", org)) == 1  # only alice again
    # Someone else's notification is not found; an unknown choice is a 400; no CSRF token, a 403.
    carol_note = inbox(crm, "carol", org)[0]
    r = client.post(f"/admin/reminders/snooze/{carol_note['id']}?for=1h", data={"_csrf": token(client)})
    assert r.status_code == 404
    r = client.post(f"/admin/reminders/snooze/{note['id']}?for=forever", data={"_csrf": token(client)})
    assert r.status_code == 400
    assert client.post(f"/admin/reminders/snooze/{note['id']}?for=1h", data={}).status_code == 403
    crm.close()


def test_snooze_until_tomorrow_nine_in_the_users_zone():
    from plugins_contrib.reminders.schedule import snooze_until

    now = dt.datetime(2026, 5, 1, 23, 30, tzinfo=dt.UTC)  # 19:30 in New York, 08:30 next day in Tokyo
    ny = snooze_until("tomorrow", now, ZoneInfo("America/New_York"))
    assert ny.astimezone(ZoneInfo("America/New_York")).replace(tzinfo=None) == dt.datetime(2026, 5, 2, 9, 0)
    tokyo = snooze_until("tomorrow", now, ZoneInfo("Asia/Tokyo"))
    assert tokyo.astimezone(ZoneInfo("Asia/Tokyo")).replace(tzinfo=None) == dt.datetime(2026, 5, 3, 9, 0)
    assert snooze_until("10m", now, dt.UTC) == now + minutes(10)
    assert snooze_until("never", now, dt.UTC) is None


def test_format_reminder_hook_and_record_panel(tmp_path, db_url, sink):
    class Wording:
        __name__ = "wording"

        @hookimpl
        def format_reminder(self, crm, entity, record, user, trigger, lang, tz):
            return {"subject": f"[{lang}] {record['subject']} ({trigger})", "body": "custom"}

    crm, org = setup(tmp_path / "p", db_url, sink, plugins=[Wording()])
    act = task(crm, org, reminder_at=DUE - minutes(10))
    page = login(crm, "alice").get(f"/admin/activity/{act['id']}")
    assert "Reminders" in page.text and "Overdue escalation" in page.text
    fire(crm, DUE)
    assert [n["subject"] for n in inbox(crm, "alice", org)] == ["[en] Call Tanaka (at)"]
    crm.close()


def test_bad_configuration_is_refused_at_start(tmp_path, db_url):
    (tmp_path / "crmkit.yaml").write_text(yaml.safe_dump({
        "plugins": ["reminders"],
        "reminders": {"entities": {"activity": {"due_field": "subject", "recipients": ["account"]},
                                   "nothing": {}}},
    }), encoding="utf-8")
    with pytest.raises(SchemaError) as exc:
        CRM(tmp_path, database_url=db_url, entry_points=False)
    text = str(exc.value)
    assert "activity.subject (due_field) must be a datetime field" in text
    assert "activity.account must be a reference to user" in text and "unknown entity 'nothing'" in text


def test_schedule_command_covers_existing_records(project, db_url, sink):
    from tests.conftest import run_cli

    crm, org = setup(project, db_url, sink)
    act = task(crm, org, reminder_at=DUE - minutes(10))
    jobs.cancel_matching(crm, name=FIRE, key_prefix="reminders:")  # as if the plugin had been off
    result = run_cli("reminders", "schedule", cwd=project, env={"CRMKIT_DATABASE_URL": db_url})
    assert result.returncode == 0, result.stderr
    assert "2 upcoming reminder(s) scheduled." in result.stdout
    assert any(f":{act['id']}:at:" in k for k in queued_keys(crm))
    crm.close()


def test_four_workers_send_every_reminder_exactly_once(project, db_url, sink):
    crm, org = setup(project, db_url, sink)
    users = org["users"]
    n = 60
    with crm.records.transaction(actor=SYSTEM) as tx:
        for i in range(n):
            tx.create("activity", {"subject": f"Task {i}", "type": "task", "due_at": DUE,
                                   "reminder_at": DUE - minutes(i % 30), "assignee": users["alice"]["id"],
                                   "participants": [{"id": users["bob"]["id"]}]})
    assert len(queued_keys(crm)) == 2 * n  # "at" + escalation per task
    with write_connection(crm.engine) as conn, conn.begin():  # make them due now for the worker processes
        t = jobs.table(crm)
        conn.execute(sa.update(t).where(t.c.name == FIRE, t.c.key.like("%:at:%")).values(run_at=jobs.utcnow()))
    env = {**os.environ, "CRMKIT_DATABASE_URL": db_url, "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, "-m", "crmkit.cli", "worker", "--once", "--only", FIRE, "--only", mail.SEND_JOB]
    procs = [subprocess.Popen(cmd, cwd=project, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(4)]
    for p in procs:
        p.wait(timeout=240)
        assert p.returncode == 0, p.stderr.read()
    jobs.run_once(crm, names=[FIRE, mail.SEND_JOB])  # anything queued after a worker finished
    assert len(inbox(crm, "alice", org)) == n and len(inbox(crm, "bob", org)) == n
    arrived = sink.wait_for(2 * n, timeout=60)
    assert len(arrived) == 2 * n and len({m["Message-ID"] for m in arrived}) == 2 * n
    per_person = sorted((m["To"], m["Subject"]) for m in arrived)
    assert len(set(per_person)) == 2 * n  # nobody got the same reminder twice
    crm.close()


def test_the_documented_configuration_works(tmp_path, db_url, sink):
    """docs/plugins/reminders.md: its configuration block loads and behaves as described."""
    import re

    text = (ROOT / "docs" / "plugins" / "reminders.md").read_text(encoding="utf-8")
    block = next(b for b in re.findall(r"```yaml\n(.*?)```", text, re.S) if b.startswith("reminders:"))
    crm, org = setup(tmp_path / "p", db_url, sink, yaml.safe_load(block)["reminders"])
    task(crm, org, reminder_at=DUE - minutes(90))
    assert fire(crm, DUE - minutes(90)) == 1 and fire(crm, DUE - minutes(60)) == 1 and fire(crm, DUE - minutes(15)) == 1
    assert fire(crm, DUE + minutes(1439)) == 0 and fire(crm, DUE + minutes(1440)) == 1
    assert len(inbox(crm, "alice", org)) == 3 and len(inbox(crm, "mia", org)) == 1
    crm.close()
