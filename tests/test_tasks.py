"""Tasks: assignees, due and reminder datetimes, recurring tasks (RRULE) rolling on when completed,
invalid rules refused at save time; on SQLite and PostgreSQL."""

from __future__ import annotations

import datetime as dt
from zoneinfo import ZoneInfo

import pytest

from crmkit.core.actors import SYSTEM
from crmkit.core.errors import ValidationError
from crmkit.plugins.activities import complete_activity
from crmkit.plugins.tasks import RecurrenceError, next_occurrence, normalize_rule, parse_rule
from tests.support import actor_of, csrf_of, login

JST = ZoneInfo("Asia/Tokyo")
NY = ZoneInfo("America/New_York")


def uid(org, name):
    return org["users"][name]["id"]


def api(crm, username):
    from starlette.testclient import TestClient

    from crmkit.core.tokens import create_token

    secret, _info = create_token(crm, username, "test")
    return TestClient(crm.asgi(), headers={"authorization": f"Bearer {secret}"})


def future_monday(hour: int, tz=JST, weeks: int = 2) -> dt.datetime:
    """A Monday at ``hour`` local time, ``weeks`` weeks ahead (so "now" never interferes)."""
    today = dt.datetime.now(tz).date()
    monday = today + dt.timedelta(days=(7 - today.weekday()) % 7 + 7 * weeks)
    return dt.datetime(monday.year, monday.month, monday.day, hour, tzinfo=tz)


# ---------------------------------------------------------------------------------------------
# The rule arithmetic
# ---------------------------------------------------------------------------------------------
def test_next_occurrence_of_a_weekly_rule():
    due = dt.datetime(2027, 1, 4, 9, tzinfo=JST)  # a Monday
    early = dt.datetime(2027, 1, 3, 12, tzinfo=JST)
    assert next_occurrence("FREQ=WEEKLY;BYDAY=MO", due, early) == (
        dt.datetime(2027, 1, 11, 9, tzinfo=JST), "FREQ=WEEKLY;BYDAY=MO")
    # completed late (Wednesday a fortnight later): the first Monday after now, never an overdue one
    late = dt.datetime(2027, 1, 20, 12, tzinfo=JST)
    assert next_occurrence("FREQ=WEEKLY;BYDAY=MO", due, late)[0] == dt.datetime(2027, 1, 25, 9, tzinfo=JST)
    # monthly on the last business day, yearly
    assert next_occurrence("FREQ=MONTHLY;BYDAY=MO,TU,WE,TH,FR;BYSETPOS=-1", dt.datetime(2027, 1, 29, 17, tzinfo=JST),
                           early)[0] == dt.datetime(2027, 2, 26, 17, tzinfo=JST)
    assert next_occurrence("FREQ=YEARLY", due, early)[0] == dt.datetime(2028, 1, 4, 9, tzinfo=JST)


def test_count_counts_down_and_until_ends_the_series():
    due = dt.datetime(2027, 1, 4, 9, tzinfo=JST)
    now = dt.datetime(2027, 1, 1, tzinfo=JST)
    nxt, rule = next_occurrence("FREQ=DAILY;COUNT=3", due, now)
    assert nxt == dt.datetime(2027, 1, 5, 9, tzinfo=JST) and rule == "FREQ=DAILY;COUNT=2"
    nxt, rule = next_occurrence(rule, nxt, now)
    assert nxt == dt.datetime(2027, 1, 6, 9, tzinfo=JST) and rule == "FREQ=DAILY;COUNT=1"
    assert next_occurrence(rule, nxt, now) is None
    # completed after two days had passed: they count as used
    assert next_occurrence("FREQ=DAILY;COUNT=5", due, dt.datetime(2027, 1, 6, 12, tzinfo=JST)) == (
        dt.datetime(2027, 1, 7, 9, tzinfo=JST), "FREQ=DAILY;COUNT=2")  # 4, 5, 6 used; 7 and 8 left
    assert next_occurrence("FREQ=WEEKLY;UNTIL=20270110", due, now) is None  # Jan 11 is past UNTIL
    assert next_occurrence("FREQ=WEEKLY;UNTIL=20270120T000000Z", due, now)[0] == dt.datetime(2027, 1, 11, 9, tzinfo=JST)


