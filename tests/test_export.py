"""Export of list views to CSV and XLSX (crmkit.dataio), on SQLite and PostgreSQL.

Through export_file, the admin's export.csv / export.xlsx and ``crmkit export``: filters, search,
columns, the export permission, hidden and masked fields, streaming page by page, formula
defusing, and a round trip back through the importer.
"""

from __future__ import annotations

import csv
import io
from pathlib import Path

import pytest
from openpyxl import load_workbook

from crmkit.core.actors import SYSTEM
from crmkit.core.errors import BadRequest, PermissionDenied
from crmkit.dataio import build_exporter, export_file, import_file
from tests.support import actor_of, login, make_crm, owned

MASKING = """
extends: lead
permissions:
  sales_rep: {read: team, create: true, update: own, delete: none, export: team, fields: {phone: mask, email: none}}
"""


@pytest.fixture
def crm(tmp_path, db_url):
    (tmp_path / "schemas").mkdir()
    (tmp_path / "schemas" / "lead_perms.yaml").write_text(MASKING, encoding="utf-8")
    crm = make_crm(tmp_path, db_url, schema_paths=[tmp_path / "schemas"])
    yield crm
    crm.close()


def read_csv(data: bytes) -> list[list[str]]:
    assert data.startswith(b"\xef\xbb\xbf")  # BOM: Excel opens UTF-8 Japanese correctly
    return list(csv.reader(io.StringIO(data.decode("utf-8-sig"))))


def seed(crm, org):
    store = crm.records
    rows = [
        ("山田", "株式会社テスト", "new", "yamada@example.com", "03-1234-5678", "alice"),
        ("Smith", "ACME Inc.", "working", "smith@example.com", "03-9999-0000", "alice"),
        ("=HYPERLINK(\"http://evil\")", "Evil KK", "new", None, None, "alice"),
        ("Other team", "West KK", "new", "w@example.com", None, "bob"),
    ]
    for last, company, status, email, phone, owner in rows:
        store.create("lead", {"last_name": last, "company": company, "status": status, "email": email,
                              "phone": phone, **owned(org, owner)}, actor=SYSTEM)


def test_csv_export_of_a_list_view_with_filter_search_and_columns(crm, org, tmp_path):
    seed(crm, org)
    out = tmp_path / "new.csv"
    n = export_file(crm, "lead", out, actor=SYSTEM, columns="list", filter={"status": "new"}, lang="ja",
                    sort="last_name")
    rows = read_csv(out.read_bytes())
    assert n == 3 and len(rows) == 4
    assert rows[0] == ["姓", "名", "会社名", "ステータス", "リードソース", "所有者", "作成日時"]
    assert rows[1][0] == "'=HYPERLINK(\"http://evil\")"  # a formula is defused
    assert ["Other team", "", "West KK", "新規", "", "Bob"] == rows[2][:6]  # labels and titles, not codes
    searched = tmp_path / "q.csv"
    assert export_file(crm, "lead", searched, actor=SYSTEM, q="てすと", columns=["last_name", "company"]) == 1
    assert read_csv(searched.read_bytes())[1] == ["山田", "株式会社テスト"]
    with pytest.raises(BadRequest, match="no field 'nope'"):
        export_file(crm, "lead", tmp_path / "x.csv", actor=SYSTEM, columns=["nope"])


def test_export_respects_scope_hidden_and_masked_fields(crm, org, tmp_path):
    seed(crm, org)
    alice = actor_of(org["users"]["alice"])
    out = tmp_path / "alice.csv"
    n = export_file(crm, "lead", out, actor=alice, columns=None)
    rows = read_csv(out.read_bytes())
    header = rows[0]
    assert n == 3  # her team only (export: team)
    assert "Email" not in header and "Other team" not in out.read_text(encoding="utf-8-sig")
    phone = header.index("Phone")
    assert {r[phone] for r in rows[1:]} == {"••••5678", "••••0000", ""}
    assert "yamada@example.com" not in out.read_text(encoding="utf-8-sig")
    bob = actor_of(org["users"]["bob"])
    contacts = tmp_path / "c.csv"
    with pytest.raises(PermissionDenied):
        export_file(crm, "contact", contacts, actor=bob)  # contact: export none for reps


