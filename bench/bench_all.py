"""Every benchmark in one run, one table (a script, not a test: nothing here asserts a time).

Runs, one after the other in child processes (so each gets a clean interpreter and its own peak
RSS), with crmkit's virtualenv:

1. ``bench_admin.py --rows N`` — crmkit's admin against the floor, SQLAdmin and Django admin over
   the same generated SQLite tables (N leads with accounts, contacts, deals and activities):
   list first/deep page, sorts, substring search, detail page, edit form, create POST, peak RSS;
2. ``bench_import_export.py --rows N`` — CSV import and export rates, export peak RSS;
3. ``bench_scoring.py --leads N`` — ``crmkit scoring recompute`` and what assignment adds to a save;
4. ``bench_campaign_send.py --recipients M`` — a campaign sent by one worker to a local SMTP server.

Each script writes ``<script>.json`` (``{"command", "figures": [{"name", "value",
"unit", "target", "met"}]}``; the admin benchmark its case table); this script gathers them into
one Markdown report — the admin comparison with its ratios, then every rate against its target —
prints it and writes it to ``bench/results/all-<date>-<time>.md`` (or ``--out``); the scripts' JSON files
go beside that report (environment variable ``CRMKIT_BENCH_RESULTS``; on their own, ``bench/results/``).

Usage::

    .venv/bin/python bench/bench_all.py --rows 1000000            # the full run (hours at 1M)
    .venv/bin/python bench/bench_all.py --rows 20000 --recipients 1000 --apps floor,crmkit  # minutes

``--only admin,io`` runs a subset (admin, io, scoring, campaign). A step that fails is reported
with its exit code and the run goes on, so one broken step never hides the other figures.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
RESULTS = BENCH / "results"


@dataclass
class Step:
    """One benchmark script run by this command, and what came of it."""

    key: str
    title: str
    argv: list[str]
    result_file: Path
    exit_code: int | None = None
    seconds: float = 0.0
    data: dict[str, Any] = field(default_factory=dict)


def plan_steps(args: argparse.Namespace, stamp: str, out_dir: Path) -> list[Step]:
    """The steps asked for by the command line, in the order they run."""
    admin_out = out_dir / f"admin-{stamp}.md"
    admin = ["--rows", str(args.rows), "--apps", args.apps, "--out", str(admin_out),
             "--repeat", str(args.repeat)]
    if args.data_dir:
        admin += ["--data-dir", str(args.data_dir)]
    if args.no_install:
        admin.append("--no-install")
    io = ["--rows", str(args.rows)] + (["--dir", str(args.work_dir / "io")] if args.work_dir else [])
    scoring = ["--leads", str(args.rows), "--saves", str(args.saves)]
    if args.work_dir:  # kept there, and reused by the next run with the same --rows
        scoring += ["--dir", str(args.work_dir / f"scoring-{args.rows}"), "--reuse"]
    campaign = ["--recipients", str(args.recipients)]
    steps = [
        Step("admin", "Admin pages (crmkit vs floor and peers)", ["bench_admin.py", *admin],
             admin_out.with_suffix(".json")),
        Step("io", "Import and export", ["bench_import_export.py", *io], out_dir / "bench_import_export.json"),
        Step("scoring", "Lead scoring and assignment", ["bench_scoring.py", *scoring],
             out_dir / "bench_scoring.json"),
        Step("campaign", "Campaign send", ["bench_campaign_send.py", *campaign],
             out_dir / "bench_campaign_send.json"),
    ]
    wanted = {k.strip() for k in args.only.split(",")} if args.only else {s.key for s in steps}
    unknown = wanted - {s.key for s in steps}
    if unknown:
        raise SystemExit(f"--only: unknown steps {', '.join(sorted(unknown))} (admin, io, scoring, campaign)")
    return [s for s in steps if s.key in wanted]


def run_step(step: Step, log_dir: Path, results: Path) -> None:
    """Run one script, its output teed to a log file; read its result file if it wrote a fresh one."""
    command = [sys.executable, str(BENCH / step.argv[0]), *step.argv[1:]]
    log_path = log_dir / f"{step.key}.log"
    print(f"\n=== {step.title}: {' '.join(command[1:])}", flush=True)
    started = time.time()
    with log_path.open("w", encoding="utf-8") as log:
        # the rate scripts write their JSON beside this run's report (not over the last run's figures)
        env = {**os.environ, "CRMKIT_BENCH_RESULTS": str(results)}
        proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                cwd=BENCH.parent, env=env)
        assert proc.stdout is not None
        for line in proc.stdout:
            sys.stdout.write(line)
            log.write(line)
        step.exit_code = proc.wait()
    step.seconds = time.time() - started
    # A result file older than this run is a previous run's: never report it as this one's.
    if step.result_file.exists() and step.result_file.stat().st_mtime >= started - 1:
        step.data = json.loads(step.result_file.read_text(encoding="utf-8"))


def _ms(value: float | None) -> str:
    return "" if value is None else f"{value:,.2f} ms"


def admin_table(data: dict[str, Any]) -> list[str]:
    """The admin comparison: milliseconds per case and app, then crmkit/floor and best peer/crmkit."""
    cases: dict[str, Any] = data.get("cases", {})
    if not cases:
        return ["(no admin figures)"]
    apps = list(next(iter(cases.values()))["ms"].keys())
    lines = ["| case | " + " | ".join(apps) + " | crmkit / floor | best peer / crmkit |",
             "|---|" + "---:|" * (len(apps) + 2)]
    for case in cases.values():
        floor = case.get("crmkit_over_floor")
        peer = case.get("best_peer_over_crmkit")
        lines.append(f"| {case['label']} | " + " | ".join(_ms(case["ms"].get(a)) for a in apps)
                     + f" | {'' if floor is None else f'{floor:.2f}×'} | {'' if peer is None else f'{peer:.1f}×'} |")
    rss = data.get("rss_mib") or {}
    if rss:
        lines += ["", "Peak RSS of each server (MiB): " + ", ".join(f"{a} {v:.0f}" for a, v in rss.items())]
    targets = data.get("targets") or {}
    for name, met in targets.items():
        if met is not None:
            lines.append(f"- target {name.replace('_', ' ')}: {'met' if met else 'NOT met'}")
    return lines


def _value(figure: dict[str, Any]) -> str:
    value = figure.get("value")
    if value is None:
        return "—"
    text = f"{value:,.0f}" if abs(value) >= 100 else f"{value:,.2f}"
    return f"{text} {figure.get('unit', '')}".strip()


def figures_table(steps: list[Step]) -> list[str]:
    """Every headline figure of the rate benchmarks against its target."""
    lines = ["| benchmark | figure | measured | target | met |", "|---|---|---:|---|---|"]
    for step in steps:
        if step.key == "admin":
            continue
        figures = step.data.get("figures") or []
        if not figures:
            lines.append(f"| {step.title} | (no result: exit code {step.exit_code}) | | | |")
        for figure in figures:
            met = figure.get("met")
            lines.append(f"| {step.title} | {figure['name']} | {_value(figure)} | {figure.get('target') or ''} | "
                         f"{'' if met is None else ('yes' if met else 'NO')} |")
    return lines


def report(steps: list[Step], args: argparse.Namespace) -> str:
    """The whole run as Markdown."""
    lines = [f"# crmkit benchmarks — {dt.datetime.now():%Y-%m-%d %H:%M}", "",
             f"Command: `{' '.join(['.venv/bin/python', 'bench/bench_all.py', *sys.argv[1:]])}`", ""]
    by_key = {s.key: s for s in steps}
    if "admin" in by_key:
        lines += ["## Admin pages", ""] + admin_table(by_key["admin"].data) + [""]
    if any(s.key != "admin" for s in steps):
        lines += ["## Rates", ""] + figures_table(steps) + [""]
    lines += ["## Steps", "", "| step | command | exit code | wall time |", "|---|---|---:|---:|"]
    for s in steps:
        command = s.data.get("command") or " ".join(["bench/" + s.argv[0], *s.argv[1:]])
        lines.append(f"| {s.key} | `{command}` | {s.exit_code} | {s.seconds:,.0f} s |")
    return "\n".join(lines) + "\n"


def build_parser() -> argparse.ArgumentParser:
    """The command line (docs/performance.md quotes it)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=1_000_000,
                        help="leads for the admin, import/export and scoring benchmarks (default 1,000,000)")
    parser.add_argument("--recipients", type=int, default=10_000, help="campaign recipients (default 10,000)")
    parser.add_argument("--saves", type=int, default=500, help="lead saves timed with and without assignment")
    parser.add_argument("--apps", default="floor,crmkit,sqladmin,django", help="apps of the admin benchmark")
    parser.add_argument("--repeat", type=int, default=20, help="timed requests per admin case")
    parser.add_argument("--only", default="", help="comma-separated subset of: admin, io, scoring, campaign")
    parser.add_argument("--data-dir", type=Path, help="the admin benchmark's database directory")
    parser.add_argument("--work-dir", type=Path, help="where import/export and scoring keep their data")
    parser.add_argument("--no-install", action="store_true", help="skip the peers if their venv is absent")
    parser.add_argument("--out", type=Path, help="report file (default bench/results/all-<date>-<time>.md)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    stamp = f"{dt.datetime.now():%Y-%m-%d-%H%M%S}"
    out = args.out or RESULTS / f"all-{stamp}.md"
    out.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.mkdir(parents=True, exist_ok=True)
    steps = plan_steps(args, stamp, out.parent)
    log_dir = out.parent / f"all-{stamp}-logs"
    log_dir.mkdir(parents=True, exist_ok=True)
    for step in steps:
        run_step(step, log_dir, out.parent)
    md = report(steps, args)
    print("\n" + md)
    out.write_text(md, encoding="utf-8")
    print(f"(written to {out}; each step's output in {log_dir})")
    return 0 if all(s.exit_code == 0 for s in steps) else 1


if __name__ == "__main__":
    sys.exit(main())
