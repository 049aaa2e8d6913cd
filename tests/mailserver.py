"""A real SMTP server for tests (aiosmtpd in a thread): records what arrived, can misbehave on demand.

    with SmtpSink() as sink:
        crm = make_crm(tmp_path, db_url, smtp=sink.settings)   # or set crm.config.smtp
        ...
        assert [m["To"] for m in sink.messages] == ["a@example.com"]

``sink.refuse_rcpt = 550`` refuses recipients, ``sink.fail_data = 2`` answers the next two
messages' data with 451, ``sink.drop_at_data = 1`` closes the connection at the next DATA command.
``SmtpSink(tls="starttls"|"ssl", auth=("user", "pw"))`` exercises TLS and login.
"""

from __future__ import annotations

import email
import email.policy
import socket
import ssl
import subprocess
import threading
from email.message import EmailMessage
from pathlib import Path
from typing import Any

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, AuthResult, LoginPassword


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def self_signed_cert(directory: Path) -> tuple[Path, Path]:
    """A throwaway certificate for 127.0.0.1 made with the openssl command."""
    cert, key = directory / "cert.pem", directory / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out", str(cert),
         "-days", "2", "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1"],
        check=True, capture_output=True,
    )
    return cert, key


class _Handler:
    def __init__(self, sink: SmtpSink):
        self.sink = sink

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):  # noqa: N802
        with self.sink.lock:
            code = self.sink.refuse_rcpt
        if code:
            return f"{code} mailbox unavailable"
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server, session, envelope):  # noqa: N802
        with self.sink.lock:
            if self.sink.fail_data > 0:
                self.sink.fail_data -= 1
                return "451 try again later"
            msg = email.message_from_bytes(envelope.original_content or envelope.content, policy=email.policy.default)
            self.sink.messages.append(msg)
            self.sink.envelopes.append((envelope.mail_from, list(envelope.rcpt_tos)))
            self.sink.sessions.add(id(session))
            self.sink.arrived.notify_all()
        return "250 Message accepted"


class _DroppingSMTP(SMTP):
    """Closes the connection at DATA while ``sink.drop_at_data`` > 0."""

    def __init__(self, handler, sink: SmtpSink, **kwargs: Any):
        super().__init__(handler, **kwargs)
        self.sink = sink

    async def smtp_DATA(self, arg):  # noqa: N802
        with self.sink.lock:
            drop = self.sink.drop_at_data > 0
            if drop:
                self.sink.drop_at_data -= 1
        if drop:
            self.transport.close()
            return
        await super().smtp_DATA(arg)


class _Controller(Controller):
    def __init__(self, sink: SmtpSink, **kwargs: Any):
        self.sink = sink
        super().__init__(_Handler(sink), **kwargs)

    def factory(self):
        return _DroppingSMTP(self.handler, self.sink, **self.SMTP_kwargs)


class SmtpSink:
    """An in-process SMTP server on a free port that keeps every message it accepted."""

    def __init__(self, *, tls: str | None = None, auth: tuple[str, str] | None = None, cert_dir: Path | None = None):
        self.port = free_port()
        self.tls = tls
        self.auth = auth
        self.messages: list[EmailMessage] = []
        self.envelopes: list[tuple[str, list[str]]] = []
        self.sessions: set[int] = set()
        self.lock = threading.Lock()
        self.arrived = threading.Condition(self.lock)
        self.refuse_rcpt: int | None = None
        self.fail_data = 0
        self.drop_at_data = 0
        self.logins: list[str] = []
        self.client_context: ssl.SSLContext | None = None
        kwargs: dict[str, Any] = {"hostname": "127.0.0.1", "port": self.port}
        smtp_kwargs: dict[str, Any] = {}
        if tls:
            cert, key = self_signed_cert(cert_dir)
            server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            server_ctx.load_cert_chain(cert, key)
            self.client_context = ssl.create_default_context(cafile=str(cert))
            if tls == "ssl":
                kwargs["ssl_context"] = server_ctx
            else:
                smtp_kwargs.update(tls_context=server_ctx, require_starttls=True)
        if auth:
            smtp_kwargs.update(authenticator=self._authenticate, auth_required=True,
                               auth_require_tls=tls == "starttls")  # implicit TLS is invisible to aiosmtpd
        self.controller = _Controller(self, **kwargs, **smtp_kwargs)

    def _authenticate(self, server, session, envelope, mechanism, auth_data):
        if isinstance(auth_data, LoginPassword) and self.auth is not None:
            ok = (auth_data.login.decode(), auth_data.password.decode()) == self.auth
            if ok:
                self.logins.append(auth_data.login.decode())
            return AuthResult(success=ok)
        return AuthResult(success=False)

    @property
    def settings(self) -> dict[str, Any]:
        """A crmkit ``smtp:`` section pointing at this server."""
        out: dict[str, Any] = {"host": "127.0.0.1", "port": self.port, "sender": "crm@example.com", "timeout": 10}
        if self.tls == "ssl":
            out["ssl"] = True
        elif self.tls == "starttls":
            out["starttls"] = True
        if self.auth:
            out["username"], out["password"] = self.auth
        return out

    def start(self) -> SmtpSink:
        self.controller.start()
        return self

    def stop(self) -> None:
        if self.controller._thread is not None:  # stopping twice is fine (a test may stop it early)
            self.controller.stop()

    def __enter__(self) -> SmtpSink:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    def wait_for(self, n: int, timeout: float = 10.0) -> list[EmailMessage]:
        """Block until at least ``n`` messages arrived (the server runs in another thread)."""
        with self.arrived:
            self.arrived.wait_for(lambda: len(self.messages) >= n, timeout=timeout)
            return list(self.messages)


def assert_each_arrived_once(crm: Any, arrived: list[EmailMessage], killed_pid: int) -> None:
    """Every outbox message arrived exactly once, after the worker process ``killed_pid`` was SIGKILLed.

    One exception is allowed, and it is the one ``crmkit.core.mail`` documents: the message the
    killed worker had committed ``sent`` for in the instant before writing its final dot (one
    socket write later). The server discarded it, so it may be missing, but only it: at most one
    (a worker sends one message at a time), and sent by that worker (``locked_by`` keeps who sent
    a message). Nothing arrives twice, and every message is ``sent``.
    """
    import sqlalchemy as sa

    from crmkit.core import mail

    ids = [m["Message-ID"] for m in arrived]
    assert len(ids) == len(set(ids)), "a message arrived twice"
    t = mail.outbox_table(crm)
    with crm.engine.connect() as conn:
        rows = {r.message_id: r for r in conn.execute(sa.select(t.c.message_id, t.c.status, t.c.locked_by))}
    assert set(ids) <= set(rows)
    assert {r.status for r in rows.values()} == {"sent"}
    missing = [rows[i] for i in set(rows) - set(ids)]
    assert len(missing) <= 1, f"{len(missing)} messages never arrived"
    for row in missing:
        assert f":{killed_pid}:" in (row.locked_by or ""), f"a message sent by {row.locked_by} never arrived"
