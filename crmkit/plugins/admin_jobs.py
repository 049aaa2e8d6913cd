"""Built-in plugin: the admin's background-jobs pages (failed jobs with retry) and the mail outbox.

Administrators only. ``/admin/jobs`` lists jobs by status (failed first), ``/admin/jobs/{id}``
shows one with its error and traceback, and ``POST /admin/jobs/{id}/retry`` queues a failed job
again. ``/admin/outbox`` lists outgoing mail by status; a failed message can be sent again.
"""

from __future__ import annotations

from typing import Any

from starlette.responses import Response
from starlette.routing import Route

from crmkit.core import jobs, mail
from crmkit.core.errors import NotFound, PermissionDenied
from crmkit.hookspecs import hookimpl

PAGE_SIZE = 50

UI_STRINGS: dict[str, tuple[str, str]] = {
    "jobs_title": ("Background jobs", "バックグラウンドジョブ"),
    "jobs_outbox": ("Mail outbox", "送信メール"),
    "jobs_status_queued": ("Queued", "待機中"),
    "jobs_status_running": ("Running", "実行中"),
    "jobs_status_done": ("Done", "完了"),
    "jobs_status_failed": ("Failed", "失敗"),
    "jobs_status_cancelled": ("Cancelled", "取消"),
    "jobs_status_sending": ("Sending", "送信中"),
    "jobs_status_sent": ("Sent", "送信済み"),
    "jobs_status_bounced": ("Bounced", "不達"),
    "jobs_name": ("Job", "ジョブ"),
    "jobs_attempts": ("Attempts", "試行回数"),
    "jobs_run_at": ("Run at", "実行予定"),
    "jobs_error": ("Error", "エラー"),
    "jobs_traceback": ("Traceback", "トレースバック"),
    "jobs_payload": ("Payload", "ペイロード"),
    "jobs_worker": ("Worker", "ワーカー"),
    "jobs_finished_at": ("Finished", "終了日時"),
    "jobs_retry": ("Retry", "再実行"),
    "jobs_retry_all": ("Retry all shown", "表示中をすべて再実行"),
    "jobs_retried": ("Job #{id} was queued again.", "ジョブ #{id} を再実行キューに入れました。"),
    "jobs_retried_many": ("{n} job(s) were queued again.", "{n} 件のジョブを再実行キューに入れました。"),
    "jobs_not_retryable": ("Only failed or cancelled jobs can be retried.",
                           "再実行できるのは失敗または取消のジョブだけです。"),
    "jobs_none": ("No jobs with this status.", "このステータスのジョブはありません。"),
    "jobs_older": ("Older", "さらに古いもの"),
    "jobs_to": ("To", "宛先"),
    "jobs_subject": ("Subject", "件名"),
    "jobs_sent_at": ("Sent at", "送信日時"),
    "jobs_created_at": ("Queued at", "登録日時"),
    "jobs_message_id": ("Message-ID", "Message-ID"),
    "jobs_body": ("Text", "本文"),
    "jobs_resend": ("Send again", "再送信"),
    "jobs_resent": ("The message was queued again.", "メールを再送信キューに入れました。"),
    "jobs_not_resendable": ("Only failed messages can be sent again.", "再送信できるのは送信失敗のメールだけです。"),
    "jobs_all": ("All", "すべて"),
    "jobs_status": ("Status", "ステータス"),
    "jobs_admin_only": ("Only administrators can see background jobs.",
                        "バックグラウンドジョブは管理者のみ閲覧できます。"),
}


@hookimpl
def register_ui_strings(crm: Any) -> dict[str, tuple[str, str]]:
    """The words of the jobs and outbox pages (en, ja)."""
    return UI_STRINGS


@hookimpl
def menu_links(crm: Any, actor: Any, request: Any) -> list[dict[str, str]] | None:
    """"Background jobs" and "Mail outbox" for administrators."""
    if actor is None or not actor.is_admin:
        return None
    from crmkit.web.i18n import plugin_strings, t

    lang = getattr(request.state, "crmkit_lang", None) or actor.locale
    strings = plugin_strings(crm)
    return [
        {"href": "/admin/jobs?status=failed", "label": t("jobs_title", lang, extra=strings), "icon": "list-ordered"},
        {"href": "/admin/outbox", "label": t("jobs_outbox", lang, extra=strings), "icon": "mail"},
    ]


