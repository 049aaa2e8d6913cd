"""Mail: the outbox, the SMTP transport against a real server (aiosmtpd), failures, crashes, concurrency."""

from __future__ import annotations

import datetime as dt
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import sqlalchemy as sa
import yaml

from crmkit import hookimpl
from crmkit.core import jobs, mail
from crmkit.core.db import write_connection
from crmkit.core.smtp import SmtpSettings
from tests.mailserver import SmtpSink, assert_each_arrived_once
from tests.support import make_crm

ROOT = Path(__file__).resolve().parents[1]
T0 = jobs.utcnow().replace(microsecond=0) + dt.timedelta(days=1)  # messages queued "now" are due by then
LATER = dt.timedelta(hours=2)  # beyond any backoff of the first attempts and any lease


def write_config(project: Path, smtp: dict, **extra) -> None:
    project.mkdir(parents=True, exist_ok=True)
    (project / "crmkit.yaml").write_text(yaml.safe_dump({"smtp": smtp, **extra}), encoding="utf-8")


@pytest.fixture
def sink():
    with SmtpSink() as s:
        yield s


@pytest.fixture
def crm(tmp_path, db_url, sink):
    write_config(tmp_path, sink.settings)
    crm = make_crm(tmp_path, db_url)
    yield crm
    crm.close()


def send_all(crm, now=T0) -> int:
    return jobs.run_once(crm, now=now, names=[mail.SEND_JOB])


def body(msg, subtype="plain") -> str:
    part = msg.get_body(preferencelist=(subtype,))
    return part.get_content().replace("\r\n", "\n")


def test_a_queued_message_is_recorded_then_delivered_once(crm, sink):
    oid = mail.queue_mail(
        crm, to="Tanaka Taro <taro@example.co.jp>", subject="ご案内: 新製品", text="本文です。\n.dot at line start\n",
        html="<p>本文です。</p>", headers={"List-Unsubscribe": "<https://crm.example.com/t/u/abc>"},
        campaign_id=7,
    )
    queued = mail.get_message(crm, oid)
    assert queued["status"] == "queued" and queued["attempts"] == 0 and queued["meta"] == {"campaign_id": 7}
    assert queued["message_id"].startswith("<") and queued["message_id"].endswith("@example.com>")
    assert sink.messages == []  # recorded, not sent, until a worker runs
    assert send_all(crm) == 1
    (msg,) = sink.wait_for(1)
    assert msg["Message-ID"] == queued["message_id"]
    assert msg["Subject"] == "ご案内: 新製品"
    assert msg["To"].addresses[0].addr_spec == "taro@example.co.jp"
    assert msg["From"] == "crm@example.com"
    assert msg["List-Unsubscribe"] == "<https://crm.example.com/t/u/abc>"
    assert body(msg) == "本文です。\n.dot at line start\n"
    assert "<p>本文です。</p>" in body(msg, "html")
    assert sink.envelopes == [("crm@example.com", ["taro@example.co.jp"])]
    sent = mail.get_message(crm, oid)
    assert sent["status"] == "sent" and sent["attempts"] == 1 and sent["sent_at"] == T0
    assert send_all(crm, T0 + LATER) == 0 and len(sink.messages) == 1
    # Running the delivery again by hand sends nothing either.
    assert mail.deliver(crm, oid) == "sent" and len(sink.messages) == 1


def test_deliver_many_claims_a_batch_and_reports_each_message(crm, sink):
    """``deliver_many`` (what the ``mail.send`` batch handler calls): the queued messages go out over
    one connection, one each; a sent, bounced or missing one is reported, not sent again."""
    ids = [mail.queue_mail(crm, to=f"b{i}@example.com", subject=f"batch {i}", text="t") for i in range(4)]
    assert mail.deliver(crm, ids[1], now=T0) == "sent"
    mail.mark_bounced(crm, message_id=mail.get_message(crm, ids[1])["message_id"])
    assert mail.deliver(crm, ids[2], now=T0) == "sent"
    out = mail.deliver_many(crm, [ids[0], ids[1], ids[2], 999999, ids[3], ids[0]], now=T0, worker_id="w")
    assert out[0] == out[4] == out[5] == "sent" and out[1] == "bounced" and out[2] == "sent"
    assert isinstance(out[3], jobs.Fail)
    arrived = [str(m["Subject"]) for m in sink.wait_for(4)]
    assert sorted(arrived) == ["batch 0", "batch 1", "batch 2", "batch 3"] and len(sink.sessions) == 1
    assert {mail.get_message(crm, i)["status"] for i in (ids[0], ids[3])} == {"sent"}
    # who sent a message stays on it (``locked_by``), its lease does not
    assert {(mail.get_message(crm, i)["locked_by"], mail.get_message(crm, i)["locked_until"])
            for i in (ids[0], ids[3])} == {("w", None)}
    # A message another worker is sending (live lease) is left to it: a Retry at its lease's end.
    late = mail.queue_mail(crm, to="late@example.com", subject="late", text="t")
    t = mail.outbox_table(crm)
    with write_connection(crm.engine) as conn, conn.begin():
        conn.execute(sa.update(t).where(t.c.id == late).values(status="sending", locked_by="other",
                                                               locked_until=T0 + LATER))
    (busy,) = mail.deliver_many(crm, [late], now=T0, worker_id="w")
    assert isinstance(busy, jobs.Retry) and busy.at == T0 + LATER and len(sink.messages) == 4


