"""Benchmarks of the rule plugins (not tests: nothing here asserts a time).

1. ``crmkit scoring recompute``'s engine on a large SQLite database: N leads with 3 activities
   each (the target: 1,000,000 leads and 3,000,000 activities in under 60 s), with the shipped
   rules (the first-month KPI, later activity with decay, outcomes, fit, email/web events).
2. What assignment adds to a lead save: RecordStore creates with and without assignment_rules
   (round robin over 5 members behind two non-matching rules), in milliseconds per save.

Run with crmkit's venv::

    .venv/bin/python bench/bench_scoring.py --leads 1000000          # the full size (a few GB of disk)
    .venv/bin/python bench/bench_scoring.py --leads 20000 --saves 300  # a quick run
    .venv/bin/python bench/bench_scoring.py --dir /tmp/sc --reuse --skip-assignment  # again, same data

The database is built in a temporary directory (``--dir`` to keep it) with bulk SQL inserts
(generating data is not what is measured). Besides the wall time, the script prints the CPU time
of the process (SQLite runs in it) and, on Linux, how long it waited for a CPU held by other
processes; the figures go to ``bench/results/bench_scoring.json``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import random
import shlex
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import sqlalchemy as sa

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from crmkit import CRM  # noqa: E402
from crmkit.core.actors import SYSTEM  # noqa: E402
from crmkit.plugins.admin_commands import migrate  # noqa: E402

TYPES = ["call", "call", "email", "email", "visit", "meeting", "task"]
SOURCES = ["web", "referral", "event", "business_card", "sns", "cold_call", None]


def build_leads(crm: CRM, n: int, per_lead: int, seed: int = 1) -> None:
    """Bulk-insert ``n`` leads and ``n * per_lead`` activities (plain SQL, no hooks)."""
    rnd = random.Random(seed)
    lead, act = crm.table("lead"), crm.table("activity")
    base = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
    batch = 20000
    with crm.engine.begin() as conn:
        for start in range(0, n, batch):
            leads, acts = [], []
            for i in range(start, min(n, start + batch)):
                created = base + dt.timedelta(minutes=i % 400000)
                leads.append({
                    "id": i + 1, "created_at": created, "updated_at": created, "version": 1,
                    "last_name": f"Lead{i}", "full_name": f"Lead{i}", "status": "new",
                    "source": rnd.choice(SOURCES), "email": f"l{i}@example.jp" if i % 3 else None,
                    "employees": rnd.randrange(0, 500),
                })
                for _j in range(per_lead):
                    done = rnd.random() < 0.8
                    when = created + dt.timedelta(days=rnd.uniform(0, 90))
                    acts.append({
                        "created_at": when, "updated_at": when, "version": 1, "subject": "bench",
                        "type": rnd.choice(TYPES), "status": "done" if done else "planned",
                        "priority": "normal", "due_at": when, "completed_at": when if done else None,
                        "outcome": rnd.choice(["positive", "neutral", "negative", None]) if done else None,
                        "lead": i + 1,
                    })
            conn.execute(sa.insert(lead), leads)
            conn.execute(sa.insert(act), acts)
            print(f"  built {min(n, start + batch):,} leads", end="\r", flush=True)
    print()


def _run_queue_wait() -> float | None:
    """Seconds this thread has waited for a CPU so far (Linux ``/proc/thread-self/schedstat``)."""
    try:
        return int(Path("/proc/thread-self/schedstat").read_text().split()[1]) / 1e9
    except (OSError, IndexError, ValueError):
        return None


def bench_recompute(workdir: Path, n: int, per_lead: int, chunk: int, reuse: bool = False) -> list[dict[str, Any]]:
    """Build (or reuse) the database, run the recompute once; returns the figures."""
    from plugins_contrib.lead_scoring import engine, rules_of

    db = workdir / "scoring.db"
    reused = reuse and db.exists()
    crm = CRM(workdir, database_url=f"sqlite:///{db}", enable=["lead_scoring"], entry_points=False)
    if reused:
        with crm.engine.connect() as conn:
            n = conn.execute(sa.select(sa.func.count()).select_from(crm.table("lead"))).scalar_one()
            per_lead = round(conn.execute(sa.select(sa.func.count()).select_from(crm.table("activity")))
                             .scalar_one() / max(n, 1))
        print(f"Reusing {db} ({n:,} leads)")
    else:
        migrate(crm)
        print(f"Building {n:,} leads and {n * per_lead:,} activities ...")
        t = time.perf_counter()
        build_leads(crm, n, per_lead)
        print(f"  ({time.perf_counter() - t:.1f} s to build; not measured)")
    rules = rules_of(crm)
    now = dt.datetime(2026, 6, 1, tzinfo=dt.UTC)
    times, wait = os.times(), _run_queue_wait()
    t = time.perf_counter()
    engine.recompute_all(crm, rules, now=now, chunk=chunk)
    elapsed = time.perf_counter() - t
    after = os.times()
    user, system = after.user - times.user, after.system - times.system
    cpu = user + system
    waited = _run_queue_wait() - wait if wait is not None else None
    with crm.engine.connect() as conn:
        items = conn.execute(sa.select(sa.func.count()).select_from(crm.system_tables["scoring_ledger"])).scalar()
        scored = conn.execute(sa.select(sa.func.count()).where(crm.table("lead").c.scoring_score > 0)).scalar()
    print(f"Recompute: {n:,} leads, {n * per_lead:,} activities -> {items:,} ledger items in {elapsed:.1f} s "
          f"({n / elapsed:,.0f} leads/s; {scored:,} leads with points; chunk {chunk:,})")
    # SQLite runs in this process: CPU time is what the recompute costs, without the wait for a busy machine
    print(f"  CPU time of this process: {cpu:.1f} s ({user:.1f} s user, {system:.1f} s system)"
          + (f"; {waited:.1f} s waiting for a CPU (other processes)" if waited is not None else "")
          + f"; load average {os.getloadavg()[0]:.1f}")
    if n:  # linear: every chunk reads only its own leads' rows through the lead index (no full scans)
        print(f"  extrapolated linearly to 1,000,000 leads: {elapsed * 1_000_000 / n:.0f} s wall, "
              f"{cpu * 1_000_000 / n:.0f} s CPU (target < 60 s)")
    crm.close()
    full = n >= 1_000_000  # the target is stated for 1,000,000 leads: smaller runs do not meet or miss it
    target = "< 60 s at 1,000,000 leads"
    size = f"{n:,} leads, {n * per_lead:,} activities"
    figures = [
        {"name": f"recompute wall time ({size})", "value": round(elapsed, 1), "unit": "s", "target": target,
         "met": elapsed < 60 if full else None},
        {"name": f"recompute CPU time ({size})", "value": round(cpu, 1), "unit": "s", "target": target,
         "met": cpu < 60 if full else None},
        {"name": "recompute rate (wall)", "value": round(n / elapsed), "unit": "leads/s", "target": None,
         "met": None},
    ]
    if waited is not None:
        figures.append({"name": "recompute: time spent waiting for a CPU", "value": round(waited, 1), "unit": "s",
                        "target": None, "met": None})
    return figures


ASSIGNMENT = """\
rules:
  - {name: vip, when: {employees: {gte: 100000}}, strategy: direct, user: m1}
  - {name: referral, when: {source: referral}, strategy: least_loaded, members: [m1, m2]}
  - {name: everyone, strategy: round_robin, members: [m1, m2, m3, m4, m5]}
