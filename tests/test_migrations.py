"""`crmkit migrate` on SQLite and PostgreSQL: through the real CLI and through the Python API.

Every test works on a real database full of rows and checks values one by one: nothing is lost by
default, destructive steps are refused until allowed, and a failed migration leaves no trace.
"""

from __future__ import annotations

import datetime as dt
import decimal
import json
import textwrap

import pytest
import sqlalchemy as sa

from crmkit import CRM
from crmkit.core.migrations import MigrationError, Plan, apply_migration, load_snapshot, plan_migration
from crmkit.core.tables import fts_table_name, search_index_name

NOW = dt.datetime(2026, 1, 5, 9, 30, tzinfo=dt.UTC)


# -- helpers -----------------------------------------------------------------------------------


def overlay(project, text: str, name: str = "lead_extra.yaml") -> None:
    """Write (or replace) a schema overlay in the project."""
    (project / "schemas" / name).write_text(textwrap.dedent(text), encoding="utf-8")


def make_crm(project, db_url) -> CRM:
    return CRM(project, database_url=db_url, entry_points=False)


def migrate(project, db_url, **kw) -> Plan:
    """Build a fresh CRM from the project's current YAML and apply the migration."""
    with make_crm(project, db_url) as crm:
        return apply_migration(crm, **kw)


def engine_for(db_url) -> sa.Engine:
    from crmkit.core.db import create_engine

    return create_engine(db_url)


def live_table(conn: sa.Connection, name: str) -> sa.Table:
    """The table as the database has it (deprecated columns included)."""
    return sa.Table(name, sa.MetaData(), autoload_with=conn)


def rows_of(db_url, table: str) -> dict[int, dict]:
    eng = engine_for(db_url)
    try:
        with eng.connect() as conn:
            t = live_table(conn, table)
            return {r["id"]: dict(r) for r in conn.execute(sa.select(t).order_by(t.c.id)).mappings()}
    finally:
        eng.dispose()


def columns_of(db_url, table: str) -> dict[str, tuple[str, bool]]:
    eng = engine_for(db_url)
    try:
        with eng.connect() as conn:
            return {c["name"]: (str(c["type"]), c["nullable"]) for c in sa.inspect(conn).get_columns(table)}
    finally:
        eng.dispose()


def db_state(db_url) -> dict:
    """Everything observable: every table's columns, indexes, foreign keys and rows."""
    eng = engine_for(db_url)
    state: dict = {}
    try:
        with eng.connect() as conn:
            md = sa.MetaData()
            md.reflect(conn)  # one multi-table reflection: much faster than per-table on PostgreSQL
            for name, t in sorted(md.tables.items()):
                order = list(t.primary_key.columns) or list(t.c)
                state[name] = {
                    "columns": [(c.name, str(c.type), c.nullable) for c in t.columns],
                    "indexes": sorted((i.name, tuple(c.name for c in i.columns), bool(i.unique))
                                      for i in t.indexes),
                    "fks": sorted((f.name or "", tuple(f.column_keys), f.referred_table.name)
                                  for f in t.foreign_key_constraints),
                    "rows": [tuple(r) for r in conn.execute(sa.select(t).order_by(*order))],
                }
    finally:
        eng.dispose()
    return state


def insert_leads(crm: CRM, n: int, extra=None) -> None:
    """``n`` leads with varied values (Japanese text, NULLs, numbers, enums, JSON) in one executemany."""
    statuses = ["new", "working", "nurturing", "qualified", None]
    rows = []
    for i in range(1, n + 1):
        row = {
            "created_at": NOW, "updated_at": NOW + dt.timedelta(seconds=i), "version": 1 + i % 3,
            "last_name": ["山田", "Smith", "佐藤", "O'Brien", "ｶﾀｶﾅ"][i % 5] + str(i),
            "first_name": None if i % 7 == 0 else f"太郎{i}",
            "company": f"株式会社テスト{i % 97}" if i % 3 else f"ACME {i} Inc.",
            "email": f"user{i}@example.com" if i % 4 else None,
            "employees": None if i % 11 == 0 else i * 3,
            "annual_revenue": decimal.Decimal(i) * decimal.Decimal("1000.25") if i % 5 else None,
            "status": statuses[i % 5],
            "description": ("長い説明 " * (i % 4)) or None,
            "address": {"city": "渋谷区", "postal_code": f"150-{i:04d}"} if i % 6 == 0 else None,
            "search_text": f"lead {i} acme yamada",
        }
        row.update(extra(i) if extra else {})
        rows.append(row)
    with crm.engine.begin() as conn:
        conn.execute(crm.table("lead").insert(), rows)