def test_wall_time_is_kept_across_daylight_saving():
    due = dt.datetime(2027, 3, 8, 9, tzinfo=NY)  # a Monday before DST starts (2027-03-14)
    nxt, _ = next_occurrence("FREQ=WEEKLY", due, dt.datetime(2027, 3, 1, tzinfo=NY))
    assert nxt.hour == 9 and nxt.utcoffset() != due.utcoffset()  # 9:00 local, a different UTC offset


@pytest.mark.parametrize("rule, message", [
    ("FREQ=MINUTELY", "FREQ must be one of"),
    ("FREQ=SECONDLY;INTERVAL=1", "FREQ must be one of"),
    ("BYDAY=MO", "FREQ must be one of"),
    ("FREQ=WEEKLY;BYDAY=XX", "BYDAY"),
    ("FREQ=WEEKLY;COUNT=2;UNTIL=20270101", "COUNT or UNTIL"),
    ("DTSTART:20270101T000000\nRRULE:FREQ=DAILY", "NAME=VALUE"),
    ("FREQ=DAILY;DTSTART=20270101", "DTSTART is not allowed"),
    ("every monday", "NAME=VALUE"),
])
def test_bad_rules_are_refused_with_a_reason(rule, message):
    with pytest.raises(RecurrenceError) as exc:
        parse_rule(rule, dt.datetime(2027, 1, 4, 9, tzinfo=JST))
    assert message in str(exc.value)


def test_rules_are_normalised():
    assert normalize_rule(" rrule: freq=weekly; byday=mo ") == "FREQ=WEEKLY;BYDAY=MO"
    assert normalize_rule("  ") is None


# ---------------------------------------------------------------------------------------------
# Through RecordStore and the API
# ---------------------------------------------------------------------------------------------
def test_completing_a_recurring_task_creates_the_next_one(crm, org):
    alice = actor_of(org["users"]["alice"])
    due = future_monday(8)  # 08:00 JST is Sunday 23:00 UTC: the rule must be applied in JST
    task = crm.records.create("activity", {
        "subject": "週次レポート提出", "type": "task", "assignee": uid(org, "alice"), "reviewer": uid(org, "alice"),
        "due_at": due, "reminder_at": due - dt.timedelta(hours=1, minutes=30), "priority": "high",
        "recurrence": "rrule:freq=weekly;byday=mo", "participants": [{"id": uid(org, "mia")}],
    }, actor=alice)
    assert task["recurrence"] == "FREQ=WEEKLY;BYDAY=MO"
    out = complete_activity(crm, task["id"], alice)
    nxt = out["next_occurrence"]
    assert nxt is not None and nxt["previous_occurrence"] == task["id"]
    assert nxt["due_at"] == due + dt.timedelta(days=7)
    assert nxt["reminder_at"] == nxt["due_at"] - dt.timedelta(hours=1, minutes=30)
    assert (nxt["subject"], nxt["priority"], nxt["assignee"], nxt["status"]) == (
        "週次レポート提出", "high", uid(org, "alice"), "planned")
    assert nxt["participants"] == [{"id": uid(org, "mia")}] and nxt["recurrence"] == "FREQ=WEEKLY;BYDAY=MO"
    assert nxt["completed_at"] is None
    # reopening and completing again does not fork the series
    crm.records.update("activity", task["id"], {"status": "planned"}, actor=alice)
    crm.records.update("activity", task["id"], {"status": "done"}, actor=alice)
    series = crm.records.list("activity", actor=SYSTEM, filter={"subject": "週次レポート提出"}).items
    assert len(series) == 2