fallback: {user: m1}
"""


def _save_ms(workdir: Path, enable: list[str], saves: int) -> tuple[float, float]:
    """Milliseconds per lead save: (wall, CPU of this process; SQLite runs in it)."""
    if workdir.exists():
        shutil.rmtree(workdir)
    (workdir / "rules").mkdir(parents=True)
    (workdir / "rules" / "assignment.yaml").write_text(ASSIGNMENT, encoding="utf-8")
    crm = CRM(workdir, database_url=f"sqlite:///{workdir / 'a.db'}", enable=enable, entry_points=False)
    migrate(crm)
    for i in range(1, 6):
        crm.records.create("user", {"username": f"m{i}", "display_name": f"M{i}", "role": "sales_rep"}, actor=SYSTEM)
    for i in range(20):  # warm up caches and the rule file
        crm.records.create("lead", {"last_name": f"w{i}", "source": "web"}, actor=SYSTEM)
    t, cpu = time.perf_counter(), time.process_time()
    for i in range(saves):
        crm.records.create("lead", {"last_name": f"b{i}", "source": "web"}, actor=SYSTEM)
    wall, cpu = (time.perf_counter() - t) * 1000 / saves, (time.process_time() - cpu) * 1000 / saves
    crm.close()
    return wall, cpu


def bench_assignment(workdir: Path, saves: int) -> list[dict[str, Any]]:
    """Lead saves with and without assignment_rules; returns the figures.

    Both wall and CPU time are reported against the target: SQLite runs in this process and a
    save waits for no disk (WAL, synchronous=NORMAL), so on an idle machine the two agree, while
    on a busy one the wall time also measures the other processes.
    """
    without, without_cpu = _save_ms(workdir / "without", [], saves)
    with_rules, with_cpu = _save_ms(workdir / "with", ["assignment_rules"], saves)
    added, added_cpu = with_rules - without, with_cpu - without_cpu
    print(f"Lead save (SQLite, {saves} saves): {without:.2f} ms without assignment, {with_rules:.2f} ms with "
          f"-> assignment adds {added:.2f} ms per save (target < 5 ms)")
    print(f"  CPU time per save: {without_cpu:.2f} ms without, {with_cpu:.2f} ms with -> adds {added_cpu:.2f} ms; "
          f"load average {os.getloadavg()[0]:.1f}")
    return [
        {"name": "lead save without assignment (SQLite, wall)", "value": round(without, 2), "unit": "ms",
         "target": None, "met": None},
        {"name": "lead save with assignment (SQLite, wall)", "value": round(with_rules, 2), "unit": "ms",
         "target": None, "met": None},
        {"name": "assignment added per lead save (wall)", "value": round(added, 2), "unit": "ms", "target": "< 5",
         "met": added < 5},
        {"name": "assignment added per lead save (CPU)", "value": round(added_cpu, 2), "unit": "ms",
         "target": "< 5", "met": added_cpu < 5},
    ]


def write_results(figures: list[dict[str, Any]]) -> Path:
    """``bench/results/bench_scoring.json``: the command line and the figures of this run."""
    out = Path(os.environ.get("CRMKIT_BENCH_RESULTS") or ROOT / "bench" / "results") / "bench_scoring.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    command = shlex.join(["python", "bench/bench_scoring.py", *sys.argv[1:]])
    out.write_text(json.dumps({"command": command, "figures": figures}, indent=2) + "\n", encoding="utf-8")
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--leads", type=int, default=100000)
    parser.add_argument("--activities-per-lead", type=int, default=3)
    parser.add_argument("--chunk", type=int, default=50000)
    parser.add_argument("--saves", type=int, default=500)
    parser.add_argument("--dir", type=Path, help="Keep the databases here (default: a temporary directory).")
    parser.add_argument("--reuse", action="store_true",
                        help="With --dir: recompute the database a previous run left there instead of rebuilding it.")
    parser.add_argument("--skip-recompute", action="store_true")
    parser.add_argument("--skip-assignment", action="store_true")
    args = parser.parse_args()
    workdir = args.dir or Path(tempfile.mkdtemp(prefix="crmkit-bench-scoring-"))
    workdir.mkdir(parents=True, exist_ok=True)
    figures: list[dict[str, Any]] = []
    try:
        if not args.skip_recompute:
            figures += bench_recompute(workdir / "recompute", args.leads, args.activities_per_lead, args.chunk,
                                       reuse=args.reuse and args.dir is not None)
        if not args.skip_assignment:
            figures += bench_assignment(workdir / "assignment", args.saves)
        print(f"Figures written to {write_results(figures)}")
    finally:
        if args.dir is None:
            shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