def test_queue_many_records_a_batch_at_once_idempotently(crm, sink):
    """``queue_many``: one insert for many messages, ids in order, None for a key already used
    (before or earlier in the batch); a bad address refuses the whole batch before any write."""
    before = mail.queue_mail(crm, to="old@example.com", subject="s", text="t", key="k-old")
    ids = mail.queue_many(crm, [
        {"to": "a@example.com", "subject": "A", "text": "a", "key": "k-a", "campaign_id": 3},
        {"to": "old@example.com", "subject": "again", "text": "t", "key": "k-old"},
        {"to": "Bee <b@example.com>", "subject": "B", "text": "b", "html": "<p>b</p>", "headers": {"X-N": "2"}},
        {"to": "a2@example.com", "subject": "A again", "text": "a", "key": "k-a"},
    ])
    assert ids[1] is None and ids[3] is None and None not in (ids[0], ids[2]) and before not in ids
    a, b = mail.get_message(crm, ids[0]), mail.get_message(crm, ids[2])
    assert (a["subject"], a["meta"], a["status"]) == ("A", {"campaign_id": 3}, "queued")
    assert b["to_addr"] == "Bee <b@example.com>" and b["headers"] == {"X-N": "2"} and b["html_body"] == "<p>b</p>"
    with pytest.raises(ValueError):
        mail.queue_many(crm, [{"to": "c@example.com", "subject": "C", "text": "c"},
                              {"to": "not an address", "subject": "D", "text": "d"}])
    assert mail.status_counts(crm)["queued"] == 3
    assert send_all(crm) == 3
    assert sorted(str(m["Subject"]) for m in sink.wait_for(3)) == ["A", "B", "s"]


def test_keys_make_queueing_idempotent_and_rollback_leaves_nothing(crm, sink):
    assert mail.queue_mail(crm, to="a@example.com", subject="s", text="t", key="welcome:1") is not None
    assert mail.queue_mail(crm, to="a@example.com", subject="s", text="t", key="welcome:1") is None
    with pytest.raises(RuntimeError), write_connection(crm.engine) as conn, conn.begin():
        mail.queue_mail(crm, to="b@example.com", subject="s", text="t", conn=conn)
        raise RuntimeError("the record write failed")
    send_all(crm)
    assert [m["To"] for m in sink.wait_for(1)] == ["a@example.com"]
    assert mail.status_counts(crm)["sent"] == 1 and len(mail.list_messages(crm)) == 1


@pytest.mark.parametrize("kwargs", [
    {"to": "not-an-address"},
    {"to": "a@example.com\r\nBcc: victim@example.com"},
    {"to": "a@example.com", "subject": "hi\r\nBcc: victim@example.com"},
    {"to": "a@example.com", "headers": {"X-Tag": "a\nBcc: victim@example.com"}},
    {"to": "a@example.com", "sender": "nobody"},
])
def test_bad_addresses_and_header_injection_are_refused(crm, kwargs):
    args = {"subject": "s", "text": "t", **kwargs}
    with pytest.raises(ValueError):
        mail.queue_mail(crm, **args)
    assert mail.list_messages(crm) == []


