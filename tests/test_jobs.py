"""Background jobs: enqueue, idempotency, retries, leases, periodic jobs, the worker CLI, real concurrency."""

from __future__ import annotations

import datetime as dt
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import sqlalchemy as sa

from crmkit import hookimpl
from crmkit.core import jobs
from crmkit.core.actors import SYSTEM
from crmkit.core.db import write_connection
from tests import job_plugin
from tests.support import make_crm

ROOT = Path(__file__).resolve().parents[1]
T0 = dt.datetime(2026, 5, 1, 9, 0, tzinfo=dt.UTC)


def effects(crm) -> list[tuple[int, int]]:
    t = crm.system_tables[job_plugin.EFFECT_TABLE]
    with crm.engine.connect() as conn:
        return [tuple(r) for r in conn.execute(sa.select(t.c.job_id, t.c.n).order_by(t.c.id))]


@pytest.fixture
def crm(tmp_path, db_url):
    crm = make_crm(tmp_path, db_url, plugins=[job_plugin])
    yield crm
    crm.close()


def test_enqueue_runs_once_and_keys_are_idempotent(crm):
    first = jobs.enqueue(crm, "jobtest.effect", {"n": 1}, key="effect:1", run_at=T0)
    assert isinstance(first, int)
    assert jobs.enqueue(crm, "jobtest.effect", {"n": 1}, key="effect:1", run_at=T0) is None
    jobs.enqueue(crm, "jobtest.effect", {"n": 2}, run_at=T0 + dt.timedelta(hours=1))  # not due yet
    assert jobs.run_once(crm, now=T0, names=["jobtest.effect"]) == 1
    assert effects(crm) == [(first, 1)]
    assert jobs.get(crm, first)["status"] == "done"
    assert jobs.run_once(crm, now=T0, names=["jobtest.effect"]) == 0  # nothing runs twice
    assert jobs.run_once(crm, now=T0 + dt.timedelta(hours=1), names=["jobtest.effect"]) == 1
    assert [n for _id, n in effects(crm)] == [1, 2]
    # The key stays taken after the job is done: the effect cannot be enqueued again.
    assert jobs.enqueue(crm, "jobtest.effect", {"n": 1}, key="effect:1") is None


def test_enqueue_in_a_rolled_back_transaction_leaves_no_job(crm):
    with pytest.raises(RuntimeError), write_connection(crm.engine) as conn, conn.begin():
        jobs.enqueue(crm, "jobtest.effect", {"n": 1}, conn=conn)
        raise RuntimeError("the surrounding write failed")
    assert jobs.counts(crm)["queued"] == 0
    with write_connection(crm.engine) as conn, conn.begin():
        job_id = jobs.enqueue(crm, "jobtest.effect", {"n": 1}, conn=conn)
    assert jobs.get(crm, job_id)["status"] == "queued"


def test_bad_enqueue_arguments_are_refused(crm):
    with pytest.raises(ValueError):
        jobs.enqueue(crm, "", {})
    with pytest.raises(ValueError):
        jobs.enqueue(crm, "x", {}, key="k" * 300)
    with pytest.raises(ValueError):
        jobs.enqueue(crm, "x", {}, max_attempts=0)


def test_failures_roll_back_retry_with_backoff_then_fail_with_traceback(crm):
    job_id = jobs.enqueue(crm, "jobtest.effect", {"n": 7, "fail_until": 99}, max_attempts=3, run_at=T0)
    now = T0
    seen_delays = []
    for attempt in (1, 2, 3):
        assert jobs.run_once(crm, now=now, names=["jobtest.effect"]) == 1
        job = jobs.get(crm, job_id)
        assert job["attempts"] == attempt
        assert "planned failure on attempt" in job["last_error"]
        assert "Traceback" in job["traceback"] and "job_plugin.py" in job["traceback"]
        if attempt < 3:
            assert job["status"] == "queued"
            delay = (job["run_at"] - now).total_seconds()
            seen_delays.append(delay)
            assert jobs.run_once(crm, now=now, names=["jobtest.effect"]) == 0  # backing off: not due yet
            now = job["run_at"]
        else:
            assert job["status"] == "failed" and job["finished_at"] == now
    # Exponential with jitter in [d/2, d]: base 30 s, then 60 s.
    assert 15 <= seen_delays[0] <= 30 and 30 <= seen_delays[1] <= 60
    assert effects(crm) == []  # every failed attempt's writes were rolled back
    assert jobs.run_once(crm, now=now + dt.timedelta(days=1), names=["jobtest.effect"]) == 0
    # Retry (admin page / CLI): a fresh set of attempts.
    assert jobs.retry(crm, job_id, now=now)
    assert jobs.get(crm, job_id)["attempts"] == 0
    assert not jobs.retry(crm, job_id, now=now)  # only failed/cancelled jobs can be retried