def test_xlsx_export_is_typed_and_defused(crm, org, tmp_path):
    seed(crm, org)
    crm.records.create("account", {"name": "株式会社エクセル", "employees": 42, "annual_revenue": "1234.5"},
                       actor=SYSTEM)
    out = tmp_path / "a.xlsx"
    assert export_file(crm, "account", out, actor=SYSTEM, format="xlsx", columns=["name", "employees",
                                                                                  "annual_revenue", "created_at"]) == 1
    ws = load_workbook(out, read_only=False).active
    assert [c.value for c in ws[1]] == ["Account name", "Employees", "Annual revenue", "Created"]
    name, employees, revenue, created = (c.value for c in ws[2])
    assert name == "株式会社エクセル" and employees == 42 and float(revenue) == 1234.5
    assert created.year >= 2026 and created.tzinfo is None  # a real date cell, in local time
    leads = tmp_path / "l.xlsx"
    export_file(crm, "lead", leads, actor=SYSTEM, format="xlsx", columns=["last_name"], sort="last_name")
    cell = load_workbook(leads).active["A2"]
    assert cell.value.startswith("=HYPERLINK") and cell.data_type == "s"  # text, never a formula


def test_export_streams_page_by_page(crm, org):
    store = crm.records
    with store.transaction(actor=SYSTEM, source="import") as tx:
        tx.create_many("lead", [{"last_name": f"L{i:04d}"} for i in range(1234)])
    exporter = build_exporter(crm, "lead", SYSTEM, columns=["last_name"], sort="last_name")
    exporter.page_size = 100
    pages = []
    original = exporter._page

    def counting(cursor):
        page = original(cursor)
        pages.append(page.size)
        return page

    exporter._page = counting
    rows = list(exporter.rows())
    assert len(rows) == 1234 and rows[0] == ["L0000"] and rows[-1] == ["L1233"]
    assert max(pages) == 100 and len(pages) == 13  # never more than one page in memory


def test_export_then_import_round_trip(crm, org, tmp_path):
    seed(crm, org)
    out = tmp_path / "all.csv"
    export_file(crm, "lead", out, actor=SYSTEM, lang="ja")
    again = import_file(crm, "lead", out, actor=SYSTEM, dry_run=True)
    assert (again.failed, again.unchanged, again.created) == (0, 4, 0), [e.message for e in again.errors]
    xlsx = tmp_path / "all.xlsx"
    export_file(crm, "lead", xlsx, actor=SYSTEM, format="xlsx")
    assert import_file(crm, "lead", xlsx, actor=SYSTEM, dry_run=True).unchanged == 4


def test_admin_export_csv_and_xlsx(crm, org):
    seed(crm, org)
    client = login(crm, "alice")
    response = client.get("/admin/lead/export.csv", params={"f.status": "new"})
    assert response.status_code == 200 and response.headers["content-disposition"].startswith("attachment")
    rows = read_csv(response.content)
    assert len(rows) == 3 and "Email" not in rows[0]
    xlsx = client.get("/admin/lead/export.xlsx", params={"q": "Smith", "columns": "last_name,company"})
    assert xlsx.status_code == 200 and xlsx.headers["content-type"].startswith("application/vnd.openxmlformats")
    ws = load_workbook(io.BytesIO(xlsx.content)).active
    assert [[c.value for c in row] for row in ws.iter_rows()] == [["Last name", "Company"], ["Smith", "ACME Inc."]]
    assert client.get("/admin/contact/export.xlsx").status_code == 403
    assert "export.xlsx" in client.get("/admin/lead/").text


