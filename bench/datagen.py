"""Benchmark data: a crmkit SQLite database with N leads plus accounts, contacts, deals and activities.

The tables come from crmkit's own schema and migrations (``apply_migration``); master data (teams,
users, deal stages, marketing activities, products) goes through ``crm.records`` like any real
write; the bulk rows go in with ``executemany`` on the generated tables, each with its
``search_text`` built by crmkit's own :func:`crmkit.core.text.search_text` from the entity's search
paths, and the FTS5 trigram indexes are rebuilt once at the end (their insert triggers are off
during the load), so searching works exactly as on records saved one by one.

Leads come from ``bench_list._lead`` (the same distribution as the list benchmark: about 1% work
for a company whose name contains テクノロジー, the search case), with owners, teams, an industry,
a rating, a prefecture and the computed ``full_name`` added here.

A database is reused when it exists for the same row count and the same *schema key* (a hash of
every generated table's DDL plus :data:`GENERATOR_VERSION`): change a YAML schema or this file and
the next run builds a fresh one. A JSON manifest beside the file records its contents.
"""

from __future__ import annotations

import datetime as dt
import decimal
import hashlib
import json
import random
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import sqlalchemy as sa

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_list import SEARCH_WORD, _lead  # noqa: E402  (one lead generator for both benchmarks)

GENERATOR_VERSION = "1"
BATCH = 10_000
ADMIN_USER = "admin"
ADMIN_PASSWORD = "bench-admin-password"  # a throwaway local benchmark database, never a deployment
REPS = 20
START = dt.datetime(2023, 1, 1)

PREFECTURES = ["東京都", "大阪府", "神奈川県", "愛知県", "福岡県", "北海道", "京都府", "兵庫県", "埼玉県", "千葉県"]
INDUSTRIES = ["manufacturing", "it", "wholesale", "retail", "finance", "construction", "services", "other"]
RATINGS = ["hot", "warm", "cold", None]
TITLES = ["部長", "課長", "係長", "主任", "Manager", "Director", "Engineer", None]
DEPARTMENTS = ["営業部", "情報システム部", "総務部", "経営企画部", "Sales", "IT", "Purchasing", None]
ACTIVITY_TYPES = ["call", "meeting", "visit", "email", "task"]
SUBJECTS = ["初回訪問", "製品デモ", "見積もり提出", "定例ミーティング", "Follow-up call", "Proposal review",
            "Contract negotiation", "Kick-off meeting"]
JA_COMPANIES = ["株式会社サンプル{n}", "{n}商事株式会社", "有限会社ヤマト{n}", "合同会社さくら{n}"]
EN_COMPANIES = ["Acme {n} Inc.", "Globex {n} Ltd.", "Initech {n} LLC", "Umbrella {n} Corporation"]
CONTACT_LAST = ["佐藤", "鈴木", "高橋", "Smith", "Brown"]
CONTACT_FIRST = ["太郎", "花子", "John", "Mary"]
STAGES = [("Prospecting", 10), ("Qualification", 20), ("Proposal", 40), ("Negotiation", 70), ("Closed won", 100),
          ("Closed lost", 0)]


