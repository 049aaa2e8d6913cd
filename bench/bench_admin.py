"""Admin benchmark: crmkit's admin against SQLAdmin, Django admin and a minimal floor, on the same SQLite tables.

One command::

    .venv/bin/python bench/bench_admin.py --rows 1000000

1. Builds (or reuses, keyed by row count and schema hash) a SQLite database with ``--rows`` leads
   plus accounts, contacts, deals and activities through crmkit's own schema and migrations
   (``bench/datagen.py``).
2. Creates ``bench/.venv-peers`` (gitignored) with the pinned peers of ``bench/peers/requirements.txt``
   — SQLAdmin and Django are installed there only, never into crmkit's environment.
3. Serves each app in its own process on a free local port, one at a time, every one with one
   worker and no access log: the floor (``peers/floor_app.py``: Starlette + sqlite3 keyset query +
   bare Jinja2 table), crmkit (``peers/crmkit_app.py``: ``crm.asgi()`` under uvicorn, as
   ``crmkit serve``), SQLAdmin (``peers/sqladmin_app.py``, uvicorn) and Django admin
   (``peers/django_site``, waitress WSGI by default; ``--django-server asgi`` for uvicorn).
4. Signs in as an admin where the app needs it and times real HTTP requests over one keep-alive
   connection (httpx): the median of ``--repeat`` runs after ``--warmup`` runs, per case:

   - ``first``: the lead list, first page (newest first, 50 rows, with the count the app shows);
   - ``deep``: page 15,000 — crmkit and the floor by cursor (keyset), the peers by ``?page=`` (OFFSET);
   - ``sort_status`` / ``sort_name``: the first page sorted by a listed column with an index
     (status) and without one (last name);
   - ``search``: a substring search for テクノロジー (about 1% of the leads);
   - ``detail``: a lead's page (Django has no read-only page: its change form stands in);
   - ``edit``: the lead's edit form;
   - ``create``: a create POST (redirect not followed); the rows are deleted afterwards.

   Every page is checked before it is timed: the list pages must show the same rows as a direct
   SQL query (same ids, or the same sort values for the sorts, whose tie order differs by app),
   the detail and edit pages the sample lead, and every create POST must add a lead.
5. Records each server's CPU time per timed request (steadier than wall clock on a loaded
   machine), the HTML size of each page and the peak RSS (VmHWM) of each server process.

Prints a table with the ratios crmkit/floor (target ≤ 3×) and best peer/crmkit (target ≥ 10×,
issue 4) and writes it to ``bench/results/admin-<date>.md`` (plus a ``.json`` with every figure).

Options: ``--apps floor,crmkit,sqladmin,django``, ``--repeat``, ``--warmup``, ``--data-dir``,
``--out``, ``--no-install`` (skip the peers when their venv is absent instead of creating it).
"""

from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import json
import math
import os
import platform
import re
import shlex
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import httpx

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
PEERS = HERE / "peers"
PEER_VENV = HERE / ".venv-peers"
REQUIREMENTS = PEERS / "requirements.txt"
RESULTS_DIR = HERE / "results"
DEFAULT_DATA = HERE / ".data"
TARGET_PAGE = 15_000
PAGE_SIZE = 50
SEARCH_FIELDS = ("last_name", "first_name", "last_name_kana", "first_name_kana", "company", "email", "phone")
ALL_APPS = ("floor", "crmkit", "sqladmin", "django")
PEER_APPS = ("sqladmin", "django")
MIN_TIMED = 3  # timed requests per case even past the time budget

sys.path.insert(0, str(HERE))
import datagen  # noqa: E402

CASES: list[tuple[str, str]] = [
    ("first", "list: first page"),
    ("deep", "list: page {page:,}"),
    ("sort_status", "list: sorted by status (indexed)"),
    ("sort_name", "list: sorted by last name (a listed column)"),
    ("search", "list: search {word} (~1%)"),
    ("detail", "detail page"),
    ("edit", "edit form"),
    ("create", "create POST"),
]
#: The cases issue 4 sets the ≥10× / ≤3× targets for.
TARGET_CASES = ("first", "deep", "sort_status", "search", "edit")


class BenchError(Exception):
    """A page answered wrongly: the figures would mean nothing."""


# ---------------------------------------------------------------------------------------------
# What every app is asked for, and the answers expected (from direct SQL on the same file)
# ---------------------------------------------------------------------------------------------
@dataclass
class Plan:
    """The database, the sample records and the expected rows of every list case."""

    db: Path
    data_dir: Path
    manifest: dict[str, Any]
    page: int = 1
    expected: dict[str, list[int]] = field(default_factory=dict)
    expected_values: dict[str, list[Any]] = field(default_factory=dict)
    floor_cursor: str = ""
    crmkit_cursor: str = ""
    sample: dict[str, Any] = field(default_factory=dict)
    choices_path: Path | None = None

    @property
    def word(self) -> str:
        return self.manifest["search_word"]


