"""Lead scoring (plugins_contrib/lead_scoring): every rule feature, on SQLite and PostgreSQL.

Scores are checked through the public surface: RecordStore writes (scores recompute inside the
save), events delivered to ``track_event``, the ``track_visit`` API action, the admin page,
``crmkit.core.jobs.run_once`` and the plugin's functions with explicit ``now`` values.
"""

from __future__ import annotations

import datetime as dt
import textwrap
from decimal import Decimal

import pytest
import sqlalchemy as sa

from crmkit.core.actors import SYSTEM
from crmkit.core.events import Event, dispatch
from crmkit.hookspecs import hookimpl
from crmkit.plugins import PluginError
from plugins_contrib import rule_files
from plugins_contrib.lead_scoring import actions, engine, rules_of
from plugins_contrib.lead_scoring.rules import KIND
from tests.support import actor_of, login, make_crm, make_org

UTC = dt.UTC


def scoring_crm(tmp_path, db_url, rules: str | None = None, *, plugins=(), overlay: str | None = None):
    """A migrated CRM with lead_scoring on, ``rules`` as rules/lead_scoring.yaml (None: the shipped ones)."""
    if rules is not None:
        (tmp_path / "rules").mkdir(exist_ok=True)
        (tmp_path / "rules" / "lead_scoring.yaml").write_text(textwrap.dedent(rules), encoding="utf-8")
    if overlay is not None:
        (tmp_path / "schemas").mkdir(exist_ok=True)
        (tmp_path / "schemas" / "lead_extra.yaml").write_text(textwrap.dedent(overlay), encoding="utf-8")
    crm = make_crm(tmp_path, db_url, enable=["lead_scoring"], plugins=list(plugins))
    return crm, make_org(crm)


def activity(crm, lead, type_, at, *, status="done", outcome=None, actor=SYSTEM, **extra):
    values = {"subject": f"{type_} {at:%m-%d %H:%M}", "type": type_, "status": status, "lead": lead["id"],
              "due_at": at.isoformat(), **extra}
    if status == "done" and actor.system:  # read-only for users: completing stamps "now" then
        values["completed_at"] = at.isoformat()
    if outcome:
        values["outcome"] = outcome
    return crm.records.create("activity", values, actor=actor)


def score(crm, lead_id) -> Decimal:
    return crm.records.get("lead", lead_id, actor=SYSTEM)["scoring_score"]


def ledger(crm, lead_id) -> list[tuple]:
    rows = engine.ledger_rows(crm, lead_id)
    return sorted((r["group_name"], r["rule_name"], round(r["points"], 2), round(r["effective"], 2), r["note"])
                  for r in rows)


# ---------------------------------------------------------------------------------------------
# The shipped default: the sales manual's first-month KPI
# ---------------------------------------------------------------------------------------------
def test_default_rules_score_visit_3_call_1_email_half_and_explain_it_on_the_lead_page(tmp_path, db_url):
    crm, org = scoring_crm(tmp_path, db_url)
    alice = actor_of(org["users"]["alice"])
    lead = crm.records.create("lead", {"last_name": "山田", "first_name": "太郎", "source": "web"}, actor=alice)
    assert lead["scoring_score"] == Decimal("1.00")  # fit: web inquiry
    assert lead["scoring_grade"] == "D"
    t0 = lead["created_at"]
    for type_, day in [("visit", 1), ("call", 2), ("email", 3), ("email", 4)]:
        activity(crm, lead, type_, t0 + dt.timedelta(days=day), actor=alice)
    activity(crm, lead, "visit", t0 + dt.timedelta(days=5), status="planned", actor=alice)  # not done: no points
    assert score(crm, lead["id"]) == Decimal("6.00")  # 1 + 3 + 1 + 0.5 + 0.5
    first_month = [r for r in ledger(crm, lead["id"]) if r[0] == "first_month"]
    assert first_month == [("first_month", "call", 1.0, 1.0, None), ("first_month", "email", 0.5, 0.5, None),
                           ("first_month", "email", 0.5, 0.5, None), ("first_month", "visit", 3.0, 3.0, None)]
    lead = crm.records.get("lead", lead["id"], actor=SYSTEM)
    progress = actions.kpi_progress(crm, rules_of(crm), lead, now=t0 + dt.timedelta(days=10))
    assert progress[0]["points"] == 5.0 and progress[0]["kpi"].target == 5

    client = login(crm, "alice")
    page = client.get(f"/admin/lead/{lead['id']}")
    assert page.status_code == 200
    html = page.text
    assert "Score" in html and "First-month activity" in html and "Visit" in html
    assert "/admin/plugins/lead_scoring/static/lead_scoring.css" in html
    assert client.get("/admin/plugins/lead_scoring/static/lead_scoring.css").status_code == 200
    mia = login(crm, "mia")  # Japanese user
    assert "初月の活動" in mia.get(f"/admin/lead/{lead['id']}").text