@hookimpl
def register_routes(crm: Any) -> list[Any]:
    """The jobs and outbox pages."""
    from crmkit.web.site import admin_page

    return [
        Route("/admin/jobs", admin_page(jobs_page), methods=["GET", "HEAD"]),
        Route("/admin/jobs/retry", admin_page(retry_many), methods=["POST"]),
        Route("/admin/jobs/{id:int}", admin_page(job_page), methods=["GET", "HEAD"]),
        Route("/admin/jobs/{id:int}/retry", admin_page(retry_job), methods=["POST"]),
        Route("/admin/outbox", admin_page(outbox_page), methods=["GET", "HEAD"]),
        Route("/admin/outbox/{id:int}", admin_page(message_page), methods=["GET", "HEAD"]),
        Route("/admin/outbox/{id:int}/resend", admin_page(resend_message), methods=["POST"]),
    ]


def _require_admin(ctx: Any) -> None:
    if ctx.actor is None or not ctx.actor.is_admin:
        raise PermissionDenied(ctx._("jobs_admin_only"))


def render(ctx: Any, template: str, **variables: Any) -> Response:
    """Render with ``fmt_dt`` (a UTC datetime shown in the user's time zone and language)."""
    from crmkit.web.templating import format_datetime

    return ctx.render(template, fmt_dt=lambda v: format_datetime(v, ctx.tz, ctx.lang) if v else "", **variables)


def _int(value: Any) -> int | None:
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


def jobs_page(ctx: Any) -> Response:
    """Jobs with one status (``?status=failed`` by default), newest first, keyset-paged."""
    _require_admin(ctx)
    status = ctx.query.get("status", "failed")
    if status not in jobs.STATUSES:
        status = "failed"
    rows = jobs.list_jobs(ctx.crm, status=status, limit=PAGE_SIZE + 1, before_id=_int(ctx.query.get("before")))
    more = len(rows) > PAGE_SIZE
    rows = rows[:PAGE_SIZE]
    return render(
        ctx, "jobs/jobs.html", title=ctx._("jobs_title"), rows=rows, current=status, counts=jobs.counts(ctx.crm),
        statuses=jobs.STATUSES, older=rows[-1]["id"] if more else None,
    )


def job_page(ctx: Any) -> Response:
    """One job: payload, attempts, error and traceback, and a retry button when it failed."""
    _require_admin(ctx)
    job = jobs.get(ctx.crm, ctx.params["id"])
    if job is None:
        raise NotFound("no such job")
    return render(ctx, "jobs/job.html", title=f"{ctx._('jobs_name')} #{job['id']}", job=job)


def retry_job(ctx: Any) -> Response:
    """Queue a failed or cancelled job again (POST with the CSRF token)."""
    _require_admin(ctx)
    job_id = ctx.params["id"]
    if jobs.get(ctx.crm, job_id) is None:
        raise NotFound("no such job")
    if jobs.retry(ctx.crm, job_id):
        return ctx.redirect(f"/admin/jobs/{job_id}", ctx._("jobs_retried", id=job_id))
    return ctx.redirect(f"/admin/jobs/{job_id}", ctx._("jobs_not_retryable"), "error")


def retry_many(ctx: Any) -> Response:
    """Queue several failed jobs again (the ``id`` fields of the form)."""
    _require_admin(ctx)
    ids = [i for i in (_int(v) for v in ctx.form.getlist("id")) if i is not None][:PAGE_SIZE]
    n = sum(1 for job_id in ids if jobs.retry(ctx.crm, job_id))
    return ctx.redirect("/admin/jobs?status=failed", ctx._("jobs_retried_many", n=n))


def outbox_page(ctx: Any) -> Response:
    """Outgoing mail, newest first, optionally by status."""
    _require_admin(ctx)
    status = ctx.query.get("status") or None
    if status not in mail.STATUSES:
        status = None
    rows = mail.list_messages(ctx.crm, status=status, limit=PAGE_SIZE + 1, before_id=_int(ctx.query.get("before")))
    more = len(rows) > PAGE_SIZE
    rows = rows[:PAGE_SIZE]
    return render(
        ctx, "jobs/outbox.html", title=ctx._("jobs_outbox"), rows=rows, current=status,
        counts=mail.status_counts(ctx.crm), statuses=mail.STATUSES, older=rows[-1]["id"] if more else None,
    )


def message_page(ctx: Any) -> Response:
    """One outgoing message: headers, status, error and its text."""
    _require_admin(ctx)
    msg = mail.get_message(ctx.crm, ctx.params["id"])
    if msg is None:
        raise NotFound("no such message")
    return render(ctx, "jobs/message.html", title=msg["subject"] or f"#{msg['id']}", msg=msg)


def resend_message(ctx: Any) -> Response:
    """Send a failed message again."""
    _require_admin(ctx)
    oid = ctx.params["id"]
    if mail.get_message(ctx.crm, oid) is None:
        raise NotFound("no such message")
    if mail.requeue(ctx.crm, oid):
        return ctx.redirect(f"/admin/outbox/{oid}", ctx._("jobs_resent"))
    return ctx.redirect(f"/admin/outbox/{oid}", ctx._("jobs_not_resendable"), "error")
