"""Schema benchmarks (a script, not a test).

1. Time to load every built-in schema plus a company overlay and build the SQLAlchemy MetaData
   (target: under 200 ms), both for the whole ``CRM(...)`` object and for catalog + MetaData alone.
2. On PostgreSQL, with a lead table of ``--rows`` rows (default 1,000,000): adding a nullable field
   through ``crmkit migrate`` must not rewrite the table. ``pg_relation_filenode('lead')`` is compared
   before and after, and the plan and the migration are timed.

Usage::

    python bench/bench_schema.py [POSTGRES_URL] [--rows 1000000] [--runs 20] [--skip-pg] [--keep]

The URL defaults to ``$CRMKIT_TEST_DATABASE_URL``; everything happens in a fresh schema that is
dropped afterwards (unless ``--keep``).
"""

from __future__ import annotations

import argparse
import os
import secrets
import statistics
import sys
import tempfile
import time
from pathlib import Path
from urllib.parse import quote

import sqlalchemy as sa

OVERLAY = """\
extends: lead
fields:
  budget_note: {type: text, label: {en: Budget note, ja: 予算メモ}}
  partner_code: {type: string, max_length: 40, index: true, label: {en: Partner code, ja: パートナーコード}}
  source:
    options:
      - {value: webinar, label: {en: Webinar, ja: ウェビナー}}
"""
LOAD_LEADS = """
INSERT INTO lead (created_at, updated_at, last_name, first_name, company, email, status, employees,
                  search_text)
SELECT now(), now(), '山田' || g, 'Taro', '株式会社テスト' || mod(g, 1000), 'user' || g || '@example.com',
       (ARRAY['new', 'working', 'qualified'])[1 + mod(g, 3)], mod(g, 5000), 'yamada' || g || ' tesuto'
FROM generate_series(1, :n) AS g
"""
ADDED_FIELD = """\
  budget: {type: money, label: {en: Budget, ja: 予算}}
"""


def _project(tmp: Path, extra: str = "") -> Path:
    (tmp / "schemas").mkdir(parents=True, exist_ok=True)
    (tmp / "schemas" / "lead_extra.yaml").write_text(OVERLAY + extra, encoding="utf-8")
    return tmp


def _ms(seconds: float) -> str:
    return f"{seconds * 1000:.1f} ms"


def bench_load(runs: int) -> None:
    """Part 1: schema loading and MetaData generation."""
    t0 = time.perf_counter()
    from crmkit.app import CRM
    from crmkit.core.assemble import build_catalog
    from crmkit.core.system_tables import define_system_tables
    from crmkit.core.tables import NAMING_CONVENTION, build_schema

    import_time = time.perf_counter() - t0
    with tempfile.TemporaryDirectory() as tmp:
        project = _project(Path(tmp))
        whole: list[float] = []
        for _ in range(runs):
            t = time.perf_counter()
            crm = CRM(project, database_url="sqlite://", entry_points=False)
            whole.append(time.perf_counter() - t)
        files = crm.schema_files()
        core: list[float] = []
        for _ in range(runs):
            t = time.perf_counter()
            catalog = build_catalog(files, crm.field_types)
            md = sa.MetaData(naming_convention=NAMING_CONVENTION)
            define_system_tables(md)
            build_schema(catalog, crm.field_types, md)
            core.append(time.perf_counter() - t)
        n_fields = sum(len(e.user_fields) for e in crm.catalog)
        n_indexes = sum(len(t.indexes) for t in crm.metadata.tables.values())
        crm.close()
    print("== 1. Load schemas + overlay, build MetaData ==")
    print(f"   {len(files)} schema files, {len(crm.catalog.entities)} entities, {n_fields} fields, "
          f"{len(crm.metadata.tables)} tables, {n_indexes} indexes")
    print(f"   import crmkit:                 {_ms(import_time)} (once)")
    print(f"   CRM(project) first build:      {_ms(whole[0])}")
    print(f"   CRM(project), median of {runs}:   {_ms(statistics.median(whole))} (min {_ms(min(whole))})")
    print(f"   catalog + MetaData, median:    {_ms(statistics.median(core))} (min {_ms(min(core))})")
    verdict = "OK" if statistics.median(whole) < 0.2 else "OVER"
    print(f"   target < 200 ms for CRM(project): {verdict}")


def _schema_url(url: str, schema: str) -> str:
    from crmkit.core.db import normalize_url

    sep = "&" if "?" in url else "?"
    return normalize_url(url) + sep + "options=" + quote(f"-csearch_path={schema},public")


