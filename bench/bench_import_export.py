"""Import/export benchmark (a script, not a test): ``crmkit.dataio`` on SQLite.

1. Writes a CSV of ``--rows`` leads (default 1,000,000; Japanese and English names, companies,
   e-mails, phones, enum labels) once, in CP932 like a Japanese Excel export, cached in ``--dir``.
2. Imports it into a fresh SQLite database with :func:`crmkit.dataio.import_file` — the real
   path: strict encoding detection, column mapping by Japanese labels, every row coerced and
   validated by RecordStore (``Tx.create_many``), computed ``full_name``, the normalised search
   text and its FTS5 index, duplicate keys, field-level audit, the import journal — and reports
   rows/s (target: 20,000 rows/s).
3. Exports every lead to CSV with :func:`crmkit.dataio.export_file` in a child process (twice:
   all rows, and a tenth of them) and reports rows/s (target: 50,000 rows/s) and the child's
   peak RSS for both sizes: flat memory means the two peaks are about the same. Then every lead
   to XLSX (the same export, typed cells in a zip), reported the same way.

Usage::

    python bench/bench_import_export.py [--rows 1000000] [--dir /tmp/crmkit_bench_io] [--profile] [--skip-import]

``--profile`` prints a cProfile of the import; ``--skip-import`` (or ``--export-only``) reuses the
database of the last run and only exports. Results go to ``bench/results/bench_import_export.txt``
and, for ``bench/bench_all.py``, ``bench/results/bench_import_export.json``. Rates are given per
wall-clock second (the issue's targets) and per CPU second of the process (``time.process_time``),
which a machine shared with other work disturbs far less.
"""

from __future__ import annotations

import argparse
import cProfile
import csv
import json
import os
import pstats
import random
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
# bench_all.py points CRMKIT_BENCH_RESULTS at its own report folder (so its smoke test writes there)
RESULTS = Path(os.environ.get("CRMKIT_BENCH_RESULTS") or ROOT / "bench" / "results") / "bench_import_export.txt"
RESULTS_JSON = RESULTS.with_suffix(".json")
IMPORT_TARGET, EXPORT_TARGET = 20_000, 50_000  # rows/s, from the issue

LAST = [("佐藤", "サトウ"), ("鈴木", "スズキ"), ("高橋", "タカハシ"), ("田中", "タナカ"), ("伊藤", "イトウ"),
        ("渡辺", "ワタナベ"), ("山本", "ヤマモト"), ("中村", "ナカムラ"), ("小林", "コバヤシ"), ("加藤", "カトウ")]
FIRST = [("太郎", "タロウ"), ("花子", "ハナコ"), ("健", "ケン"), ("美咲", "ミサキ"), ("翔", "ショウ"), ("結衣", "ユイ")]
EN_LAST = ["Smith", "Johnson", "Brown", "Taylor", "Miller", "Wilson", "Moore", "Clark"]
EN_FIRST = ["James", "Mary", "John", "Linda", "Robert", "Susan"]
JA_COMPANY = ["株式会社サンプル{n}", "{n}商事株式会社", "有限会社ヤマト{n}", "合同会社さくら{n}"]
EN_COMPANY = ["Acme {n} Inc.", "Globex {n} Ltd.", "Initech {n} LLC"]
STATUS = ["新規", "対応中", "育成中", "有望"]
SOURCE = ["Webサイト", "紹介", "展示会・イベント", "名刺交換", "SNS", "テレアポ"]
PREFS = ["東京都", "大阪府", "神奈川県", "愛知県", "福岡県", "北海道"]
HEADER = ["姓", "名", "セイ", "メイ", "会社名", "役職", "メールアドレス", "電話番号", "都道府県", "ステータス",
          "リードソース"]