def sqlite_objects(db_url) -> set[str]:
    eng = engine_for(db_url)
    try:
        with eng.connect() as conn:
            return set(conn.exec_driver_sql("SELECT name FROM sqlite_master").scalars())
    finally:
        eng.dispose()


# -- first run, idempotence, --plan ------------------------------------------------------------------


def test_first_migrate_creates_everything_then_nothing_to_do(cli, db_url, backend, project):
    result = cli("migrate")
    assert result.returncode == 0, result.stderr
    assert "Migration applied." in result.stdout
    assert "add_table lead" in result.stdout and "CREATE TABLE" in result.stdout

    with make_crm(project, db_url) as crm, crm.engine.connect() as conn:
        insp = sa.inspect(conn)
        tables = set(insp.get_table_names())
        assert set(crm.metadata.tables) <= tables
        # Foreign keys really exist (they are use_alter on PostgreSQL, inline on SQLite).
        fks = {(tuple(f["constrained_columns"]), f["referred_table"], f["options"].get("ondelete"))
               for f in insp.get_foreign_keys("lead")}
        assert (("owner",), "user", "SET NULL") in fks
        assert (("marketing_activity",), "marketing_activity", "SET NULL") in fks
        contact_fks = {f["referred_table"] for f in insp.get_foreign_keys("contact")}
        assert "account" in contact_fks
        indexes = {i["name"]: i["column_names"] for i in insp.get_indexes("lead")}
        assert indexes["ix_lead_status_id"] == ["status", "id"]  # a filter that is also a sortable column
        assert indexes["ix_lead_last_name_id"] == ["last_name", "id"]  # a sortable list column
        assert indexes["ix_lead_industry"] == ["industry"]  # a filter only
        snapshot = load_snapshot(conn)
        assert snapshot["entities"]["lead"]["fields"]["last_name"]["type"] == "string"
        assert "last_name" in snapshot["tables"]["lead"]["columns"]
        if backend == "sqlite":
            objects = set(conn.exec_driver_sql("SELECT name FROM sqlite_master").scalars())
            assert {"lead__fts", "lead__fts_ai", "lead__fts_ad", "lead__fts_au"} <= objects
        else:
            assert search_index_name("lead") in {i["name"] for i in insp.get_indexes("lead")}

    again = cli("migrate")
    assert again.returncode == 0, again.stderr
    assert "Nothing to do" in again.stdout
    assert len(rows_of(db_url, "crmkit_schema_snapshot")) == 1  # a no-op run stores nothing
    with make_crm(project, db_url) as crm:
        assert plan_migration(crm).is_empty


def test_plan_prints_steps_with_sql_and_changes_nothing(cli, db_url, project):
    result = cli("migrate", "--plan")
    assert result.returncode == 0, result.stderr
    assert "  1. add_table" in result.stdout and "CREATE TABLE" in result.stdout
    assert "CREATE INDEX" in result.stdout
    eng = engine_for(db_url)
    with eng.connect() as conn:
        assert sa.inspect(conn).get_table_names() == []
    eng.dispose()

    migrate(project, db_url)
    overlay(project, """
        extends: lead
        fields:
          budget: {type: money, label: {en: Budget, ja: 予算}}
    """)
    before = db_state(db_url)
    result = cli("migrate", "--plan")
    assert result.returncode == 0, result.stderr
    assert "1. add_column lead" in result.stdout
    assert "ALTER TABLE lead ADD COLUMN budget NUMERIC(18, 2)" in result.stdout
    assert db_state(db_url) == before


# -- additive changes -------------------------------------------------------------------------------


