"""The benchmarks (bench/bench_all.py, which runs bench_admin.py and the rate scripts) at a tiny size,
so the scripts cannot rot.

Runs the real thing as a user would — a 2,000-lead database built through crmkit's migrations,
crmkit's admin and the floor served in their own processes, signed in, every case fetched,
checked against direct SQL and timed — only with few requests. SQLAdmin and Django admin join
when bench/.venv-peers exists (``python bench/bench_admin.py`` creates it); they are never
installed into crmkit's own environment. SQLite only: the benchmark is about SQLite.
"""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "bench"
sys.path.insert(0, str(BENCH))

import bench_admin  # noqa: E402


def _peers_ready() -> bool:
    return bench_admin.ensure_peer_venv(install=False, log=lambda _m: None)


def test_bench_all_runs_every_benchmark_end_to_end(tmp_path):
    """``bench/bench_all.py`` at a tiny size: the admin comparison and every rate in one report."""
    apps = ["floor", "crmkit"] + (["sqladmin", "django"] if _peers_ready() else [])
    out = tmp_path / "all.md"
    proc = subprocess.run(
        [sys.executable, str(BENCH / "bench_all.py"), "--rows", "2000", "--recipients", "60", "--saves", "10",
         "--apps", ",".join(apps), "--repeat", "2", "--data-dir", str(tmp_path / "data"),
         "--work-dir", str(tmp_path / "work"), "--out", str(out), "--no-install"],
        capture_output=True, text=True, timeout=900, cwd=ROOT,
    )
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-3000:]
    # The admin step: its own report and figures, next to the combined one.
    admin_json = next(tmp_path.glob("admin-*.json"))
    data = json.loads(admin_json.read_text(encoding="utf-8"))
    assert data["sizes"]["lead"] == 2000 and data["sizes"]["activity"] == 500
    assert data["page"] == 20  # the middle page when there are fewer than 15,000
    assert set(data["cases"]) == {c for c, _ in bench_admin.CASES}
    for case in data["cases"].values():
        assert set(case["ms"]) == set(apps)
        assert all(ms > 0 for ms in case["ms"].values())
        assert case["crmkit_over_floor"] == pytest.approx(case["ms"]["crmkit"] / case["ms"]["floor"])
    for case in ("first", "deep", "search", "detail", "edit"):
        assert all(kib > 1 for kib in data["cases"][case]["kib"].values()), case
    assert all(rss > 10 for rss in data["rss_mib"].values())
    assert "## Peak RSS of the server process (MiB)" in admin_json.with_suffix(".md").read_text(encoding="utf-8")
    # The database was reused on a second look-up (keyed by row count and schema hash), not rebuilt.
    db, manifest = bench_admin.datagen.ensure_database(tmp_path / "data", 2000, log=lambda _m: None)
    assert db.exists() and manifest["sizes"]["lead"] == 2000
    assert len(list((tmp_path / "data").glob("admin-2000-*.sqlite3"))) == 1

    # The combined report: the admin table with both ratios, then a measured figure for every rate.
    report = out.read_text(encoding="utf-8")
    assert "| list: first page |" in report and "crmkit / floor" in report
    rates = report.split("## Rates", 1)[1].split("## Steps", 1)[0]
    assert "no result" not in rates, rates
    for title in ("Import and export", "Lead scoring and assignment", "Campaign send"):
        rows = [line for line in rates.splitlines() if line.startswith(f"| {title} |")]
        assert rows, (title, rates)
        for row in rows:
            measured = row.split("|")[3].strip()
            assert measured and measured != "—", row
    steps = report.split("## Steps", 1)[1]
    assert steps.count("| 0 |") == 4, steps
    # each rate script wrote its figures beside this run's report, not over a developer's last run
    for script in ("bench_import_export", "bench_scoring", "bench_campaign_send"):
        assert json.loads((tmp_path / f"{script}.json").read_text(encoding="utf-8"))["figures"], script


def test_bench_refuses_a_page_that_shows_other_rows(tmp_path):
    """The timing is worthless if an app shows the wrong rows: the check must catch that."""
    db, manifest = bench_admin.datagen.ensure_database(tmp_path, 300, log=lambda _m: None)
    plan = bench_admin.Plan(db, tmp_path, manifest, expected={"first": [3, 2, 1]})

    class Page:
        status_code = 200

        def __init__(self, text: str):
            self.text = text

    app = bench_admin.Floor()
    good = Page('<a href="/lead/3">a</a><a href="/lead/2">b</a><a href="/lead/1">c</a>')
    bench_admin._check(app, "first", plan, good, None)
    with pytest.raises(bench_admin.BenchError, match="differ"):
        bench_admin._check(app, "first", plan, Page('<a href="/lead/3">a</a><a href="/lead/1">c</a>'), None)


def test_peers_are_never_crmkit_dependencies():
    config = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    declared = list(config["dependencies"]) + [d for ds in config["optional-dependencies"].values() for d in ds]
    names = {d.split(">")[0].split("=")[0].split("[")[0].strip().lower() for d in declared}
    peers = {line.split("==")[0].strip().lower() for line in (BENCH / "peers" / "requirements.txt").read_text()
             .splitlines() if line.strip() and not line.startswith("#")}
    assert {"sqladmin", "django"} <= peers
    assert not names & {"sqladmin", "django", "waitress"}


def test_the_command_docs_quote_is_the_benchmarks_command_line():
    """docs/performance.md and bench/README.md quote the command: it must parse and mean 1,000,000 leads."""
    import shlex

    for doc in (ROOT / "docs" / "performance.md", BENCH / "README.md"):
        commands = [line.strip() for line in doc.read_text(encoding="utf-8").splitlines()
                    if line.strip().startswith(".venv/bin/python bench/bench_admin.py")]
        assert commands, f"{doc.name} quotes no bench_admin command"
        for command in commands:
            args = bench_admin.build_parser().parse_args(shlex.split(command)[2:])
            assert args.rows == 1_000_000, command
    # The one command that runs every benchmark (issue 9), quoted on both pages too.
    import bench_all

    for doc in (ROOT / "docs" / "performance.md", BENCH / "README.md"):
        commands = [line.strip() for line in doc.read_text(encoding="utf-8").splitlines()
                    if line.strip().startswith(".venv/bin/python bench/bench_all.py")]
        assert commands, f"{doc.name} quotes no bench_all command"
        args = bench_all.build_parser().parse_args(shlex.split(commands[0])[2:])
        assert args.rows == 1_000_000 and not args.only, commands[0]


def test_a_stale_database_is_migrated_not_rebuilt(tmp_path):
    """--migrate-stale: a database of an older schema key is brought up to date by crmkit's migration."""
    db, manifest = bench_admin.datagen.ensure_database(tmp_path, 300, log=lambda _m: None)
    old = tmp_path / "admin-300-000000000000.sqlite3"
    db.rename(old)
    db.with_suffix(".json").rename(old.with_suffix(".json"))
    con = sqlite3.connect(old)
    con.execute("UPDATE lead SET company = 'kept' WHERE id = 1")
    con.commit()
    con.close()
    messages: list[str] = []
    again, manifest2 = bench_admin.datagen.ensure_database(tmp_path, 300, log=messages.append, migrate_stale=True)
    assert again == db and not old.exists()
    assert manifest2["migrated_from"] == [old.name] and manifest2["sample_lead"] == manifest["sample_lead"]
    assert any(m.startswith("migrated admin-300-000000000000") for m in messages)
    con = sqlite3.connect(again)
    assert con.execute("SELECT company FROM lead WHERE id = 1").fetchone() == ("kept",)
    con.close()