def write_csv(path: Path, rows: int, seed: int = 7) -> None:
    rng = random.Random(seed)
    with path.open("w", encoding="cp932", newline="") as fh:
        w = csv.writer(fh, lineterminator="\r\n")
        w.writerow(HEADER)
        for i in range(rows):
            n = rng.randrange(200_000)
            if rng.random() < 0.6:
                (last, last_kana), (first, first_kana) = rng.choice(LAST), rng.choice(FIRST)
                company = rng.choice(JA_COMPANY).format(n=n)
            else:
                last, first, last_kana, first_kana = rng.choice(EN_LAST), rng.choice(EN_FIRST), "", ""
                company = rng.choice(EN_COMPANY).format(n=n)
            w.writerow([last, first, last_kana, first_kana, company, rng.choice(["部長", "課長", "", "主任"]),
                        f"user{i}@example{n % 97}.co.jp", f"0{rng.randrange(1, 10)}-{rng.randrange(10**4):04d}-"
                        f"{rng.randrange(10**4):04d}", rng.choice(PREFS), rng.choice(STATUS), rng.choice(SOURCE)])


def open_crm(db: Path):
    from crmkit import CRM

    return CRM(db.parent, database_url=f"sqlite:///{db}", entry_points=False)


def do_import(db: Path, source: Path, profile: bool) -> dict:
    from crmkit.core.actors import SYSTEM
    from crmkit.dataio import import_file
    from crmkit.plugins.admin_commands import migrate

    for suffix in ("", "-wal", "-shm"):
        Path(str(db) + suffix).unlink(missing_ok=True)
    crm = open_crm(db)
    migrate(crm)
    prof = cProfile.Profile() if profile else None
    start, cpu = time.perf_counter(), time.process_time()
    if prof:
        prof.enable()
    result = import_file(crm, "lead", source, actor=SYSTEM)  # batches sized as the product sizes them
    if prof:
        prof.disable()
    elapsed, cpu = time.perf_counter() - start, time.process_time() - cpu
    crm.close()
    if prof:
        pstats.Stats(prof).sort_stats("tottime").print_stats(30)
    return {"rows": result.created, "failed": result.failed, "seconds": elapsed, "cpu_seconds": cpu,
            "rows_per_s": result.created / elapsed, "rows_per_cpu_s": result.created / cpu,
            "peak_rss_mb": peak_rss_kb() / 1024}