def make_plan(db: Path, data_dir: Path, manifest: dict[str, Any], log: Callable[[str], None]) -> Plan:
    """Expected rows by direct SQL, the cursors of the deep page, and the enum options for the peers."""
    plan = Plan(db, data_dir, manifest)
    con = sqlite3.connect(db)
    total = con.execute("SELECT count(*) FROM lead").fetchone()[0]
    pages = math.ceil(total / PAGE_SIZE)
    plan.page = TARGET_PAGE if pages > TARGET_PAGE else max(2, pages // 2)
    newest = "ORDER BY created_at DESC, id DESC"
    ids = lambda sql, *args: [r[0] for r in con.execute(sql, args)]  # noqa: E731
    plan.expected["first"] = ids(f"SELECT id FROM lead {newest} LIMIT {PAGE_SIZE}")
    offset = (plan.page - 1) * PAGE_SIZE
    plan.expected["deep"] = ids(f"SELECT id FROM lead {newest} LIMIT {PAGE_SIZE} OFFSET {offset}")
    before = con.execute(f"SELECT created_at, id FROM lead {newest} LIMIT 1 OFFSET {offset - 1}").fetchone()
    plan.floor_cursor = f"{before[0]}~{before[1]}"
    like = " OR ".join(f"{f} LIKE ?" for f in SEARCH_FIELDS)
    plan.expected["search"] = ids(f"SELECT id FROM lead WHERE {like} {newest} LIMIT {PAGE_SIZE}",
                                  *[f"%{plan.word}%"] * len(SEARCH_FIELDS))
    for case, column in (("sort_status", "status"), ("sort_name", "last_name")):
        plan.expected_values[case] = [r[0] for r in con.execute(
            f"SELECT {column} FROM lead ORDER BY {column} ASC, id ASC LIMIT {PAGE_SIZE}")]
    sample_id = manifest["sample_lead"]
    row = con.execute("SELECT id, last_name, company FROM lead WHERE id = ?", (sample_id,)).fetchone()
    plan.sample = {"id": row[0], "last_name": row[1], "company": row[2]}
    con.close()
    t = time.perf_counter()
    plan.crmkit_cursor = crmkit_cursor(db, offset)
    log(f"{total:,} leads; deep page {plan.page:,}; crmkit cursor found in {time.perf_counter() - t:.1f} s "
        "(walking RecordStore.list, outside the timing)")
    plan.choices_path = write_choices(db, data_dir)
    return plan


def crmkit_cursor(db: Path, offset: int) -> str:
    """crmkit's cursor after ``offset`` leads in the default order, found by walking RecordStore.list."""
    from crmkit.core.actors import SYSTEM
    from crmkit.core.queries import MAX_LIMIT

    crm = datagen.open_crm(db)
    try:
        cursor, done = None, 0
        while done < offset:
            step = min(MAX_LIMIT, offset - done)
            page = crm.records.list("lead", actor=SYSTEM, columns=["id"], cursor=cursor, limit=step,
                                    with_count=False)
            cursor, done = page.next_cursor, done + len(page.items)
        return cursor
    finally:
        crm.close()


def write_choices(db: Path, data_dir: Path) -> Path:
    """The enum options of the catalog (value, English label) as JSON, for the peers' selects and filters."""
    crm = datagen.open_crm(db)
    try:
        out = {name: {f.name: [[o["value"], (o.get("label") or {}).get("en", o["value"])]
                               for o in f.spec.get("options", [])]
                      for f in crm.catalog[name].user_fields if f.type == "enum"}
               for name in ("lead", "account", "contact", "deal", "activity")}
    finally:
        crm.close()
    path = data_dir / "choices.json"
    path.write_text(json.dumps(out, ensure_ascii=False), encoding="utf-8")
    return path


# ---------------------------------------------------------------------------------------------
# The apps
# ---------------------------------------------------------------------------------------------
def _form_values(app: str, i: int) -> dict[str, str]:
    return {"last_name": "ベンチ", "first_name": f"太郎{i}", "company": f"株式会社ベンチマーク{i}",
            "email": f"bench-{app}-{i}@example.com", "phone": f"03-9999-{i % 10_000:04d}", "status": "new",
            "source": "web"}


class App:
    """How to start one app, sign in, address each case and read the rows of a list page."""

    name = ""
    label = ""
    peer = False
    row_pattern = ""

    def command(self, plan: Plan, port: int) -> list[str]:
        raise NotImplementedError

    def env(self, plan: Plan) -> dict[str, str]:
        admin = plan.manifest["admin"]
        return {"BENCH_DB": str(plan.db), "BENCH_CHOICES": str(plan.choices_path),
                "BENCH_ADMIN_USER": admin["username"], "BENCH_ADMIN_PASSWORD": admin["password"]}

    ready_path = "/"

    def login(self, client: httpx.Client, plan: Plan) -> None:
        """Sign in (no-op for apps without a login)."""

    def url(self, case: str, plan: Plan) -> str:
        raise NotImplementedError

    def create(self, client: httpx.Client, plan: Plan, i: int) -> httpx.Response:
        raise NotImplementedError

    def row_ids(self, html: str) -> list[int]:
        """Ids of the leads a list page links to, in page order, each once."""
        return list(dict.fromkeys(int(m) for m in re.findall(self.row_pattern, html)))

    def python(self) -> str:
        return str(PEER_VENV / "bin" / "python") if self.peer else sys.executable


def _csrf(html: str, name: str) -> str:
    m = re.search(rf'name="{name}" value="([^"]+)"', html)
    if not m:
        raise BenchError(f"no {name} field on the page")
    return m.group(1)


def _expect_redirect(response: httpx.Response, what: str) -> None:
    if response.status_code not in (301, 302, 303):
        raise BenchError(f"{what}: expected a redirect, got {response.status_code}: {response.text[:300]}")


class Floor(App):
    name, label, row_pattern = "floor", "floor", r'href="/lead/(\d+)"'
    ready_path = "/lead/"

    def command(self, plan: Plan, port: int) -> list[str]:
        return [self.python(), str(PEERS / "floor_app.py"), "--db", str(plan.db), "--port", str(port)]

    def url(self, case: str, plan: Plan) -> str:
        sid = plan.sample["id"]
        return {
            "first": "/lead/",
            "deep": "/lead/?" + urlencode({"after": plan.floor_cursor}),
            "sort_status": "/lead/?sort=status",
            "sort_name": "/lead/?sort=last_name",
            "search": "/lead/?" + urlencode({"q": plan.word}),
            "detail": f"/lead/{sid}",
            "edit": f"/lead/{sid}/edit",
        }[case]

    def create(self, client: httpx.Client, plan: Plan, i: int) -> httpx.Response:
        return client.post("/lead/new", data=_form_values(self.name, i))


class Crmkit(App):
    name, label, row_pattern = "crmkit", "crmkit", r'href="/admin/lead/(\d+)"'
    ready_path = "/admin/login"

    def command(self, plan: Plan, port: int) -> list[str]:
        return [self.python(), str(PEERS / "crmkit_app.py"), "--db", str(plan.db), "--port", str(port)]

    def login(self, client: httpx.Client, plan: Plan) -> None:
        admin = plan.manifest["admin"]
        token = _csrf(client.get("/admin/login").text, "_csrf")
        r = client.post("/admin/login", data={"username": admin["username"], "password": admin["password"],
                                                "_csrf": token, "next": "/admin/"})
        _expect_redirect(r, "crmkit login")
        self.token = _csrf(client.get("/admin/lead/new").text, "_csrf")

    def url(self, case: str, plan: Plan) -> str:
        sid = plan.sample["id"]
        return {
            "first": "/admin/lead/",
            "deep": "/admin/lead/?" + urlencode({"cursor": plan.crmkit_cursor}),
            "sort_status": "/admin/lead/?sort=status",
            "sort_name": "/admin/lead/?sort=last_name",
            "search": "/admin/lead/?" + urlencode({"q": plan.word}),
            "detail": f"/admin/lead/{sid}",
            "edit": f"/admin/lead/{sid}/edit",
        }[case]

    def create(self, client: httpx.Client, plan: Plan, i: int) -> httpx.Response:
        return client.post("/admin/lead/new", data={"_csrf": self.token, **_form_values(self.name, i)})


class SQLAdmin(App):
    name, label, peer, row_pattern = "sqladmin", "SQLAdmin", True, r'href="[^"]*/admin/lead/details/(\d+)"'
    ready_path = "/admin/login"

    def command(self, plan: Plan, port: int) -> list[str]:
        return [self.python(), str(PEERS / "sqladmin_app.py"), "--db", str(plan.db), "--port", str(port)]

    def login(self, client: httpx.Client, plan: Plan) -> None:
        admin = plan.manifest["admin"]
        r = client.post("/admin/login", data={"username": admin["username"], "password": admin["password"]})
        _expect_redirect(r, "SQLAdmin login")

    def url(self, case: str, plan: Plan) -> str:
        sid = plan.sample["id"]
        return {
            "first": "/admin/lead/list",
            "deep": f"/admin/lead/list?page={plan.page}",
            "sort_status": "/admin/lead/list?sortBy=status&sort=asc",
            "sort_name": "/admin/lead/list?sortBy=last_name&sort=asc",
            "search": "/admin/lead/list?" + urlencode({"search": plan.word}),
            "detail": f"/admin/lead/details/{sid}",
            "edit": f"/admin/lead/edit/{sid}",
        }[case]

    def create(self, client: httpx.Client, plan: Plan, i: int) -> httpx.Response:
        return client.post("/admin/lead/create", data={**_form_values(self.name, i), "save": "Save"})


class Django(App):
    name, label, peer, row_pattern = "django", "Django admin", True, r'href="/admin/crm/lead/(\d+)/change/'
    ready_path = "/admin/login/"
    server = "wsgi"

    def command(self, plan: Plan, port: int) -> list[str]:
        return [self.python(), str(PEERS / "django_site" / "serve.py"), "--port", str(port),
                "--server", self.server]

    def env(self, plan: Plan) -> dict[str, str]:
        return {**super().env(plan), "BENCH_DJANGO_DB": str(plan.data_dir / "django-own.sqlite3")}

    def login(self, client: httpx.Client, plan: Plan) -> None:
        admin = plan.manifest["admin"]
        token = _csrf(client.get("/admin/login/").text, "csrfmiddlewaretoken")
        r = client.post("/admin/login/", data={"username": admin["username"], "password": admin["password"],
                                                 "csrfmiddlewaretoken": token, "next": "/admin/"})
        _expect_redirect(r, "Django login")
        self.token = _csrf(client.get("/admin/crm/lead/add/").text, "csrfmiddlewaretoken")

    def url(self, case: str, plan: Plan) -> str:
        sid = plan.sample["id"]
        # ?o= indexes the change list's columns, the action checkbox being 0: last_name is 1, status 4
        return {
            "first": "/admin/crm/lead/",
            "deep": f"/admin/crm/lead/?p={plan.page}",
            "sort_status": "/admin/crm/lead/?o=4",
            "sort_name": "/admin/crm/lead/?o=1",
            "search": "/admin/crm/lead/?" + urlencode({"q": plan.word}),
            "detail": f"/admin/crm/lead/{sid}/change/",
            "edit": f"/admin/crm/lead/{sid}/change/",
        }[case]

    def create(self, client: httpx.Client, plan: Plan, i: int) -> httpx.Response:
        return client.post("/admin/crm/lead/add/",
                           data={"csrfmiddlewaretoken": self.token, **_form_values(self.name, i), "_save": "Save"})


APPS: dict[str, type[App]] = {"floor": Floor, "crmkit": Crmkit, "sqladmin": SQLAdmin, "django": Django}


# ---------------------------------------------------------------------------------------------
# Running one app
# ---------------------------------------------------------------------------------------------
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def peak_rss_mib(pid: int) -> float:
    """The process's peak resident set size (VmHWM) in MiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


@dataclass
class AppResult:
    ms: dict[str, float] = field(default_factory=dict)
    cpu_ms: dict[str, float] = field(default_factory=dict)  # server process CPU per timed request
    kib: dict[str, float] = field(default_factory=dict)
    n: dict[str, int] = field(default_factory=dict)
    rss_mib: float = float("nan")


def cpu_seconds(pid: int) -> float:
    """CPU time of a process so far: its threads' ``schedstat`` (nanoseconds), else ``stat`` (ticks).

    Wall-clock times of single requests on a loaded machine mostly measure waiting for a core; the
    server's own CPU time per request does not, so it gives the steadier ratio. A worker thread that
    ends during a case would take its time with it; thread pools keep their threads while busy.
    """
    total, seen = 0, False
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            total += int((task / "schedstat").read_text().split()[0])
            seen = True
        except (OSError, ValueError, IndexError):
            continue
    if seen:
        return total / 1e9
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime


def _check(app: App, case: str, plan: Plan, response: httpx.Response, con: sqlite3.Connection) -> None:
    if response.status_code != 200:
        raise BenchError(f"{app.label} {case}: HTTP {response.status_code}: {response.text[:300]}")
    html = response.text
    if case in ("first", "deep", "search"):
        got = app.row_ids(html)
        if got != plan.expected[case]:
            raise BenchError(f"{app.label} {case}: rows {got[:5]}… (of {len(got)}) differ from the SQL "
                             f"answer {plan.expected[case][:5]}…")
    elif case in ("sort_status", "sort_name"):
        got = app.row_ids(html)
        column = "status" if case == "sort_status" else "last_name"
        values = {r[0]: r[1] for r in con.execute(
            f"SELECT id, {column} FROM lead WHERE id IN ({','.join('?' * len(got))})", got)} if got else {}
        if sorted((values[i] for i in got), key=str) != sorted(plan.expected_values[case], key=str):
            raise BenchError(f"{app.label} {case}: the page is not the first page sorted by {column}")
    elif case in ("detail", "edit"):
        if plan.sample["company"] not in html:
            raise BenchError(f"{app.label} {case}: the sample lead ({plan.sample['company']}) is not on the page")


class Server:
    """One app's server process, signed in, with its own keep-alive client."""

    def __init__(self, app: App, plan: Plan):
        self.app, self.plan = app, plan
        self.port = free_port()
        env = {**os.environ, **app.env(plan), "PYTHONUNBUFFERED": "1"}
        self.errlog = tempfile.TemporaryFile()
        self.proc = subprocess.Popen(app.command(plan, self.port), env=env, cwd=ROOT, stdout=self.errlog,
                                     stderr=subprocess.STDOUT)
        self.client = httpx.Client(base_url=f"http://127.0.0.1:{self.port}", timeout=600, follow_redirects=False)
        self.result = AppResult()
        self.times: dict[str, list[float]] = {}
        self.creates = 0

    def start(self) -> None:
        """Wait until it answers, then sign in."""
        _wait_ready(self.proc, f"http://127.0.0.1:{self.port}{self.app.ready_path}", self.errlog)
        self.app.login(self.client, self.plan)

    def check(self, case: str, con: sqlite3.Connection) -> float:
        """Fetch the case's page once, check it shows the right thing, keep its size; the seconds it took."""
        t = time.perf_counter()
        response = self.client.get(self.app.url(case, self.plan))
        elapsed = time.perf_counter() - t
        _check(self.app, case, self.plan, response, con)
        self.result.kib[case] = len(response.content) / 1024
        return elapsed

    def request(self, case: str) -> float:
        """One timed request of ``case`` (seconds)."""
        if case == "create":
            t = time.perf_counter()
            r = self.app.create(self.client, self.plan, self.creates)
            elapsed = time.perf_counter() - t
            self.creates += 1
            _expect_redirect(r, f"{self.app.label} create POST")
            self.result.kib[case] = len(r.content) / 1024
            return elapsed
        t = time.perf_counter()
        r = self.client.get(self.app.url(case, self.plan))
        elapsed = time.perf_counter() - t
        if r.status_code != 200:
            raise BenchError(f"{self.app.label} {case}: HTTP {r.status_code} during the timing")
        return elapsed

    def stop(self) -> None:
        """Read the peak RSS, then end the process."""
        self.client.close()
        if self.proc.poll() is None:
            self.result.rss_mib = peak_rss_mib(self.proc.pid)
            self.proc.terminate()
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def run_all(apps: list[App], plan: Plan, repeat: int, warmup: int, log: Callable[[str], None],
            budget: float = 60.0) -> dict[str, AppResult]:
    """Serve every app at once and time them side by side, request by request.

    For each case every app gets its warm-up requests, then the timed requests go round the apps
    (the starting app rotating), so a burst of load on the machine hits all of them alike instead
    of whichever app happened to be running. An app whose timed requests of a case have used up
    ``budget`` seconds stops after MIN_TIMED of them (a peer taking 30 s a page would otherwise
    keep the run going for hours), and a page slower than a tenth of the budget gets no warm-up
    (its check request warmed the caches). The create POSTs come last and are deleted afterwards.
    """
    con = sqlite3.connect(plan.db)
    max_id = con.execute("SELECT max(id) FROM lead").fetchone()[0]
    _forget_leads_after(con, max_id)  # what an interrupted earlier run may have left
    servers: list[Server] = []
    try:
        for app in apps:
            servers.append(Server(app, plan))
        for server in servers:
            server.start()
        for case, _ in CASES:
            slow = set()
            if case != "create":
                for server in servers:
                    if server.check(case, con) > budget / 10:
                        slow.add(server.app.name)
            for server in servers:
                for _ in range(0 if server.app.name in slow else warmup):
                    server.request(case)
                server.times[case] = []
            cpu_start = {server.app.name: cpu_seconds(server.proc.pid) for server in servers}
            for i in range(repeat):
                for k in range(len(servers)):
                    server = servers[(i + k) % len(servers)]
                    done = server.times[case]
                    if len(done) >= MIN_TIMED and sum(done) > budget:
                        continue
                    done.append(server.request(case))
            for server in servers:
                server.result.ms[case] = statistics.median(server.times[case]) * 1000
                server.result.n[case] = len(server.times[case])
                used = cpu_seconds(server.proc.pid) - cpu_start[server.app.name]
                server.result.cpu_ms[case] = used / len(server.times[case]) * 1000
            log(f"  {case:<12} " + "  ".join(f"{s.app.label} {s.result.ms[case]:.2f} ms (n={s.result.n[case]}, "
                                            f"CPU {s.result.cpu_ms[case]:.2f} ms)" for s in servers))
        for server in servers:
            made = con.execute("SELECT count(*) FROM lead WHERE id > ? AND email LIKE ?",
                               (max_id, f"bench-{server.app.name}-%")).fetchone()[0]
            if made != server.creates:
                raise BenchError(f"{server.app.label} create POST: {made} leads created, expected {server.creates}")
    finally:
        for server in servers:
            server.stop()
        # Undo the creates (the FTS delete trigger keeps the search index right).
        con.execute("DELETE FROM lead WHERE id > ?", (max_id,))
        _forget_leads_after(con, max_id)
        con.close()
    return {s.app.name: s.result for s in servers}


def _forget_leads_after(con: sqlite3.Connection, max_id: int) -> None:
    """Remove crmkit's bookkeeping of leads above ``max_id`` (deleted by SQL, not through crmkit):
    SQLite reuses their ids, and a stale duplicate key would make the next run's create POST a
    "possible duplicate" of some other new lead."""
    tables = {r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    if "duplicates_key" in tables:
        con.execute("DELETE FROM duplicates_key WHERE entity = 'lead' AND record_id > ?", (max_id,))
    if "crmkit_audit" in tables:
        con.execute("DELETE FROM crmkit_audit WHERE entity = 'lead' AND record_id > ?", (max_id,))
    con.commit()


def _wait_ready(proc: subprocess.Popen, url: str, errlog: Any, timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            errlog.seek(0)
            raise BenchError(f"server exited with {proc.returncode}:\n{errlog.read().decode(errors='replace')[-3000:]}")
        try:
            httpx.get(url, timeout=30)
            return  # it answers: whether rightly is checked case by case
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    raise BenchError(f"server not ready after {timeout:.0f} s: {url}")


# ---------------------------------------------------------------------------------------------
# The peers' virtualenv
# ---------------------------------------------------------------------------------------------
def ensure_peer_venv(install: bool, log: Callable[[str], None]) -> bool:
    """True when bench/.venv-peers has the pinned peers (creating it unless ``install`` is False)."""
    stamp = PEER_VENV / "requirements.sha256"
    want = hashlib.sha256(REQUIREMENTS.read_bytes()).hexdigest()
    if stamp.exists() and stamp.read_text().strip() == want:
        return True
    if not install:
        return False
    log(f"installing the peers into {PEER_VENV} (only there) ...")
    if not (PEER_VENV / "bin" / "python").exists():
        subprocess.run([sys.executable, "-m", "venv", str(PEER_VENV)], check=True)
    subprocess.run([str(PEER_VENV / "bin" / "python"), "-m", "pip", "install", "-q", "-r", str(REQUIREMENTS)],
                   check=True)
    stamp.write_text(want + "\n")
    return True


# ---------------------------------------------------------------------------------------------
# Report
# ---------------------------------------------------------------------------------------------
def _peer_versions() -> str:
    pins = [line.split("#")[0].strip() for line in REQUIREMENTS.read_text().splitlines()]
    return ", ".join(p for p in pins if p and p.split("==")[0].lower() in ("sqladmin", "django", "uvicorn", "waitress"))


def report(plan: Plan, results: dict[str, AppResult], repeat: int, warmup: int, django_server: str,
           budget: float = 60.0) -> tuple[str, dict]:
    """The Markdown report and the same figures as a dict."""
    apps = [a for a in ALL_APPS if a in results]
    peers = [a for a in PEER_APPS if a in results]
    labels = {a: APPS[a].label for a in apps}
    server = "waitress (WSGI)" if django_server == "wsgi" else "uvicorn (ASGI)"
    names = {c: label.format(page=plan.page, word=plan.word) for c, label in CASES}
    sizes = plan.manifest["sizes"]
    lines = [
        f"# Admin benchmark — {dt.date.today().isoformat()}",
        "",
        f"{sizes['lead']:,} leads, {sizes['account']:,} accounts, {sizes['contact']:,} contacts, "
        f"{sizes['deal']:,} deals, {sizes['activity']:,} activities in one SQLite file "
        f"(SQLite {sqlite3.sqlite_version}); page size {PAGE_SIZE}. Median of {repeat} requests after "
        f"{warmup} warm-up requests (a page that used up the {budget:.0f}-s budget of a case: fewer, "
        f"at least {MIN_TIMED}, shown as n=…), the apps taking turns request by request, each over one "
        f"keep-alive HTTP connection to its own one-worker server process. "
        f"Python {platform.python_version()}, {os.cpu_count()} CPUs."
        + (f" Peers: {_peer_versions()} (Django served by {server})." if peers else " Peers not run."),
        "",
        "Command: `.venv/bin/python bench/bench_admin.py --rows " + f"{sizes['lead']}`",
        "",
        "## Time per page (ms)",
        "",
        "| case | " + " | ".join(labels[a] for a in apps) + " | crmkit / floor | best peer / crmkit |",
        "|---|" + "---:|" * len(apps) + "---:|---:|",
    ]
    data: dict[str, Any] = {"rows": sizes["lead"], "sizes": sizes, "page": plan.page, "repeat": repeat,
                            "warmup": warmup, "cases": {}, "rss_mib": {}}
    floor_ok, peer_ok = True, True
    for case, _ in CASES:
        cells = [f"{results[a].ms[case]:.2f}" + (f" (n={results[a].n[case]})" if results[a].n[case] < repeat else "")
                 for a in apps]
        crm = results.get("crmkit")
        vs_floor = vs_peer = None
        if crm and "floor" in results:
            vs_floor = crm.ms[case] / results["floor"].ms[case]
        if crm and peers:
            vs_peer = min(results[p].ms[case] for p in peers) / crm.ms[case]
        mark = case in TARGET_CASES
        if mark and vs_floor is not None and vs_floor > 3:
            floor_ok = False
        if mark and vs_peer is not None and vs_peer < 10:
            peer_ok = False
        star = "" if mark else " †"
        lines.append(f"| {names[case]}{star} | " + " | ".join(cells)
                     + f" | {'' if vs_floor is None else f'{vs_floor:.2f}×'}"
                     + f" | {'' if vs_peer is None else f'{vs_peer:.1f}×'} |")
        data["cases"][case] = {"label": names[case], "ms": {a: results[a].ms[case] for a in apps},
                               "kib": {a: results[a].kib[case] for a in apps},
                               "n": {a: results[a].n[case] for a in apps},
                               "crmkit_over_floor": vs_floor, "best_peer_over_crmkit": vs_peer}
    lines += ["", "† not one of issue 4's target cases (shown for completeness).", "",
              "## Server CPU per request (ms)", "",
              "CPU time of each server process over a case's timed requests, divided by their number: "
              "unlike the wall-clock medians above, it does not count the time a request waits for a core "
              "on a loaded machine.", "",
              "| case | " + " | ".join(labels[a] for a in apps) + " | crmkit / floor |",
              "|---|" + "---:|" * len(apps) + "---:|"]
    for case, _ in CASES:
        crm = results.get("crmkit")
        ratio = (crm.cpu_ms[case] / results["floor"].cpu_ms[case]
                 if crm and "floor" in results and results["floor"].cpu_ms[case] > 0 else None)
        data["cases"][case]["cpu_ms"] = {a: results[a].cpu_ms[case] for a in apps}
        data["cases"][case]["crmkit_over_floor_cpu"] = ratio
        lines.append(f"| {names[case]} | " + " | ".join(f"{results[a].cpu_ms[case]:.2f}" for a in apps)
                     + f" | {'' if ratio is None else f'{ratio:.2f}×'} |")
    lines += ["", "## HTML per page (KiB)", "",
              "| case | " + " | ".join(labels[a] for a in apps) + " |",
              "|---|" + "---:|" * len(apps)]
    for case, _ in CASES:
        lines.append(f"| {names[case]} | " + " | ".join(f"{results[a].kib[case]:.1f}" for a in apps) + " |")
    lines += ["", "## Peak RSS of the server process (MiB)", "",
              "| " + " | ".join(labels[a] for a in apps) + " |", "|" + "---:|" * len(apps),
              "| " + " | ".join(f"{results[a].rss_mib:.0f}" for a in apps) + " |", ""]
    data["rss_mib"] = {a: results[a].rss_mib for a in apps}
    if "crmkit" in results:
        verdicts = []
        if "floor" in results:
            verdicts.append(f"crmkit within 3× of the floor on the target cases: {'yes' if floor_ok else 'NO'}")
        if peers:
            verdicts.append(f"crmkit at least 10× faster than the best peer on the target cases: "
                            f"{'yes' if peer_ok else 'NO'}")
        lines += ["## Targets (issue 4)", ""] + [f"- {v}" for v in verdicts] + [""]
        data["targets"] = {"within_3x_floor": floor_ok if "floor" in results else None,
                           "10x_best_peer": peer_ok if peers else None}
    return "\n".join(lines), data


# ---------------------------------------------------------------------------------------------
# Main
# ---------------------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    """The command line of the benchmark (docs/performance.md quotes it; a test parses the quote)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=1_000_000, help="leads in the database (default 1,000,000)")
    parser.add_argument("--apps", default=",".join(ALL_APPS), help="comma-separated: " + ",".join(ALL_APPS))
    parser.add_argument("--repeat", type=int, default=20, help="timed requests per case (median reported)")
    parser.add_argument("--warmup", type=int, default=3, help="untimed requests per case before the timing")
    parser.add_argument("--budget", type=float, default=60.0,
                        help=f"seconds of timed requests per case and app after which a slow app stops "
                             f"(after at least {MIN_TIMED} requests; default 60)")
    parser.add_argument("--data-dir", type=Path, default=DEFAULT_DATA, help="where the databases are kept")
    parser.add_argument("--out", type=Path, help="report file (default bench/results/admin-<date>.md)")
    parser.add_argument("--no-install", action="store_true",
                        help="skip the peers when bench/.venv-peers is absent instead of creating it")
    parser.add_argument("--migrate-stale", action="store_true",
                        help="bring a database built under an older schema up to date with crmkit's migration "
                             "instead of rebuilding it")
    parser.add_argument("--django-server", choices=["wsgi", "asgi"], default="wsgi",
                        help="serve Django with waitress (WSGI, default) or uvicorn (ASGI)")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)

    def log(message: str) -> None:
        print(message, flush=True)

    wanted = [a.strip() for a in args.apps.split(",") if a.strip()]
    unknown = set(wanted) - set(ALL_APPS)
    if unknown:
        parser.error(f"unknown apps: {', '.join(sorted(unknown))}")
    if any(a in PEER_APPS for a in wanted) and not ensure_peer_venv(not args.no_install, log):
        log(f"{PEER_VENV} is absent (--no-install): SQLAdmin and Django are skipped")
        wanted = [a for a in wanted if a not in PEER_APPS]

    db, manifest = datagen.ensure_database(args.data_dir, args.rows, log, migrate_stale=args.migrate_stale)
    plan = make_plan(db, args.data_dir, manifest, log)
    apps = [APPS[a]() for a in ALL_APPS if a in wanted]
    for app in apps:
        if isinstance(app, Django):
            app.server = args.django_server
    log("timing " + ", ".join(a.label for a in apps) + " side by side:")
    try:
        results = run_all(apps, plan, args.repeat, args.warmup, log, budget=args.budget)
    except BenchError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    md, data = report(plan, results, args.repeat, args.warmup, args.django_server, args.budget)
    print()
    print(md)
    given = sys.argv[1:] if argv is None else list(argv)
    data["command"] = shlex.join([".venv/bin/python", "bench/bench_admin.py", *given])
    data["figures"] = headline_figures(data)
    out = args.out or RESULTS_DIR / f"admin-{dt.datetime.now():%Y-%m-%d-%H%M}.md"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(md, encoding="utf-8")
    out.with_suffix(".json").write_text(json.dumps(data, indent=2, ensure_ascii=False), encoding="utf-8")
    # The contract of bench/bench_all.py: bench/results/bench_admin.json (beside --out when given, so
    # a run elsewhere, such as the smoke test's, leaves the real results alone).
    summary = out.parent / "bench_admin.json"
    summary.write_text(json.dumps({"command": data["command"], "figures": data["figures"]}, indent=2,
                                  ensure_ascii=False) + "\n", encoding="utf-8")
    log(f"\n(written to {out}, {out.with_suffix('.json').name} and {summary})")
    return 0


def headline_figures(data: dict[str, Any]) -> list[dict[str, Any]]:
    """Issue 4's targets per target case: crmkit/floor (≤ 3×) and best peer/crmkit (≥ 10×), plus crmkit's ms."""
    figures: list[dict[str, Any]] = []
    for case in TARGET_CASES:
        entry = data["cases"].get(case)
        if entry is None:
            continue
        label = entry["label"]
        if "crmkit" in entry["ms"]:
            figures.append({"name": f"crmkit, {label}", "value": round(entry["ms"]["crmkit"], 2), "unit": "ms",
                            "target": None, "met": None})
        if entry.get("crmkit_over_floor") is not None:
            ratio = entry["crmkit_over_floor"]
            figures.append({"name": f"crmkit / floor, {label}", "value": round(ratio, 2), "unit": "×",
                            "target": "<= 3", "met": ratio <= 3})
        if entry.get("crmkit_over_floor_cpu") is not None:
            ratio = entry["crmkit_over_floor_cpu"]
            figures.append({"name": f"crmkit / floor, server CPU per request, {label}", "value": round(ratio, 2),
                            "unit": "×", "target": "<= 3", "met": ratio <= 3})
        if entry.get("best_peer_over_crmkit") is not None:
            ratio = entry["best_peer_over_crmkit"]
            figures.append({"name": f"best peer / crmkit, {label}", "value": round(ratio, 1), "unit": "×",
                            "target": ">= 10", "met": ratio >= 10})
    return figures


if __name__ == "__main__":
    sys.exit(main())
