"""Job and mail throughput (a script, not a test): jobs/s with N worker processes, mails/s with one.

1. ``--jobs`` jobs (default 2,000) whose handler inserts one row in the job's transaction are
   enqueued, then ``crmkit worker --once`` runs in 1, 2 and 4 processes (``--workers``); the wall
   time from start to the last process's exit gives jobs/s, and the effect rows are counted to
   check every job ran exactly once.
2. ``--mails`` messages (default 1,000) are queued and sent by one worker process to a local SMTP
   server (aiosmtpd in this process); messages/s and "arrived exactly once" are reported.

The numbers include process start-up (about a second per worker process for imports). Results
go to stdout and ``bench/results/bench_jobs.txt``; the figures also to ``bench/results/bench_jobs.json``
(see bench/README.md).

Usage::

    python bench/bench_jobs.py [--db postgresql+psycopg://postgres@127.0.0.1:5432/crmkit_bench]
                               [--jobs 2000] [--workers 1,2,4] [--mails 1000]

Without ``--db`` a SQLite file in a temporary directory is used. A PostgreSQL database is used
through a fresh schema that is dropped at the end.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from urllib.parse import quote

import sqlalchemy as sa
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from crmkit.core import jobs, mail  # noqa: E402
from crmkit.core.db import normalize_url, write_connection  # noqa: E402
from crmkit.plugins.admin_commands import migrate  # noqa: E402
from tests import job_plugin  # noqa: E402
from tests.mailserver import SmtpSink  # noqa: E402


def database(url: str | None, tmp: Path) -> tuple[str, callable]:
    if not url:
        return f"sqlite:///{tmp / 'bench.db'}", lambda: None
    admin = sa.create_engine(normalize_url(url), isolation_level="AUTOCOMMIT")
    schema = "bench_" + secrets.token_hex(4)
    with admin.connect() as conn:
        conn.exec_driver_sql(f"CREATE SCHEMA {schema}")
        conn.exec_driver_sql("CREATE EXTENSION IF NOT EXISTS pg_trgm SCHEMA public")
    sep = "&" if "?" in url else "?"

    def drop() -> None:
        with admin.connect() as conn:
            conn.exec_driver_sql(f"DROP SCHEMA {schema} CASCADE")

    return normalize_url(url) + sep + "options=" + quote(f"-csearch_path={schema},public"), drop


def run_workers(project: Path, db_url: str, n: int, only: list[str]) -> float:
    env = {**os.environ, "CRMKIT_DATABASE_URL": db_url, "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, "-m", "crmkit.cli", "worker", "--once"]
    for name in only:
        cmd += ["--only", name]
    start = time.perf_counter()
    procs = [subprocess.Popen(cmd, cwd=project, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
             for _ in range(n)]
    for p in procs:
        p.wait()
        if p.returncode:
            raise SystemExit(p.stderr.read().decode())
    return time.perf_counter() - start


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--db", help="PostgreSQL URL (default: a SQLite file)")
    ap.add_argument("--jobs", type=int, default=2000)
    ap.add_argument("--workers", default="1,2,4")
    ap.add_argument("--mails", type=int, default=1000)
    args = ap.parse_args()
    from crmkit import CRM

    lines = []
    figures: list[dict] = []
    with tempfile.TemporaryDirectory() as tmp, SmtpSink() as sink:
        project = Path(tmp)
        (project / "crmkit.yaml").write_text(yaml.safe_dump({
            "plugins": ["tests.job_plugin"], "smtp": sink.settings, "jobs": {"batch_size": 20},
        }), encoding="utf-8")
        db_url, drop = database(args.db, project)
        try:
            crm = CRM(project, database_url=db_url, entry_points=False)
            migrate(crm)
            backend = crm.engine.dialect.name
            effect = crm.system_tables[job_plugin.EFFECT_TABLE]
            for workers in [int(w) for w in args.workers.split(",")] if args.jobs else []:
                with write_connection(crm.engine) as conn, conn.begin():
                    conn.execute(sa.delete(effect))
                    for i in range(args.jobs):
                        jobs.enqueue(crm, "jobtest.effect", {"n": i}, conn=conn)
                seconds = run_workers(project, db_url, workers, ["jobtest.effect"])
                with crm.engine.connect() as conn:
                    rows = conn.execute(sa.select(sa.func.count(), sa.func.count(sa.distinct(effect.c.job_id)))).one()
                ok = "exactly once" if rows[0] == rows[1] == args.jobs else f"MISMATCH {tuple(rows)}"
                lines.append(f"{backend}: {args.jobs} jobs, {workers} worker process(es): {seconds:.2f} s, "
                             f"{args.jobs / seconds:.0f} jobs/s ({ok})")
                print(lines[-1], flush=True)
                figures.append({"name": f"jobs/s, {workers} worker process(es) ({backend})",
                                "value": round(args.jobs / seconds, 1), "unit": "jobs/s", "target": None, "met": None})
                figures.append({"name": f"jobs run exactly once, {workers} worker(s) ({backend})",
                                "value": rows[1], "unit": "jobs", "target": f"== {args.jobs}, each once",
                                "met": ok == "exactly once"})
            if args.mails:
                with write_connection(crm.engine) as conn, conn.begin():
                    for i in range(args.mails):
                        mail.queue_mail(crm, to=f"r{i}@example.com", subject=f"Bench {i}", text="Hello " * 40,
                                        html="<p>" + "Hello " * 40 + "</p>", conn=conn)
                seconds = run_workers(project, db_url, 1, [mail.SEND_JOB])
                arrived = sink.wait_for(args.mails, timeout=30)
                unique = len({m["Message-ID"] for m in arrived})
                ok = "exactly once" if len(arrived) == unique == args.mails else f"MISMATCH {len(arrived)}/{unique}"
                lines.append(f"{backend}: {args.mails} mails to a local SMTP server, 1 worker process: "
                             f"{seconds:.2f} s, {args.mails / seconds:.0f} messages/s ({ok})")
                print(lines[-1], flush=True)
                figures.append({"name": f"mails/s, 1 worker process ({backend})",
                                "value": round(args.mails / seconds, 1), "unit": "messages/s", "target": None,
                                "met": None})
                figures.append({"name": f"mails arrived exactly once ({backend})", "value": unique,
                                "unit": "messages", "target": f"== {args.mails}, each once",
                                "met": ok == "exactly once"})
            crm.close()
        finally:
            drop()
    out = ROOT / "bench" / "results" / "bench_jobs.txt"
    out.parent.mkdir(exist_ok=True)
    with out.open("a", encoding="utf-8") as fh:
        fh.write(time.strftime("# %Y-%m-%d %H:%M\n") + "\n".join(lines) + "\n")
    command = " ".join(["python", "bench/bench_jobs.py", *sys.argv[1:]])
    (out.parent / "bench_jobs.json").write_text(json.dumps({"command": command, "figures": figures}, indent=2) + "\n",
                                                encoding="utf-8")


if __name__ == "__main__":
    main()
