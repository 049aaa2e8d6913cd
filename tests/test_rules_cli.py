"""The command line of the rule plugins: ``crmkit check``, ``crmkit rules test|check|reload``,
``crmkit scoring recompute|remind`` — run as real subprocesses on SQLite and PostgreSQL."""

from __future__ import annotations

import datetime as dt
import textwrap

import sqlalchemy as sa

from crmkit.core.actors import SYSTEM
from tests.support import actor_of, make_crm, make_org

SCORING = """\
    groups:
      - name: acts
        source: activity
        rules:
          - {name: call, when: {type: call, status: done}, points: 1}
          - {name: visit, when: {type: visit, status: done}, points: 3}
    kpis:
      - {name: first_month, group: acts, target: 5, days: 30, checkpoints: [14, 25]}
"""
ASSIGNMENT = """\
    rules:
      - name: web
        when: {source: web}
        strategy: round_robin
        members: [alice, bob]
    fallback: {user: admin}
"""


def setup_project(project, db_url, scoring=SCORING, assignment=ASSIGNMENT):
    (project / "crmkit.yaml").write_text("plugins: [lead_scoring, assignment_rules]\n", encoding="utf-8")
    (project / "rules").mkdir(exist_ok=True)
    (project / "rules" / "lead_scoring.yaml").write_text(textwrap.dedent(scoring), encoding="utf-8")
    (project / "rules" / "assignment.yaml").write_text(textwrap.dedent(assignment), encoding="utf-8")
    crm = make_crm(project, db_url)
    return crm, make_org(crm)


def snapshot(crm) -> dict:
    """Everything the rule commands could write."""
    out = {}
    with crm.engine.connect() as conn:
        for name in ("lead", "activity", "scoring_ledger", "scoring_reminder", "assignment_turn",
                     "assignment_log", "assignment_counter"):
            table = crm.system_tables.get(name) if name not in crm.schema.tables else crm.table(name)
            out[name] = sorted(tuple(str(v) for v in r) for r in conn.execute(sa.select(table)))
    return out


def test_check_reports_bad_rule_files_with_file_and_line(cli, project, db_url):
    crm, _org = setup_project(project, db_url)
    ok = cli("check")
    assert ok.returncode == 0, ok.stderr
    assert ok.stdout.startswith("OK:")
    (project / "rules" / "lead_scoring.yaml").write_text(
        "groups:\n  - name: acts\n    source: activity\n    rules:\n      - {name: x, when: {nosuch: 1}, points: 1}\n",
        encoding="utf-8")
    (project / "rules" / "assignment.yaml").write_text(
        "rules:\n  - {name: a, strategy: direct, user: nobody_here}\n", encoding="utf-8")
    bad = cli("check")
    assert bad.returncode == 1
    path = project / "rules"
    assert f"{path / 'lead_scoring.yaml'}:5: groups[0].rules[0].when.nosuch" in bad.stderr
    assert f"{path / 'assignment.yaml'}:1: (top): 'fallback' is a required property" in bad.stderr
    assert "problem(s) found" in bad.stderr
    rules = cli("rules", "check")
    assert rules.returncode == 1 and "lead_scoring.yaml:5:" in rules.stderr
    reload = cli("rules", "reload")
    assert reload.returncode == 1 and "NOT reloaded; the previous rules stay active" in reload.stderr
    (project / "rules" / "assignment.yaml").write_text(textwrap.dedent(ASSIGNMENT).replace("admin", "ghost"))
    (project / "rules" / "lead_scoring.yaml").write_text(textwrap.dedent(SCORING))
    unknown_user = cli("check")
    assert unknown_user.returncode == 1 and "no user 'ghost' in the database" in unknown_user.stderr
    (project / "rules" / "assignment.yaml").write_text(textwrap.dedent(ASSIGNMENT))
    good = cli("rules", "reload")
    assert good.returncode == 0 and "scoring:" in good.stdout and "reloaded." in good.stdout