def bench_add_column(url: str, rows: int, keep: bool) -> None:
    """Part 2: a nullable ADD COLUMN on a big PostgreSQL table is a catalog-only change."""
    from crmkit.app import CRM
    from crmkit.core.db import normalize_url
    from crmkit.core.migrations import apply_migration, plan_migration
    from crmkit.core.tables import postgresql_search_ddl, search_index_name

    admin = sa.create_engine(normalize_url(url), isolation_level="AUTOCOMMIT")
    schema = "bench_" + secrets.token_hex(4)
    with admin.connect() as conn:
        conn.exec_driver_sql("CREATE EXTENSION IF NOT EXISTS pg_trgm SCHEMA public")
        conn.exec_driver_sql(f"CREATE SCHEMA {schema}")
    db_url = _schema_url(url, schema)
    print(f"\n== 2. Add a nullable field to a {rows:,}-row lead table (PostgreSQL, schema {schema}) ==")
    try:
        with tempfile.TemporaryDirectory() as tmp:
            project = _project(Path(tmp))
            with CRM(project, database_url=db_url, entry_points=False) as crm:
                t = time.perf_counter()
                apply_migration(crm)
                print(f"   create all tables:             {_ms(time.perf_counter() - t)}")
                t = time.perf_counter()
                with crm.engine.begin() as conn:
                    conn.exec_driver_sql(f'DROP INDEX "{search_index_name("lead")}"')  # load, then index once
                    conn.execute(sa.text(LOAD_LEADS), {"n": rows})
                    for stmt in postgresql_search_ddl("lead"):
                        conn.exec_driver_sql(stmt)
                    conn.exec_driver_sql("ANALYZE lead")
                print(f"   load {rows:,} leads (+ indexes):  {_ms(time.perf_counter() - t)}")
                with crm.engine.connect() as conn:
                    before = conn.exec_driver_sql("SELECT pg_relation_filenode('lead')").scalar()
                    size = conn.exec_driver_sql("SELECT pg_size_pretty(pg_table_size('lead'))").scalar()
            _project(Path(tmp), ADDED_FIELD)
            with CRM(project, database_url=db_url, entry_points=False) as crm:
                t = time.perf_counter()
                plan = plan_migration(crm)
                plan_time = time.perf_counter() - t
                t = time.perf_counter()
                applied = apply_migration(crm)
                apply_time = time.perf_counter() - t
                with crm.engine.connect() as conn:
                    after = conn.exec_driver_sql("SELECT pg_relation_filenode('lead')").scalar()
                    count = conn.exec_driver_sql("SELECT count(*) FROM lead WHERE budget IS NULL").scalar()
            print(f"   table size:                    {size}")
            print(f"   plan (dry run, rolled back):   {_ms(plan_time)}")
            print(f"   apply:                         {_ms(apply_time)}")
            for step in applied.steps:
                print(f"   step: {step.kind} {step.table}: " + " | ".join(step.sql))
            print(f"   filenode before/after:         {before} / {after} -> "
                  f"{'NOT rewritten (OK)' if before == after else 'REWRITTEN (FAIL)'}")
            print(f"   rows with the new column NULL: {count:,}")
            assert [s.kind for s in plan.steps] == ["add_column"], plan.render()
    finally:
        if not keep:
            with admin.connect() as conn:
                conn.exec_driver_sql(f"DROP SCHEMA {schema} CASCADE")
        admin.dispose()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("url", nargs="?", default=os.environ.get("CRMKIT_TEST_DATABASE_URL"),
                        help="PostgreSQL URL (default: $CRMKIT_TEST_DATABASE_URL)")
    parser.add_argument("--rows", type=int, default=1_000_000, help="leads to load (default 1,000,000)")
    parser.add_argument("--runs", type=int, default=20, help="repetitions of the load benchmark")
    parser.add_argument("--skip-pg", action="store_true", help="only the schema loading benchmark")
    parser.add_argument("--keep", action="store_true", help="keep the benchmark schema afterwards")
    args = parser.parse_args(argv)
    bench_load(args.runs)
    if args.skip_pg:
        return 0
    if not args.url:
        print("\n(no PostgreSQL URL: pass one or set CRMKIT_TEST_DATABASE_URL; part 2 skipped)")
        return 0
    bench_add_column(args.url, args.rows, args.keep)
    return 0


if __name__ == "__main__":
    sys.exit(main())