def test_a_refusing_server_leaves_the_message_queued_for_retry_then_sent_once(crm, sink):
    sink.fail_data = 1  # 451 on the first DATA
    oid = mail.queue_mail(crm, to="a@example.com", subject="retry me", text="t")
    send_all(crm)
    msg = mail.get_message(crm, oid)
    assert msg["status"] == "queued" and "451" in msg["error"] and msg["sent_at"] is None
    job = jobs.list_jobs(crm, name=mail.SEND_JOB)[0]
    assert job["status"] == "queued" and job["run_at"] > T0 and "451" in job["last_error"]
    assert sink.messages == []
    send_all(crm, T0 + LATER)
    assert len(sink.wait_for(1)) == 1
    assert mail.get_message(crm, oid)["status"] == "sent" and mail.get_message(crm, oid)["attempts"] == 2


def test_a_disconnect_at_data_leaves_the_message_queued_and_the_next_attempt_reconnects(crm, sink):
    sink.drop_at_data = 1
    oid = mail.queue_mail(crm, to="a@example.com", subject="dropped", text="t")
    send_all(crm)
    assert mail.get_message(crm, oid)["status"] == "queued"
    assert "disconnected" in mail.get_message(crm, oid)["error"]
    send_all(crm, T0 + LATER)
    assert [m["Subject"] for m in sink.wait_for(1)] == ["dropped"]
    assert mail.get_message(crm, oid)["status"] == "sent"


def test_a_server_that_is_down_fails_after_max_attempts_and_can_be_requeued(tmp_path, db_url, sink):
    write_config(tmp_path, {**sink.settings, "port": sink.port})
    crm = make_crm(tmp_path, db_url)
    sink.stop()  # nothing listens any more
    oid = mail.queue_mail(crm, to="a@example.com", subject="later", text="t", max_attempts=2)
    send_all(crm)
    assert mail.get_message(crm, oid)["status"] == "queued"
    send_all(crm, T0 + LATER)
    failed = mail.get_message(crm, oid)
    assert failed["status"] == "failed" and "cannot connect" in failed["error"]
    assert jobs.list_jobs(crm, name=mail.SEND_JOB)[0]["status"] == "failed"
    with SmtpSink() as again:
        crm.config.smtp.update(port=again.port)
        mail.close_transport(crm)  # pick up the new port
        assert mail.requeue(crm, oid) and not mail.requeue(crm, oid)
        send_all(crm, T0 + 2 * LATER)
        assert [m["Subject"] for m in again.wait_for(1)] == ["later"]
    assert mail.get_message(crm, oid)["status"] == "sent"
    crm.close()


def test_a_permanent_refusal_marks_the_message_failed_without_retrying(crm, sink):
    sink.refuse_rcpt = 550
    oid = mail.queue_mail(crm, to="gone@example.com", subject="s", text="t")
    send_all(crm)
    msg = mail.get_message(crm, oid)
    assert msg["status"] == "failed" and "550" in msg["error"]
    assert jobs.list_jobs(crm, name=mail.SEND_JOB)[0]["status"] == "done"  # nothing left to retry
    sink.refuse_rcpt = None
    send_all(crm, T0 + LATER)
    assert sink.messages == []


class _Crash(BaseException):
    """Stands in for the worker process dying (not an Exception: nothing catches it)."""


def test_a_worker_dying_before_the_final_dot_leads_to_one_delivery(tmp_path, db_url, sink):
    """Killed mid-send, before confirm(): the server discarded the message, so it is sent again once."""
    from crmkit.core.smtp import smtp_transport

    crash = {"before": True}

    class Crashing:
        __name__ = "crashing"

        @hookimpl
        def mail_transport(self, crm):
            real = smtp_transport(crm)

            class T:
                def send(self, message, *, confirm):
                    def dying_confirm():
                        if crash.pop("before", False):
                            raise _Crash()
                        confirm()

                    real.send(message, confirm=dying_confirm)

            return T()

    write_config(tmp_path, sink.settings)
    crm = make_crm(tmp_path, db_url, plugins=[Crashing()])
    oid = mail.queue_mail(crm, to="a@example.com", subject="once", text="t")
    with pytest.raises(_Crash):
        send_all(crm)
    assert mail.get_message(crm, oid)["status"] == "sending"
    assert sink.messages == []  # no final dot: the server dropped the transaction
    send_all(crm, T0 + dt.timedelta(seconds=60))  # lease still running: the dead worker may be alive
    assert mail.get_message(crm, oid)["status"] == "sending"
    send_all(crm, T0 + LATER)
    assert [m["Subject"] for m in sink.wait_for(1)] == ["once"]
    assert mail.get_message(crm, oid)["status"] == "sent"
    crm.close()


