"""Import (crmkit.dataio + the import_export plugin) on SQLite and PostgreSQL.

Real files: CP932 and UTF-8-with-BOM CSVs written with Python's codecs, XLSX written with
openpyxl, a 100,000-row CSV; through import_file, the CLI and the admin wizard over HTTP.
"""

from __future__ import annotations

import codecs
import csv
import datetime as dt
import io
import re
from pathlib import Path

import pytest
import sqlalchemy as sa

from crmkit import hookimpl
from crmkit.core.actors import SYSTEM
from crmkit.core.errors import PermissionDenied, ValidationError
from crmkit.dataio import ImportRefused, ReadError, import_file, journal, open_table
from tests.support import actor_of, login, make_org, token

HEADER_JA = ["姓", "名", "会社名", "メールアドレス", "電話番号", "ステータス", "リードソース"]


def write_csv(path: Path, rows: list[list[str]], encoding: str) -> Path:
    """A CSV file in ``encoding`` (codecs does the encoding, as Excel would have)."""
    buf = io.StringIO()
    csv.writer(buf, lineterminator="\r\n").writerows(rows)
    with codecs.open(str(path), "w", encoding=encoding) as fh:
        fh.write(buf.getvalue())
    return path


def leads(crm, **flt):
    return crm.records.list("lead", actor=SYSTEM, filter=flt or None, limit=500).items


# ---------------------------------------------------------------------------------------------
# Encodings
# ---------------------------------------------------------------------------------------------
def test_cp932_file_with_japanese_headers_imports_without_mojibake(crm, tmp_path):
    rows = [HEADER_JA, ["髙橋", "①太郎", "株式会社テスト", "t@example.com", "03-1234-5678", "新規", "名刺交換"],
            ["ｶﾀｶﾅ", "花子", "(株)サンプル", "", "", "対応中", "Webサイト"]]
    path = write_csv(tmp_path / "sjis.csv", rows, "cp932")
    assert path.read_bytes().startswith("姓".encode("cp932"))
    with open_table(path) as table:
        assert table.encoding == "cp932" and table.header == HEADER_JA
    result = import_file(crm, "lead", path, actor=SYSTEM)
    assert (result.created, result.failed) == (2, 0)
    stored = {r["last_name"]: r for r in leads(crm)}
    assert stored["髙橋"]["first_name"] == "①太郎"  # CP932-only characters (NEC/IBM extensions) survive
    assert stored["髙橋"]["status"] == "new" and stored["髙橋"]["source"] == "business_card"  # ja labels -> values
    assert stored["ｶﾀｶﾅ"]["status"] == "working"
    found = crm.records.list("lead", actor=SYSTEM, q="かたかな").items  # the search text was normalised
    assert "ｶﾀｶﾅ" in [r["last_name"] for r in found]


def test_utf8_bom_file_maps_its_first_column(crm, tmp_path):
    path = write_csv(tmp_path / "bom.csv", [["Last name", "Company", "Email"], ["Smith", "ACME Inc.", "s@acme.test"]],
                     "utf-8-sig")
    assert path.read_bytes().startswith(codecs.BOM_UTF8)
    result = import_file(crm, "lead", path, actor=SYSTEM)
    assert result.created == 1
    assert [c.field for c in result.columns] == ["last_name", "company", "email"]  # "\ufeffLast name" matched


def test_utf16_tab_separated_file(crm, tmp_path):
    path = tmp_path / "unicode.txt"
    path.write_bytes(codecs.BOM_UTF16_LE + "last_name\tcompany\r\n田中\t合同会社さくら\r\n".encode("utf-16-le"))
    assert import_file(crm, "lead", path, actor=SYSTEM).created == 1
    assert leads(crm)[0]["company"] == "合同会社さくら"


def test_file_in_an_unknown_encoding_is_refused_with_the_line(crm, tmp_path):
    path = tmp_path / "latin1.csv"
    path.write_bytes("last_name,company\nok,fine\nM\u00fcller,Caf\u00e9 \u00c9toile\n".encode("latin-1"))
    with pytest.raises(ReadError) as exc:
        import_file(crm, "lead", path, actor=SYSTEM)
    assert "line 3" in str(exc.value) and "UTF-8" in str(exc.value) and "Shift_JIS" in str(exc.value)
    assert leads(crm) == []  # nothing half-imported, never mojibake


def test_shift_jis_file_that_looks_like_utf8_at_first_is_read_whole(crm, tmp_path):
    rows = [["last_name", "company"]] + [[f"Smith{i}", "ACME"] for i in range(3000)] + [["山田", "株式会社テスト"]]
    path = write_csv(tmp_path / "late.csv", rows, "cp932")
    result = import_file(crm, "lead", path, actor=SYSTEM, batch_size=1000)
    assert result.created == 3001 and leads(crm, last_name="山田")[0]["company"] == "株式会社テスト"


