"""Assignment rules (plugins_contrib/assignment_rules): strategies, availability, channels, log,
bad files, and concurrent round-robin on PostgreSQL — on SQLite and PostgreSQL."""

from __future__ import annotations

import datetime as dt
import multiprocessing
import sys
import textwrap
from collections import Counter
from pathlib import Path

import pytest
import sqlalchemy as sa

from crmkit.core.actors import SYSTEM
from crmkit.core.db import write_connection
from crmkit.hookspecs import hookimpl
from plugins_contrib import rule_files
from plugins_contrib.assignment_rules import engine, rules_of
from plugins_contrib.assignment_rules.rules import KIND
from tests.support import actor_of, login, make_crm, make_org, token

JST = dt.timezone(dt.timedelta(hours=9))


def write_rules(project: Path, text: str) -> Path:
    (project / "rules").mkdir(exist_ok=True)
    path = project / "rules" / "assignment.yaml"
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return path


def assign_crm(tmp_path, db_url, rules: str, *, plugins=(), overlay: str | None = None):
    write_rules(tmp_path, rules)
    if overlay:
        (tmp_path / "schemas").mkdir(exist_ok=True)
        (tmp_path / "schemas" / "extra.yaml").write_text(textwrap.dedent(overlay), encoding="utf-8")
    crm = make_crm(tmp_path, db_url, enable=["assignment_rules"], plugins=list(plugins))
    org = make_org(crm)
    return crm, org, {u["id"]: name for name, u in org["users"].items()}


def new_lead(crm, **values):
    return crm.records.create("lead", {"last_name": "L", **values}, actor=SYSTEM)


RULES = """
    rules:
      - name: big
        when: {employees: {gte: 1000}}
        strategy: direct
        user: mia
      - name: web
        when: {source: web}
        strategy: round_robin
        team: East
      - name: events
        when: {source: event}
        strategy: weighted
        members: {alice: 3, bob: 1}
      - name: referrals
        when: {source: referral}
        strategy: least_loaded
        members: [alice, bob]
    fallback: {user: bob}
"""


def test_ordered_rules_first_match_wins_with_every_strategy_and_a_fallback(tmp_path, db_url):
    crm, org, names = assign_crm(tmp_path, db_url, RULES)
    east = org["teams"]["east"]["id"]
    # direct, and the first matching rule wins (web would match too)
    big = new_lead(crm, employees=5000, source="web")
    assert names[big["owner"]] == "mia" and big["team"] == east
    # round robin over team East (admin, alice, mia by id), the turn kept in the database
    web = [names[new_lead(crm, source="web")["owner"]] for _ in range(6)]
    assert web == ["admin", "alice", "mia", "admin", "alice", "mia"]
    # weighted 3:1
    events = Counter(names[new_lead(crm, source="event")["owner"]] for _ in range(8))
    assert events == {"alice": 6, "bob": 2}
    # least loaded: bob has 2 open leads, alice 8 -> bob until they are even, then in turn
    refs = [names[new_lead(crm, source="referral")["owner"]] for _ in range(8)]
    assert refs[:6] == ["bob"] * 6 and sorted(refs[6:]) == ["alice", "bob"]
    # closed leads do not count as load
    for lead in crm.records.list("lead", actor=SYSTEM, filter={"owner": org["users"]["alice"]["id"]}).items[:6]:
        crm.records.update("lead", lead["id"], {"status": "unqualified", "unqualified_reason": "x"}, actor=SYSTEM)
    assert names[new_lead(crm, source="referral")["owner"]] == "alice"
    # nothing matches: the fallback
    other = new_lead(crm, source="sns")
    assert names[other["owner"]] == "bob"
    log = engine.log_of(crm, "lead", other["id"])
    assert log[0]["rule"] == "fallback" and log[0]["owner"] == org["users"]["bob"]["id"]
    # an owner given explicitly is never overridden
    mine = crm.records.create("lead", {"last_name": "M", "source": "web"}, actor=actor_of(org["users"]["alice"]))
    assert names[mine["owner"]] == "alice" and engine.log_of(crm, "lead", mine["id"]) == []


STICKY = """
    rules:
      - name: known
        strategy: sticky
        match:
          - {entity: account, field: name, value: company}
          - {entity: lead, field: email, value: email}
    fallback: {user: admin}
"""