def test_backoff_is_capped_and_jittered():
    settings = jobs.JobSettings(retry_base_seconds=10, retry_max_seconds=100)
    import random

    rng = random.Random(1)
    delays = [jobs.backoff(n, settings, rng) for n in range(1, 12)]
    assert all(5 <= delays[0] <= 10 for _ in [0])
    assert all(50 <= d <= 100 for d in delays[4:])  # capped at 100 from the 5th attempt on
    assert len({round(d, 6) for d in delays[4:]}) > 1  # jitter: not all the same


def test_retry_and_fail_exceptions(tmp_path, db_url):
    calls = []

    class Plugin:
        __name__ = "retry_fail"

        @hookimpl
        def register_job_handlers(self, crm):
            def later(crm, payload, conn):
                calls.append("later")
                if len(calls) == 1:
                    raise jobs.Retry(600, reason="quiet hours")

            def never(crm, payload, conn):
                raise jobs.Fail("this payload can never work")

            return {"t.later": later, "t.never": never}

    crm = make_crm(tmp_path, db_url, plugins=[Plugin()])
    later = jobs.enqueue(crm, "t.later", {}, max_attempts=1, run_at=T0)
    never = jobs.enqueue(crm, "t.never", {}, max_attempts=5, run_at=T0)
    jobs.run_once(crm, now=T0, names=["t.later", "t.never"])
    job = jobs.get(crm, later)
    assert job["status"] == "queued" and job["attempts"] == 0  # Retry used no attempt
    assert job["run_at"] == T0 + dt.timedelta(seconds=600) and job["last_error"] == "quiet hours"
    assert jobs.get(crm, never)["status"] == "failed" and jobs.get(crm, never)["attempts"] == 1
    jobs.run_once(crm, now=T0 + dt.timedelta(seconds=600), names=["t.later"])
    assert jobs.get(crm, later)["status"] == "done" and calls == ["later", "later"]
    crm.close()


def test_batch_done_handlers_are_marked_done_together_and_rerun_after_a_crash(tmp_path, db_url):
    """``own_transactions(batch_done=True)``: jobs are marked done after the batch; a worker dying
    mid-batch leaves the batch's jobs to be run again (idempotently) after their lease."""
    calls: list[int] = []

    class Crash(BaseException):
        pass

    class Plugin:
        __name__ = "batch_done"

        @hookimpl
        def register_job_handlers(self, crm):
            @jobs.own_transactions(batch_done=True)
            def step(crm, payload, conn):
                assert conn is None
                calls.append(payload["n"])
                if payload["n"] == 2 and payload.get("crash") and calls.count(2) == 1:
                    raise Crash()

            return {"t.step": step}

    crm = make_crm(tmp_path, db_url, plugins=[Plugin()])
    ids = [jobs.enqueue(crm, "t.step", {"n": n}, run_at=T0) for n in range(5)]
    assert jobs.run_once(crm, now=T0, names=["t.step"]) == 5
    assert [jobs.get(crm, i)["status"] for i in ids] == ["done"] * 5 and calls == [0, 1, 2, 3, 4]
    assert all(jobs.get(crm, i)["finished_at"] == T0 for i in ids)

    calls.clear()
    ids = [jobs.enqueue(crm, "t.step", {"n": n, "crash": True}, run_at=T0) for n in range(4)]
    with pytest.raises(Crash):
        jobs.run_once(crm, now=T0, names=["t.step"])
    # The jobs that finished before the crash are recorded; the crashed and unstarted ones wait for their lease.
    assert [jobs.get(crm, i)["status"] for i in ids] == ["done", "done", "running", "running"]
    assert jobs.run_once(crm, now=T0 + dt.timedelta(seconds=60), names=["t.step"]) == 0
    assert jobs.run_once(crm, now=T0 + dt.timedelta(hours=1), names=["t.step"]) == 2
    assert [jobs.get(crm, i)["status"] for i in ids] == ["done"] * 4 and calls == [0, 1, 2, 2, 3]
    crm.close()