def test_overlay_adds_field_entity_and_option_on_a_full_table(db_url, backend, project):
    migrate(project, db_url)
    with make_crm(project, db_url) as crm:
        insert_leads(crm, 300)
    before = rows_of(db_url, "lead")
    if backend == "postgresql":
        eng = engine_for(db_url)
        with eng.connect() as conn:
            node = conn.exec_driver_sql("SELECT pg_relation_filenode('lead')").scalar()

    overlay(project, """
        extends: lead
        fields:
          budget: {type: money, label: {en: Budget, ja: 予算}}
          source:
            options:
              - {value: webinar, label: {en: Webinar, ja: ウェビナー}}
    """)
    overlay(project, """
        entity: visit
        label: {en: Visit, ja: 訪問}
        fields:
          subject: {type: string, max_length: 100, required: true}
          lead: {type: reference, to: lead, on_delete: cascade}
        list: {sort: [-created_at], filters: [lead], search: [subject]}
    """, name="visit.yaml")
    plan = migrate(project, db_url)
    kinds = {(s.kind, s.table) for s in plan.steps}
    assert {("add_column", "lead"), ("add_table", "visit"), ("update_options", "lead")} <= kinds
    option_step = next(s for s in plan.steps if s.kind == "update_options")
    assert option_step.sql == [] and "webinar" in option_step.description

    after = rows_of(db_url, "lead")
    assert {i: {k: v for k, v in r.items() if k != "budget"} for i, r in after.items()} == before
    assert all(r["budget"] is None for r in after.values())
    with make_crm(project, db_url) as crm, crm.engine.connect() as conn:
        insp = sa.inspect(conn)
        assert {f["referred_table"] for f in insp.get_foreign_keys("visit")} >= {"lead", "user", "team"}
        assert load_snapshot(conn)["entities"]["lead"]["fields"]["source"]["options"][-1] == "webinar"
        if backend == "postgresql":  # a nullable ADD COLUMN must not rewrite the table
            assert conn.exec_driver_sql("SELECT pg_relation_filenode('lead')").scalar() == node
    assert migrate(project, db_url).is_empty


def test_10000_leads_survive_add_rename_and_remove_field(db_url, project):
    """The DESIGN §4 promise: add, rename (renamed_from) and remove a field; not one value is lost."""
    overlay(project, """
        extends: lead
        fields:
          customer_code: {type: string, max_length: 40}
    """)
    migrate(project, db_url)
    with make_crm(project, db_url) as crm:
        insert_leads(crm, 10_000, extra=lambda i: {"customer_code": f"C-{i:05d}-顧客" if i % 13 else None})
    original = rows_of(db_url, "lead")
    assert len(original) == 10_000

    # 1. add a field; fill it
    overlay(project, """
        extends: lead
        fields:
          customer_code: {type: string, max_length: 40}
          budget: {type: money}
    """)
    plan = migrate(project, db_url)
    assert [s.kind for s in plan.steps] == ["add_column"]
    after_add = rows_of(db_url, "lead")
    assert {i: {k: v for k, v in r.items() if k != "budget"} for i, r in after_add.items()} == original
    eng = engine_for(db_url)
    with eng.begin() as conn:
        conn.execute(sa.text("UPDATE lead SET budget = id * 2.5 WHERE id % 3 <> 0"))
    eng.dispose()
    expected = rows_of(db_url, "lead")
    assert expected[1]["budget"] == decimal.Decimal("2.50") and expected[3]["budget"] is None

    # 2. rename customer_code -> code
    overlay(project, """
        extends: lead
        fields:
          code: {type: string, max_length: 40, renamed_from: customer_code}
          budget: {type: money}
    """)
    plan = migrate(project, db_url)
    assert [s.kind for s in plan.steps] == ["rename_column"]
    renamed = rows_of(db_url, "lead")
    assert "customer_code" not in renamed[1]
    for i, row in expected.items():
        row["code"] = row.pop("customer_code")
        assert renamed[i] == row, i
    assert migrate(project, db_url).is_empty  # renamed_from stays in the YAML: nothing more to do

    # 3. remove budget from the YAML: deprecated, column and every value kept
    overlay(project, """
        extends: lead
        fields:
          code: {type: string, max_length: 40, renamed_from: customer_code}
    """)
    plan = migrate(project, db_url)
    assert [s.kind for s in plan.steps] == ["deprecate_column"]
    assert rows_of(db_url, "lead") == renamed
    assert migrate(project, db_url).is_empty