def test_sticky_assigns_the_owner_of_the_matching_account_or_earlier_lead(tmp_path, db_url):
    crm, org, names = assign_crm(tmp_path, db_url, STICKY)
    bob, mia = org["users"]["bob"], org["users"]["mia"]
    crm.records.create("account", {"name": "株式会社サンプル", "owner": bob["id"]}, actor=SYSTEM)
    crm.records.create("lead", {"last_name": "Old", "email": "k@example.jp", "owner": mia["id"]}, actor=SYSTEM)
    assert names[new_lead(crm, company="株式会社サンプル", email="new@example.jp")["owner"]] == "bob"
    lead = new_lead(crm, company="Other", email="k@example.jp")
    assert names[lead["owner"]] == "mia"
    assert engine.log_of(crm, "lead", lead["id"])[0]["reason"].startswith("sticky: owner of lead #")
    unknown = new_lead(crm, company="Nobody", email="n@example.jp")
    entry = engine.log_of(crm, "lead", unknown["id"])[0]
    assert names[unknown["owner"]] == "admin" and entry["rule"] == "fallback"
    assert "no account with name = 'Nobody'" in entry["trace"][0]["why"]


AVAILABILITY = """
    time_zone: Asia/Tokyo
    working_hours: {days: [mon, tue, wed, thu, fri], start: "09:00", end: "18:00"}
    holidays: jp
    company_holidays: [2026-12-29]
    absences:
      - {user: alice, from: 2026-04-06, to: 2026-04-10}
    absence_field: away_until
    members:
      bob: {working_hours: {days: [mon, tue, wed, thu, fri, sat], start: "10:00", end: "16:00"}}
      mia: {capacity_per_day: 2, max_open: 3}
    rules:
      - name: sales
        strategy: round_robin
        members: [alice, bob, mia]
    fallback: {user: admin, strategy: direct, ignore_availability: true}
"""
AWAY_OVERLAY = """
    extends: user
    fields:
      away_until: {type: date, label: {en: Away until, ja: 不在期限}}
"""


def test_working_hours_absences_japanese_holidays_and_capacities_are_respected(tmp_path, db_url):
    crm, org, names = assign_crm(tmp_path, db_url, AVAILABILITY, overlay=AWAY_OVERLAY)
    rules = rules_of(crm)

    def decide(when: dt.datetime, **values):
        with write_connection(crm.engine) as conn, conn.begin():  # what before_save does, at a chosen time
            d = engine.decide(crm, conn, "lead", {"last_name": "x", **values}, rules, when)
            engine.write_log(crm, conn, "lead", None, d.as_dict(), when)
        why = {c["user"]: c["why"] for t in d.trace for c in t["candidates"]}
        why.update({c.username: c.reason for c in d.candidates})
        return names.get(d.owner), why

    monday = dt.datetime(2026, 4, 13, 11, 0, tzinfo=JST)
    assert decide(monday)[0] == "alice"
    owner, why = decide(dt.datetime(2026, 4, 13, 8, 30, tzinfo=JST))  # before anyone starts
    assert owner == "admin" and why["alice"] == "outside working hours"
    owner, why = decide(dt.datetime(2026, 4, 7, 11, 0, tzinfo=JST))  # alice on holiday
    assert owner in ("bob", "mia") and why["alice"] == "absent until 2026-04-10"
    owner, why = decide(dt.datetime(2026, 4, 29, 11, 0, tzinfo=JST))  # 昭和の日, a Wednesday
    assert owner == "admin" and why["bob"].startswith("public holiday")
    assert decide(dt.datetime(2026, 12, 29, 11, 0, tzinfo=JST))[1]["mia"] == "company holiday"
    saturday = dt.datetime(2026, 4, 18, 11, 0, tzinfo=JST)
    assert decide(saturday)[0] == "bob"  # only bob works on Saturdays
    assert decide(dt.datetime(2026, 4, 18, 17, 0, tzinfo=JST))[0] == "admin"  # bob's day ended at 16:00
    # capacity_per_day: mia may get 2 a day
    tuesday = dt.datetime(2026, 4, 14, 10, 30, tzinfo=JST)
    got = [decide(tuesday)[0] for _ in range(6)]
    assert got.count("mia") == 2 and set(got) == {"alice", "bob", "mia"}
    assert "daily capacity reached (2/2)" in decide(tuesday)[1]["mia"]
    # max_open: mia may hold 3 open leads
    for _ in range(3):
        crm.records.create("lead", {"last_name": "o", "owner": org["users"]["mia"]["id"]}, actor=SYSTEM)
    assert decide(dt.datetime(2026, 4, 15, 10, 30, tzinfo=JST))[1]["mia"] == "maximum open reached (3/3)"
    # the user field: bob away until a date
    crm.records.update("user", org["users"]["bob"]["id"], {"away_until": "2026-04-20"}, actor=SYSTEM)
    assert decide(dt.datetime(2026, 4, 16, 11, 0, tzinfo=JST))[1]["bob"] == "absent until 2026-04-20"


