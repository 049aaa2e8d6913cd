"""A plugin the job tests load in worker subprocesses (``plugins: [tests.job_plugin]`` in crmkit.yaml).

``jobtest.effect`` records one row per run in its own table, inside the job's transaction, so a
test can count how often each job's effect happened. ``jobtest.mail`` queues a message per job.
"""

from __future__ import annotations

import os

import sqlalchemy as sa

from crmkit import hookimpl
from crmkit.core import jobs, mail

EFFECT_TABLE = "jobtest_effect"


@hookimpl
def register_tables(crm, metadata):
    return [sa.Table(
        EFFECT_TABLE, metadata,
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("job_id", sa.Integer, nullable=False),
        sa.Column("n", sa.Integer, nullable=False),
        sa.Column("pid", sa.Integer, nullable=False),
    )]


def effect(crm, payload, conn):
    """Insert the job's effect row; ``fail_until``/``fail_while_exists`` make attempts raise."""
    info = jobs.current_job()
    conn.execute(sa.insert(crm.system_tables[EFFECT_TABLE]).values(job_id=info.id, n=payload.get("n", 0),
                                                                  pid=os.getpid()))
    if info.attempt <= payload.get("fail_until", 0):
        raise RuntimeError(f"planned failure on attempt {info.attempt}")
    if payload.get("fail_while_exists") and os.path.exists(payload["fail_while_exists"]):
        raise RuntimeError("planned failure while the flag file exists")


def queue(crm, payload, conn):
    mail.queue_mail(crm, to=payload["to"], subject=payload["subject"], text="hello", key=payload.get("key"), conn=conn)


@hookimpl
def register_job_handlers(crm):
    return {"jobtest.effect": effect, "jobtest.mail": queue}