def test_cli_export(cli, db_url, project, tmp_path):
    assert cli("migrate").returncode == 0
    source = "last_name,company,status\n山田,テスト,new\nSmith,ACME,working\n"
    (tmp_path / "in.csv").write_text(source, encoding="utf-8")
    assert cli("import", "lead", str(tmp_path / "in.csv")).returncode == 0
    out = tmp_path / "out.csv"
    done = cli("export", "lead", "--columns", "last_name,status", "--filter", '{"status": "new"}', "--lang", "ja",
               "-o", str(out))
    assert done.returncode == 0 and "Exported 1 rows" in done.stderr
    assert read_csv(out.read_bytes()) == [["姓", "ステータス"], ["山田", "新規"]]
    sjis = tmp_path / "sjis.csv"
    assert cli("export", "lead", "--columns", "last_name", "--encoding", "cp932", "-o", str(sjis),
               "--sort", "last_name").returncode == 0
    assert sjis.read_bytes().decode("cp932").splitlines() == ["Last name", "Smith", "山田"]
    xlsx = tmp_path / "o.xlsx"
    assert cli("export", "lead", "--format", "xlsx", "-o", str(xlsx)).returncode == 0
    assert load_workbook(xlsx).active.max_row == 3
    bad = cli("export", "lead", "--filter", "{nope")
    assert bad.returncode != 0 and "not JSON" in bad.stderr
    assert Path(out).exists()


def test_datetimes_in_the_zone_asked_for_including_repeated_and_far_past_values(crm, tmp_path):
    """Consecutive rows sharing a timestamp (bulk-created data) and years before 1000 format
    exactly like one strftime per cell would."""
    import datetime as dt
    from zoneinfo import ZoneInfo

    stamps = ["2024-01-02T00:00:00+00:00", "2024-01-02T09:00:00+09:00", "2024-01-02T00:00:00+00:00",
              "2024-06-30T23:59:59+00:00", None, "0999-03-04T05:06:07+00:00"]
    for i, stamp in enumerate(stamps):
        crm.records.create("lead", {"last_name": f"L{i}", "email_opt_out_at": stamp}, actor=SYSTEM)
    tokyo = ZoneInfo("Asia/Tokyo")
    out = tmp_path / "dt.csv"
    export_file(crm, "lead", out, actor=SYSTEM, columns=["last_name", "email_opt_out_at", "created_at"],
                sort="id", tz=tokyo)
    rows = read_csv(out.read_bytes())[1:]
    expected = [
        "" if s is None else dt.datetime.fromisoformat(s).astimezone(tokyo).strftime("%Y-%m-%d %H:%M:%S")
        for s in stamps
    ]
    assert [r[1] for r in rows] == expected
    assert expected[:3] == ["2024-01-02 09:00:00"] * 3 and expected[3] == "2024-07-01 08:59:59"
    created = [dt.datetime.strptime(r[2], "%Y-%m-%d %H:%M:%S") for r in rows]
    assert all(abs(c - dt.datetime.now(tokyo).replace(tzinfo=None)) < dt.timedelta(hours=1) for c in created)
    data = io.BytesIO()
    export_file(crm, "lead", data, actor=SYSTEM, format="xlsx", columns=["last_name", "email_opt_out_at"],
                sort="id", tz=tokyo)
    cells = [row[1] for row in load_workbook(io.BytesIO(data.getvalue())).active.iter_rows(min_row=2, values_only=True)]
    assert cells[:4] == [dt.datetime(2024, 1, 2, 9, 0), dt.datetime(2024, 1, 2, 9, 0), dt.datetime(2024, 1, 2, 9, 0),
                         dt.datetime(2024, 7, 1, 8, 59, 59)] and cells[4] is None