def test_rules_run_on_every_channel_and_the_log_is_shown_on_the_record(tmp_path, db_url):
    crm, org, names = assign_crm(tmp_path, db_url, RULES)
    # API: "owner": null asks for assignment; an omitted owner is the caller, as without the plugin
    client = login(crm, "alice")
    from crmkit.core.tokens import create_token

    bearer = {"Authorization": f"Bearer {create_token(crm, 'alice', 't')[0]}"}
    r = client.post("/api/v1/lead", json={"last_name": "Api", "source": "event", "owner": None}, headers=bearer)
    assert r.status_code == 201, r.text
    assert names[r.json()["owner"]] == "alice"  # weighted: alice first
    r = client.post("/api/v1/lead", json={"last_name": "Api2", "source": "sns"}, headers=bearer)
    assert names[r.json()["owner"]] == "alice"
    # admin form with the Owner field cleared
    form = {"last_name": "Form", "source": "sns", "owner": "", "_csrf": token(client)}
    r = client.post("/admin/lead/new", data=form)
    assert r.status_code == 303, r.text[:500]
    lead_id = int(r.headers["location"].rstrip("/").split("/")[-1])
    assert names[crm.records.get("lead", lead_id, actor=SYSTEM)["owner"]] == "bob"
    # imports, web forms and jobs write as the system: no owner, so the rules decide
    assert names[new_lead(crm, source="sns")["owner"]] == "bob"
    page = login(crm, "admin").get(f"/admin/lead/{lead_id}").text  # bob's (West) lead: alice may not see it
    assert "Assignment" in page and "Assigned to Bob" in page and "Rule fallback (direct)" in page
    assert "/admin/plugins/assignment_rules/static/assignment_rules.css" in page
    ja = login(crm, "mia").get(f"/admin/lead/{lead_id}").text
    assert "担当者の割り当て" in ja


def test_plugins_can_add_strategies_or_take_over_assignment(tmp_path, db_url):
    class Strategies:
        @hookimpl
        def register_assignment_strategies(self, crm):
            def newest_member(ctx):
                pool = [c for c in ctx.candidates if c.available]
                return (pool[-1].user_id, "newest member") if pool else None

            return {"newest_member": newest_member}

    class Override:
        @hookimpl
        def assign_owner(self, crm, entity, record, conn):
            if record.get("source") == "cold_call":
                return {"owner": 1, "rule": "telesales", "strategy": "custom", "reason": "plugin decided"}
            return None

    rules = RULES.replace("strategy: least_loaded", "strategy: newest_member")
    crm, org, names = assign_crm(tmp_path, db_url, rules, plugins=[Strategies(), Override()])
    assert names[new_lead(crm, source="referral")["owner"]] == "bob"
    taken = new_lead(crm, source="cold_call")
    assert taken["owner"] == 1 and engine.log_of(crm, "lead", taken["id"])[0]["reason"] == "plugin decided"


def test_bad_rule_files_give_file_line_errors_and_the_previous_rules_stay(tmp_path, db_url):
    crm, org, names = assign_crm(tmp_path, db_url, RULES)
    good = rules_of(crm)
    path = write_rules(tmp_path, """\
        rules:
          - name: a
            when: {industy: it}
            strategy: round_robin
          - name: a
            strategy: telepathy
            user: mia
          - name: c
            strategy: sticky
            match: [{entity: account, field: nme, value: company}]
        working_hours: {days: [mon], start: "18:00", end: "09:00"}
        absences: [{user: bob, from: 2026-05-10, to: 2026-05-01}]
        fallback: {strategy: direct}
    """)
    problems = [str(p) for p in rule_files.check(crm, KIND)]
    assert any(p.startswith(f"{path}:13: fallback") and "'user' is a required property" in p for p in problems)
    path.write_text(path.read_text().replace("fallback: {strategy: direct}", "fallback: {user: admin}"))
    problems = [str(p) for p in rule_files.check(crm, KIND)]
    expected = [":3: rules[0].when.industy", ":2: rules[0]: strategy round_robin needs",
                ":5: rules[1].name: duplicate", ":6: rules[1].strategy: unknown strategy 'telepathy'",
                ":10: rules[2].match[0].field: account has no field 'nme'", ":11: working_hours: end must be after",
                ":12: absences[0].to"]
    for needle in expected:
        assert any(needle in p for p in problems), (needle, problems)
    assert rules_of(crm) is good  # the running CRM keeps its rules
    assert names[new_lead(crm, employees=2000)["owner"]] == "mia"


