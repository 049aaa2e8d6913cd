"""Teams (crmkit.plugins.teams) on SQLite and PostgreSQL: member roles, the member activity page
(open deals, visits, tasks per member, as the viewer may see them) and team scope."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal as D

import pytest

from crmkit.core.actors import SYSTEM
from crmkit.core.errors import PermissionDenied
from crmkit.plugins.deals import close_deal
from crmkit.plugins.teams import is_team_manager, member_activity, members
from tests.support import XSS, actor_of, login, make_org, owned, token

NOW = dt.datetime(2026, 11, 20, 3, 0, tzinfo=dt.UTC)


@pytest.fixture
def org(crm):
    org = make_org(crm)
    s = crm.records
    users, east = org["users"], org["teams"]["east"]
    s.update("team", east["id"], {"manager": users["mia"]["id"], "members": [
        {"id": users["mia"]["id"], "role": "manager"}, {"id": users["alice"]["id"], "role": "member"}]},
        actor=SYSTEM)
    acc = s.create("account", {"name": "Acme", **owned(org, "alice")}, actor=SYSTEM)
    stages = org["stages"]

    def deal(name, user, stage, amount):
        return s.create("deal", {"name": name, "account": acc["id"], "stage": stages[stage]["id"], "amount": amount,
                                 **owned(org, user)}, actor=SYSTEM)

    deal(XSS, "alice", 0, 1000)  # 10 %
    deal("Alice two", "alice", 1, 500)  # 40 %
    won = deal("Alice won", "alice", 2, 9000)
    close_deal(crm, won["id"], outcome="won", actor=SYSTEM)
    deal("Mia big", "mia", 2, 2000)  # 80 %
    deal("Bob west", "bob", 1, 4000)

    def activity(user, kind, status, when, subject):
        return s.create("activity", {"subject": subject, "type": kind, "status": status, "due_at": when,
                                     "assignee": users[user]["id"], **owned(org, user)}, actor=SYSTEM)

    day = dt.timedelta(days=1)
    activity("alice", "visit", "planned", NOW + day, "Visit tomorrow")
    activity("alice", "visit", "planned", NOW - day, "Visit missed")
    activity("alice", "meeting", "planned", NOW + 3 * day, "Meeting")
    activity("alice", "task", "planned", NOW - 2 * day, "Send quote")
    done_task = activity("alice", "task", "planned", NOW + day, "Done task")
    s.update("activity", done_task["id"], {"status": "done"}, actor=SYSTEM)
    visited = activity("alice", "visit", "planned", NOW - 5 * day, "Visited")
    s.update("activity", visited["id"], {"status": "done", "result": "ok"}, actor=SYSTEM)
    activity("bob", "visit", "planned", NOW + day, "Bob visit")
    return org


def test_members_and_roles(crm, org):
    users, east = org["users"], org["teams"]["east"]["id"]
    assert members(crm, east) == [(users["mia"]["id"], "manager"), (users["admin"]["id"], "member"),
                                  (users["alice"]["id"], "member")]
    assert is_team_manager(crm, actor_of(users["mia"]), east)
    assert not is_team_manager(crm, actor_of(users["alice"]), east)
    assert members(crm, org["teams"]["west"]["id"]) == [(users["bob"]["id"], "member")]


def test_member_activity_figures(crm, org):
    users = org["users"]
    rows = {m.name: m for m in member_activity(crm, actor_of(users["mia"]), org["teams"]["east"]["id"], now=NOW)}
    assert list(rows) == ["Mia", "Admin", "Alice"]
    alice = rows["Alice"]
    assert (alice.deals, alice.amount, alice.weighted) == (2, D("1500.00"), D("300.00"))
    assert (alice.visits, alice.overdue_visits, alice.tasks, alice.overdue_tasks, alice.visits_done) == (3, 1, 1, 1, 1)
    assert sorted(d["name"] for d in alice.deal_items) == sorted([XSS, "Alice two"])
    assert [a["subject"] for a in alice.visit_items] == ["Visit missed", "Visit tomorrow", "Meeting"]
    assert [a["overdue"] for a in alice.visit_items] == [True, False, False]
    assert [a["subject"] for a in alice.task_items] == ["Send quote"]
    mia = rows["Mia"]
    assert (mia.deals, mia.amount, mia.weighted, mia.visits, mia.tasks) == (1, D("2000.00"), D("1600.00"), 0, 0)
    assert (rows["Admin"].deals, rows["Admin"].visits) == (0, 0)


def test_who_may_see_a_team(crm, org):
    users, east, west = org["users"], org["teams"]["east"]["id"], org["teams"]["west"]["id"]
    with pytest.raises(PermissionDenied):
        member_activity(crm, actor_of(users["bob"]), east, now=NOW)
    assert [m.name for m in member_activity(crm, actor_of(users["alice"]), east, now=NOW)] == ["Mia", "Admin",
                                                                                               "Alice"]
    bob_view = member_activity(crm, actor_of(users["bob"]), west, now=NOW)
    assert [(m.name, m.deals, m.visits) for m in bob_view] == [("Bob", 1, 1)]
    # a manager (read: all) sees any team
    assert member_activity(crm, actor_of(users["mia"]), west, now=NOW)[0].deals == 1


def test_team_scope_limits_what_a_rep_reads(crm, org):
    users = org["users"]
    alice, bob = actor_of(users["alice"]), actor_of(users["bob"])
    names = {d["name"] for d in crm.records.list("deal", actor=alice).items}
    assert {"Mia big", "Alice two"} <= names and "Bob west" not in names
    assert {a["subject"] for a in crm.records.list("activity", actor=bob).items} == {"Bob visit"}


def test_member_activity_page(crm, org):
    east = org["teams"]["east"]["id"]
    client = login(crm, "alice")
    assert client.get("/admin/my-team").headers["location"] == f"/admin/team/{east}/activity"
    page = client.get(f"/admin/team/{east}/activity")
    assert page.status_code == 200
    assert XSS not in page.text and "&lt;script&gt;" in page.text
    assert "Send quote" in page.text and "Visit tomorrow" in page.text and '<svg class="chart-svg"' in page.text
    detail = client.get(f"/admin/team/{east}").text
    assert f'href="/admin/team/{east}/activity"' in detail
    bob = login(crm, "bob")
    assert bob.get(f"/admin/team/{east}/activity").status_code == 403
    assert f'href="/admin/team/{east}/activity"' not in bob.get(f"/admin/team/{east}").text
    assert bob.get("/admin/team/999/activity").status_code == 404
    assert 'href="/admin/my-team"' in bob.get("/admin/").text
    assert token(client)


def test_japanese_page(crm, org):
    east = org["teams"]["east"]["id"]
    page = login(crm, "mia").get(f"/admin/team/{east}/activity")  # mia's locale is ja
    assert page.status_code == 200 and "メンバーの活動" in page.text and "進行中の商談" in page.text