def test_batch_handlers_get_a_claimed_batch_in_one_call_and_report_each_jobs_outcome(tmp_path, db_url):
    """``own_transactions(batch=True)``: one call per claimed batch with the payloads in order and
    ``current_batch()`` alongside; per job, None is done, Retry reschedules, Fail and errors fail."""
    calls: list[list[int]] = []

    class Plugin:
        __name__ = "batch_handler"

        @hookimpl
        def register_job_handlers(self, crm):
            @jobs.own_transactions(batch=True)
            def step(crm, payloads, conn):
                assert conn is None
                infos = jobs.current_batch()
                assert [i.name for i in infos] == ["t.batch"] * len(payloads) and jobs.current_job() is None
                assert all(i.now == T0 and i.attempt == 1 for i in infos)
                calls.append([p["n"] for p in payloads])
                outcome = {0: None, 1: jobs.Retry(60, reason="later"), 2: jobs.Fail("never"), 3: ValueError("boom")}
                return [outcome[p["n"] % 4] for p in payloads]

            @jobs.own_transactions(batch=True)
            def broken(crm, payloads, conn):
                raise RuntimeError("the whole batch failed")

            return {"t.batch": step, "t.broken": broken}

    crm = make_crm(tmp_path, db_url, plugins=[Plugin()])
    crm.config.raw["jobs"] = {"batch_size": 8}
    ids = [jobs.enqueue(crm, "t.batch", {"n": n}, run_at=T0, max_attempts=3) for n in range(8)]
    assert jobs.run_once(crm, now=T0, names=["t.batch"]) == 8
    assert calls == [list(range(8))]  # one call for the whole claimed batch
    got = [jobs.get(crm, i) for i in ids]
    assert [j["status"] for j in got] == ["done", "queued", "failed", "queued"] * 2
    assert got[1]["run_at"] == T0 + dt.timedelta(seconds=60) and got[1]["attempts"] == 0  # Retry uses no attempt
    assert got[2]["last_error"] == "Fail: never" and got[3]["last_error"] == "ValueError: boom"
    assert got[3]["attempts"] == 1 and got[3]["run_at"] > T0  # retried with backoff

    broken = [jobs.enqueue(crm, "t.broken", {}, run_at=T0, max_attempts=1) for _ in range(3)]
    assert jobs.run_once(crm, now=T0, names=["t.broken"]) == 3
    assert all("the whole batch failed" in jobs.get(crm, i)["last_error"] for i in broken)
    assert {jobs.get(crm, i)["status"] for i in broken} == {"failed"}
    crm.close()


def test_async_commit_relaxes_only_the_workers_bookkeeping_on_postgresql(tmp_path, db_url):
    """``jobs.async_commit: true`` (opt-in): ``relax_commit`` turns off the WAL-flush wait for the
    transaction it is called in, on PostgreSQL only; by default it stays on."""
    crm = make_crm(tmp_path, db_url)
    assert jobs.JobSettings.of(crm).async_commit is False

    def setting_in_tx() -> str | None:
        with write_connection(crm.engine) as conn, conn.begin():
            jobs.relax_commit(crm, conn)
            inside = conn.exec_driver_sql("SHOW synchronous_commit").scalar() if crm.engine.dialect.name == \
                "postgresql" else None
        if inside is not None:  # SET LOCAL: the next transaction is back to the default
            with write_connection(crm.engine) as conn, conn.begin():
                assert conn.exec_driver_sql("SHOW synchronous_commit").scalar() == "on"
        return inside

    assert setting_in_tx() == ("on" if crm.engine.dialect.name == "postgresql" else None)
    crm.config.raw["jobs"] = {"async_commit": True}
    assert setting_in_tx() == ("off" if crm.engine.dialect.name == "postgresql" else None)
    crm.config.raw["jobs"] = {"async_commit": False}
    assert setting_in_tx() == ("on" if crm.engine.dialect.name == "postgresql" else None)
    crm.close()


def test_unknown_job_name_fails_visibly(crm):
    job_id = jobs.enqueue(crm, "nobody.handles", {}, max_attempts=1, run_at=T0)
    jobs.run_once(crm, now=T0)
    job = jobs.get(crm, job_id)
    assert job["status"] == "failed" and "no handler for job 'nobody.handles'" in job["last_error"]


