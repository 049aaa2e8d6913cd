"""List benchmark (a script, not a test): ``RecordStore.list`` versus hand-written SQL on SQLite.

A lead table of ``--rows`` rows (default 1,000,000) is loaded into a SQLite file (kept between runs:
the load only happens while the table has fewer rows than asked for). About 1% of the leads work
for a company whose name contains テクノロジー, for the search case. Then four list queries are timed,
each as ``crm.records.list("lead", actor=SYSTEM, columns=<the list columns>, ...)`` and as the
equivalent SQL run directly through the stdlib ``sqlite3`` module on the same file (same columns,
same keyset WHERE/ORDER BY, LIMIT page size + 1, and the same capped count query):

a. the first page (default sort ``-created_at``), with the capped count;
b. page 15,000 reached by cursor (the middle page with fewer rows); the cursor is made from the
   last row of page 14,999 (one OFFSET query, or ``--walk`` to follow every cursor), outside the timing;
c. the first page sorted on a listed column (``last_name``);
d. the first page of a substring search, ``q="テクノロジー"`` (FTS5 trigram index).

Each is the median of ``--repeat`` runs after a warm-up, RecordStore and floor alternating so both
see the same machine load; the issue's target is a ratio of at most
2x. The table is printed and written to ``bench/results/bench_list.txt``.

Usage::

    python bench/bench_list.py [--rows 1000000] [--db /tmp/crmkit_bench_list.db] [--repeat 20] [--profile]

``--profile`` adds a cProfile of the RecordStore side of every case.
"""

from __future__ import annotations

import argparse
import cProfile
import datetime as dt
import io
import math
import pstats
import random
import sqlite3
import statistics
import sys
import tempfile
import time
import unicodedata
from collections.abc import Callable
from pathlib import Path
from typing import Any

import sqlalchemy as sa

BATCH = 10_000
SEARCH_WORD = "テクノロジー"
TARGET_PAGE = 15_000
CLOCKS = {"wall": time.perf_counter, "cpu": time.process_time}
RESULTS = Path(__file__).resolve().parent / "results" / "bench_list.txt"

LAST = [("佐藤", "さとう"), ("鈴木", "すずき"), ("高橋", "たかはし"), ("田中", "たなか"), ("伊藤", "いとう"),
        ("渡辺", "わたなべ"), ("山本", "やまもと"), ("中村", "なかむら"), ("小林", "こばやし"), ("加藤", "かとう")]
FIRST = [("太郎", "たろう"), ("花子", "はなこ"), ("健", "けん"), ("美咲", "みさき"), ("翔", "しょう"),
         ("陽菜", "ひな"), ("大輔", "だいすけ"), ("結衣", "ゆい")]
EN_LAST = ["Smith", "Johnson", "Brown", "Taylor", "Miller", "Wilson", "Moore", "Clark", "Lewis", "Walker"]
EN_FIRST = ["James", "Mary", "John", "Linda", "Robert", "Susan", "David", "Karen"]
JA_COMPANY = ["株式会社サンプル{n}", "{n}商事株式会社", "有限会社ヤマト{n}", "合同会社さくら{n}"]
EN_COMPANY = ["Acme {n} Inc.", "Globex {n} Ltd.", "Initech {n} LLC", "Umbrella {n} Corporation"]
STATUSES = ["new", "working", "nurturing", "qualified"]
SOURCES = ["web", "referral", "event", "business_card", "sns", "cold_call", "advertisement", "other"]


def _lead(i: int, rng: random.Random, start: dt.datetime, paths: tuple[str, ...]) -> dict[str, Any]:
    from crmkit.core.text import search_text

    n = rng.randrange(100_000)
    if rng.random() < 0.6:
        (last, last_kana), (first, first_kana) = rng.choice(LAST), rng.choice(FIRST)
    else:
        last, first, last_kana, first_kana = rng.choice(EN_LAST), rng.choice(EN_FIRST), None, None
    if i % 100 == 37:  # ~1%: the search case
        company = f"株式会社{SEARCH_WORD}{n}" if i % 200 == 37 else f"{SEARCH_WORD}ソリューションズ{n}"
    elif rng.random() < 0.5:
        company = rng.choice(JA_COMPANY).format(n=n)
    else:
        company = rng.choice(EN_COMPANY).format(n=n)
    created = start + dt.timedelta(seconds=rng.randrange(2 * 365 * 86_400), microseconds=rng.randrange(10**6))
    row = {
        "last_name": last, "first_name": first, "last_name_kana": last_kana, "first_name_kana": first_kana,
        "company": company, "email": f"lead{i}@example.com", "phone": f"03-{i // 10_000:04d}-{i % 10_000:04d}",
        "status": rng.choice(STATUSES), "source": rng.choice(SOURCES),
        "created_at": created, "updated_at": created + dt.timedelta(days=rng.randrange(30)), "version": 1,
    }
    row["search_text"] = search_text([row.get(p) for p in paths])
    return row