# ---------------------------------------------------------------------------------------------
# Fit rules, related fields, caps
# ---------------------------------------------------------------------------------------------
FIT_RULES = """
    version: 1
    max_score: 12
    grades: [{name: hot, min: 10}, {name: warm, min: 5}]
    groups:
      - name: fit
        source: lead
        cap: 6
        rules:
          - {name: it_account, when: {account.industry: it}, points: 4}
          - {name: big, when: {employees: {gte: 100}}, points: 3}
          - {name: no_email, when: {email: {is_null: true}}, points: -1}
      - name: acts
        source: activity
        rules:
          - {name: call, when: {type: call, status: done}, points: 1, cap: 2}
          - {name: visit, when: {type: visit, status: done}, points: 3, once_per: day}
          - {name: positive, when: {status: done, outcome: positive}, points: 2}
"""
ACCOUNT_OVERLAY = """
    extends: lead
    fields:
      account: {type: reference, to: account, on_delete: set_null, label: {en: Account, ja: 取引先}}
    conversion: {ignore: [account]}
"""


def test_fit_rules_follow_references_and_caps_apply_per_rule_group_and_total(tmp_path, db_url):
    crm, org = scoring_crm(tmp_path, db_url, FIT_RULES, overlay=ACCOUNT_OVERLAY)
    acme = crm.records.create("account", {"name": "ACME", "industry": "it"}, actor=SYSTEM)
    lead = crm.records.create("lead", {"last_name": "A", "account": acme["id"], "employees": 300}, actor=SYSTEM)
    # 4 (account.industry) + 3 (big) capped at 6 by the group; -1 (no email) is never capped
    assert score(crm, lead["id"]) == Decimal("5.00")
    fit = [r for r in ledger(crm, lead["id"]) if r[0] == "fit"]
    assert sorted(r[3] for r in fit) == [-1.0, 2.0, 4.0]
    assert ("fit", "it_account", 4.0, 4.0, None) in fit and ("fit", "big", 3.0, 2.0, "group_cap") in fit

    crm.records.update("account", acme["id"], {"industry": "retail"}, actor=SYSTEM)
    crm.records.update("lead", lead["id"], {"email": "a@example.jp"}, actor=SYSTEM)  # a save rescores
    assert score(crm, lead["id"]) == Decimal("3.00")

    for _ in range(3):
        activity(crm, lead, "call", dt.datetime(2026, 3, 1, 2, tzinfo=UTC))
    calls = [r for r in ledger(crm, lead["id"]) if r[1] == "call"]
    assert sorted(r[3] for r in calls) == [0.0, 1.0, 1.0] and ("acts", "call", 1.0, 0.0, "rule_cap") in calls
    # once_per day, in the project's time zone (Asia/Tokyo): 01:00Z and 06:00Z are the same JST day,
    # 16:00Z is already the next one
    for hour in (1, 6, 16):
        activity(crm, lead, "visit", dt.datetime(2026, 3, 2, hour, tzinfo=UTC))
    visits = sorted(r[3] for r in ledger(crm, lead["id"]) if r[1] == "visit")
    assert visits == [0.0, 3.0, 3.0]
    assert score(crm, lead["id"]) == Decimal("11.00")  # 3 + 2 + 6
    assert crm.records.get("lead", lead["id"], actor=SYSTEM)["scoring_grade"] == "hot"
    activity(crm, lead, "visit", dt.datetime(2026, 3, 5, 1, tzinfo=UTC), outcome="positive")
    # 3 + 2 + 9 + 2 = 16, capped by max_score 12 (the newest items contribute what is left)
    assert score(crm, lead["id"]) == Decimal("12.00")
    notes = {r[4] for r in ledger(crm, lead["id"])}
    assert "max_score" in notes