def sizes(rows: int) -> dict[str, int]:
    """How many rows of each entity go with ``rows`` leads."""
    return {
        "account": max(10, rows // 20),
        "contact": max(10, rows // 10),
        "deal": max(10, rows // 10),
        "lead": rows,
        "activity": max(10, rows // 4),
    }


def schema_key(crm: Any) -> str:
    """A short hash of every generated table's DDL and the generator version."""
    from sqlalchemy.schema import CreateTable

    dialect = sa.create_engine("sqlite://").dialect
    ddl = [str(CreateTable(t).compile(dialect=dialect)) for t in sorted(crm.metadata.tables.values(),
                                                                         key=lambda t: t.name)]
    return hashlib.sha256(("\n".join(ddl) + GENERATOR_VERSION).encode()).hexdigest()[:12]


def open_crm(db: Path) -> Any:
    """A CRM on the SQLite file ``db`` with the built-in plugins only (no entry points)."""
    from crmkit import CRM

    project = tempfile.mkdtemp(prefix="crmkit-bench-")
    return CRM(project, database_url=f"sqlite:///{db}", entry_points=False)


def ensure_database(data_dir: Path, rows: int, log: Callable[[str], None] = print,
                    migrate_stale: bool = False) -> tuple[Path, dict[str, Any]]:
    """The database for ``rows`` leads and its manifest, built unless a matching one exists.

    With ``migrate_stale``, a database built for the same row count under an older schema is
    brought up to date with crmkit's own migration (as ``crmkit migrate`` would on a live
    database) instead of being rebuilt; rows keep their values, new columns start empty.
    """
    data_dir.mkdir(parents=True, exist_ok=True)
    probe = open_crm(data_dir / "probe-unused.db")  # builds the catalog only: never touches the file
    key = schema_key(probe)
    probe.close()
    db = data_dir / f"admin-{rows}-{key}.sqlite3"
    manifest_path = db.with_suffix(".json")
    if not db.exists() and migrate_stale:
        stale = sorted(data_dir.glob(f"admin-{rows}-*.sqlite3"), key=lambda p: p.stat().st_mtime)
        if stale and stale[-1].with_suffix(".json").exists():
            _migrate(stale[-1], db, key, log)
    if db.exists() and manifest_path.exists():
        manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
        log(f"reusing {db} ({manifest['sizes']['lead']:,} leads, built in {manifest['build_seconds']:.0f} s)")
        return db, manifest
    partial = db.with_name(db.name + ".partial")
    for p in (partial, Path(f"{partial}-wal"), Path(f"{partial}-shm")):
        p.unlink(missing_ok=True)
    t0 = time.perf_counter()
    manifest = build(partial, rows, log)
    manifest.update(schema_key=key, build_seconds=time.perf_counter() - t0)
    partial.rename(db)
    manifest_path.write_text(json.dumps(manifest, indent=2, ensure_ascii=False), encoding="utf-8")
    log(f"built {db} in {manifest['build_seconds']:.0f} s")
    return db, manifest


def _migrate(old: Path, new: Path, key: str, log: Callable[[str], None]) -> None:
    """Apply crmkit's migration to the database ``old`` and move it (and its manifest) to ``new``."""
    from crmkit.core.migrations import apply_migration

    t = time.perf_counter()
    crm = open_crm(old)
    try:
        apply_migration(crm)
    finally:
        crm.close()
    manifest = json.loads(old.with_suffix(".json").read_text(encoding="utf-8"))
    manifest["schema_key"] = key
    manifest.setdefault("migrated_from", []).append(old.name)
    old.rename(new)
    new.with_suffix(".json").write_text(json.dumps(manifest, indent=2, ensure_ascii=False), encoding="utf-8")
    old.with_suffix(".json").unlink()
    log(f"migrated {old.name} to the current schema in {time.perf_counter() - t:.1f} s -> {new.name}")


# ---------------------------------------------------------------------------------------------
# Building
# ---------------------------------------------------------------------------------------------
def build(db: Path, rows: int, log: Callable[[str], None]) -> dict[str, Any]:
    """Migrate a new database at ``db``, add master data through RecordStore, bulk-load the rest."""
    from crmkit.core.actors import SYSTEM
    from crmkit.core.migrations import apply_migration
    from crmkit.core.tables import fts_table_name, rebuild_sqlite_search, sqlite_search_ddl

    crm = open_crm(db)
    try:
        apply_migration(crm)
        master = _master_data(crm, SYSTEM)
        n = sizes(rows)
        gen = Generator(crm, n, master)
        searchable = [e for e in ("account", "contact", "deal", "lead", "activity") if crm.catalog[e].search_paths]
        with crm.engine.begin() as conn:
            for entity in searchable:
                conn.exec_driver_sql(f'DROP TRIGGER IF EXISTS "{fts_table_name(entity)}_ai"')
        for entity, make in (("account", gen.account), ("contact", gen.contact), ("deal", gen.deal),
                             ("lead", gen.lead), ("activity", gen.activity)):
            t = time.perf_counter()
            table = crm.table(entity)
            for batch in _batches(make, n[entity]):
                with crm.engine.begin() as conn:
                    conn.execute(table.insert(), batch)
            log(f"  {entity}: {n[entity]:,} rows in {time.perf_counter() - t:.1f} s")
        t = time.perf_counter()
        with crm.engine.begin() as conn:
            for entity in searchable:
                conn.exec_driver_sql(rebuild_sqlite_search(entity))
                for stmt in sqlite_search_ddl(entity):
                    conn.exec_driver_sql(stmt)
        log(f"  FTS5 indexes rebuilt in {time.perf_counter() - t:.1f} s")
        with crm.engine.connect() as conn:
            conn.exec_driver_sql("PRAGMA wal_checkpoint(TRUNCATE)")
    finally:
        crm.close()
    return {
        "rows": rows,
        "sizes": n,
        "admin": {"username": ADMIN_USER, "password": ADMIN_PASSWORD},
        "sample_lead": gen.sample_lead,
        "search_word": SEARCH_WORD,
        "master": {k: v for k, v in master.items() if k != "user_names"},
    }


def _batches(make: Callable[[int], dict[str, Any]], count: int) -> Iterator[list[dict[str, Any]]]:
    for lo in range(1, count + 1, BATCH):
        yield [make(i) for i in range(lo, min(lo + BATCH, count + 1))]


def _master_data(crm: Any, actor: Any) -> dict[str, Any]:
    """Teams, users (an admin who can sign in, sales reps), stages, campaigns, products: via RecordStore."""
    store = crm.records
    with store.transaction(actor=actor, source="bench") as tx:
        teams = [tx.create("team", {"name": name})["id"] for name in ("東京営業部", "大阪営業部", "Enterprise")]
        admin = tx.create("user", {"username": ADMIN_USER, "display_name": "Bench Admin", "role": "admin",
                                   "password": ADMIN_PASSWORD, "primary_team": teams[0], "locale": "en"})
        reps = []
        for i in range(REPS):
            reps.append(tx.create("user", {
                "username": f"rep{i:02d}", "display_name": f"営業 {i:02d}" if i % 2 else f"Sales Rep {i:02d}",
                "role": "sales_rep", "primary_team": teams[i % len(teams)], "locale": "ja" if i % 2 else "en",
            }))
        stages = [tx.create("deal_stage", {"name": name, "sort_order": i, "probability": p,
                                           "is_closed": p in (0, 100), "is_won": p == 100})["id"]
                  for i, (name, p) in enumerate(STAGES)]
        campaigns = [tx.create("marketing_activity", {"name": f"展示会 2025-{i:02d}", "type": None,
                                                      "owner": admin["id"], "team": teams[0]})["id"]
                     for i in range(1, 13)]
        products = [tx.create("product", {"name": f"Product {i:02d}", "code": f"P-{i:03d}",
                                          "unit_price": decimal.Decimal(10_000 * i)})["id"] for i in range(1, 21)]
    return {
        "teams": teams,
        "admin_id": admin["id"],
        "users": [(r["id"], r["primary_team"]) for r in reps],
        "stages": stages,
        "campaigns": campaigns,
        "products": products,
    }


def _company(rng: random.Random, n: int) -> str:
    if rng.random() < 0.5:
        return rng.choice(JA_COMPANIES).format(n=n)
    return rng.choice(EN_COMPANIES).format(n=n)


class Generator:
    """Deterministic rows for each entity: row ``i`` (1-based) is the record with id ``i``."""

    def __init__(self, crm: Any, n: dict[str, int], master: dict[str, Any]):
        from crmkit.core.text import search_text

        self.search_text = search_text
        self.n = n
        self.master = master
        self.paths = {e: tuple(crm.catalog[e].search_paths) for e in n}
        self.account_names: dict[int, str] = {}
        self.contact_account: dict[int, int] = {}
        self.deal_account: dict[int, int] = {}
        self.sample_lead = max(1, n["lead"] // 2)

    def _search(self, entity: str, row: dict[str, Any]) -> str:
        values = []
        for path in self.paths[entity]:
            if path == "account.name":
                values.append(self.account_names.get(row.get("account")))
            else:
                values.append(row.get(path))
        return self.search_text(values)

    def _system(self, i: int, rng: random.Random) -> dict[str, Any]:
        created = START + dt.timedelta(seconds=rng.randrange(2 * 365 * 86_400), microseconds=rng.randrange(10**6))
        owner, team = rng.choice(self.master["users"])
        return {"id": i, "created_at": created, "updated_at": created + dt.timedelta(days=rng.randrange(30)),
                "version": 1, "owner": owner, "team": team}

    def account(self, i: int) -> dict[str, Any]:
        rng = random.Random(i * 7 + 1)
        name = _company(rng, i)
        self.account_names[i] = name
        row = {
            **self._system(i, rng), "name": name, "account_number": f"A{i:07d}",
            "industry": rng.choice(INDUSTRIES), "type": rng.choice(["customer", "prospect", "partner"]),
            "rank": rng.choice(["A", "B", "C"]), "website": f"https://www.example{i}.co.jp/",
            "phone": f"06-{i // 10_000:04d}-{i % 10_000:04d}", "email": f"info@example{i}.co.jp",
            "prefecture": rng.choice(PREFECTURES), "employees": rng.randrange(5, 5000),
            "annual_revenue": decimal.Decimal(rng.randrange(10, 10_000) * 1_000_000),
        }
        row["search_text"] = self._search("account", row)
        return row

    def contact(self, i: int) -> dict[str, Any]:
        rng = random.Random(i * 7 + 2)
        account = rng.randrange(1, self.n["account"] + 1)
        self.contact_account[i] = account
        last, first = rng.choice(CONTACT_LAST), rng.choice(CONTACT_FIRST)
        row = {
            **self._system(i, rng), "account": account, "last_name": last, "first_name": first,
            "full_name": f"{last} {first}", "title": rng.choice(TITLES), "department": rng.choice(DEPARTMENTS),
            "email": f"contact{i}@example.com", "phone": f"03-{i // 10_000:04d}-{i % 10_000:04d}",
            "do_not_email": rng.random() < 0.05,
        }
        row["search_text"] = self._search("contact", row)
        return row

    def deal(self, i: int) -> dict[str, Any]:
        rng = random.Random(i * 7 + 3)
        contact = rng.randrange(1, self.n["contact"] + 1)
        account = self.contact_account.get(contact) or rng.randrange(1, self.n["account"] + 1)
        self.deal_account[i] = account
        stage_index = rng.randrange(len(STAGES))
        probability = STAGES[stage_index][1]
        amount = decimal.Decimal(rng.randrange(10, 5_000) * 10_000)
        status = "won" if probability == 100 else "lost" if stage_index == len(STAGES) - 1 else "open"
        row = {
            **self._system(i, rng), "name": f"{self.account_names.get(account, '')} 案件{i}", "account": account,
            "contact": contact, "amount": amount, "stage": self.master["stages"][stage_index],
            "probability": probability, "expected_revenue": amount * probability / 100,
            "close_date": (START + dt.timedelta(days=rng.randrange(900))).date(), "status": status,
            "lost_reason": "価格" if status == "lost" else None,
            "type": rng.choice(["new_business", "existing_business", "upsell", "renewal"]),
            "source": rng.choice(["web", "referral", "event"]),
        }
        row["search_text"] = self._search("deal", row)
        return row

    def lead(self, i: int) -> dict[str, Any]:
        rng = random.Random(i)
        row = _lead(i - 1, rng, START, self.paths["lead"])  # search_text computed there from the same paths
        extra = random.Random(i * 7 + 4)
        owner, team = extra.choice(self.master["users"])
        row.update(
            id=i, owner=owner, team=team, industry=extra.choice(INDUSTRIES), rating=extra.choice(RATINGS),
            prefecture=extra.choice(PREFECTURES),
            full_name=row["last_name"] + (" " + row["first_name"] if row["first_name"] else ""),
            marketing_activity=extra.choice(self.master["campaigns"]) if extra.random() < 0.3 else None,
        )
        return row

    def activity(self, i: int) -> dict[str, Any]:
        rng = random.Random(i * 7 + 5)
        system = self._system(i, rng)
        # every row has the same keys: executemany compiles one INSERT for the whole batch
        row = {**system, "subject": rng.choice(SUBJECTS), "type": rng.choice(ACTIVITY_TYPES),
               "status": rng.choice(["planned", "done", "done"]), "priority": rng.choice(["high", "normal", "low"]),
               "assignee": system["owner"], "due_at": START + dt.timedelta(minutes=rng.randrange(2 * 365 * 24 * 60)),
               "lead": None, "account": None, "contact": None, "deal": None}
        kind = i % 4
        if i <= 5:  # the sample lead (detail and edit pages) has a history to show
            row["lead"] = self.sample_lead
        elif kind == 0:
            row["lead"] = rng.randrange(1, self.n["lead"] + 1)
        elif kind == 1:
            row["account"] = rng.randrange(1, self.n["account"] + 1)
        elif kind == 2:
            row["contact"] = contact = rng.randrange(1, self.n["contact"] + 1)
            row["account"] = self.contact_account.get(contact)
        else:
            row["deal"] = deal = rng.randrange(1, self.n["deal"] + 1)
            row["account"] = self.deal_account.get(deal)
        row["search_text"] = self._search("activity", row)
        return row
