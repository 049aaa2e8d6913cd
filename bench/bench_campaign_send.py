"""Campaign send benchmark (a script, not a test): one worker sends a campaign to a local SMTP server.

Creates ``--recipients`` leads (default 10,000) with addresses, a segment of all of them and a
campaign with an HTML template (merge fields, two tracked links, the open pixel, the generated
text part), schedules it and runs one worker (``crmkit.core.jobs.run_once`` in a loop, one
thread) until every message has arrived at an aiosmtpd server in this process. It prints the time
to queue the campaign (select recipients, render, record in the outbox), the time to deliver, and
the overall rate (the SMTP server runs in a subprocess); the issue's target is 200 messages/s or more with one worker.

Usage::

    python bench/bench_campaign_send.py [--recipients 10000] [--db postgresql://...] [--keep] [--async-commit]

Without ``--db`` it uses a fresh SQLite file. With a PostgreSQL URL it works in a fresh schema
that is dropped afterwards (unless ``--keep``). ``--async-commit`` sets ``jobs.async_commit: true``
(outbox marks do not wait for PostgreSQL's WAL flush) for comparison. Besides printing, it writes
``bench/results/bench_campaign_send.json`` (see bench/README.md).
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from crmkit import CRM  # noqa: E402
from crmkit.core import jobs, mail  # noqa: E402
from crmkit.core.actors import SYSTEM  # noqa: E402
from crmkit.plugins.admin_commands import migrate  # noqa: E402

HTML = """<html><body><h1>{{ recipient.last_name }} {{ recipient.first_name }}様</h1>
<p>{{ recipient.company }} の皆様へ、新製品のご案内です。</p>
<p><a href="https://shop.example.jp/new?utm_source=mail">新製品を見る</a></p>
<p><a href="https://shop.example.jp/seminar">セミナーのお申し込み</a></p>
<p>担当: {{ owner.display_name }}</p></body></html>"""


SINK = """
import sys, time
from aiosmtpd.controller import Controller

class Accept:
    async def handle_DATA(self, server, session, envelope):
        return "250 OK"