def test_imported_leads_and_activities_score_like_saved_ones(tmp_path, db_url):
    """Imports (``create_many``) rescore once per batch (after_create_many): same scores and ledger."""
    crm, org = scoring_crm(tmp_path, db_url, FIT_RULES, overlay=ACCOUNT_OVERLAY)
    acme = crm.records.create("account", {"name": "ACME", "industry": "it"}, actor=SYSTEM)
    rows = [{"last_name": f"L{i}", "account": acme["id"], "employees": 50 * i,
             **({"email": f"l{i}@example.jp"} if i % 2 else {})} for i in range(8)]
    saved = [crm.records.create("lead", row, actor=SYSTEM) for row in rows]
    imported = crm.records.create_many("lead", rows, actor=SYSTEM)
    assert all(isinstance(r, dict) for r in imported)
    visits = [(i, dt.datetime(2026, 3, 2, h, tzinfo=UTC)) for i in range(0, 8, 3) for h in (1, 6, 16)]

    def acts(leads):
        return [{"subject": "v", "type": "visit", "status": "done", "lead": leads[i]["id"],
                 "due_at": at.isoformat(), "completed_at": at.isoformat()} for i, at in visits]

    for values in acts(saved):
        crm.records.create("activity", values, actor=SYSTEM)
    crm.records.create_many("activity", acts(imported), actor=SYSTEM)
    assert [score(crm, r["id"]) for r in imported] == [score(crm, r["id"]) for r in saved]
    assert any(score(crm, r["id"]) > 0 for r in imported)
    for a, b in zip(saved, imported, strict=True):
        assert ledger(crm, b["id"]) == ledger(crm, a["id"])


def test_a_deleted_or_moved_activity_stops_scoring_and_a_failed_save_leaves_the_score(tmp_path, db_url):
    class Boom:
        @hookimpl
        def after_save(self, entity, record):
            if entity.name == "activity" and record.get("subject") == "boom":
                raise RuntimeError("refused")

    crm, org = scoring_crm(tmp_path, db_url, FIT_RULES, plugins=[Boom()], overlay=ACCOUNT_OVERLAY)
    a = crm.records.create("lead", {"last_name": "A", "email": "a@x.jp"}, actor=SYSTEM)
    b = crm.records.create("lead", {"last_name": "B", "email": "b@x.jp"}, actor=SYSTEM)
    call = activity(crm, a, "call", dt.datetime(2026, 3, 1, tzinfo=UTC))
    assert score(crm, a["id"]) == Decimal("1.00")
    crm.records.update("activity", call["id"], {"lead": b["id"]}, actor=SYSTEM)
    assert (score(crm, a["id"]), score(crm, b["id"])) == (Decimal("0.00"), Decimal("1.00"))
    crm.records.delete("activity", call["id"], actor=SYSTEM)
    assert score(crm, b["id"]) == Decimal("0.00")
    with pytest.raises(PluginError):
        activity(crm, b, "visit", dt.datetime(2026, 3, 1, tzinfo=UTC), subject="boom")
    assert score(crm, b["id"]) == Decimal("0.00") and ledger(crm, b["id"]) == []


# ---------------------------------------------------------------------------------------------
# Time: windows from a record date, rolling windows, half-life decay
# ---------------------------------------------------------------------------------------------
TIME_RULES = """
    groups:
      - name: first_month
        source: activity
        window: {from: created_at, days: [0, 30]}
        rules: [{name: email, when: {type: email, status: done}, points: 2}]
      - name: recent
        source: activity
        window: {rolling_days: 7}
        rules: [{name: call, when: {type: call, status: done}, points: 1}]
      - name: fading
        source: activity
        half_life_days: 10
        rules: [{name: meeting, when: {type: meeting, status: done}, points: 8}]
"""


def test_windows_from_created_at_rolling_windows_and_half_life_decay(tmp_path, db_url):
    crm, _org = scoring_crm(tmp_path, db_url, TIME_RULES)
    lead = crm.records.create("lead", {"last_name": "T"}, actor=SYSTEM)
    t0 = lead["created_at"]
    for days in (-1, 1, 29, 31):  # before creation, inside, inside, after the first month
        activity(crm, lead, "email", t0 + dt.timedelta(days=days))
    assert score(crm, lead["id"]) == Decimal("4.00")

    now = dt.datetime.now(UTC)
    activity(crm, lead, "call", now - dt.timedelta(days=3))
    activity(crm, lead, "call", now - dt.timedelta(days=10))
    activity(crm, lead, "meeting", now - dt.timedelta(days=10))
    # 4 + 1 (one call in the last 7 days) + 8 * 0.5 (one half-life old)
    assert abs(score(crm, lead["id"]) - Decimal("9.00")) <= Decimal("0.01")
    rules = rules_of(crm)
    with crm.engine.begin() as conn:  # ten days later: the call has left the window, the meeting halved again
        engine.recompute(crm, conn, rules, engine.Scope(ids=[lead["id"]]), now + dt.timedelta(days=10))
    assert abs(score(crm, lead["id"]) - Decimal("6.00")) <= Decimal("0.01")
    notes = {(r[1], r[4]) for r in ledger(crm, lead["id"])}
    assert ("meeting", "decayed") in notes
    assert rules.time_dependent