def test_rules_test_dry_runs_scoring_and_assignment_and_writes_nothing(cli, project, db_url):
    crm, org = setup_project(project, db_url)
    alice = actor_of(org["users"]["alice"])
    leads = [crm.records.create("lead", {"last_name": f"Lead{i}", "source": "web", "owner": alice.id},
                                actor=SYSTEM) for i in range(3)]
    now = dt.datetime.now(dt.UTC)
    for type_ in ("call", "visit"):
        crm.records.create("activity", {"subject": type_, "type": type_, "status": "done", "lead": leads[0]["id"],
                                        "completed_at": now.isoformat()}, actor=SYSTEM)
    before = snapshot(crm)
    # a candidate file: calls now score 2
    candidate = project / "candidate.yaml"
    candidate.write_text(textwrap.dedent(SCORING).replace("points: 1", "points: 2"), encoding="utf-8")
    out = cli("rules", "test", str(candidate), "--sample", "2")
    assert out.returncode == 0, out.stderr
    assert f"lead #{leads[2]['id']} Lead2: 0" in out.stdout
    assert f"lead #{leads[0]['id']} Lead0" not in out.stdout  # only the 2 newest
    out = cli("rules", "test", str(candidate), "--sample", "5")
    assert f"lead #{leads[0]['id']} Lead0: 5 (stored: 4)" in out.stdout
    assert "acts: 5 (call 2, visit 3)" in out.stdout and "Nothing was written." in out.stdout

    out = cli("rules", "test", "rules/assignment.yaml", "--sample", "3", "--now", "2026-04-13T11:00:00+09:00")
    assert out.returncode == 0, out.stderr
    lines = [ln for ln in out.stdout.splitlines() if ln.startswith("lead #")]
    assert [ln.split(": ")[1].split(" ")[0] for ln in lines] == ["alice", "bob", "alice"]  # turns advance...
    assert "(rule web, round_robin" in lines[0] and "owner now: alice" in lines[0]
    assert snapshot(crm) == before  # ...but nothing was written

    bad = cli("rules", "test", str(project / "crmkit.yaml"))
    assert bad.returncode != 0 and "cannot tell which rules" in bad.stderr
    broken = project / "broken.yaml"
    broken.write_text("rules:\n  - {name: a, strategy: direct}\nfallback: {user: admin}\n", encoding="utf-8")
    out = cli("rules", "test", str(broken))
    assert out.returncode == 1 and f"{broken}:2: rules[0]: strategy direct needs `user:`" in out.stderr


def test_scoring_recompute_and_remind_commands(cli, project, db_url):
    crm, org = setup_project(project, db_url)
    alice = actor_of(org["users"]["alice"])
    lead = crm.records.create("lead", {"last_name": "Behind"}, actor=alice)
    crm.records.create("activity", {"subject": "c", "type": "call", "status": "done", "lead": lead["id"]},
                       actor=alice)
    lead_t = crm.table("lead")
    with crm.engine.begin() as conn:
        conn.execute(sa.update(lead_t).values(scoring_score=None))
    out = cli("scoring", "recompute", "--chunk", "100")
    assert out.returncode == 0, out.stderr
    assert "Recomputed 1 lead(s)" in out.stdout and "Recomputing lead scores" in out.stderr
    assert str(crm.records.get("lead", lead["id"], actor=SYSTEM)["scoring_score"]) == "1.00"

    day14 = (lead["created_at"] + dt.timedelta(days=14, hours=1)).isoformat()
    out = cli("scoring", "remind", "--now", day14)
    assert out.returncode == 0, out.stderr
    assert f"lead #{lead['id']} first_month day 14: 1/2.33 behind -> task #" in out.stdout
    assert "1 reminder task(s) created" in out.stdout
    again = cli("scoring", "remind", "--now", day14)
    assert "0 checkpoint(s) checked, 0 reminder task(s) created" in again.stdout
    tasks = crm.records.list("activity", actor=SYSTEM, filter={"type": "task", "lead": lead["id"]})
    assert tasks.count == 1 and tasks.items[0]["assignee"] == alice.id
    assert cli("scoring", "remind", "--now", "tomorrow").returncode == 2