def test_removed_field_is_deprecated_until_prune(cli, db_url, project):
    overlay(project, """
        extends: lead
        fields:
          legacy_score: {type: integer}
    """)
    migrate(project, db_url)
    with make_crm(project, db_url) as crm:
        insert_leads(crm, 50, extra=lambda i: {"legacy_score": i * 10})
    overlay(project, "extends: lead\nlabel: {en: Lead, ja: 見込み客}\n")

    result = cli("migrate")
    assert result.returncode == 0, result.stderr
    assert "deprecate_column lead" in result.stdout and "--prune" in result.stdout
    assert [r["legacy_score"] for r in rows_of(db_url, "lead").values()] == [i * 10 for i in range(1, 51)]
    with make_crm(project, db_url) as crm:
        assert "legacy_score" not in crm.table("lead").c  # hidden from the app
        with crm.engine.connect() as conn:
            snap = load_snapshot(conn)
        entry = snap["entities"]["lead"]["fields"]["legacy_score"]
        assert entry["deprecated"] and entry["removed"] and entry["type"] == "integer"
        assert "legacy_score" in snap["tables"]["lead"]["deprecated_columns"]
        # A deprecated column does not stop the app writing rows.
        insert_leads(crm, 1)
    assert migrate(project, db_url).is_empty

    result = cli("migrate", "--prune")
    assert result.returncode == 0, result.stderr
    assert "drop_column lead [DESTRUCTIVE]" in result.stdout
    assert "legacy_score" not in columns_of(db_url, "lead")
    assert len(rows_of(db_url, "lead")) == 51
    assert migrate(project, db_url, prune=True).is_empty


def test_removed_entity_table_is_kept_with_a_warning_until_prune(db_url, project):
    overlay(project, "entity: visit\nfields:\n  subject: {type: string}\n", name="visit.yaml")
    migrate(project, db_url)
    eng = engine_for(db_url)
    with eng.begin() as conn:
        conn.execute(sa.text("INSERT INTO visit (created_at, updated_at, subject) VALUES (:t, :t, 'kept')"),
                     {"t": NOW})
    eng.dispose()
    (project / "schemas" / "visit.yaml").unlink()
    plan = migrate(project, db_url)
    assert plan.is_empty and any("visit" in w and "1 row" in w for w in plan.warnings)
    assert [r["subject"] for r in rows_of(db_url, "visit").values()] == ["kept"]
    plan = migrate(project, db_url, prune=True)
    assert [(s.kind, s.table) for s in plan.steps] == [("drop_table", "visit")]
    assert "visit" not in db_state(db_url)


# -- type changes ---------------------------------------------------------------------------------


CODES = {1: "12", 2: " 7 ", 3: "abc", 4: "1,000", 5: None, 6: "x9"}


def test_lossy_type_change_previews_and_is_refused_then_applied(cli, db_url, project):
    overlay(project, "extends: lead\nfields:\n  code: {type: string, max_length: 20}\n")
    migrate(project, db_url)
    with make_crm(project, db_url) as crm:
        insert_leads(crm, len(CODES), extra=lambda i: {"code": CODES[i]})
    overlay(project, "extends: lead\nfields:\n  code: {type: integer}\n")
    before = db_state(db_url)

    with make_crm(project, db_url) as crm:
        plan = plan_migration(crm)
    (step,) = plan.steps
    assert step.kind == "alter_type" and step.destructive
    assert "2 of 5 stored values cannot be converted to integer" in step.preview
    assert "id 3: 'abc'" in step.preview and "id 6: 'x9'" in step.preview
    assert db_state(db_url) == before

    with pytest.raises(MigrationError, match="allow-destructive"):
        migrate(project, db_url)
    assert db_state(db_url) == before
    result = cli("migrate")
    assert result.returncode == 1
    assert "needs --allow-destructive" in result.stderr or "need --allow-destructive" in result.stderr
    assert "id 3: 'abc'" in result.stderr
    assert db_state(db_url) == before

    result = cli("migrate", "--allow-destructive")
    assert result.returncode == 0, result.stderr
    assert [r["code"] for r in rows_of(db_url, "lead").values()] == [12, 7, None, 1000, None, None]
    assert columns_of(db_url, "lead")["code"][0] in ("INTEGER", "BIGINT")
    assert migrate(project, db_url).is_empty