# ---------------------------------------------------------------------------------------------
# Email events and web visits
# ---------------------------------------------------------------------------------------------
EVENT_RULES = """
    groups:
      - name: engagement
        source: event
        cap: 4
        rules:
          - {name: opened, event: email.opened, points: 1, once_per: day}
          - {name: clicked, event: email.clicked, points: 1.5}
          - {name: visit, event: web.visit, points: 0.5, cap: 1}
"""


def test_email_opens_clicks_and_web_visits_score_with_once_per_and_caps(tmp_path, db_url):
    crm, org = scoring_crm(tmp_path, db_url, EVENT_RULES)
    lead = crm.records.create("lead", {"last_name": "E"}, actor=SYSTEM)
    day = dt.datetime(2026, 3, 2, 3, tzinfo=UTC)
    events = [Event("email.opened", "lead", lead["id"], SYSTEM, {"at": (day + dt.timedelta(hours=h)).isoformat()})
              for h in (0, 1, 2)]
    events.append(Event("email.opened", "lead", lead["id"], SYSTEM, {"at": (day + dt.timedelta(days=1)).isoformat()}))
    events.append(Event("email.clicked", "lead", lead["id"], SYSTEM, {"campaign": 7}))
    events.append(Event("email.opened", "deal", 1, SYSTEM, {}))  # not about a lead: ignored
    dispatch(crm, events)
    assert score(crm, lead["id"]) == Decimal("3.50")  # 2 opening days + 1.5

    # A contact's events count for the lead it was converted from.
    acme = crm.records.create("account", {"name": "ACME"}, actor=SYSTEM)
    contact = crm.records.create("contact", {"account": acme["id"], "last_name": "E"}, actor=SYSTEM)
    crm.records.update("lead", lead["id"], {"converted_contact": contact["id"]}, actor=SYSTEM)
    dispatch(crm, [Event("email.clicked", "contact", contact["id"], SYSTEM, {})])
    assert score(crm, lead["id"]) == Decimal("4.00")  # group cap 4
    assert ("engagement", "clicked", 1.5, 0.5, "group_cap") in ledger(crm, lead["id"])

    other = crm.records.create("lead", {"last_name": "W"}, actor=SYSTEM)
    from crmkit.core.tokens import create_token

    token, _info = create_token(crm, "admin", "test")
    client = login(crm, "admin")
    headers = {"Authorization": f"Bearer {token}"}
    for _ in range(3):
        r = client.post(f"/api/v1/lead/{other['id']}/track_visit", json={"url": "https://example.jp/pricing"},
                        headers=headers)
        assert r.status_code == 200, r.text
    assert Decimal(str(r.json()["lead"]["scoring_score"])) == Decimal("1.00")  # visit rule cap 1
    bad = client.post(f"/api/v1/lead/{other['id']}/track_visit", json={"at": "yesterday"}, headers=headers)
    assert bad.status_code == 422 and bad.json()["errors"][0]["field"] == "at"
    assert client.post("/api/v1/lead/999999/track_visit", json={}, headers=headers).status_code == 404


# ---------------------------------------------------------------------------------------------
# Thresholds: set fields and notify, once per crossing
# ---------------------------------------------------------------------------------------------
THRESHOLD_RULES = """
    groups:
      - name: acts
        source: activity
        rules: [{name: visit, when: {type: visit, status: done}, points: 3}]
    thresholds:
      - {name: hot, label: {en: Hot lead, ja: 有望}, min: 6, set: {rating: hot}, notify: [owner, mia]}
"""


def test_thresholds_set_fields_and_notify_once_per_crossing(tmp_path, db_url):
    crm, org = scoring_crm(tmp_path, db_url, THRESHOLD_RULES)
    alice = actor_of(org["users"]["alice"])
    lead = crm.records.create("lead", {"last_name": "H"}, actor=alice)
    v1 = activity(crm, lead, "visit", dt.datetime(2026, 3, 1, tzinfo=UTC), actor=alice)
    assert crm.records.get("lead", lead["id"], actor=SYSTEM)["rating"] is None
    v2 = activity(crm, lead, "visit", dt.datetime(2026, 3, 2, tzinfo=UTC), actor=alice)
    after = crm.records.get("lead", lead["id"], actor=SYSTEM)
    assert after["rating"] == "hot" and after["scoring_score"] == Decimal("6.00")
    notes = crm.system_tables["crmkit_notification"]

    def notified():
        with crm.engine.connect() as conn:
            return sorted(conn.execute(sa.select(notes.c.user_id).where(notes.c.kind == "lead_scoring")).scalars())

    assert notified() == sorted([org["users"]["alice"]["id"], org["users"]["mia"]["id"]])
    activity(crm, lead, "visit", dt.datetime(2026, 3, 3, tzinfo=UTC), actor=alice)  # still above: no new action
    assert len(notified()) == 2
    crm.records.update("lead", lead["id"], {"rating": "warm"}, actor=SYSTEM)
    crm.records.delete("activity", v1["id"], actor=SYSTEM)
    crm.records.delete("activity", v2["id"], actor=SYSTEM)  # below 6: the crossing is forgotten
    activity(crm, lead, "visit", dt.datetime(2026, 3, 4, tzinfo=UTC), actor=alice)  # crosses again
    assert crm.records.get("lead", lead["id"], actor=SYSTEM)["rating"] == "hot"
    assert len(notified()) == 4