def test_a_worker_dying_after_confirm_never_sends_again(tmp_path, db_url, sink):
    class DiesAfterConfirm:
        __name__ = "dies_after_confirm"
        sent = []

        @hookimpl
        def mail_transport(self, crm):
            outer = self

            class T:
                def send(self, message, *, confirm):
                    confirm()
                    outer.sent.append(message["Subject"])
                    raise _Crash()

            return T()

    plugin = DiesAfterConfirm()
    write_config(tmp_path, sink.settings)
    crm = make_crm(tmp_path, db_url, plugins=[plugin])
    oid = mail.queue_mail(crm, to="a@example.com", subject="once", text="t")
    with pytest.raises(_Crash):
        send_all(crm)
    assert mail.get_message(crm, oid)["status"] == "sent"
    send_all(crm, T0 + LATER)  # the job is reclaimed after its lease; the outbox says "sent"
    assert plugin.sent == ["once"]
    assert jobs.list_jobs(crm, name=mail.SEND_JOB)[0]["status"] == "done"
    crm.close()


def test_the_mail_transport_hook_replaces_smtp(tmp_path, db_url):
    class Memory:
        __name__ = "memory_mail"
        outbox = []

        @hookimpl
        def mail_transport(self, crm):
            outer = self

            class T:  # a simple transport without confirm(): the outbox records "sent" first
                def send(self, message):
                    outer.outbox.append((message["To"], message["Subject"]))

            return T()

    plugin = Memory()
    crm = make_crm(tmp_path, db_url, plugins=[plugin])
    oid = mail.queue_mail(crm, to="x@example.org", subject="via hook", text="t")
    send_all(crm)
    assert plugin.outbox == [("x@example.org", "via hook")]
    assert mail.get_message(crm, oid)["status"] == "sent"
    crm.close()


@pytest.mark.parametrize("tls", ["starttls", "ssl"])
def test_tls_and_login(tmp_path, db_url, monkeypatch, tls):
    with SmtpSink(tls=tls, auth=("crm-user", "s3cret"), cert_dir=tmp_path) as sink:
        monkeypatch.setenv("SSL_CERT_FILE", str(tmp_path / "cert.pem"))  # trust the test certificate
        write_config(tmp_path / "p", sink.settings)
        crm = make_crm(tmp_path / "p", db_url)
        mail.queue_mail(crm, to="a@example.com", subject=f"over {tls}", text="t")
        send_all(crm)
        assert [m["Subject"] for m in sink.wait_for(1)] == [f"over {tls}"]
        assert sink.logins == ["crm-user"]
        crm.close()


def test_wrong_password_keeps_the_message_queued(tmp_path, db_url):
    with SmtpSink(auth=("crm-user", "s3cret")) as sink:
        write_config(tmp_path, {**sink.settings, "password": "wrong", "timeout": 2})
        crm = make_crm(tmp_path, db_url)
        oid = mail.queue_mail(crm, to="a@example.com", subject="s", text="t")
        send_all(crm)
        msg = mail.get_message(crm, oid)
        assert msg["status"] == "queued" and msg["error"].startswith("MailError")
        assert sink.messages == [] and sink.logins == []
        crm.close()


def test_smtp_settings_from_environment(tmp_path, db_url, sink, monkeypatch):
    monkeypatch.setenv("CRMKIT_SMTP_HOST", "127.0.0.1")
    monkeypatch.setenv("CRMKIT_SMTP_PORT", str(sink.port))
    monkeypatch.setenv("CRMKIT_SMTP_SENDER", "env@example.net")
    crm = make_crm(tmp_path, db_url)
    mail.queue_mail(crm, to="a@example.com", subject="from env", text="t")
    send_all(crm)
    (msg,) = sink.wait_for(1)
    assert msg["From"] == "env@example.net"
    settings = SmtpSettings.from_config({"ssl": True}, env={"CRMKIT_SMTP_STARTTLS": "yes"})
    assert settings.port == 465 and settings.ssl and settings.starttls
    assert SmtpSettings.from_config({"starttls": True}, env={}).port == 587
    crm.close()


def test_bounces_are_recorded_by_message_id(crm, sink):
    oid = mail.queue_mail(crm, to="a@example.com", subject="s", text="t")
    send_all(crm)
    mid = mail.get_message(crm, oid)["message_id"]
    assert mail.mark_bounced(crm, message_id=mid.strip("<>"), error="550 5.1.1 user unknown") == oid
    bounced = mail.get_message(crm, oid)
    assert bounced["status"] == "bounced" and "5.1.1" in bounced["error"] and bounced["bounced_at"]
    assert mail.mark_bounced(crm, message_id="<nobody@example.com>") is None


