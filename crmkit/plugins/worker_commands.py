"""Built-in plugin: ``crmkit worker`` (run background jobs) and ``crmkit jobs …`` (inspect, retry)."""

from __future__ import annotations

import signal
from pathlib import Path

import click

from crmkit.cli import project_option
from crmkit.hookspecs import hookimpl


@hookimpl
def register_commands(cli):
    """Add ``worker`` and ``jobs`` to the ``crmkit`` command line."""
    cli.add_command(worker)
    cli.add_command(jobs_group)


@click.command()
@project_option
@click.option("--once", is_flag=True, help="Run the jobs due now, then exit (for cron and tests).")
@click.option("--concurrency", "-c", type=click.IntRange(1, 64), default=None,
              help="Worker threads in this process (default: jobs.concurrency in crmkit.yaml, else 1).")
@click.option("--only", "names", multiple=True, metavar="JOB", help="Run only jobs with this name (repeatable).")
@click.option("--limit", type=click.IntRange(1), default=100000, show_default=True,
              help="With --once: stop after this many jobs.")
def worker(project: Path, once: bool, concurrency: int | None, names: tuple[str, ...], limit: int) -> None:
    """Run background jobs (mail, reminders, campaigns) until stopped with Ctrl-C or SIGTERM.

    Start as many workers as you like, on one machine or several: on PostgreSQL they never run
    the same job twice at once; a worker that dies leaves its jobs to the others after their lease.
    """
    from crmkit.cli import open_crm
    from crmkit.core import jobs

    crm = open_crm(project)
    crm.startup()
    try:
        if once:
            if concurrency and concurrency > 1:
                w = jobs.Worker(crm, concurrency=concurrency, names=list(names) or None)
                n = _drain_parallel(crm, w, limit)
            else:
                n = jobs.run_once(crm, names=list(names) or None, limit=limit)
            click.echo(f"{n} job(s) processed.")
            return
        settings = jobs.JobSettings.of(crm)
        w = jobs.Worker(crm, concurrency=concurrency or settings.concurrency, poll_seconds=settings.poll_seconds,
                        names=list(names) or None)

        def stop(signum, _frame):
            click.echo(f"crmkit worker: {signal.Signals(signum).name}, finishing the running jobs…", err=True)
            w.stop()

        signal.signal(signal.SIGTERM, stop)
        signal.signal(signal.SIGINT, stop)
        click.echo(f"crmkit worker: {w.concurrency} thread(s) waiting for jobs (Ctrl-C to stop).", err=True)
        n = w.run()
        click.echo(f"{n} job(s) processed.")
    finally:
        crm.close()


def _drain_parallel(crm, w, limit: int) -> int:
    """``--once`` with several threads: each runs :func:`run_once` until nothing is due."""
    import threading

    from crmkit.core import jobs

    total = [0]
    lock = threading.Lock()

    def loop(i: int) -> None:
        n = jobs.run_once(crm, worker_id=f"{jobs.default_worker_id()}#{i}", names=w.names, limit=limit)
        with lock:
            total[0] += n

    threads = [threading.Thread(target=loop, args=(i,)) for i in range(w.concurrency)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return total[0]


@click.group("jobs")
def jobs_group() -> None:
    """Inspect and retry background jobs."""


@jobs_group.command("status")
@project_option
def jobs_status(project: Path) -> None:
    """Count jobs by status and list the failed ones."""
    from crmkit.cli import open_crm
    from crmkit.core import jobs

    crm = open_crm(project)
    try:
        counts = jobs.counts(crm)
        click.echo("  ".join(f"{status}: {n}" for status, n in counts.items()))
        for job in jobs.list_jobs(crm, status="failed", limit=50):
            click.echo(f"#{job['id']} {job['name']} attempts {job['attempts']}/{job['max_attempts']}: "
                       f"{(job['last_error'] or '').splitlines()[0] if job['last_error'] else ''}")
    finally:
        crm.close()


@jobs_group.command("retry")
@project_option
@click.argument("job_ids", nargs=-1, type=int, required=True)
def jobs_retry(project: Path, job_ids: tuple[int, ...]) -> None:
    """Queue failed (or cancelled) jobs again with a fresh set of attempts."""
    from crmkit.cli import open_crm
    from crmkit.core import jobs

    crm = open_crm(project)
    try:
        failed = False
        for job_id in job_ids:
            if jobs.retry(crm, job_id):
                click.echo(f"job #{job_id} queued again.")
            else:
                failed = True
                click.echo(f"job #{job_id}: no failed or cancelled job with this id.", err=True)
        if failed:
            raise SystemExit(1)
    finally:
        crm.close()