# ---------------------------------------------------------------------------------------------
# The first-month KPI reminders (day 14 and day 25)
# ---------------------------------------------------------------------------------------------
def test_kpi_reminders_at_day_14_and_25_create_one_task_per_lead_and_checkpoint(tmp_path, db_url):
    crm, org = scoring_crm(tmp_path, db_url)  # the shipped rules: 5 points in 30 days, checks at 14 and 25
    alice = actor_of(org["users"]["alice"])
    slow = crm.records.create("lead", {"last_name": "Slow"}, actor=alice)
    steady = crm.records.create("lead", {"last_name": "Steady"}, actor=alice)
    done = crm.records.create("lead", {"last_name": "Qualified", "status": "qualified"}, actor=alice)
    t0 = max(slow["created_at"], steady["created_at"], done["created_at"])
    activity(crm, slow, "call", t0 + dt.timedelta(days=1), actor=alice)  # 1 point
    activity(crm, steady, "visit", t0 + dt.timedelta(days=2), actor=alice)  # 3 + 1 = 4 points
    activity(crm, steady, "call", t0 + dt.timedelta(days=3), actor=alice)
    rules = rules_of(crm)

    def tasks():
        page = crm.records.list("activity", actor=SYSTEM, filter={"type": "task"}, limit=100)
        return sorted((r["lead"], r["assignee"], r["owner"]) for r in page.items)

    assert actions.remind(crm, rules, now=t0 + dt.timedelta(days=13)) == []
    day14 = actions.remind(crm, rules, now=t0 + dt.timedelta(days=14, hours=1))
    verdicts = {d["lead"]: (d["points"], d["expected"], d["behind"]) for d in day14}
    assert verdicts == {slow["id"]: (1.0, 2.33, True), steady["id"]: (4.0, 2.33, False)}  # qualified: not checked
    alice_id = org["users"]["alice"]["id"]
    assert tasks() == [(slow["id"], alice_id, alice_id)]
    assert actions.remind(crm, rules, now=t0 + dt.timedelta(days=15)) == []  # idempotent
    assert len(tasks()) == 1
    day25 = actions.remind(crm, rules, now=t0 + dt.timedelta(days=25, hours=2))
    assert {d["lead"]: (d["points"], d["behind"]) for d in day25} == {slow["id"]: (1.0, True),
                                                                     steady["id"]: (4.0, True)}
    assert tasks() == sorted([(slow["id"], alice_id, alice_id), (slow["id"], alice_id, alice_id),
                              (steady["id"], alice_id, alice_id)])
    assert actions.remind(crm, rules, now=t0 + dt.timedelta(days=26)) == []
    assert actions.remind(crm, rules, now=t0 + dt.timedelta(days=31)) == []  # the month is over
    task = crm.records.list("activity", actor=SYSTEM, filter={"type": "task", "lead": steady["id"]}).items[0]
    assert task["status"] == "planned" and task["priority"] == "high" and "4" in task["description"]
    page = login(crm, "alice").get(f"/admin/lead/{steady['id']}").text
    assert f"/admin/activity/{task['id']}" in page and "Day 14" in page and "Day 25" in page


def test_the_reminder_job_runs_through_the_worker(tmp_path, db_url):
    from crmkit.core import jobs

    crm, org = scoring_crm(tmp_path, db_url)
    lead = crm.records.create("lead", {"last_name": "Late"}, actor=actor_of(org["users"]["bob"]))
    later = lead["created_at"] + dt.timedelta(days=14, hours=3)
    jobs.run_once(crm, now=later)
    page = crm.records.list("activity", actor=SYSTEM, filter={"type": "task", "lead": lead["id"]})
    assert [r["assignee"] for r in page.items] == [org["users"]["bob"]["id"]]
    jobs.run_once(crm, now=later + dt.timedelta(hours=2))
    assert crm.records.list("activity", actor=SYSTEM, filter={"type": "task", "lead": lead["id"]}).count == 1