def peak_rss_kb() -> int:
    """This process's peak resident set size in KiB, since it began running this program.

    Linux's ``VmHWM`` belongs to the process image and starts afresh at exec; ``ru_maxrss``
    does not: a child started from a big parent would report the parent's peak (after an import
    of a million rows in big batches, 459 MB for an export that itself peaked at 68 MB).
    """
    try:
        with open("/proc/self/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def export_child(db: Path, out: Path, limit: int | None, fmt: str = "csv") -> None:
    """Runs in a child process: export, then print rows, seconds and peak RSS as JSON."""
    from crmkit.core.actors import SYSTEM
    from crmkit.dataio import export_file

    crm = open_crm(db)
    flt = {"id": {"lte": limit}} if limit else None
    start, cpu = time.perf_counter(), time.process_time()
    n = export_file(crm, "lead", out, actor=SYSTEM, filter=flt, sort="id", format=fmt)
    elapsed, cpu = time.perf_counter() - start, time.process_time() - cpu
    peak_kb = peak_rss_kb()
    print(json.dumps({"rows": n, "seconds": elapsed, "rows_per_s": n / elapsed, "cpu_seconds": cpu,
                      "rows_per_cpu_s": n / cpu, "peak_rss_mb": peak_kb / 1024}))


def do_export(db: Path, out: Path, limit: int | None, fmt: str = "csv") -> dict:
    args = [sys.executable, __file__, "--export-child", str(db), "--out", str(out), "--format", fmt]
    if limit:
        args += ["--limit", str(limit)]
    done = subprocess.run(args, capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--dir", type=Path, default=Path("/tmp/crmkit_bench_io"))
    parser.add_argument("--profile", action="store_true")
    parser.add_argument("--skip-import", "--export-only", action="store_true",
                        help="Reuse the database of the last run.")
    parser.add_argument("--export-child", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--limit", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--format", default="csv", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.export_child:
        export_child(args.export_child, args.out, args.limit, args.format)
        return
    args.dir.mkdir(parents=True, exist_ok=True)
    source = args.dir / f"leads-{args.rows}.csv"
    if not source.exists():
        print(f"writing {source} ...", flush=True)
        write_csv(source, args.rows)
    db = args.dir / "bench.db"
    lines = [f"crmkit import/export benchmark, {args.rows:,} leads, SQLite, {time.strftime('%Y-%m-%d %H:%M')}",
             f"load average before: {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs"]
    figures = []
    if not args.skip_import:
        imp = do_import(db, source, args.profile)
        lines.append(f"import: {imp['rows']:,} rows in {imp['seconds']:.1f} s = {imp['rows_per_s']:,.0f} rows/s "
                     f"(target 20,000; {imp['failed']} rejected); {imp['cpu_seconds']:.1f} CPU s = "
                     f"{imp['rows_per_cpu_s']:,.0f} rows per CPU second; peak RSS {imp['peak_rss_mb']:.0f} MB")
        figures += [_figure("import rate", imp["rows_per_s"], "rows/s", IMPORT_TARGET),
                    _figure("import rate per CPU second", imp["rows_per_cpu_s"], "rows/CPU-s", IMPORT_TARGET),
                    {"name": "import peak RSS", "value": round(imp["peak_rss_mb"], 1), "unit": "MB",
                     "target": None, "met": None}]
    full = do_export(db, args.dir / "export-all.csv", None)
    tenth = do_export(db, args.dir / "export-tenth.csv", max(1, args.rows // 10))
    xlsx = do_export(db, args.dir / "export-all.xlsx", None, "xlsx")
    lines.append(f"export: {full['rows']:,} rows in {full['seconds']:.1f} s = {full['rows_per_s']:,.0f} rows/s "
                 f"(target 50,000); {full['cpu_seconds']:.1f} CPU s = {full['rows_per_cpu_s']:,.0f} rows per CPU "
                 f"second; peak RSS {full['peak_rss_mb']:.0f} MB")
    lines.append(f"export of a tenth: {tenth['rows']:,} rows, peak RSS {tenth['peak_rss_mb']:.0f} MB "
                 "(flat memory: about the same peak)")
    lines.append(f"export to XLSX: {xlsx['rows']:,} rows in {xlsx['seconds']:.1f} s = "
                 f"{xlsx['rows_per_s']:,.0f} rows/s; "
                 f"{xlsx['cpu_seconds']:.1f} CPU s = {xlsx['rows_per_cpu_s']:,.0f} rows per CPU second; "
                 f"peak RSS {xlsx['peak_rss_mb']:.0f} MB")
    figures += [
        _figure("export rate", full["rows_per_s"], "rows/s", EXPORT_TARGET),
        _figure("export rate per CPU second", full["rows_per_cpu_s"], "rows/CPU-s", EXPORT_TARGET),
        {"name": "export peak RSS (all rows)", "value": round(full["peak_rss_mb"], 1), "unit": "MB",
         "target": None, "met": None},
        {"name": "export peak RSS (a tenth)", "value": round(tenth["peak_rss_mb"], 1), "unit": "MB",
         "target": None, "met": None},
        _figure("XLSX export rate", xlsx["rows_per_s"], "rows/s", EXPORT_TARGET),
        _figure("XLSX export rate per CPU second", xlsx["rows_per_cpu_s"], "rows/CPU-s", EXPORT_TARGET),
        {"name": "XLSX export peak RSS (all rows)", "value": round(xlsx["peak_rss_mb"], 1), "unit": "MB",
         "target": None, "met": None},
    ]
    text = "\n".join(lines)
    print(text)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(text + "\n", encoding="utf-8")
    python = Path(sys.executable)
    python_shown = str(python.relative_to(ROOT)) if python.is_relative_to(ROOT) else str(python)
    command = " ".join([python_shown, "bench/bench_import_export.py", *sys.argv[1:]])
    RESULTS_JSON.write_text(json.dumps({"command": command, "figures": figures}, indent=2) + "\n", encoding="utf-8")


def _figure(name: str, value: float, unit: str, target: float) -> dict:
    """One headline figure of the result contract (``met`` computed against the issue's target)."""
    return {"name": name, "value": round(value, 1), "unit": unit, "target": f">= {target}", "met": value >= target}


if __name__ == "__main__":
    main()