# ---------------------------------------------------------------------------------------------
# Concurrency: round robin under simultaneous creations
# ---------------------------------------------------------------------------------------------
RR5 = """
    rules:
      - name: everyone
        strategy: round_robin
        members: [u1, u2, u3, u4, u5]
    fallback: {user: admin}
"""


def _create_leads(project: str, url: str, n: int, barrier) -> None:
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    from crmkit import CRM

    crm = CRM(project, database_url=url, enable=["assignment_rules"], entry_points=False)
    try:
        barrier.wait(timeout=60)
        for i in range(n):
            crm.records.create("lead", {"last_name": f"c{i}"}, actor=SYSTEM)
    finally:
        crm.close()


def _concurrent_round_robin(tmp_path, url: str) -> Counter:
    write_rules(tmp_path, RR5)
    crm = make_crm(tmp_path, url, enable=["assignment_rules"])
    make_org(crm)
    ids = {}
    for i in range(1, 6):
        u = crm.records.create("user", {"username": f"u{i}", "display_name": f"U{i}", "role": "sales_rep"},
                               actor=SYSTEM)
        ids[u["id"]] = f"u{i}"
    crm.close()
    ctx = multiprocessing.get_context("spawn")
    barrier = ctx.Barrier(5)
    procs = [ctx.Process(target=_create_leads, args=(str(tmp_path), url, 10, barrier)) for _ in range(5)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
        assert p.exitcode == 0
    crm = make_crm(tmp_path, url, enable=["assignment_rules"])
    lead = crm.table("lead")
    with crm.engine.connect() as conn:
        leads = conn.execute(sa.select(lead.c.id, lead.c.owner)).all()
    # the log explains every owner: one decision per lead, by the rule, naming the owner it set
    for lead_id, owner in leads:
        (entry,) = engine.log_of(crm, "lead", lead_id)
        assert (entry["rule"], entry["strategy"], entry["owner"]) == ("everyone", "round_robin", owner)
        assert entry["reason"].startswith("round robin: next in turn") and len(entry["candidates"]) == 5
    crm.close()
    assert len(leads) == 50
    return Counter(ids[o] for _i, o in leads)


@pytest.mark.postgres_only
def test_fifty_leads_created_concurrently_by_five_processes_go_ten_to_each_member(tmp_path, pg_url):
    assert _concurrent_round_robin(tmp_path, pg_url) == {f"u{i}": 10 for i in range(1, 6)}


def test_concurrent_round_robin_on_sqlite_too(tmp_path):
    url = f"sqlite:///{tmp_path / 'crm.db'}"
    assert _concurrent_round_robin(tmp_path, url) == {f"u{i}": 10 for i in range(1, 6)}


def test_the_documented_rule_file_and_the_shipped_example_are_valid(tmp_path, db_url):
    import re

    root = Path(__file__).resolve().parent.parent
    doc = (root / "docs" / "plugins" / "assignment_rules.md").read_text("utf-8")
    (example,) = re.findall(r"```yaml\n(.*?)```", doc, re.S)
    crm, org, names = assign_crm(tmp_path, db_url, example)
    rules = rules_of(crm)
    assert [r.name for r in rules.rules][:2] == ["existing_customer", "large_companies"]
    assert rules.fallback.user == "admin" and rules.members["bob"].hours is not None
    with write_connection(crm.engine) as conn, conn.begin():  # a Monday morning in Tokyo
        monday = dt.datetime(2026, 4, 13, 10, 0, tzinfo=JST)
        assert names[engine.decide(crm, conn, "lead", {"employees": 5000}, rules, monday).owner] == "mia"
        august = dt.datetime(2026, 8, 12, 10, 0, tzinfo=JST)  # 12 August 2026 is a Wednesday; bob is away
        d = engine.decide(crm, conn, "lead", {"prefecture": "東京都"}, rules, august)
        assert names[d.owner] == "alice" and "absent until 2026-08-14" in str(d.as_dict())
    shipped = rule_files.load(crm, KIND, root / "plugins_contrib" / "assignment_rules" / "example_rules.yaml")
    assert shipped.teams == {"tokyo": ("alice", "bob")}