def test_cancel_and_cancel_by_prefix(crm):
    a = jobs.enqueue(crm, "jobtest.effect", {"n": 1}, key="rem:activity:1:2026-05-01T09:00", run_at=T0)
    b = jobs.enqueue(crm, "jobtest.effect", {"n": 2}, key="rem:activity:1:2026-05-02T09:00", run_at=T0)
    c = jobs.enqueue(crm, "jobtest.effect", {"n": 3}, key="rem:activity:10:2026-05-01T09:00", run_at=T0)
    assert jobs.cancel_matching(crm, name="jobtest.effect", key_prefix="rem:activity:1:",
                                except_key="rem:activity:1:2026-05-02T09:00") == 1
    assert jobs.get(crm, a)["status"] == "cancelled"
    assert jobs.cancel(crm, id=c) == 1 and jobs.cancel(crm, id=c) == 0
    jobs.run_once(crm, now=T0, names=["jobtest.effect"])
    assert effects(crm) == [(b, 2)]
    with pytest.raises(ValueError):
        jobs.cancel(crm)


def test_a_dead_workers_jobs_are_reclaimed_after_the_lease(crm):
    ids = [jobs.enqueue(crm, "jobtest.effect", {"n": i}, run_at=T0) for i in range(3)]
    # Worker "dead" claims everything and dies without running anything.
    claimed = jobs.claim(crm, worker_id="dead", now=T0, limit=10, lease_seconds=300)
    assert sorted(j.id for j in claimed) == ids
    assert jobs.run_once(crm, worker_id="alive", now=T0 + dt.timedelta(seconds=299), names=["jobtest.effect"]) == 0
    assert jobs.run_once(crm, worker_id="alive", now=T0 + dt.timedelta(seconds=301), names=["jobtest.effect"]) == 3
    assert sorted(job_id for job_id, _n in effects(crm)) == ids
    assert all(jobs.get(crm, i)["attempts"] == 2 for i in ids)


def test_handler_of_a_reclaimed_job_cannot_commit(tmp_path, db_url):
    """A worker whose lease ran out while its handler ran is rolled back: the effect happens once."""
    crm_box = {}
    reclaimed = threading.Event()

    class Plugin:
        __name__ = "slow"

        @hookimpl
        def register_job_handlers(self, crm):
            def slow(crm, payload, conn):
                job_plugin.effect(crm, payload, conn)
                if jobs.current_job().worker_id == "slow-worker":
                    # While we "hang", the lease expires and another worker takes the job over.
                    t = threading.Thread(target=lambda: jobs.run_once(
                        crm_box["crm"], worker_id="second", now=T0 + dt.timedelta(hours=1), names=["t.slow"]))
                    t.start()
                    t.join(timeout=3 if crm.engine.dialect.name == "postgresql" else 0.5)
                    reclaimed.set()

            return {"t.slow": slow}

    crm = crm_box["crm"] = make_crm(tmp_path, db_url, plugins=[job_plugin, Plugin()])
    job_id = jobs.enqueue(crm, "t.slow", {"n": 5}, run_at=T0)
    jobs.run_once(crm, worker_id="slow-worker", now=T0, names=["t.slow"])
    if crm.engine.dialect.name == "postgresql":
        # The first worker held the job row locked, so the second skipped it until the first committed.
        assert reclaimed.is_set()
    assert [j for j, _ in effects(crm)] == [job_id]
    assert jobs.get(crm, job_id)["status"] == "done"
    crm.close()


def test_handlers_write_records_in_the_job_transaction(tmp_path, db_url):
    heard = []

    class Plugin:
        __name__ = "records_job"

        @hookimpl
        def register_job_handlers(self, crm):
            def make_account(crm, payload, conn):
                crm.records.tx_for(conn).create("account", {"name": payload["name"]})
                if payload.get("boom"):
                    raise RuntimeError("after the write")

            return {"t.account": make_account}

        @hookimpl
        def track_event(self, crm, event):
            heard.append((event.name, event.entity))

    crm = make_crm(tmp_path, db_url, plugins=[Plugin()])
    jobs.enqueue(crm, "t.account", {"name": "Kept KK"}, run_at=T0)
    jobs.enqueue(crm, "t.account", {"name": "Rolled back KK", "boom": True}, max_attempts=1, run_at=T0)
    jobs.run_once(crm, now=T0, names=["t.account"])
    names = [r["name"] for r in crm.records.list("account", actor=SYSTEM).items]
    assert names == ["Kept KK"]
    assert heard == [("record.created", "account")]  # only the committed write's event
    crm.close()