def test_list_by_column_is_the_list_page_by_column(crm, org):
    """The export's reader gives exactly the list's page: same rows, cursor, hidden and masked fields."""
    seed(crm, org)
    alice = actor_of(org["users"]["alice"])
    for actor, sort in ((SYSTEM, "id"), (alice, "email"), (alice, "-phone"), (alice, "-created_at")):
        cursor = None
        while True:
            page = crm.records.list("lead", actor=actor, sort=sort, cursor=cursor, limit=2, with_count=False,
                                    action="export")
            columns = crm.records.list_by_column("lead", actor=actor, sort=sort, cursor=cursor, limit=2,
                                                 action="export")
            rows = zip(*columns.columns, strict=True)
            assert [dict(zip(columns.names, row, strict=True)) for row in rows] == page.items
            assert columns.size == len(page.items) and columns.next_cursor == page.next_cursor
            if actor is alice:  # sorted by her hidden email, yet it is not in the page; phone is masked
                assert "email" not in columns.names and columns.column("email") == (None,) * columns.size
                assert all(p is None or p.startswith("••••") for p in columns.column("phone"))
                assert all(c.tzinfo is not None for c in columns.column("created_at"))
            cursor = page.next_cursor
            if not cursor:
                break


def test_column_formatting_quotes_exactly_the_cells_a_spreadsheet_would_run(crm, org, tmp_path):
    """Per-column shortcuts give what a per-cell formatter gives: formula starts quoted, a formula
    character after a newline inside a cell left alone, titles of references defused too."""
    evil = crm.records.create("account", {"name": "=SUM(A1)"}, actor=SYSTEM)
    plain = crm.records.create("account", {"name": "Plain KK"}, actor=SYSTEM)
    names = ["a\n=b", "-5", "+81 3", "@home", "=1+1", "ok, \"quoted\"", "x\r\ny", None]
    for i, last in enumerate(names):
        crm.records.create("contact", {"last_name": last or "z", "title": last, "do_not_email": i % 2 == 0,
                                       "birthday": f"2000-01-0{i + 1}" if i < 3 else None,
                                       "account": (evil if i % 2 else plain)["id"]}, actor=SYSTEM)
    out = tmp_path / "c.csv"
    export_file(crm, "contact", out, actor=SYSTEM, columns=["title", "account", "do_not_email", "birthday"], sort="id")
    rows = read_csv(out.read_bytes())[1:]
    assert [r[0] for r in rows] == ["a\n=b", "'-5", "'+81 3", "'@home", "'=1+1", "ok, \"quoted\"", "x\r\ny", ""]
    assert [r[1] for r in rows] == ["Plain KK", "'=SUM(A1)"] * 4
    assert [r[2] for r in rows] == ["Yes", "No"] * 4
    assert [r[3] for r in rows] == ["2000-01-01", "2000-01-02", "2000-01-03"] + [""] * 5
    xlsx = io.BytesIO()
    export_file(crm, "contact", xlsx, actor=SYSTEM, format="xlsx", columns=["title", "account"], sort="id")
    cells = list(load_workbook(io.BytesIO(xlsx.getvalue())).active.iter_rows(min_row=2, values_only=True))
    assert [c[0] for c in cells[:2]] == ["a\n=b", "-5"] and cells[1][1] == "=SUM(A1)"  # typed: the writer marks text


def test_many_to_many_columns_export_titles(crm, org, tmp_path):
    alice, bob = org["users"]["alice"]["id"], org["users"]["bob"]["id"]
    crm.records.create("activity", {"subject": "Kickoff", "type": "meeting",
                                    "participants": [{"id": alice}, {"id": bob}]}, actor=SYSTEM)
    crm.records.create("activity", {"subject": "Call", "type": "call"}, actor=SYSTEM)
    out = tmp_path / "a.csv"
    export_file(crm, "activity", out, actor=SYSTEM, columns=["subject", "participants"], sort="id")
    assert read_csv(out.read_bytes())[1:] == [["Kickoff", "Alice; Bob"], ["Call", ""]]