Controller(Accept(), hostname="127.0.0.1", port=int(sys.argv[1])).start()
print("ready", flush=True)
time.sleep(24 * 3600)
"""


def start_sink(port: int) -> subprocess.Popen:
    """aiosmtpd in its own process, so the server does not compete with the worker for the GIL."""
    proc = subprocess.Popen([sys.executable, "-c", SINK, str(port)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
    return proc


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def pg_schema(url: str) -> tuple[str, str]:
    import sqlalchemy as sa

    from crmkit.core.db import normalize_url

    schema = "bench_" + secrets.token_hex(4)
    engine = sa.create_engine(normalize_url(url), isolation_level="AUTOCOMMIT")
    with engine.connect() as conn:
        conn.exec_driver_sql("CREATE EXTENSION IF NOT EXISTS pg_trgm SCHEMA public")
        conn.exec_driver_sql(f"CREATE SCHEMA {schema}")
    engine.dispose()
    sep = "&" if "?" in url else "?"
    return normalize_url(url) + f"{sep}options=-csearch_path%3D{schema},public", schema


def write_results(args: argparse.Namespace, dialect: str, rate: float, cpu_ms: float, queued: float) -> None:
    """``bench/results/bench_campaign_send.json``: the headline figures, for bench/bench_all.py."""
    rate_cpu = 1000 / cpu_ms if cpu_ms else 0.0
    figures = [
        {"name": f"send rate, one worker ({dialect})", "value": round(rate, 1), "unit": "messages/s",
         "target": ">= 200", "met": rate >= 200},
        {"name": f"worker CPU per message ({dialect})", "value": round(cpu_ms, 3), "unit": "ms", "target": None,
         "met": None},
        {"name": f"CPU-bound send rate, one idle core ({dialect})", "value": round(rate_cpu, 1),
         "unit": "messages/s", "target": ">= 200", "met": rate_cpu >= 200},
        {"name": f"time to queue the campaign ({dialect})", "value": round(queued, 2), "unit": "s", "target": None,
         "met": None},
    ]
    out = Path(os.environ.get("CRMKIT_BENCH_RESULTS") or ROOT / "bench" / "results") / "bench_campaign_send.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    command = shlex.join(["python", "bench/bench_campaign_send.py", *sys.argv[1:]])
    out.write_text(json.dumps({"command": command, "figures": figures}, indent=2) + "\n", encoding="utf-8")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--recipients", type=int, default=10_000)
    parser.add_argument("--db", default=None, help="database URL (default: a fresh SQLite file)")
    parser.add_argument("--keep", action="store_true", help="keep the PostgreSQL schema")
    parser.add_argument("--async-commit", action="store_true",
                        help="jobs.async_commit: true (outbox marks skip PostgreSQL's WAL-flush wait)")
    args = parser.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="crmkit_bench_send_"))
    schema = None
    url = args.db
    if url and url.startswith("postgres"):
        url, schema = pg_schema(url)
    url = url or f"sqlite:///{tmp / 'bench.db'}"

    port = free_port()
    sink = start_sink(port)
    crm = CRM(tmp, database_url=url, enable=["email_campaigns"], entry_points=False)
    crm.config.smtp = {"host": "127.0.0.1", "port": port, "sender": "news@example.jp", "timeout": 30}
    crm.config.base_url = "https://crm.example.jp"
    crm.config.secret_key = "bench-secret-key-0123456789abcdef"
    if args.async_commit:
        crm.config.raw["jobs"] = {"async_commit": True}
    try:
        migrate(crm)
        store = crm.records
        owner = store.create("user", {"username": "owner", "display_name": "営業 太郎", "role": "admin"}, actor=SYSTEM)
        t0 = time.perf_counter()
        rows = [{"last_name": f"山田{i}", "first_name": "花子", "company": f"株式会社サンプル{i % 500}",
                 "email": f"user{i}@example.jp", "owner": owner["id"]} for i in range(args.recipients)]
        for start in range(0, len(rows), 2000):
            store.create_many("lead", rows[start:start + 2000], actor=SYSTEM)
        print(f"{args.recipients:,} leads created in {time.perf_counter() - t0:.1f}s ({crm.engine.dialect.name})")
        seg = store.create("email_segment", {"name": "All", "audience": "lead", "condition": {}}, actor=SYSTEM)
        c = store.create("email_campaign", {
            "name": "Bench", "segment": seg["id"], "default_language": "ja",
            "subject_ja": "{{ recipient.last_name }}様 新製品のご案内", "html_ja": HTML,
        }, actor=SYSTEM)
        from plugins_contrib.email_campaigns import campaigns

        campaigns.run_action(crm, c["id"], "schedule", SYSTEM)
        start = time.perf_counter()
        cpu_start = time.process_time()  # the worker's own CPU: comparable even on a loaded machine
        queued_at = None
        sent = 0
        while sent < args.recipients:
            n = jobs.run_once(crm, worker_id="bench")
            if queued_at is None and not jobs.list_jobs(crm, status="queued", name="email_campaigns.send", limit=1):
                queued_at = time.perf_counter()
            sent = mail.status_counts(crm)["sent"]
            if n == 0:
                time.sleep(0.05)
            if time.perf_counter() - start > 3600:
                raise SystemExit("gave up after an hour")
        total = time.perf_counter() - start
        cpu = time.process_time() - cpu_start
        queued = (queued_at or time.perf_counter()) - start
        print(f"campaign queued (select, render, outbox) within {queued:.1f}s")
        print(f"{sent:,} messages sent in {total:.1f}s: {sent / total:.0f} messages/s "
              f"with one worker (target: >= 200/s)")
        print(f"worker CPU {cpu:.1f}s: {cpu / sent * 1000:.2f} ms per message "
              f"(at most {sent / cpu:.0f} messages/s on an idle core)")
        write_results(args, crm.engine.dialect.name, sent / total, cpu / sent * 1000, queued)
    finally:
        crm.close()
        sink.terminate()
        if schema and not args.keep:
            import sqlalchemy as sa

            from crmkit.core.db import normalize_url

            engine = sa.create_engine(normalize_url(args.db), isolation_level="AUTOCOMMIT")
            with engine.connect() as conn:
                conn.exec_driver_sql(f"DROP SCHEMA {schema} CASCADE")
            engine.dispose()


if __name__ == "__main__":
    main()