def test_lossless_type_changes_apply_without_the_flag(db_url, project):
    overlay(project, """
        extends: lead
        fields:
          code: {type: string, max_length: 10}
          seats: {type: integer}
          visited: {type: string}
    """)
    migrate(project, db_url)
    with make_crm(project, db_url) as crm:
        insert_leads(crm, 3, extra=lambda i: {"code": f" c{i}", "seats": i * 100,
                                              "visited": ["2024/05/01", "2025-12-31", None][i - 1]})
    overlay(project, """
        extends: lead
        fields:
          code: {type: string, max_length: 200}
          seats: {type: decimal}
          visited: {type: date}
    """)
    plan = migrate(project, db_url)
    assert sorted(s.kind for s in plan.steps) == ["alter_type"] * 3
    assert not any(s.destructive for s in plan.steps)
    rows = rows_of(db_url, "lead")
    assert [r["code"] for r in rows.values()] == [" c1", " c2", " c3"]  # untouched, spaces included
    assert [r["seats"] for r in rows.values()] == [100, 200, 300]
    # SQLite batch mode would CAST '2024-05-01' AS DATE (numeric affinity) to 2024; the values survive.
    assert [r["visited"] for r in rows.values()] == [dt.date(2024, 5, 1), dt.date(2025, 12, 31), None]
    assert migrate(project, db_url).is_empty


def test_search_index_survives_a_table_rebuild(db_url, backend, project):
    overlay(project, "extends: lead\nfields:\n  code: {type: string, max_length: 20}\n")
    migrate(project, db_url)
    with make_crm(project, db_url) as crm:
        insert_leads(crm, 20, extra=lambda i: {"code": str(i), "search_text": f"lead {i} ｱｸﾒ kaisha{i:03d}"})
    overlay(project, "extends: lead\nfields:\n  code: {type: integer}\n")
    plan = migrate(project, db_url)
    (step,) = plan.steps
    if backend == "sqlite":
        assert any("_alembic_tmp_lead" in s for s in step.sql)  # a batch rebuild, with the copy in the SQL

    def search(conn, needle: str) -> list[int]:
        if backend == "sqlite":
            fts = fts_table_name("lead")
            q = f'SELECT rowid FROM "{fts}" WHERE "{fts}" MATCH :q ORDER BY rowid'
            return list(conn.execute(sa.text(q), {"q": f'"{needle}"'}).scalars())
        return list(conn.execute(sa.text("SELECT id FROM lead WHERE search_text LIKE :q ORDER BY id"),
                                 {"q": f"%{needle}%"}).scalars())

    with make_crm(project, db_url) as crm:
        with crm.engine.connect() as conn:
            assert search(conn, "kaisha007") == [7]
            assert len(search(conn, "ｱｸﾒ")) == 20
        insert_leads(crm, 1, extra=lambda i: {"search_text": "brand new row zzyzx"})  # triggers still there
        with crm.engine.begin() as conn:
            conn.execute(sa.text("UPDATE lead SET search_text = 'renamed qqwwee' WHERE id = 3"))
            conn.execute(sa.text("DELETE FROM lead WHERE id = 4"))
        with crm.engine.connect() as conn:
            assert search(conn, "zzyzx") == [21]
            assert search(conn, "qqwwee") == [3] and search(conn, "kaisha003") == []
            assert search(conn, "kaisha004") == []
            if backend == "postgresql":
                assert search_index_name("lead") in {i["name"] for i in sa.inspect(conn).get_indexes("lead")}
    if backend == "sqlite":
        assert {"lead__fts_ai", "lead__fts_ad", "lead__fts_au"} <= sqlite_objects(db_url)


# -- failure and refusal ------------------------------------------------------------------------------