def test_four_workers_and_a_killed_one_deliver_every_message_exactly_once(project, db_url, sink):
    write_config(project, sink.settings, plugins=[], jobs={"lease_seconds": 5, "batch_size": 5})
    crm = make_crm(project, db_url)
    n = 300
    with write_connection(crm.engine) as conn, conn.begin():
        for i in range(n):
            mail.queue_mail(crm, to=f"r{i}@example.com", subject=f"m{i}", text="t", conn=conn)
    env = {**os.environ, "CRMKIT_DATABASE_URL": db_url, "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, "-m", "crmkit.cli", "worker", "--once", "--only", mail.SEND_JOB]
    procs = [subprocess.Popen(cmd, cwd=project, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(4)]
    sink.wait_for(40, timeout=120)
    os.kill(procs[0].pid, signal.SIGKILL)
    for p in procs:
        p.wait(timeout=240)
    for p in procs[1:]:
        assert p.returncode == 0, p.stderr.read()
    jobs.run_once(crm, now=jobs.utcnow() + dt.timedelta(seconds=400), names=[mail.SEND_JOB])
    assert mail.status_counts(crm)["sent"] == n
    assert_each_arrived_once(crm, sink.wait_for(n, timeout=30), procs[0].pid)
    t = mail.outbox_table(crm)
    with crm.engine.connect() as conn:
        assert conn.execute(sa.select(sa.func.count()).where(t.c.status != "sent")).scalar_one() == 0
    crm.close()


@pytest.mark.parametrize("text,html", [
    ("plain ASCII\n.leading dot\nlast line without newline", None),
    ("本文です。\nこんにちは\n", "<p>本文です。</p>\n<p><a href=\"https://example.jp/a?b=1&c=2\">リンク</a></p>"),
    ("Mostly English with one accent: café  \nTrailing spaces above\n", "<p>caf\u00e9</p>\n"),
    ("x" * 1200 + "\n", "<html><body>" + "y" * 2000 + "</body></html>"),
    ("", "<p>only html</p>"),
])
def test_the_fast_serialiser_matches_the_email_package(text, html):
    """``crmkit.core.mime.render`` (what the SMTP transport sends) says what ``build_message`` says."""
    import email
    import email.policy

    from crmkit.core import mime

    row = {
        "sender": "営業 太郎 <news@example.jp>", "to_addr": "\"Tanaka, Taro\" <taro@example.co.jp>",
        "subject": "山田様 新製品のご案内 " * 4, "created_at": T0, "message_id": "<abc.123@example.jp>",
        "text_body": text, "html_body": html,
        "headers": {"List-Unsubscribe": "<https://crm.example.jp/t/u/" + "t" * 150 + ">, <mailto:u@example.jp>",
                    "List-Unsubscribe-Post": "List-Unsubscribe=One-Click", "Reply-To": "担当 <r@example.jp>",
                    "X-Words": "word " * 30, "Bcc": "hidden@example.jp"},
    }
    raw = mime.render(row)
    assert raw.envelope_from == "news@example.jp"
    assert raw.recipients == ["taro@example.co.jp", "hidden@example.jp"]
    assert raw.data.isascii() and b"\n" not in raw.data.replace(b"\r\n", b"")
    assert max(len(line) for line in raw.data.split(b"\r\n")) <= 998
    got = email.message_from_bytes(raw.data, policy=email.policy.default)
    want = mail.build_message(row)
    for name in ("From", "To", "Subject", "Date", "Message-ID", "List-Unsubscribe", "List-Unsubscribe-Post",
                 "Reply-To", "X-Words"):
        assert str(got[name]).strip() == str(want[name]).strip(), name
    assert got["Bcc"] is None and got["To"].addresses[0].display_name == "Tanaka, Taro"
    # RFC 8058: the unsubscribe URL stays a plain, unencoded URI (folded only between the two URIs).
    assert b"List-Unsubscribe: <https://crm.example.jp/t/u/" + b"t" * 150 + b">" in raw.data
    for subtype in ("plain", "html"):
        part, expected = got.get_body(preferencelist=(subtype,)), want.get_body(preferencelist=(subtype,))
        assert (part is None) == (expected is None)
        if part is not None:
            assert part.get_content().replace("\r\n", "\n") == expected.get_content().replace("\r\n", "\n")
