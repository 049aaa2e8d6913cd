"""Built-in plugin: SMTP as the default mail transport, the ``mail.send`` job, job housekeeping.

Disable it (``disable_plugins: [crmkit.plugins.mail_delivery]``) only together with another
plugin that implements ``mail_transport`` and handles ``mail.send``; to merely replace the
transport, implement ``mail_transport`` in your plugin — this one is ``trylast``.
"""

from __future__ import annotations

from typing import Any

from crmkit.core import jobs, mail
from crmkit.core.smtp import smtp_transport
from crmkit.hookspecs import hookimpl

PRUNE_JOB = "jobs.prune"


@hookimpl(trylast=True)
def mail_transport(crm: Any) -> Any:
    """SMTP from crmkit.yaml ``smtp:`` / CRMKIT_SMTP_* (used unless another plugin answers first)."""
    return smtp_transport(crm)


@jobs.own_transactions(batch=True)
def send_mail_job(crm: Any, payloads: list[dict[str, Any]], conn: Any) -> list[Exception | None]:
    """``mail.send``: deliver the claimed batch's outbox messages — one claim for all of them, one
    SMTP connection — and report each job's outcome (idempotent: the outbox status says what was
    sent, so the jobs are marked done a batch at a time)."""
    infos = jobs.current_batch()
    results = mail.deliver_many(
        crm, [int(p["outbox_id"]) for p in payloads], now=infos[0].now if infos else None,
        worker_id=infos[0].worker_id if infos else None, last_attempt=[i.last_attempt for i in infos] or None)
    return [r if isinstance(r, Exception) else None for r in results]


@jobs.own_transactions
def prune_jobs_job(crm: Any, payload: dict[str, Any], conn: Any) -> None:
    """``jobs.prune``: delete done and cancelled jobs older than ``jobs.keep_done_days``."""
    info = jobs.current_job()
    jobs.prune(crm, now=info.now if info else None)


@hookimpl
def register_job_handlers(crm: Any) -> dict[str, Any]:
    """The core's own jobs."""
    return {mail.SEND_JOB: send_mail_job, PRUNE_JOB: prune_jobs_job}


@hookimpl
def register_periodic_jobs(crm: Any) -> list[dict[str, Any]]:
    """Prune finished jobs once a day."""
    return [{"name": PRUNE_JOB, "every": 24 * 3600, "payload": {}}]


@hookimpl
def register_config_schemas(crm: Any) -> dict[str, Any]:
    """The ``jobs:`` section of crmkit.yaml (worker tuning)."""
    return {"jobs": jobs.CONFIG_SCHEMA}


@hookimpl
def shutdown(crm: Any) -> None:
    """Close open SMTP connections."""
    mail.close_transport(crm)