def test_failed_migration_leaves_the_database_exactly_as_it_was(cli, db_url, project):
    overlay(project, "extends: lead\nfields:\n  code: {type: string, max_length: 20}\n")
    migrate(project, db_url)
    with make_crm(project, db_url) as crm:
        insert_leads(crm, 30, extra=lambda i: {"code": f"dup{i % 4}"})
    # Several steps that work (new table, new column, type change with a SQLite table rebuild),
    # then a unique index over duplicate data that cannot.
    overlay(project, """
        extends: lead
        fields:
          code: {type: string, max_length: 50, unique: true}
          budget: {type: money}
    """)
    overlay(project, "entity: visit\nfields:\n  subject: {type: string}\n", name="visit.yaml")
    before = db_state(db_url)

    with make_crm(project, db_url) as crm:
        plan = plan_migration(crm)
    assert {"add_table", "add_column", "alter_type", "add_index"} <= {s.kind for s in plan.steps}
    assert any("would fail" in w or "failed" in w for w in plan.warnings)
    assert db_state(db_url) == before

    with pytest.raises(MigrationError, match="uq_lead_code"):
        migrate(project, db_url)
    assert db_state(db_url) == before
    result = cli("migrate")
    assert result.returncode == 1 and "Migration refused, nothing changed" in result.stderr
    assert db_state(db_url) == before

    # Once the data is fixed the same migration applies.
    eng = engine_for(db_url)
    with eng.begin() as conn:
        conn.execute(sa.text("UPDATE lead SET code = 'c' || CAST(id AS VARCHAR(10))"))
    eng.dispose()
    assert not migrate(project, db_url).is_empty
    assert "visit" in db_state(db_url)


def test_malformed_schema_exits_1_with_file_and_line_and_touches_nothing(cli, db_url, project):
    migrate(project, db_url)
    before = db_state(db_url)
    overlay(project, """
        extends: lead
        fields:
          budget: {type: mony}
    """)
    result = cli("migrate")
    assert result.returncode == 1
    assert "lead_extra.yaml:4" in result.stderr and "mony" in result.stderr
    assert db_state(db_url) == before


def test_malformed_schema_on_an_empty_database_creates_nothing(cli, db_url, project):
    overlay(project, "extends: lead\nfields:\n  x: {type: string, max_lenght: 3}\n")
    result = cli("migrate")
    assert result.returncode == 1 and "lead_extra.yaml:3" in result.stderr
    assert db_state(db_url) == {}


def test_plan_render_is_json_free_and_snapshot_is_json(db_url, project):
    """The snapshot is plain JSON (portable between tools); the plan names each step once."""
    plan = migrate(project, db_url)
    text = plan.render()
    assert text.count("add_table lead:") == 1
    eng = engine_for(db_url)
    with eng.connect() as conn:
        json.dumps(load_snapshot(conn))
    eng.dispose()


def test_odd_cases_not_null_leftover_column_link_table_rename_and_foreign_keys_back_on(db_url, project):
    """A NOT NULL column unknown to the schemas is deprecated and made nullable; a many-to-many field
    renamed with renamed_from keeps its links; foreign keys are enforced again after the migration."""
    overlay(project, "extends: lead\nfields:\n  tags: {type: references, to: product}\n")
    migrate(project, db_url)
    with make_crm(project, db_url) as crm:
        insert_leads(crm, 5)
    eng = engine_for(db_url)
    with eng.begin() as conn:
        conn.execute(sa.text("ALTER TABLE lead ADD COLUMN legacy VARCHAR(10) DEFAULT 'x' NOT NULL"))
        conn.execute(sa.text("INSERT INTO product (created_at, updated_at, name) VALUES (:t, :t, 'P')"),
                     {"t": NOW})
        conn.execute(sa.text("INSERT INTO lead__tags (source_id, target_id) VALUES (2, 1), (4, 1)"))
    eng.dispose()
    overlay(project, "extends: lead\nfields:\n  items: {type: references, to: product, renamed_from: tags}")

    with make_crm(project, db_url) as crm:
        plan = apply_migration(crm)
        steps = {(s.kind, s.table) for s in plan.steps}
        assert ("rename_table", "lead__tags") in steps and not any(s.kind == "add_table" for s in plan.steps)
        deprecated = next(s for s in plan.steps if s.kind == "deprecate_column")
        assert "legacy" in deprecated.description and "made nullable" in deprecated.description
        with pytest.raises(sa.exc.IntegrityError):  # the CRM's own engine enforces references again
            with crm.engine.begin() as conn:
                conn.execute(crm.table("lead").insert().values(created_at=NOW, updated_at=NOW, owner=424242))
        insert_leads(crm, 1)  # the deprecated NOT NULL column no longer blocks inserts
    rows = rows_of(db_url, "lead")
    assert [r["legacy"] for r in rows.values()] == ["x"] * 6
    assert columns_of(db_url, "lead")["legacy"][1] is True  # nullable now
    links = rows_of(db_url, "lead__items").values()
    assert [(r["source_id"], r["target_id"]) for r in links] == [(2, 1), (4, 1)]
    assert migrate(project, db_url).is_empty