def test_the_series_ends_with_its_count(crm, org):
    alice = actor_of(org["users"]["alice"])
    task = crm.records.create("activity", {"subject": "3回だけ", "type": "task", "assignee": uid(org, "alice"),
                                           "due_at": future_monday(10), "recurrence": "FREQ=WEEKLY;COUNT=2"},
                              actor=alice)
    second = complete_activity(crm, task["id"], alice)["next_occurrence"]
    assert second["recurrence"] == "FREQ=WEEKLY;COUNT=1"
    assert complete_activity(crm, second["id"], alice)["next_occurrence"] is None


def test_a_plain_edit_to_done_rolls_the_series_on_too(crm, org):
    mia = actor_of(org["users"]["mia"])
    task = crm.records.create("activity", {"subject": "月次締め", "type": "task", "assignee": uid(org, "mia"),
                                           "due_at": future_monday(18), "recurrence": "FREQ=MONTHLY"}, actor=mia)
    response = api(crm, "mia").patch(f"/api/v1/activity/{task['id']}", json={"status": "done"})
    assert response.status_code == 200
    follow = crm.records.list("activity", actor=SYSTEM, filter={"previous_occurrence": task["id"]}).items
    assert len(follow) == 1 and follow[0]["due_at"].astimezone(JST).day == task["due_at"].astimezone(JST).day


def test_invalid_rules_are_field_errors_at_save_time(crm, org):
    alice = actor_of(org["users"]["alice"])
    base = {"subject": "x", "type": "task", "assignee": uid(org, "alice"), "due_at": future_monday(9)}
    with pytest.raises(ValidationError) as exc:
        crm.records.create("activity", {**base, "recurrence": "FREQ=FORTNIGHTLY"}, actor=alice)
    assert exc.value.errors == [{"field": "recurrence", "message": exc.value.errors[0]["message"]}]
    assert "not a valid RRULE" in exc.value.errors[0]["message"]
    with pytest.raises(ValidationError) as exc:
        crm.records.create("activity", {**base, "due_at": None, "recurrence": "FREQ=DAILY"}, actor=alice)
    assert "needs a due date" in exc.value.errors[0]["message"]
    response = api(crm, "alice").post("/api/v1/activity", json={**base, "due_at": base["due_at"].isoformat(),
                                                                "recurrence": "FREQ=HOURLY"})
    assert response.status_code == 422 and response.json()["errors"][0]["field"] == "recurrence"
    # and in the admin form, next to the field
    client = login(crm, "alice")
    page = client.get("/admin/activity/new?type=task")
    html = client.post("/admin/activity/new", data={
        "_csrf": csrf_of(page.text), "subject": "繰り返し", "type": "task", "status": "planned", "priority": "normal",
        "due_at": "2027-01-04T09:00", "recurrence": "FREQ=WEEKLY;BYDAY=XX"}).text
    assert 'data-field="recurrence"' in html and "not a valid RRULE" in html
    assert crm.records.list("activity", actor=SYSTEM).count == 0


def test_completing_a_done_task_is_refused(crm, org):
    alice = actor_of(org["users"]["alice"])
    task = crm.records.create("activity", {"subject": "一度だけ", "type": "task", "assignee": uid(org, "alice"),
                                           "status": "done"}, actor=alice)
    with pytest.raises(ValidationError) as exc:
        complete_activity(crm, task["id"], alice)
    assert "already done" in exc.value.errors[0]["message"]


def test_a_task_assigned_to_someone_else_reaches_their_agenda_and_reminder_fields(crm, org):
    alice = actor_of(org["users"]["alice"])
    due = dt.datetime.now(dt.UTC) + dt.timedelta(days=2)
    task = crm.records.create("activity", {"subject": "mia へ依頼", "type": "task", "assignee": uid(org, "mia"),
                                           "due_at": due, "reminder_at": due - dt.timedelta(hours=3)}, actor=alice)
    assert task["reminder_at"] == due - dt.timedelta(hours=3)
    html = login(crm, "mia").get("/admin/agenda").text
    assert "mia へ依頼" in html
    assert "mia へ依頼" not in login(crm, "admin").get("/admin/agenda").text