def load(crm: Any, rows: int) -> None:
    """Make the lead table hold at least ``rows`` leads (FTS triggers off during the load)."""
    from crmkit.core.tables import fts_table_name, rebuild_sqlite_search, sqlite_search_ddl

    table = crm.metadata.tables["lead"]
    with crm.engine.connect() as conn:
        have = conn.execute(sa.select(sa.func.count()).select_from(table)).scalar_one()
    if have >= rows:
        print(f"lead table already holds {have:,} rows: no load")
        return
    paths = tuple(crm.catalog["lead"].search_paths)
    start = dt.datetime(2023, 1, 1)
    t0 = time.perf_counter()
    with crm.engine.begin() as conn:
        conn.exec_driver_sql(f'DROP TRIGGER IF EXISTS "{fts_table_name("lead")}_ai"')
    for lo in range(have, rows, BATCH):
        batch = [_lead(i, random.Random(i), start, paths) for i in range(lo, min(lo + BATCH, rows))]
        with crm.engine.begin() as conn:
            conn.execute(table.insert(), batch)
        if (lo // BATCH) % 20 == 19:
            print(f"  {lo + len(batch):,} rows, {time.perf_counter() - t0:.1f} s", flush=True)
    t1 = time.perf_counter()
    with crm.engine.begin() as conn:
        conn.exec_driver_sql(rebuild_sqlite_search("lead"))
        for stmt in sqlite_search_ddl("lead"):
            conn.exec_driver_sql(stmt)
    t2 = time.perf_counter()
    print(f"loaded {rows - have:,} leads in {t2 - t0:.1f} s (inserts {t1 - t0:.1f} s, FTS rebuild {t2 - t1:.1f} s)")


def _pad(text: str, width: int) -> str:
    """``text`` left-aligned in ``width`` terminal columns (wide CJK characters count twice)."""
    shown = sum(2 if unicodedata.east_asian_width(c) in "WF" else 1 for c in text)
    return text + " " * max(0, width - shown)


def _paired_median_ms(
    a: Callable[[], Any], b: Callable[[], Any], repeat: int, clock: Callable[[], float] = time.perf_counter
) -> tuple[float, float]:
    """Median ms of ``a`` and of ``b``, run alternately so both see the same machine load."""
    a(), b()  # warm-up
    times_a, times_b = [], []
    for _ in range(repeat):
        for fn, times in ((a, times_a), (b, times_b)):
            t = clock()
            fn()
            times.append(clock() - t)
    return statistics.median(times_a) * 1000, statistics.median(times_b) * 1000


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=1_000_000, help="leads to load (default 1,000,000)")
    parser.add_argument("--db", default="/tmp/crmkit_bench_list.db", help="SQLite file (kept between runs)")
    parser.add_argument("--repeat", type=int, default=20, help="timed runs per case (median reported)")
    parser.add_argument("--profile", action="store_true", help="cProfile the RecordStore side of each case")
    parser.add_argument("--clock", choices=sorted(CLOCKS), default="wall",
                        help="wall time, or this process's CPU time (steadier on a busy machine; SQLite runs "
                             "in-process, so its work is counted either way)")
    parser.add_argument("--walk", action="store_true",
                        help="reach the deep page by following every cursor (slow) instead of one OFFSET query")
    args = parser.parse_args(argv)

    from crmkit import CRM
    from crmkit.core import queries
    from crmkit.core.actors import SYSTEM
    from crmkit.core.migrations import apply_migration
    from crmkit.core.text import query_variants

    with tempfile.TemporaryDirectory() as project, \
            CRM(project, database_url=f"sqlite:///{args.db}", entry_points=False) as crm:
        apply_migration(crm)
        load(crm, args.rows)
        ent = crm.catalog["lead"]
        records = crm.records
        size = ent.list.page_size
        list_cols = list(ent.list.columns)
        with crm.engine.connect() as conn:
            total = conn.exec_driver_sql("SELECT count(*) FROM lead").scalar_one()

        # The columns RecordStore selects (id, version, the list columns, the sort keys), in its order.
        def selected(sort: str | None) -> list[str]:
            keys = queries.parse_sort(ent, sort)
            return records._columns(ent, list_cols, records.field_access(SYSTEM, "lead"), keys)

        # Case b: walk the cursors once to the target page.
        pages = math.ceil(total / size)
        page_no = TARGET_PAGE if pages > TARGET_PAGE else max(2, pages // 2)
        t = time.perf_counter()
        cursor = None
        last_id = None
        for _ in range(page_no - 1 if args.walk else 0):
            page = records.list("lead", actor=SYSTEM, columns=list_cols, cursor=cursor, with_count=False)
            cursor, last_id = page.next_cursor, page.items[-1]["id"]
        if not args.walk:  # jump there with one OFFSET query instead (same cursor)
            with crm.engine.connect() as conn:
                row = conn.exec_driver_sql(
                    f"SELECT id, created_at FROM lead ORDER BY created_at DESC, id DESC LIMIT 1 "
                    f"OFFSET {(page_no - 1) * size - 1}").one()
            last_id = row[0]
            created = dt.datetime.fromisoformat(row[1]) if isinstance(row[1], str) else row[1]
            cursor = queries.encode_cursor(queries.parse_sort(ent, None), {"created_at": created, "id": last_id})
        walk = time.perf_counter() - t
        how = "walked" if args.walk else "jumped over"
        print(f"{total:,} leads; {how} {page_no - 1:,} pages to page {page_no:,} in {walk:.1f} s")

        fts_match = '"' + query_variants(SEARCH_WORD)[0].replace('"', '""') + '"'
        floor_db = sqlite3.connect(args.db)
        created_last = floor_db.execute("SELECT created_at FROM lead WHERE id = ?", (last_id,)).fetchone()[0]
        search_where = "id IN (SELECT rowid FROM lead__fts WHERE lead__fts MATCH ?)"
        count_sql = "SELECT count(*) FROM (SELECT 1 FROM lead {where} LIMIT " + f"{queries.COUNT_CAP + 1})"

        def floor(cols: list[str], where: str, count_where: str, order: str, params: tuple, cparams: tuple):
            sql = f"SELECT {', '.join(cols)} FROM lead {where} ORDER BY {order} LIMIT {size + 1}"
            csql = count_sql.format(where=count_where)

            def run() -> list[tuple]:
                rows = floor_db.execute(sql, params).fetchall()
                floor_db.execute(csql, cparams).fetchone()
                return rows
            return run

        cols_default, cols_name = selected(None), selected("last_name")
        newest = "created_at DESC, id DESC"
        cases: list[tuple[str, dict[str, Any], Callable[[], list[tuple]]]] = [
            ("a. first page (-created_at) + count", {},
             floor(cols_default, "", "", newest, (), ())),
            (f"b. page {page_no:,} by cursor + count", {"cursor": cursor},
             floor(cols_default, "WHERE (created_at, id) < (?, ?)", "", newest, (created_last, last_id), ())),
            ("c. sort last_name, first page + count", {"sort": "last_name"},
             floor(cols_name, "", "", "last_name ASC, id ASC", (), ())),
            (f"d. search q={SEARCH_WORD} + count", {"q": SEARCH_WORD},
             floor(cols_default, f"WHERE {search_where}", f"WHERE {search_where}", newest,
                   (fts_match,), (fts_match,))),
        ]

        lines = [f"RecordStore.list vs hand-written sqlite3 SQL: {total:,} leads, page size {size}, "
                 f"median of {args.repeat} runs after a warm-up ({args.clock} clock)",
                 "",
                 f"{'case':<40} {'RecordStore ms':>15} {'floor ms':>10} {'ratio':>7}",
                 "-" * 75]
        worst = 0.0
        profiles = []
        for name, kwargs, floor_fn in cases:
            def rs(kwargs: dict[str, Any] = kwargs) -> Any:
                return records.list("lead", actor=SYSTEM, columns=list_cols, **kwargs)

            got, want = [r["id"] for r in rs().items], [r[0] for r in floor_fn()[:size]]
            if got != want:
                print(f"MISMATCH in {name}: RecordStore {got[:5]}... vs floor {want[:5]}...", file=sys.stderr)
                return 1
            rs_ms, floor_ms = _paired_median_ms(rs, floor_fn, args.repeat, CLOCKS[args.clock])
            ratio = rs_ms / floor_ms
            worst = max(worst, ratio)
            lines.append(f"{_pad(name, 40)} {rs_ms:>15.2f} {floor_ms:>10.2f} {ratio:>6.2f}x")
            if args.profile:
                prof = cProfile.Profile()
                prof.runcall(lambda: [rs() for _ in range(args.repeat)])
                out = io.StringIO()
                pstats.Stats(prof, stream=out).sort_stats("cumulative").print_stats(25)
                profiles.append(f"\n== profile: {name} ({args.repeat} calls) ==\n{out.getvalue()}")
        lines.append("-" * 75)
        lines.append(f"target: every ratio <= 2.00x -> {'OK' if worst <= 2 else 'OVER'} (worst {worst:.2f}x)")
        floor_db.close()

    report = "\n".join(lines)
    print()
    print(report)
    for p in profiles:
        print(p)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(report + "\n", encoding="utf-8")
    print(f"\n(written to {RESULTS})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