def test_csv_batches_are_written_exactly_as_the_csv_module_writes_them():
    """The joined fast path and the csv writer agree on every row, including ones needing quotes."""
    from crmkit.dataio.writers import csv_chunks

    rows = [["a", "b"], ["with, comma", "x"], ['say "hi"', ""], ["line\nbreak", "cr\r"], [1, None], ["", ""],
            ("tuple", "row")]
    single = [[""], ["x"], [None]]
    for batch in (rows, single, rows[:1], [r for r in rows if all(isinstance(c, str) for c in r)]):
        expected = io.StringIO()
        csv.writer(expected, lineterminator="\r\n").writerows([["h"] * len(batch[0]), *batch])
        assert b"".join(csv_chunks(["h"] * len(batch[0]), iter(batch))).decode("utf-8-sig") == expected.getvalue()


def test_hidden_sort_key_and_masks_stay_out_of_csv_and_xlsx(crm, org, tmp_path):
    """Sorting by a field the actor may not see reads it for the order only; masks hold in XLSX too."""
    seed(crm, org)
    alice = actor_of(org["users"]["alice"])
    out = tmp_path / "by_email.csv"
    assert export_file(crm, "lead", out, actor=alice, sort="email") == 3
    text = out.read_text(encoding="utf-8-sig")
    assert "@example.com" not in text and "5678" in text and "03-1234-5678" not in text
    xlsx = io.BytesIO()
    export_file(crm, "lead", xlsx, actor=alice, format="xlsx", sort="-email", columns=["last_name", "phone"])
    cells = list(load_workbook(io.BytesIO(xlsx.getvalue())).active.iter_rows(values_only=True))
    assert cells[0] == ("Last name", "Phone")
    assert sorted(c[1] or "" for c in cells[1:]) == ["", "••••0000", "••••5678"]


def test_xlsx_writer_cells_read_back_as_written():
    """The sheet XML written by hand reads back in openpyxl as openpyxl's own writer gave it."""
    import datetime as dt
    import decimal
    from zoneinfo import ZoneInfo

    from crmkit.dataio.writers import write_xlsx

    utc = dt.datetime(2024, 1, 2, 0, 0, tzinfo=dt.UTC)
    rows = [
        ["a & <b>", 42, decimal.Decimal("1234.50"), 2.5, True, dt.date(2024, 6, 30), utc, "=SUM(A1)"],
        ["ctl\x01char", -3, decimal.Decimal("0.000001"), None, False, dt.date(1900, 1, 1),
         utc.astimezone(ZoneInfo("Asia/Tokyo")), ""],
        ["  spaced  ", "", None, "", None, None, dt.datetime(2024, 7, 1, 8, 59, 59, 123456), "+1"],
    ]
    out = io.BytesIO()
    assert write_xlsx(out, ["Name", "N", "Amount", "F", "Flag", "Day", "When", "Text"], iter(rows),
                      title="Leads: a/b") == 3
    wb = load_workbook(io.BytesIO(out.getvalue()))
    ws = wb.active
    assert ws.title == "Leads  a b" and ws.freeze_panes == "A2" and all(c.font.b for c in ws[1])
    values = list(ws.iter_rows(min_row=2, values_only=True))
    assert values == [
        ("a & <b>", 42, 1234.5, 2.5, True, dt.datetime(2024, 6, 30), dt.datetime(2024, 1, 2, 0, 0), "=SUM(A1)"),
        ("ctlchar", -3, 0.000001, None, False, dt.datetime(1900, 1, 1), dt.datetime(2024, 1, 2, 9, 0), None),
        ("  spaced  ", None, None, None, None, None, dt.datetime(2024, 7, 1, 8, 59, 59, 123000), "+1"),
    ]  # (openpyxl reads serials to the millisecond)
    assert ws["H2"].data_type == "s"  # text, never a formula