# ---------------------------------------------------------------------------------------------
# Set-based recompute agrees with the per-save one
# ---------------------------------------------------------------------------------------------
def test_set_based_recompute_of_all_leads_matches_the_scores_kept_on_save(tmp_path, db_url):
    crm, org = scoring_crm(tmp_path, db_url, FIT_RULES, overlay=ACCOUNT_OVERLAY)
    acme = crm.records.create("account", {"name": "ACME", "industry": "it"}, actor=SYSTEM)
    ids = []
    for i in range(7):
        lead = crm.records.create("lead", {"last_name": f"L{i}", "employees": 50 * i,
                                           "account": acme["id"] if i % 2 else None}, actor=SYSTEM)
        ids.append(lead["id"])
        for j in range(i):
            activity(crm, lead, ("call", "visit")[j % 2], dt.datetime(2026, 3, 1 + j // 3, j, tzinfo=UTC),
                     outcome="positive" if j == 4 else None)
    kept = {i: score(crm, i) for i in ids}
    ledger_before = {i: ledger(crm, i) for i in ids}
    lead_t = crm.table("lead")
    with crm.engine.begin() as conn:  # wipe what the saves computed
        conn.execute(sa.update(lead_t).values(scoring_score=None, scoring_grade=None))
        conn.execute(sa.delete(crm.system_tables["scoring_ledger"]))
    seen = []
    assert engine.recompute_all(crm, rules_of(crm), chunk=3, progress=seen.append) == 7
    assert sum(seen) == 7 and len(seen) == 3
    assert {i: score(crm, i) for i in ids} == kept
    assert {i: ledger(crm, i) for i in ids} == ledger_before
    assert len({v for v in kept.values()}) > 3


MIXED_RULES = """
    max_score: 14
    grades: [{name: A, min: 10}, {name: B, min: 3}]
    groups:
      - name: first
        source: activity
        window: {from: created_at, days: [0, 30]}
        rules:
          - {name: visit, when: {type: {in: [visit, meeting]}, status: done}, points: 3}
          - {name: call, when: {type: call, status: done}, points: 1, cap: 2.5}
          - {name: positive, when: {status: done, outcome: positive}, points: 2, once_per: week}
          - {name: negative, when: {outcome: negative}, points: -1.5}
      - name: later
        source: activity
        window: {from: created_at, days: [30, 3650]}
        half_life_days: 20
        cap: 4
        rules:
          - {name: done, when: {status: done}, points: 1.3, once_per: day}
          - {name: email, when: {type: email}, points: 0.7, half_life_days: 5, cap: 2}
          - {name: monthly, when: {type: visit}, points: 2, once_per: month}
      - name: planned
        source: activity
        date: [due_at, created_at]
        window: {rolling_days: 60}
        rules: [{name: planned, when: {status: planned}, points: 0.25, once_per: lead}]
      - name: fit
        source: lead
        cap: 4
        rules:
          - {name: referral, when: {source: referral}, points: 3}
          - {name: big, when: {employees: {gte: 200}}, points: 2}
          - {name: no_email, when: {email: {is_null: true}}, points: -0.5}
      - name: engagement
        source: event
        window: {rolling_days: 90}
        half_life_days: 30
        cap: 3
        rules:
          - {name: opened, event: email.opened, points: 0.5, once_per: day}
          - {name: clicked, event: email.clicked, points: 1, cap: 2}
          - {name: visit, event: web.visit, points: 0.5, once_per: week, cap: 1}
"""


def full_ledger(crm) -> dict[int, list[tuple]]:
    """Every ledger row of every lead, exactly (times, sources, raw and effective points, notes)."""
    table = crm.system_tables["scoring_ledger"]
    out: dict[int, list[tuple]] = {}
    with crm.engine.connect() as conn:
        for r in conn.execute(sa.select(table)).mappings():
            out.setdefault(r["lead_id"], []).append((r["group_name"], r["rule_name"], r["source_entity"],
                                                     r["source_id"], r["at"], r["points"], r["effective"], r["note"]))
    return {k: sorted(v, key=repr) for k, v in out.items()}


def test_a_chunked_recompute_of_a_mixed_data_set_writes_exactly_what_the_per_save_path_writes(
        tmp_path, db_url, monkeypatch):
    """A full recompute writes chunks without the group caps and max_score first and computes again
    only the leads above a cap; every rule feature must still give the per-save path's results."""
    import random

    crm, _org = scoring_crm(tmp_path, db_url, MIXED_RULES)
    rnd = random.Random(7)
    base = dt.datetime(2026, 1, 5, tzinfo=UTC)
    ids = []
    for i in range(14):
        lead = crm.records.create("lead", {
            "last_name": f"M{i}", "source": ("referral", "web", None)[i % 3], "employees": (20, 250)[i % 2],
            "email": f"m{i}@example.jp" if i % 4 else None}, actor=SYSTEM)
        ids.append(lead["id"])
        t0 = lead["created_at"]
        if i % 5 == 0:  # busy leads: over the call cap and max_score
            for day in (1, 2, 2, 4, 5, 6):
                activity(crm, lead, ("call", "visit")[day % 2], t0 + dt.timedelta(days=day), outcome="positive")
        for j in range(rnd.randrange(0, 12)):
            at = t0 + dt.timedelta(days=rnd.choice([1, 1, 3, 8, 20, 29, 35, 36, 50, 70, -2]), hours=j % 3)
            done = rnd.random() < 0.75
            activity(crm, lead, rnd.choice(["call", "call", "email", "visit", "meeting", "task"]), at,
                     status="done" if done else "planned",
                     outcome=rnd.choice(["positive", "positive", "negative", None]) if done else None)
        events = [Event(rnd.choice(["email.opened", "email.clicked", "web.visit"]), "lead", lead["id"], SYSTEM,
                        {"at": (base + dt.timedelta(days=rnd.choice([60, 60, 61, 75, 100, 130]),
                                                    hours=rnd.randrange(24))).isoformat()})
                  for _ in range(rnd.randrange(0, 9))]
        dispatch(crm, events)
    rules = rules_of(crm)
    now = dt.datetime(2026, 6, 1, 3, tzinfo=UTC)  # fixed: decay and rolling windows depend on it
    for lead_id in ids:  # the per-save path: one lead at a time, all steps in one statement
        with crm.engine.begin() as conn:
            engine.recompute(crm, conn, rules, engine.Scope(ids=[lead_id]), now)
    per_save = full_ledger(crm)
    scores = {i: score(crm, i) for i in ids}
    notes = {row[-1] for rows in per_save.values() for row in rows}
    # the data set reaches every step, or the comparison would prove little
    assert {"once_per", "rule_cap", "group_cap", "max_score", "decayed", None} <= notes, notes
    assert len(set(scores.values())) > 6

    lead_t = crm.table("lead")
    # leads above a cap written again in one batch, one at a time, or with their whole chunk
    for chunk, redo in ((1000, engine.REDO_IDS), (4, 1), (1, engine.REDO_IDS)):
        monkeypatch.setattr(engine, "REDO_IDS", redo)
        with crm.engine.begin() as conn:
            conn.execute(sa.update(lead_t).values(scoring_score=None, scoring_grade=None))
            conn.execute(sa.delete(crm.system_tables["scoring_ledger"]))
        assert engine.recompute_all(crm, rules, now=now, chunk=chunk) == len(ids)
        assert full_ledger(crm) == per_save
        assert {i: score(crm, i) for i in ids} == scores
        grades = {i: crm.records.get("lead", i, actor=SYSTEM)["scoring_grade"] for i in ids}
        assert grades == {i: engine.grade_of(rules, float(s)) for i, s in scores.items()}


def test_a_chunk_of_a_sqlite_recompute_reads_activities_through_the_lead_index(tmp_path):
    """SQLite has no statistics: left alone it reads every activity of a type for each chunk (a
    recompute quadratic in the table size); each chunk must range-scan its own leads' activities."""
    crm, org = scoring_crm(tmp_path, f"sqlite:///{tmp_path / 'plan.db'}", FIT_RULES, overlay=ACCOUNT_OVERLAY)
    lead = crm.records.create("lead", {"last_name": "P"}, actor=SYSTEM)
    for j in range(3):
        activity(crm, lead, ("call", "visit", "email")[j], dt.datetime(2026, 3, 1, j, tzinfo=UTC))
    now = dt.datetime(2026, 6, 1, tzinfo=UTC)
    pipe = engine.Pipeline(crm, rules_of(crm), now)
    lead_index = {ix.name for ix in crm.table("activity").indexes if [c.name for c in ix.columns] == ["lead"]}
    assert lead_index
    with crm.engine.connect() as conn:
        for scope in (engine.Scope(id_range=(1, 20000)), engine.Scope(ids=[lead["id"]])):
            sql = str(pipe.select(scope).compile(crm.engine, compile_kwargs={"literal_binds": True}))
            plan = [r[3] for r in conn.exec_driver_sql("EXPLAIN QUERY PLAN " + sql)]
            reads = [p for p in plan if " activity " in f"{p} "]
            assert reads and all(any(name in p for name in lead_index) for p in reads), plan
            rows = conn.execute(pipe.select(scope)).all()
            assert sorted((r.rule_name, r.effective) for r in rows if r.source_entity == "activity") == [
                ("call", 1.0), ("visit", 3.0)]


# ---------------------------------------------------------------------------------------------
# Bad rule files
# ---------------------------------------------------------------------------------------------
def test_bad_rule_files_give_file_line_errors_and_the_previous_rules_stay_active(tmp_path, db_url):
    crm, _org = scoring_crm(tmp_path, db_url, THRESHOLD_RULES)
    path = tmp_path / "rules" / "lead_scoring.yaml"
    good = rules_of(crm)
    assert good is not None and rule_files.check(crm, KIND) == []
    path.write_text(textwrap.dedent("""\
        groups:
          - name: acts
            source: activity
            rules:
              - {name: visit, when: {typ: visit}, points: 3}
              - {name: visit, when: {type: {gte: 2}}, points: many}
          - name: fit
            source: lead
            rules: [{name: x, when: {nosuch.field: 1}, points: 1}]
        thresholds:
          - {name: t, min: 1, set: {no_field: 1}}
        kpis:
          - {name: k, group: missing, target: 5, days: 30, checkpoints: [40]}
    """), encoding="utf-8")
    problems = [str(p) for p in rule_files.check(crm, KIND)]
    assert any(p.startswith(f"{path}:6: groups[0].rules[1].points") for p in problems), problems
    path.write_text(path.read_text().replace("points: many", "points: 1"), encoding="utf-8")
    problems = [str(p) for p in rule_files.check(crm, KIND)]
    assert any(f"{path}:5: groups[0].rules[0].when.typ" in p and "typ" in p for p in problems), problems
    assert any(":6: groups[0].rules[1].name: duplicate rule name" in p for p in problems), problems
    assert any(":9: groups[1].rules[0].when" in p and "nosuch" in p for p in problems), problems
    assert any(":11: thresholds[0].set.no_field" in p for p in problems), problems
    assert any(":13: kpis[0].group" in p for p in problems), problems
    assert any(":13: kpis[0].checkpoints" in p for p in problems), problems
    # a running CRM keeps the previous rules and reports why
    assert rules_of(crm) is good
    status = rule_files.status(crm, KIND)
    assert status["problems"] and status["active"]
    lead = crm.records.create("lead", {"last_name": "Still"}, actor=SYSTEM)
    activity(crm, lead, "visit", dt.datetime(2026, 3, 1, tzinfo=UTC))
    assert score(crm, lead["id"]) == Decimal("3.00")
    admin_page = login(crm, "admin").get(f"/admin/lead/{lead['id']}").text
    assert "previous rules stay in force" in admin_page and "kpis[0].group" in admin_page
    path.write_text(textwrap.dedent(THRESHOLD_RULES).replace("points: 3", "points: 5"), encoding="utf-8")
    assert rule_files.reload(crm, KIND) == []
    assert rules_of(crm) is not good and rules_of(crm).groups[0].rules[0].points == 5


def test_the_documented_rule_file_and_the_shipped_default_are_valid_and_score(tmp_path, db_url):
    import re
    from pathlib import Path

    doc = (Path(__file__).resolve().parent.parent / "docs" / "plugins" / "lead_scoring.md").read_text("utf-8")
    (example,) = re.findall(r"```yaml\n(.*?)```", doc, re.S)
    crm, org = scoring_crm(tmp_path, db_url, example)
    rules = rules_of(crm)
    assert rule_files.status(crm, KIND)["problems"] == []
    assert [g.name for g in rules.groups] == ["fit", "first_month", "engagement"] and rules.time_dependent
    lead = crm.records.create("lead", {"last_name": "Doc", "source": "referral", "industry": "it"}, actor=SYSTEM)
    activity(crm, lead, "meeting", lead["created_at"] + dt.timedelta(days=1), outcome="positive")
    dispatch(crm, [Event("web.visit", "lead", lead["id"], SYSTEM, {})])
    # fit 3 + 2 - 1 (no email); a meeting 3 + positive outcome 2; a web visit 0.5 (today, no decay yet)
    assert abs(score(crm, lead["id"]) - Decimal("9.50")) <= Decimal("0.01")
    assert rule_files.load(crm, KIND, KIND.fallback).kpis[0].checkpoints == (14, 25)