def test_bad_header_is_refused(crm, tmp_path):
    path = write_csv(tmp_path / "dup.csv", [["last_name", "last_name"], ["a", "b"]], "utf-8")
    with pytest.raises(ReadError, match="appears twice"):
        import_file(crm, "lead", path, actor=SYSTEM)
    (tmp_path / "empty.csv").write_bytes(b"")
    with pytest.raises(ReadError, match="empty"):
        import_file(crm, "lead", tmp_path / "empty.csv", actor=SYSTEM)
    (tmp_path / "old.xls").write_bytes(b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1" + b"\0" * 100)
    with pytest.raises(ReadError, match="xlsx"):
        import_file(crm, "lead", tmp_path / "old.xls", actor=SYSTEM)


# ---------------------------------------------------------------------------------------------
# Bad rows, the error file, re-import
# ---------------------------------------------------------------------------------------------
def test_five_percent_bad_rows_import_the_rest_and_the_error_file_lists_exactly_them(crm, tmp_path):
    rows = [["Last name", "Email", "Status", "Employees"]]
    bad = set()
    for i in range(400):
        if i % 20 == 7:  # 5%: each kind of problem once in a while
            bad.add(i + 2)  # row numbers count the header as row 1
            kind = (i // 20) % 4
            rows.append([
                "" if kind == 0 else f"Bad{i}",
                "not-an-email" if kind == 1 else f"bad{i}@example.com",
                "sleeping" if kind == 2 else "new",
                "-5" if kind == 3 else "10",
            ])
        else:
            rows.append([f"Good{i}", f"good{i}@example.com", "working", str(i)])
    path = write_csv(tmp_path / "mixed.csv", rows, "utf-8")
    errors = tmp_path / "mixed.errors.csv"
    result = import_file(crm, "lead", path, actor=SYSTEM, errors_to=errors, batch_size=64)
    assert (result.total, result.created, result.failed) == (400, 380, 20)
    assert crm.records.list("lead", actor=SYSTEM).count == 380
    with errors.open(encoding="utf-8-sig", newline="") as fh:
        lines = list(csv.DictReader(fh))
    assert {int(line["_row"]) for line in lines} == bad and len(lines) == 20
    by_row = {int(line["_row"]): line for line in lines}
    assert by_row[9]["_column"] == "Last name" and "is required" in by_row[9]["_error"]
    assert by_row[29]["_column"] == "Email" and "email address" in by_row[29]["_error"]
    assert by_row[49]["_column"] == "Status" and "must be one of" in by_row[49]["_error"]
    assert by_row[69]["_column"] == "Employees" and "at least 0" in by_row[69]["_error"]
    assert by_row[29]["Email"] == "not-an-email"  # the original cells, to fix in place
    # fix the cells in the error file and import it again: _row/_column/_error are ignored
    for line in lines:
        line["Last name"] = line["Last name"] or "Fixed"
        line["Email"] = line["Email"].replace("not-an-email", "fixed@example.com")
        line["Status"] = "new"
        line["Employees"] = "1"
    fixed = tmp_path / "fixed.csv"
    with fixed.open("w", encoding="utf-8-sig", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(lines[0]))
        writer.writeheader()
        writer.writerows(lines)
    again = import_file(crm, "lead", fixed, actor=SYSTEM)
    assert (again.created, again.failed) == (20, 0)
    assert {c.status for c in again.columns if c.header.startswith("_")} == {"error_column"}
    assert crm.records.list("lead", actor=SYSTEM).count == 400


def test_a_column_that_maps_to_nothing_is_reported_not_dropped(crm, tmp_path):
    path = write_csv(tmp_path / "extra.csv", [["Last name", "好きな食べ物", "Fax number"], ["A", "寿司", "1"]], "utf-8")
    with pytest.raises(ImportRefused) as exc:
        import_file(crm, "lead", path, actor=SYSTEM)
    assert "好きな食べ物" in str(exc.value) and "Fax number" in str(exc.value)
    assert leads(crm) == []
    result = import_file(crm, "lead", path, actor=SYSTEM, mapping={"好きな食べ物": None, "Fax number": "description"})
    assert result.created == 1 and leads(crm)[0]["description"] == "1"
    statuses = {c.header: c.status for c in result.columns}
    assert statuses == {"Last name": "mapped", "好きな食べ物": "ignored", "Fax number": "mapped"}


def test_readonly_and_unknown_mapping_targets(crm, tmp_path):
    path = write_csv(tmp_path / "ro.csv", [["Last name", "Created", "Name"], ["A", "2020-01-01", "X"]], "utf-8")
    result = import_file(crm, "lead", path, actor=SYSTEM)  # computed/system columns: reported, not written
    assert result.created == 1
    assert {c.header: c.status for c in result.columns}["Created"] == "readonly"
    with pytest.raises(ImportRefused, match="no field 'nonsense'"):
        import_file(crm, "lead", path, actor=SYSTEM, mapping={"Name": "nonsense"})
    with pytest.raises(ImportRefused, match="upsert key"):
        import_file(crm, "lead", path, actor=SYSTEM, upsert_key="email")


# ---------------------------------------------------------------------------------------------
# Upsert, references by title, XLSX, dry run
# ---------------------------------------------------------------------------------------------
def test_upsert_by_email_updates_creates_and_leaves_unchanged_rows_alone(crm, tmp_path):
    store = crm.records
    kept = store.create("lead", {"last_name": "Old", "email": "Keep@Example.com", "phone": "03-1111-1111"},
                        actor=SYSTEM)
    same = store.create("lead", {"last_name": "Same", "email": "same@example.com"}, actor=SYSTEM)
    path = write_csv(tmp_path / "up.csv", [["Last name", "Email", "Phone"],
                                           ["New name", "keep@example.com", ""],
                                           ["Same", "same@example.com", ""],
                                           ["Brand new", "new@example.com", "03-2222-2222"],
                                           ["Twice", "new@example.com", ""]], "utf-8")
    result = import_file(crm, "lead", path, actor=SYSTEM, upsert_key="email")
    assert (result.created, result.updated, result.unchanged, result.failed) == (1, 1, 1, 1)
    assert "same email as row 4" in result.errors[0].message
    updated = store.get("lead", kept["id"], actor=SYSTEM)
    assert updated["last_name"] == "New name" and updated["phone"] == "03-1111-1111"  # blank keeps by default
    assert store.get("lead", same["id"], actor=SYSTEM)["version"] == 1  # unchanged rows are not rewritten
    cleared = import_file(crm, "lead", path, actor=SYSTEM, upsert_key="email", blank="clear")
    assert cleared.updated >= 1 and store.get("lead", kept["id"], actor=SYSTEM)["phone"] is None


def test_references_by_title_or_id_and_owner_by_username(crm, tmp_path):
    org = make_org(crm)
    store = crm.records
    acme = store.create("account", {"name": "株式会社アクメ"}, actor=SYSTEM)
    rows = [["取引先", "姓", "所有者"],
            ["株式会社アクメ", "山田", "alice"],
            [f"#{acme['id']}", "佐藤", "Bob"],
            ["Nowhere Inc.", "鈴木", ""],
            ["株式会社アクメ", "田中", "nobody"]]
    path = write_csv(tmp_path / "contacts.csv", rows, "cp932")
    result = import_file(crm, "contact", path, actor=SYSTEM)
    assert (result.created, result.failed) == (2, 2)
    problems = {e.row: e.message for e in result.errors}
    assert "no account named 'Nowhere Inc.'" in problems[4]
    assert "no user named 'nobody'" in problems[5]
    made = {c["last_name"]: c for c in crm.records.list("contact", actor=SYSTEM).items}
    assert made["山田"]["account"] == acme["id"] and made["山田"]["owner"] == org["users"]["alice"]["id"]
    assert made["佐藤"]["owner"] == org["users"]["bob"]["id"]  # display name works too


def test_ambiguous_title_asks_for_the_id(crm, tmp_path):
    for _ in range(2):
        crm.records.create("account", {"name": "Same KK"}, actor=SYSTEM)
    path = write_csv(tmp_path / "amb.csv", [["account", "last_name"], ["Same KK", "X"]], "utf-8")
    result = import_file(crm, "contact", path, actor=SYSTEM)
    assert result.failed == 1 and "2 account records are named 'Same KK'" in result.errors[0].message


def test_xlsx_with_typed_cells(crm, tmp_path):
    from openpyxl import Workbook

    wb = Workbook()
    ws = wb.active
    ws.append(["取引先名", "従業員数", "年商", "電話番号", "説明"])
    ws.append(["株式会社エクセル", 120, 1234567.5, 312345678, dt.datetime(2026, 4, 1, 9, 30)])
    ws.append([None, None, None, None, None])  # an empty row is skipped, not an error
    ws.append(["Second Ltd.", "1,200", None, "03-1111-2222", None])
    wb.save(tmp_path / "accounts.xlsx")
    result = import_file(crm, "account", tmp_path / "accounts.xlsx", actor=SYSTEM)
    assert (result.created, result.failed) == (2, 0)
    stored = {r["name"]: r for r in crm.records.list("account", actor=SYSTEM).items}
    first = stored["株式会社エクセル"]
    assert first["employees"] == 120 and str(first["annual_revenue"]) == "1234567.50"
    assert first["phone"] == "312345678" and first["description"].startswith("2026-04-01 09:30")
    assert stored["Second Ltd."]["employees"] == 1200


def test_datetimes_without_a_zone_are_the_importers_local_time(crm, tmp_path):
    from zoneinfo import ZoneInfo

    path = write_csv(tmp_path / "acts.csv", [["subject", "type", "due_at"], ["Visit", "visit", "2026/12/01 10:00"]],
                     "utf-8")
    result = import_file(crm, "activity", path, actor=SYSTEM, tz=ZoneInfo("Asia/Tokyo"))
    assert result.created == 1, result.errors
    stored = crm.records.list("activity", actor=SYSTEM).items[0]
    assert stored["due_at"] == dt.datetime(2026, 12, 1, 1, 0, tzinfo=dt.UTC)


def test_dry_run_validates_everything_and_writes_nothing(crm, tmp_path):
    events = []

    class Spy:
        @hookimpl
        def track_event(self, crm, event):
            events.append(event.name)

    crm.pm.register(Spy())
    path = write_csv(tmp_path / "dry.csv", [["Last name", "Email"], ["A", "a@example.com"], ["", "x"]], "utf-8")
    result = import_file(crm, "lead", path, actor=SYSTEM, dry_run=True)
    assert (result.created, result.failed, result.import_id) == (1, 1, None)
    assert leads(crm) == [] and events == []
    audit = crm.system_tables["crmkit_audit"]
    with crm.engine.connect() as conn:
        assert conn.execute(sa.select(sa.func.count()).select_from(audit)).scalar() == 0


# ---------------------------------------------------------------------------------------------
# Same rules as a form: permissions, hooks, audit
# ---------------------------------------------------------------------------------------------
def test_import_obeys_permissions_hooks_and_audit(crm, tmp_path):
    org = make_org(crm)
    alice = actor_of(org["users"]["alice"])
    seen = []

    class Plugin:
        @hookimpl
        def validate_record(self, crm, entity, record, old, conn, actor):
            if entity.name == "lead" and record.get("company") == "Forbidden KK":
                return {"company": "this company is on the blocklist"}
            return None

        @hookimpl
        def track_event(self, crm, event):
            if event.entity == "lead":
                seen.append((event.name, event.source))

    crm.pm.register(Plugin())
    path = write_csv(tmp_path / "rep.csv", [["last_name", "company", "owner"],
                                            ["Mine", "OK KK", ""],
                                            ["Blocked", "Forbidden KK", ""],
                                            ["Theirs", "OK KK", "bob"]], "utf-8")
    result = import_file(crm, "lead", path, actor=alice)
    assert (result.created, result.failed) == (2, 1)
    assert result.errors[0].row == 3 and "company: this company is on the blocklist" in result.errors[0].message
    made = {r["last_name"]: r for r in crm.records.list("lead", actor=SYSTEM).items}
    assert made["Mine"]["owner"] == alice.id and made["Mine"]["team"] == alice.primary_team  # defaults as in a form
    assert made["Theirs"]["owner"] == org["users"]["bob"]["id"]
    assert seen == [("record.created", "import")] * 2
    mine = [made["Mine"]]
    history = crm.records.history("lead", mine[0]["id"], actor=alice)
    assert {h["field"] for h in history} >= {"last_name", "company"} and {h["source"] for h in history} == {"import"}
    with pytest.raises(PermissionDenied):
        import_file(crm, "user", write_csv(tmp_path / "u.csv", [["username"], ["x"]], "utf-8"), actor=alice)


def test_create_many_matches_create_row_by_row(crm):
    """The batched path gives the same answers as one create per row, for good and bad rows alike."""
    crm.records.create("account", {"name": "Taken", "account_number": "A-1"}, actor=SYSTEM)
    rows = [
        {"name": "Fine", "employees": "12", "website": "example.jp"},
        {"name": "", "employees": "x"},
        {"name": "Dup", "account_number": "A-1"},
        {"name": "Dup in batch", "account_number": "B-2"},
        {"name": "Dup in batch 2", "account_number": "B-2"},
        {"name": "Bad parent", "parent": 999999},
        {"name": "Bad owner", "owner": 424242},
        {"name": "Unknown field", "nonsense": 1},
    ]

    class Undo(Exception):
        pass

    with pytest.raises(Undo):
        with crm.records.transaction(actor=SYSTEM, source="import") as tx:
            bulk = tx.create_many("account", rows)
            raise Undo
    singles = []
    for values in rows:
        try:
            singles.append(crm.records.create("account", values, actor=SYSTEM))
        except ValidationError as exc:
            singles.append(exc)
    assert [type(o).__name__ for o in bulk] == [type(o).__name__ for o in singles] == [
        "dict", "ValidationError", "ValidationError", "dict", "ValidationError", "ValidationError",
        "ValidationError", "ValidationError",
    ]
    for b, one in zip(bulk, singles, strict=True):
        if isinstance(b, ValidationError):
            assert sorted(map(str, b.errors)) == sorted(map(str, one.errors))
        else:
            same = {k: v for k, v in b.items() if k not in ("id", "created_at", "updated_at")}
            assert same == {k: v for k, v in one.items() if k not in ("id", "created_at", "updated_at")}


def test_a_hook_failing_after_the_insert_costs_only_its_row(crm):
    class Flaky:
        @hookimpl
        def after_save(self, crm, entity, record, old, conn, actor):
            if entity.name == "lead" and record.get("last_name") == "Boom":
                conn.execute(sa.text("SELECT 1"))
                raise RuntimeError("the scoring service is down")

    crm.pm.register(Flaky())
    with crm.records.transaction(actor=SYSTEM, source="import") as tx:
        out = tx.create_many("lead", [{"last_name": "A"}, {"last_name": "Boom"}, {"last_name": "C"}])
    assert [type(o).__name__ for o in out] == ["dict", "ValidationError", "dict"]
    assert "scoring service is down" in str(out[1])
    assert sorted(r["last_name"] for r in leads(crm)) == ["A", "C"]
    audit = crm.system_tables["crmkit_audit"]
    with crm.engine.connect() as conn:
        ids = set(conn.execute(sa.select(audit.c.record_id).where(audit.c.entity == "lead")).scalars())
    assert ids == {r["id"] for r in leads(crm)}  # no audit rows of the rolled-back record


def test_batch_hooks_replace_the_per_record_hooks_of_their_plugin_in_imports(crm, tmp_path):
    """before/after_create_many run once per batch instead of that plugin's before/after_save;
    plugins with only the per-record hooks still get one call per row; a failing batch hook
    costs nothing but the fast path (the batch is redone row by row through the per-record hooks)."""
    calls: list[tuple[str, int | str]] = []

    class Batch:
        @hookimpl
        def before_save(self, crm, entity, record, old, conn, actor):
            if entity.name == "lead":
                calls.append(("before_save", record["last_name"]))
                record["company"] = f"{record.get('company') or ''} checked"

        @hookimpl
        def before_create_many(self, crm, entity, records, conn, actor):
            if entity.name == "lead":
                calls.append(("before_create_many", len(records)))
                for record in records:
                    record["company"] = f"{record.get('company') or ''} checked"

        @hookimpl
        def after_save(self, crm, entity, record, old, conn, actor):
            if entity.name == "lead":
                calls.append(("after_save", record["last_name"]))

        @hookimpl
        def after_create_many(self, crm, entity, records, conn, actor):
            if entity.name == "lead":
                assert all(isinstance(r["id"], int) for r in records)
                if any(r["last_name"] == "Boom" for r in records):
                    raise RuntimeError("batch service down")
                calls.append(("after_create_many", len(records)))

    class RowOnly:
        @hookimpl
        def after_save(self, crm, entity, record, old, conn, actor):
            if entity.name == "lead":
                calls.append(("row_only", record["last_name"]))

    crm.pm.register(Batch())
    crm.pm.register(RowOnly())
    path = write_csv(tmp_path / "b.csv", [["last_name", "company", "phone"]] + [
        [f"L{i}", f"Co{i}", f"03-1111-{i:04d}"] for i in range(5)], "utf-8")
    result = import_file(crm, "lead", path, actor=SYSTEM, batch_size=2)
    assert (result.created, result.failed) == (5, 0)
    assert [c for c in calls if c[0] != "row_only"] == [
        ("before_create_many", 2), ("after_create_many", 2), ("before_create_many", 2),
        ("after_create_many", 2), ("before_create_many", 1), ("after_create_many", 1)]
    assert [c[1] for c in calls if c[0] == "row_only"] == [f"L{i}" for i in range(5)]
    # the batch hook's change went through the derived values: the search text has it
    found = crm.records.list("lead", actor=SYSTEM, q="Co3 checked").items
    assert [r["last_name"] for r in found] == ["L3"]
    # the built-in duplicates plugin writes the keys of a batch through its batch hook
    keys = crm.system_tables["duplicates_key"]
    with crm.engine.connect() as conn:
        keyed = set(conn.execute(sa.select(keys.c.record_id).where(keys.c.entity == "lead")).scalars())
    assert keyed == {r["id"] for r in leads(crm)}

    calls.clear()
    path = write_csv(tmp_path / "c.csv", [["last_name"], ["Boom"], ["Fine"]], "utf-8")
    result = import_file(crm, "lead", path, actor=SYSTEM, batch_size=10)
    assert (result.created, result.failed) == (2, 0)
    assert [c for c in calls if c[0] != "row_only"] == [
        ("before_create_many", 2), ("before_save", "Boom"), ("after_save", "Boom"),
        ("before_save", "Fine"), ("after_save", "Fine")]


def _reference_search_text(values):
    """search_text as first written (before its per-value cache), from the public folding functions."""
    from collections.abc import Mapping

    from crmkit.core.text import COMPANY_FORM_MAX, SEPARATOR, normalize_company, normalize_search

    def flatten(items):
        for value in items:
            if value is None or value == "" or isinstance(value, bool):
                continue
            if isinstance(value, Mapping):
                yield from flatten(value.values())
            elif isinstance(value, list | tuple | set | frozenset):
                yield from flatten(value)
            else:
                yield str(value)

    parts, seen = [], set()
    for raw in flatten(values):
        folded = normalize_search(raw)
        if not folded:
            continue
        company = normalize_company(raw) if len(folded) <= COMPANY_FORM_MAX else ""
        for form in (folded, company):
            if form and form not in seen:
                seen.add(form)
                parts.append(form)
    return SEPARATOR.join(parts)


def test_fast_search_text_is_identical_to_the_reference_on_tricky_input():
    import decimal

    from crmkit.core.text import search_text

    tricky = [
        "株式会社テスト", "ﾃｽﾄ㈱", "（株）テスト", "テスト ㈱", "ACME Inc.", "Acme, Inc", "acme", "Incredible Cohen",
        "ＡＢＣ１２３", "03ー1234−5678", "03-1234-5678", "コーヒー", "コ−ヒ−", "ｺｰﾋｰ", "カタカナ", "かたかな",
        "  spaced\tout\u3000全角　空白  ", "株式会社", "(株)", "Inc.", "髙橋①", "ヴァイオリン", "ヽヾゝゞ", "〜～〰",
        "Straße", "ǅemal", "İstanbul", "K\u212a", "-", "ー", "a" * 199 + "株式会社", "メモ " * 120, "", " ",
        "Co., Ltd.", "テストCo.,Ltd.", "一般社団法人さくら", "合同会社さくら5", "user1@Example.CO.JP", "\u001f",
    ]
    cases = [[t] for t in tricky] + [
        tricky, tricky[::-1], [None, True, False, 0, 12, decimal.Decimal("1.50"), dt.date(2024, 1, 2)],
        [{"postal_code": "１００-０００１", "prefecture": "東京都", "city": None}, ["Ａ", "a", ("ｶ", "カ")]],
        [["new", "New", "新規"], "新規", "ACME Inc.", "acme"],
    ]
    for _ in range(2):  # the second round answers from the cache
        for values in cases:
            assert search_text(values) == _reference_search_text(values), values


# ---------------------------------------------------------------------------------------------
# Journal and undo
# ---------------------------------------------------------------------------------------------
def test_undo_deletes_created_records_and_restores_updated_ones(crm, tmp_path):
    store = crm.records
    old = store.create("lead", {"last_name": "Before", "email": "b@example.com", "status": "working"}, actor=SYSTEM)
    path = write_csv(tmp_path / "u.csv", [["last_name", "email", "status"],
                                          ["After", "b@example.com", "qualified"],
                                          ["Created1", "c1@example.com", "new"],
                                          ["Created2", "c2@example.com", "new"]], "utf-8")
    result = import_file(crm, "lead", path, actor=SYSTEM, upsert_key="email")
    assert (result.created, result.updated) == (2, 1) and result.import_id
    info = journal.get(crm, result.import_id)
    assert (info["status"], info["created"], info["updated"], info["entity"]) == ("done", 2, 1, "lead")
    created = [r for r in leads(crm) if r["last_name"].startswith("Created")]
    # someone edits one created record afterwards: undo still deletes it (it was created by the import)
    store.update("lead", created[0]["id"], {"phone": "03-1234-0000"}, actor=SYSTEM)
    report = journal.undo_import(crm, result.import_id, SYSTEM)
    assert (report.deleted, report.restored, report.problems) == (2, 1, [])
    restored = store.get("lead", old["id"], actor=SYSTEM)
    assert (restored["last_name"], restored["status"]) == ("Before", "working")
    assert [r["id"] for r in leads(crm)] == [old["id"]]
    assert journal.get(crm, result.import_id)["status"] == "undone"
    with pytest.raises(Exception, match="already undone"):
        journal.undo_import(crm, result.import_id, SYSTEM)


def test_undo_leaves_records_changed_since_the_import(crm, tmp_path):
    store = crm.records
    lead = store.create("lead", {"last_name": "X", "email": "x@example.com"}, actor=SYSTEM)
    path = write_csv(tmp_path / "u.csv", [["last_name", "email"], ["Y", "x@example.com"]], "utf-8")
    result = import_file(crm, "lead", path, actor=SYSTEM, upsert_key="email")
    store.update("lead", lead["id"], {"last_name": "Z"}, actor=SYSTEM)  # a later edit wins
    report = journal.undo_import(crm, result.import_id, SYSTEM)
    assert report.restored == 0 and "changed since the import" in report.problems[0]
    assert store.get("lead", lead["id"], actor=SYSTEM)["last_name"] == "Z"


def test_saved_mapping(crm, tmp_path):
    path = write_csv(tmp_path / "m.csv", [["氏", "社名"], ["山田", "テスト"]], "utf-8")
    journal.save_mapping(crm, "lead", "名刺アプリ", {"氏": "last_name", "社名": "company"}, None)
    result = import_file(crm, "lead", path, actor=SYSTEM, mapping_name="名刺アプリ")
    assert result.created == 1 and leads(crm)[0]["company"] == "テスト"
    with pytest.raises(Exception, match="saved: 名刺アプリ"):
        import_file(crm, "lead", path, actor=SYSTEM, mapping_name="nope")


# ---------------------------------------------------------------------------------------------
# 100,000 rows
# ---------------------------------------------------------------------------------------------
def test_hundred_thousand_row_csv(crm, tmp_path, backend):
    path = tmp_path / "big.csv"
    with path.open("w", encoding="cp932", newline="") as fh:
        writer = csv.writer(fh, lineterminator="\r\n")
        writer.writerow(["姓", "名", "会社名", "メールアドレス", "電話番号", "ステータス"])
        for i in range(100_000):
            writer.writerow([f"山田{i}", "太郎", f"株式会社テスト{i % 5000}", f"user{i}@example.com",
                             f"03-{i % 10000:04d}-{i % 7919:04d}", "新規" if i % 2 else "対応中"])
    done = []
    result = import_file(crm, "lead", path, actor=SYSTEM, on_progress=lambda n, total: done.append(n))
    assert (result.total, result.created, result.failed) == (100_000, 100_000, 0)
    assert done[0] == 1000 and done[-1] == 100_000 and len(done) < 100  # batches grew past the first 1,000
    table = crm.table("lead")
    with crm.engine.connect() as conn:
        assert conn.execute(sa.select(sa.func.count()).select_from(table)).scalar() == 100_000
        ids = conn.execute(sa.select(sa.func.min(table.c.id), sa.func.max(table.c.id))).one()
    assert ids[1] - ids[0] == 99_999
    found = crm.records.list("lead", actor=SYSTEM, q="山田99999", with_count=True)
    assert [r["email"] for r in found.items] == ["user99999@example.com"]  # search index kept up to date
    with crm.engine.connect() as conn:  # (lists cap their count at 10,000)
        working = conn.execute(sa.select(sa.func.count()).where(table.c.status == "working")).scalar()
    assert working == 50_000
    assert journal.get(crm, result.import_id)["created"] == 100_000


def test_batches_start_small_then_aim_at_a_time_per_batch(crm, tmp_path, monkeypatch):
    from crmkit.dataio import importer

    clock = iter(range(10**6))  # every batch "takes" one second on this clock
    monkeypatch.setattr(importer, "perf_counter", lambda: next(clock))
    monkeypatch.setattr(importer, "FIRST_BATCH", 10)
    monkeypatch.setattr(importer, "MAX_BATCH", 100)
    monkeypatch.setattr(importer, "BATCH_SECONDS", 3.0)
    path = write_csv(tmp_path / "many.csv", [["last_name"]] + [[f"L{i}"] for i in range(300)], "utf-8")
    done: list[int] = []
    result = import_file(crm, "lead", path, actor=SYSTEM, on_progress=lambda n, total: done.append(n))
    # 10 rows took "1 s": 3 s allow 30; growth is at most 4x a batch, and MAX_BATCH caps it
    assert done == [10, 40, 130, 230, 300] and result.created == 300
    fixed: list[int] = []
    import_file(crm, "lead", path, actor=SYSTEM, batch_size=64, on_progress=lambda n, total: fixed.append(n))
    assert fixed == [64, 128, 192, 256, 300]


def test_the_garbage_collector_runs_less_often_during_an_import_only(crm, tmp_path):
    import gc

    before = gc.get_threshold()
    path = write_csv(tmp_path / "few.csv", [["last_name"]] + [[f"L{i}"] for i in range(30)], "utf-8")
    during: list[tuple[int, ...]] = []
    import_file(crm, "lead", path, actor=SYSTEM, batch_size=10,
                on_progress=lambda n, t: during.append(gc.get_threshold()))
    assert during == [(50_000, 20, 100)] * 3 and gc.get_threshold() == before

    def stop(done: int, total: int) -> None:
        raise RuntimeError("cancelled")

    with pytest.raises(RuntimeError):  # restored when the import stops half-way too
        import_file(crm, "lead", path, actor=SYSTEM, batch_size=10, on_progress=stop)
    assert gc.get_threshold() == before


# ---------------------------------------------------------------------------------------------
# CLI
# ---------------------------------------------------------------------------------------------
def test_cli_import_dry_run_errors_and_undo(cli, db_url, project, tmp_path):
    assert cli("migrate").returncode == 0
    path = write_csv(tmp_path / "cli.csv", [HEADER_JA, ["山田", "太郎", "テスト", "bad", "", "新規", ""],
                                            ["佐藤", "花子", "テスト", "s@example.com", "", "新規", ""]], "cp932")
    dry = cli("import", "lead", str(path), "--dry-run")
    assert dry.returncode == 2, dry.stderr
    assert "Would import 2 rows: 1 created" in dry.stdout and "Dry run" in dry.stdout
    assert "Shift_JIS (CP932)" in dry.stderr and "row 2:" in dry.stderr
    real = cli("import", "lead", str(path), "--errors", str(tmp_path / "e.csv"))
    assert real.returncode == 2 and "1 created" in real.stdout
    assert (tmp_path / "e.csv").read_text(encoding="utf-8-sig").count("\n") == 2
    import_id = re.search(r"Import #(\d+)", real.stdout).group(1)
    listed = cli("imports", "list")
    assert f"#{import_id}" in listed.stdout and "created 1" in listed.stdout
    undo = cli("imports", "undo", import_id)
    assert undo.returncode == 0 and "1 deleted" in undo.stdout
    unmapped = write_csv(tmp_path / "x.csv", [["姓", "謎の列"], ["a", "b"]], "utf-8")
    refused = cli("import", "lead", str(unmapped))
    assert refused.returncode == 1 and "謎の列" in refused.stderr
    ok = cli("import", "lead", str(unmapped), "--ignore-unmapped", "--save-mapping", "simple")
    assert ok.returncode == 0, ok.stderr
    again = cli("import", "lead", str(unmapped), "--mapping", "simple")
    assert again.returncode == 0 and "1 created" in again.stdout


# ---------------------------------------------------------------------------------------------
# Admin wizard over HTTP
# ---------------------------------------------------------------------------------------------
def test_admin_import_wizard(crm, tmp_path):
    make_org(crm)
    client = login(crm, "admin")
    assert 'href="/admin/data/imports/"' in client.get("/admin/").text  # the menu link
    data = io.StringIO()
    writer = csv.writer(data)
    writer.writerow(["姓", "会社名", "メールアドレス", "メモ"])
    writer.writerow(["山田", "株式会社テスト", "y@example.com", "x"])
    writer.writerow(["", "No name KK", "n@example.com", "y"])
    upload = client.post(
        "/admin/data/import",
        data={"entity": "lead", "_csrf": token(client)},
        files={"file": ("名刺.csv", data.getvalue().encode("cp932"), "text/csv")},
    )
    assert upload.status_code == 303, upload.text[:500]
    page_url = upload.headers["location"]
    mapping = client.get(page_url)
    assert mapping.status_code == 200 and "Shift_JIS (CP932)" in mapping.text
    assert "Map this column to a field or ignore it." in mapping.text  # メモ matches nothing
    csrf = token(client)
    blocked = client.post(page_url, data={"_csrf": csrf, "action": "run", "col0": "last_name", "col1": "company",
                                          "col2": "email", "col3": ""})
    assert blocked.status_code == 422 and "メモ" in blocked.text
    preview = client.post(page_url, data={"_csrf": csrf, "action": "preview", "col0": "last_name", "col1": "company",
                                          "col2": "email", "col3": "-", "save_as": "cards"})
    assert preview.status_code == 200
    assert "1 would be created, 0 updated, 1 rejected." in preview.text
    assert "is required" in preview.text
    assert crm.records.list("lead", actor=SYSTEM).count == 0
    run = client.post(page_url, data={"_csrf": csrf, "action": "run", "col0": "last_name", "col1": "company",
                                      "col2": "email", "col3": "-"})
    assert run.status_code == 303
    result = client.get(page_url)
    assert "1 created, 0 updated, 1 rejected (of 2 rows)." in result.text
    errors = client.get(page_url + "/errors.csv")
    assert errors.status_code == 200 and "No name KK" in errors.text and "_error" in errors.text
    assert "cards" in {m["name"] for m in journal.mappings(crm, "lead")}
    history = client.get("/admin/data/imports/")
    assert "名刺.csv" in history.text
    confirm = client.post(page_url + "/undo", data={"_csrf": token(client)})
    assert confirm.status_code == 200 and "Delete the 1 records" in confirm.text
    undone = client.post(page_url + "/undo", data={"_csrf": token(client), "confirm": "1"})
    assert undone.status_code == 303
    assert crm.records.list("lead", actor=SYSTEM).count == 0
    assert "Import undone: 1 deleted, 0 restored." in client.get(page_url).text


def test_admin_import_refuses_bad_files_and_other_peoples_imports(crm, tmp_path):
    org = make_org(crm)
    admin = login(crm, "admin")
    bad = admin.post("/admin/data/import", data={"entity": "lead", "_csrf": token(admin)},
                     files={"file": ("latin.csv", "name\nCaf\u00e9\n".encode("latin-1"), "text/csv")})
    assert bad.status_code == 422 and "Save it from your spreadsheet" in bad.text
    ok = admin.post("/admin/data/import", data={"entity": "lead", "_csrf": token(admin)},
                    files={"file": ("ok.csv", b"last_name\nA\n", "text/csv")})
    page_url = ok.headers["location"]
    alice = login(crm, "alice")
    assert alice.get(page_url).status_code == 404  # not hers
    assert alice.get("/admin/data/import").status_code == 200
    forbidden = alice.post("/admin/data/import", data={"entity": "user", "_csrf": token(alice)},
                           files={"file": ("u.csv", b"username\nx\n", "text/csv")})
    assert forbidden.status_code == 403
    assert org  # the org made the users above


def test_docs_example_runs(crm, tmp_path):
    """The Python example of docs/import_export.md, run as written."""
    doc = (Path(__file__).resolve().parent.parent / "docs" / "import_export.md").read_text(encoding="utf-8")
    code = re.search(r"```python\n(.*?)```", doc, re.S).group(1)
    path = tmp_path / "leads.csv"
    exec(compile(code, "docs/import_export.md", "exec"), {"crm": crm, "path": path})  # noqa: S102
    assert path.with_suffix(".xlsx").exists() and leads(crm) == []  # imported, exported, undone


# ---------------------------------------------------------------------------------------------
# The per-cell fast paths give what the general code gives
# ---------------------------------------------------------------------------------------------
def test_cells_rows_and_audit_snapshots_of_an_import_are_exact(crm, tmp_path):
    import json

    from crmkit.core.audit import encode

    delivered = []

    class EventOnly:  # a track_event taking only the event, next to one that fails
        @hookimpl
        def track_event(self, event):
            delivered.append(event.record_id)

    class Broken:
        @hookimpl
        def track_event(self, crm, event):
            raise RuntimeError("boom")

    crm.pm.register(EventOnly())
    crm.pm.register(Broken())
    tricky = 'say "hi" \\ back\u2028line\ttab \x01 ünï 日本'
    path = write_csv(tmp_path / "cells.csv", [
        ["last_name", "first_name", "company", "phone", "status", "source", "title"],
        ["A", tricky, "'=SUM(A1)", "０３－１２３４－５６７８", "New", "紹介", "'plain"],
        ["", "", "", "", "", "", ""],
        [" ", "\t", "", "", "", "", ""],
        ["", "B-first", "Only first cell blank", "03 1234 5678", "new", "referral", ""],
        ["C", "", "", "12-34", "", "", ""],
        ["D", "", "", "", "nope", "", ""],
    ], "utf-8")
    result = import_file(crm, "lead", path, actor=SYSTEM)
    # blank rows are skipped; a row whose first cell alone is blank is read (and refused: last name)
    assert (result.total, result.created, result.failed) == (4, 1, 3)
    problems = {e.row: e.message for e in result.errors}
    assert problems == {
        5: "last_name: is required",
        6: "phone: must be a phone number (digits, spaces, +, -, parentheses)",
        7: "status: must be one of: new, working, nurturing, qualified, unqualified, converted",
    }
    (stored,) = leads(crm)
    assert stored["first_name"] == tricky.strip() and stored["company"] == "=SUM(A1)"
    assert stored["phone"] == "03-1234-5678" and stored["title"] == "'plain"
    assert (stored["status"], stored["source"]) == ("new", "referral")
    assert delivered == [stored["id"]]
    audit = crm.system_tables["crmkit_audit"]
    with crm.engine.connect() as conn:
        (snapshot,) = conn.execute(sa.select(audit.c.new_value).where(audit.c.action == "create")).scalars()
    record = crm.records.get("lead", stored["id"], actor=SYSTEM)
    from crmkit.core.audit import audited_fields

    expected = {name: record[name] if isinstance(record[name], str) else encode(record[name])
                for name in audited_fields(crm.catalog["lead"]) if record.get(name) is not None}
    assert snapshot == json.dumps(expected, ensure_ascii=False)


def test_audit_snapshot_is_the_json_of_the_encoded_values():
    import decimal
    import json

    from crmkit.core.audit import encode, snapshot

    values = {"s": 'q"\\\n\u2028\x7f é 日', "i": 3, "b": False, "d": decimal.Decimal("1.50"),
              "t": dt.datetime(2026, 1, 2, 3, 4, tzinfo=dt.UTC), "day": dt.date(2026, 1, 2), "l": ["b", "a"],
              "m": {"z": 1, "a": [1, 2]}, "none": None, "empty": ""}
    fields = ["s", "i", "b", "d", "t", "day", "l", "m", "none", "empty", "missing", "i"]
    expected = {}
    for name in fields:
        if values.get(name) is not None:
            expected[name] = values[name] if type(values[name]) is str else encode(values[name])
    assert snapshot(values, fields) == json.dumps(expected, ensure_ascii=False)
    assert snapshot({"a": None}, ["a", "b"]) is None


def test_enum_cells_take_the_first_option_whose_value_or_label_matches(crm):
    from crmkit.core.catalog import Field
    from crmkit.core.fieldtypes import InvalidValue

    f = Field("kind", "enum", {"en": "Kind"}, {"options": [
        {"value": "a", "label": {"en": "b", "ja": "エー"}},
        {"value": "b", "label": {"en": "Bee", "ja": "a"}},
        {"value": "c"},
    ]})
    coerce = crm.field_types["enum"].coerce
    assert [coerce(f, v) for v in ("a", " b ", "エー", "Bee", "c", None, "  ")] == ["a", "a", "a", "b", "c", None, None]
    with pytest.raises(InvalidValue, match="must be one of: a, b, c"):
        coerce(f, "d")
    assert coerce(Field("n", "enum", {"en": "N"}, {"options": [{"value": "1"}]}), 1) == "1"


# ---------------------------------------------------------------------------------------------
# Large imports build the secondary indexes afterwards
# ---------------------------------------------------------------------------------------------
def _index_names(crm, table: str) -> set[str]:
    return {ix["name"] for ix in sa.inspect(crm.engine).get_indexes(table)}


def _deferred_records(crm) -> list[tuple[str, str]]:
    from crmkit.core.deferred_indexes import DEFERRED_INDEX_TABLE

    record = crm.system_tables[DEFERRED_INDEX_TABLE]
    with crm.engine.connect() as conn:
        return sorted(conn.execute(sa.select(record.c.name, record.c.table_name)).all())


def test_a_large_import_builds_the_secondary_indexes_after_the_load(crm, tmp_path, monkeypatch):
    from crmkit.core import deferred_indexes

    monkeypatch.setattr(deferred_indexes, "MIN_ROWS", 50)
    full = _index_names(crm, "lead")
    keys = _index_names(crm, "duplicates_key")
    rows = [["last_name", "company", "email", "status"]] + [
        [f"L{i}", f"Co {i}", f"u{i}@example.com", "new"] for i in range(300)]
    path = write_csv(tmp_path / "load.csv", rows, "utf-8")
    seen: list[tuple[set[str], set[str], list[tuple[str, str]], list[str]]] = []

    def during(done: int, total: int) -> None:
        # queries stay correct while the indexes are away
        found = crm.records.list("lead", actor=SYSTEM, filter={"email": "u7@example.com"}).items
        seen.append((_index_names(crm, "lead"), _index_names(crm, "duplicates_key"), _deferred_records(crm),
                     [r["last_name"] for r in found]))

    result = import_file(crm, "lead", path, actor=SYSTEM, upsert_key="email", batch_size=100, on_progress=during)
    assert result.created == 300 and len(seen) == 3
    lead_during, keys_during, records, found = seen[0]
    assert found == ["L7"]
    assert "ix_lead_company_id" not in lead_during and "ix_lead_status_id" not in lead_during
    assert "ix_lead_email" in lead_during  # the upsert key's index: every batch reads through it
    assert "ix_lead_created_at_id" in lead_during or "ix_lead_id" not in full  # the list's default sort
    assert keys_during.isdisjoint({"ix_duplicates_key_lookup", "ix_duplicates_key_record"})  # bulk_load_tables
    assert {name for name, _t in records} == (full - lead_during) | (keys - keys_during)
    assert {t for _n, t in records} == {"lead", "duplicates_key"}
    # afterwards every index is back and nothing is left to build
    assert _index_names(crm, "lead") == full and _index_names(crm, "duplicates_key") == keys
    assert _deferred_records(crm) == []
    # and the rebuilt indexes hold the imported rows (the duplicate keys find them)
    from crmkit.core.duplicates import find_candidates

    l7 = crm.records.list("lead", actor=SYSTEM, filter={"email": "u7@example.com"}).items[0]
    assert [c.id for c in find_candidates(crm, "lead", {"email": "U7@example.com"}, actor=SYSTEM)] == [l7["id"]]


def test_a_small_or_relatively_small_import_keeps_every_index(crm, tmp_path, monkeypatch):
    from crmkit.core import deferred_indexes

    monkeypatch.setattr(deferred_indexes, "MIN_ROWS", 50)
    full = _index_names(crm, "lead")
    small = write_csv(tmp_path / "small.csv", [["last_name"]] + [[f"S{i}"] for i in range(40)], "utf-8")
    during: list[set[str]] = []
    import_file(crm, "lead", small, actor=SYSTEM, on_progress=lambda n, t: during.append(_index_names(crm, "lead")))
    assert during == [full]
    # a table already holding as many rows as the file brings keeps its indexes too
    more = write_csv(tmp_path / "more.csv", [["last_name"]] + [[f"M{i}"] for i in range(60)], "utf-8")
    import_file(crm, "lead", more, actor=SYSTEM)  # (this one defers: 60 rows into 40)
    during.clear()
    again = write_csv(tmp_path / "again.csv", [["last_name"]] + [[f"A{i}"] for i in range(70)], "utf-8")
    import_file(crm, "lead", again, actor=SYSTEM, on_progress=lambda n, t: during.append(_index_names(crm, "lead")))
    assert during == [full]  # 70 rows into 100
    assert _index_names(crm, "lead") == full and _deferred_records(crm) == []


def test_indexes_an_interrupted_import_left_are_built_by_the_next_start_or_migrate(crm, tmp_path, monkeypatch):
    from crmkit.core import deferred_indexes
    from crmkit.plugins.admin_commands import migrate

    monkeypatch.setattr(deferred_indexes, "MIN_ROWS", 50)
    full = _index_names(crm, "lead")
    path = write_csv(tmp_path / "stop.csv", [["last_name"]] + [[f"L{i}"] for i in range(120)], "utf-8")

    def stop(done: int, total: int) -> None:
        raise RuntimeError("cancelled")

    with pytest.raises(RuntimeError):  # an import that fails half-way still builds them
        import_file(crm, "lead", path, actor=SYSTEM, batch_size=50, on_progress=stop)
    assert _index_names(crm, "lead") == full and _deferred_records(crm) == []

    # a process killed mid-import never reaches its clean-up: the record it left is what rebuilds them
    for rebuild in (crm.startup, lambda: migrate(crm)):
        load = deferred_indexes.deferred(crm, [(crm.table("lead"), {"last_name"})], incoming=100)
        dropped = load.__enter__()  # (and never __exit__)
        assert "ix_lead_company_id" in dropped and "ix_lead_last_name_id" not in dropped
        assert _index_names(crm, "lead") == full - set(dropped)
        assert {n for n, _t in _deferred_records(crm)} == set(dropped)
        rebuild()
        assert _index_names(crm, "lead") == full and _deferred_records(crm) == []


def test_a_database_without_the_deferred_index_table_imports_with_every_index(crm, tmp_path, monkeypatch):
    from crmkit.core import deferred_indexes

    monkeypatch.setattr(deferred_indexes, "MIN_ROWS", 50)
    with crm.engine.begin() as conn:  # a database not migrated since the table was added
        conn.exec_driver_sql(f"DROP TABLE {deferred_indexes.DEFERRED_INDEX_TABLE}")
    full = _index_names(crm, "lead")
    path = write_csv(tmp_path / "old.csv", [["last_name"]] + [[f"L{i}"] for i in range(80)], "utf-8")
    during: list[set[str]] = []
    result = import_file(crm, "lead", path, actor=SYSTEM,
                         on_progress=lambda n, t: during.append(_index_names(crm, "lead")))
    assert result.created == 80 and during == [full]
    crm.startup()  # nothing to build, and no error either


def test_a_batch_indexes_its_search_text_with_a_big_buffer_then_ordinary_writes_get_the_default(
        crm, tmp_path, backend):
    rows = [["last_name", "company"]] + [[f"検索{i}", f"株式会社バッファ{i}"] for i in range(200)]
    import_file(crm, "lead", write_csv(tmp_path / "fts.csv", rows, "utf-8"), actor=SYSTEM)
    found = crm.records.list("lead", actor=SYSTEM, q="バッファ123").items
    assert [r["last_name"] for r in found] == ["検索123"]
    crm.records.create("lead", {"last_name": "単独", "company": "バッファ後"}, actor=SYSTEM)
    assert [r["last_name"] for r in crm.records.list("lead", actor=SYSTEM, q="バッファ後").items] == ["単独"]
    if backend == "sqlite":  # FTS5 keeps its settings in the index: the batch's 64 MB buffer is not left behind
        with crm.engine.connect() as conn:
            size = conn.exec_driver_sql("SELECT v FROM lead__fts_config WHERE k = 'hashsize'").scalar()
        assert size == 1024 * 1024