def test_periodic_jobs_run_once_per_period_with_several_workers(tmp_path, db_url):
    runs = []

    class Plugin:
        __name__ = "periodic"

        @hookimpl
        def register_periodic_jobs(self, crm):
            return [{"name": "t.tick", "every": 3600, "payload": {"x": 1}}]

        @hookimpl
        def register_job_handlers(self, crm):
            return {"t.tick": lambda crm, payload, conn: runs.append((payload, jobs.current_job().now))}

    crm = make_crm(tmp_path, db_url, plugins=[Plugin()])
    now = T0 + dt.timedelta(minutes=10)
    threads = [threading.Thread(target=jobs.schedule_periodic, args=(crm,), kwargs={"now": now}) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for worker in ("w1", "w2", "w3"):
        jobs.run_once(crm, worker_id=worker, now=now, names=["t.tick"])
    assert len(runs) == 1 and runs[0][0] == {"x": 1}
    tick = jobs.list_jobs(crm, name="t.tick")[0]
    assert tick["key"] == "periodic:t.tick:2026-05-01T09:00:00+00:00" and tick["run_at"] == T0
    jobs.run_once(crm, now=now + dt.timedelta(minutes=40), names=["t.tick"])  # same period
    assert len(runs) == 1
    jobs.run_once(crm, now=now + dt.timedelta(minutes=55), names=["t.tick"])  # the next one
    assert len(runs) == 2
    crm.close()


def test_prune_keeps_recent_and_failed_jobs(crm):
    done = jobs.enqueue(crm, "jobtest.effect", {"n": 1}, run_at=T0)
    failed = jobs.enqueue(crm, "jobtest.effect", {"n": 2, "fail_until": 9}, max_attempts=1, run_at=T0)
    jobs.run_once(crm, now=T0, names=["jobtest.effect"])
    assert jobs.prune(crm, now=T0 + dt.timedelta(days=29)) == 0
    assert jobs.prune(crm, now=T0 + dt.timedelta(days=31)) == 1
    assert jobs.get(crm, done) is None and jobs.get(crm, failed)["status"] == "failed"


def test_jobs_config_section_is_validated(tmp_path, db_url):
    from crmkit import CRM, SchemaError

    (tmp_path / "crmkit.yaml").write_text("jobs:\n  lease_seconds: -1\n  bogus: 1\n")
    with pytest.raises(SchemaError) as exc:
        CRM(tmp_path, database_url=db_url, entry_points=False)
    text = str(exc.value)
    assert "crmkit.yaml:2" in text or "lease_seconds" in text


# -------------------------------------------------------------------------------------------------
# The command line and real worker processes
# -------------------------------------------------------------------------------------------------


def _project(project: Path, db_url: str, lease: int = 30) -> None:
    (project / "crmkit.yaml").write_text(
        f"plugins: [tests.job_plugin]\njobs:\n  lease_seconds: {lease}\n  batch_size: 5\n", encoding="utf-8")


def _env(db_url: str) -> dict[str, str]:
    return {"CRMKIT_DATABASE_URL": db_url, "PYTHONPATH": str(ROOT)}


def test_worker_cli_once_and_jobs_commands(project, db_url):
    from tests.conftest import run_cli

    _project(project, db_url)
    crm = make_crm(project, db_url)
    ok = jobs.enqueue(crm, "jobtest.effect", {"n": 1})
    flag = project / "failing"
    flag.write_text("x")
    bad = jobs.enqueue(crm, "jobtest.effect", {"n": 2, "fail_while_exists": str(flag)}, max_attempts=1)
    result = run_cli("worker", "--once", "--only", "jobtest.effect", cwd=project, env=_env(db_url))
    assert result.returncode == 0, result.stderr
    assert "2 job(s) processed." in result.stdout
    status = run_cli("jobs", "status", cwd=project, env=_env(db_url))
    assert "failed: 1" in status.stdout and f"#{bad} jobtest.effect" in status.stdout
    flag.unlink()  # the cause is fixed: retrying now works
    retried = run_cli("jobs", "retry", str(bad), cwd=project, env=_env(db_url))
    assert retried.returncode == 0 and f"job #{bad} queued again" in retried.stdout
    missing = run_cli("jobs", "retry", str(ok), cwd=project, env=_env(db_url))
    assert missing.returncode == 1 and "no failed or cancelled job" in missing.stderr
    run_cli("worker", "--once", cwd=project, env=_env(db_url))
    assert sorted(j for j, _ in effects(crm)) == [ok, bad]
    crm.close()


def test_four_worker_processes_run_each_job_exactly_once_even_when_one_is_killed(project, db_url):
    _project(project, db_url, lease=5)
    crm = make_crm(project, db_url)
    ids = set()
    with write_connection(crm.engine) as conn, conn.begin():
        for i in range(200):
            ids.add(jobs.enqueue(crm, "jobtest.effect", {"n": i}, conn=conn))
    env = {**os.environ, **_env(db_url)}
    # At most 60 jobs each: the queue is shared whatever the start-up order (under load the first
    # worker up could empty it alone before the others had started); what the workers leave, the
    # run_once below takes.
    cmd = [sys.executable, "-m", "crmkit.cli", "worker", "--once", "--only", "jobtest.effect", "--limit", "60"]
    procs = [subprocess.Popen(cmd, cwd=project, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(4)]
    # Kill one worker as soon as it has committed some jobs (it is mid-run, holding claimed jobs).
    victim = procs[0]
    t = crm.system_tables[job_plugin.EFFECT_TABLE]
    killed = False
    while victim.poll() is None:
        with crm.engine.connect() as conn:
            mine = conn.execute(sa.select(sa.func.count()).where(t.c.pid == victim.pid)).scalar_one()
        if mine >= 3:
            os.kill(victim.pid, signal.SIGKILL)
            killed = True
            break
    for p in procs:
        p.wait(timeout=240)
    for p in procs[1:]:
        assert p.returncode == 0, p.stderr.read()
    # Whatever the dead worker held is reclaimed once its lease has passed.
    jobs.run_once(crm, now=jobs.utcnow() + dt.timedelta(seconds=6), names=["jobtest.effect"])
    done = effects(crm)
    assert sorted(job_id for job_id, _n in done) == sorted(ids)  # every job's effect exactly once
    assert jobs.counts(crm)["done"] == 200
    with crm.engine.connect() as conn:
        workers = conn.execute(sa.select(sa.func.count(sa.distinct(t.c.pid)))).scalar_one()
    assert workers >= 2  # the work really was shared
    assert killed or victim.returncode == 0
    crm.close()


def test_the_docs_example_runs(tmp_path, db_url):
    """docs/jobs_and_mail.md: the example plugin queues one welcome mail per lead, once."""
    import re
    import types

    from crmkit.core import mail

    text = (ROOT / "docs" / "jobs_and_mail.md").read_text(encoding="utf-8")
    code = re.search(r"```python\n(.*?)```", text, re.S).group(1)
    module = types.ModuleType("docs_welcome_example")
    exec(compile(code, "docs/jobs_and_mail.md", "exec"), module.__dict__)
    crm = make_crm(tmp_path, db_url, plugins=[module])
    lead = crm.records.create("lead", {"last_name": "Tanaka", "email": "tanaka@example.co.jp",
                                       "company": "Tanaka KK"}, actor=SYSTEM)
    with write_connection(crm.engine) as conn, conn.begin():
        assert module.enqueue_welcome(crm, lead["id"], conn=conn) is not None
    assert module.enqueue_welcome(crm, lead["id"]) is None
    other = crm.records.create("lead", {"last_name": "Suzuki", "email": "suzuki@example.co.jp",
                                        "company": "Suzuki KK"}, actor=SYSTEM)
    jobs.run_once(crm, names=["welcome.sweep", "welcome.send"])  # the sweep finds Suzuki; Tanaka is known
    jobs.run_once(crm, names=["welcome.sweep", "welcome.send"])
    sent = sorted((m["to_addr"], m["subject"], m["meta"]["lead_id"]) for m in mail.list_messages(crm))
    assert sent == [("suzuki@example.co.jp", "Welcome, Suzuki", other["id"]),
                    ("tanaka@example.co.jp", "Welcome, Tanaka", lead["id"])]
    crm.close()
