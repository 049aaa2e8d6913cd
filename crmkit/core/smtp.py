"""The SMTP transport (stdlib ``smtplib``): plain, STARTTLS or implicit TLS, with optional login.

Settings come from crmkit.yaml's ``smtp:`` section (``host``, ``port``, ``username``,
``password``, ``starttls``, ``ssl``, ``sender``, ``timeout``) and the ``CRMKIT_SMTP_HOST``,
``_PORT``, ``_USERNAME``, ``_PASSWORD``, ``_SENDER``, ``_STARTTLS``, ``_SSL`` environment variables.
Each worker thread keeps one connection open and reuses it for the next message; a connection the
server closed while idle is reopened before anything irreversible happens.

The DATA command is driven by hand rather than with ``smtplib.SMTP.sendmail`` so that
``confirm()`` (which commits "sent" in the outbox) runs after the message body is on the wire
but before the final ``.`` — the point at which the server takes responsibility for the message.
"""

from __future__ import annotations

import os
import re
import smtplib
import socket
import ssl
import threading
from collections.abc import Callable
from dataclasses import dataclass
from email.message import EmailMessage
from email.policy import SMTP as SMTP_POLICY
from email.utils import parseaddr
from typing import Any

from crmkit.core.mail import MailError, recipients

_LEADING_DOT = re.compile(rb"(?m)^\.")


@dataclass(frozen=True)
class SmtpSettings:
    """Where and how to connect."""

    host: str = "localhost"
    port: int = 25
    username: str | None = None
    password: str | None = None
    starttls: bool = False
    ssl: bool = False
    timeout: float = 30.0
    local_hostname: str | None = None

    @classmethod
    def from_config(cls, smtp: dict[str, Any], env: dict[str, str] | None = None) -> SmtpSettings:
        """Settings from the ``smtp:`` section, with CRMKIT_SMTP_* environment variables on top."""
        env = os.environ if env is None else env
        values = dict(smtp)
        for key in ("host", "port", "username", "password", "starttls", "ssl", "timeout"):
            raw = env.get(f"CRMKIT_SMTP_{key.upper()}")
            if raw:
                values[key] = raw
        use_ssl = _flag(values.get("ssl", False))
        use_starttls = _flag(values.get("starttls", False))
        default_port = 465 if use_ssl else (587 if use_starttls else 25)
        return cls(
            host=str(values.get("host") or "localhost"),
            port=int(values.get("port") or default_port),
            username=values.get("username") or None,
            password=values.get("password") or None,
            starttls=use_starttls,
            ssl=use_ssl,
            timeout=float(values.get("timeout") or 30.0),
        )


def _flag(value: Any) -> bool:
    if isinstance(value, str):
        return value.strip().lower() in ("1", "true", "yes", "on")
    return bool(value)


def _no_delay(conn: smtplib.SMTP) -> None:
    """Turn off Nagle's algorithm: the message body and its final dot are separate writes (see the
    module docstring), and Nagle plus the server's delayed ACK would hold the dot back ~40 ms."""
    try:
        conn.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    except (AttributeError, OSError):
        pass


def _smtp_error(code: int, reply: bytes | str, what: str, *, confirmed: bool = False) -> MailError:
    text = reply.decode("utf-8", "replace") if isinstance(reply, bytes) else str(reply)
    return MailError(f"{what}: {code} {text}".strip(), permanent=500 <= code < 600, confirmed=confirmed, code=code)


class SmtpTransport:
    """Sends :class:`~email.message.EmailMessage` objects over SMTP, one connection per thread."""

    def __init__(self, settings: SmtpSettings, *, ssl_context: ssl.SSLContext | None = None):
        self.settings = settings
        self.ssl_context = ssl_context
        self._local = threading.local()
        self._all: list[smtplib.SMTP] = []
        self._lock = threading.Lock()

    # -- connections ------------------------------------------------------------------------------
    def _context(self) -> ssl.SSLContext:
        return self.ssl_context or ssl.create_default_context()

    def _open(self) -> smtplib.SMTP:
        s = self.settings
        try:
            if s.ssl:
                conn: smtplib.SMTP = smtplib.SMTP_SSL(s.host, s.port, timeout=s.timeout, context=self._context(),
                                                      local_hostname=s.local_hostname)
            else:
                conn = smtplib.SMTP(s.host, s.port, timeout=s.timeout, local_hostname=s.local_hostname)
            _no_delay(conn)
            conn.ehlo()
            if s.starttls:
                conn.starttls(context=self._context())
                conn.ehlo()
            if s.username:
                conn.login(s.username, s.password or "")
        except smtplib.SMTPAuthenticationError as exc:
            raise MailError(f"SMTP login refused: {exc.smtp_code} {exc.smtp_error!r}", code=exc.smtp_code) from exc
        except smtplib.SMTPResponseException as exc:
            raise _smtp_error(exc.smtp_code, exc.smtp_error, "SMTP connection refused") from exc
        except (OSError, smtplib.SMTPException) as exc:
            raise MailError(f"cannot connect to SMTP server {s.host}:{s.port}: {exc}") from exc
        with self._lock:
            self._all.append(conn)
        return conn

    def _drop(self, conn: smtplib.SMTP | None) -> None:
        self._local.conn = None
        if conn is None:
            return
        with self._lock:
            if conn in self._all:
                self._all.remove(conn)
        try:
            conn.close()
        except OSError:
            pass

    def close(self) -> None:
        """Quit every open connection (at shutdown)."""
        with self._lock:
            conns, self._all = self._all, []
        for conn in conns:
            try:
                conn.quit()
            except (OSError, smtplib.SMTPException):
                try:
                    conn.close()
                except OSError:
                    pass
        self._local = threading.local()

    # -- sending ----------------------------------------------------------------------------------
    def send(self, message: EmailMessage, *, confirm: Callable[[], None] = lambda: None) -> None:
        """Deliver ``message``; call ``confirm()`` just before the final dot (see module docstring)."""
        rcpts = recipients(message)
        envelope_from = parseaddr(str(message.get("Sender") or message.get("From") or ""))[1]
        if "Bcc" in message:
            del message["Bcc"]
        self.send_raw(envelope_from, rcpts, message.as_bytes(policy=SMTP_POLICY), confirm=confirm)

    def send_raw(self, envelope_from: str, rcpts: list[str], data: bytes, *,
                 confirm: Callable[[], None] = lambda: None) -> None:
        """Deliver ready-made message bytes (CRLF line ends) to ``rcpts``; ``confirm()`` as for :meth:`send`.

        The outbox worker uses this with :func:`crmkit.core.mime.render`, skipping the costly
        :class:`~email.message.EmailMessage` round trip.
        """
        if not rcpts:
            raise MailError("message has no recipients", permanent=True)
        conn = getattr(self._local, "conn", None)
        for fresh in (False, True):
            if conn is None:
                conn = self._local.conn = self._open()
                fresh = True
            try:
                code, reply = conn.mail(envelope_from, self._mail_options(conn, data))
                break
            except (smtplib.SMTPServerDisconnected, OSError) as exc:
                self._drop(conn)
                conn = None
                if fresh:
                    raise MailError(f"SMTP server disconnected: {exc}") from exc
        if code != 250:
            self._reset(conn)
            raise _smtp_error(code, reply, "sender refused")
        try:
            accepted = 0
            refused = []
            for rcpt in rcpts:
                code, reply = conn.rcpt(rcpt)
                if code in (250, 251):
                    accepted += 1
                else:
                    refused.append((code, reply, rcpt))
            if not accepted:
                self._reset(conn)
                code, reply, rcpt = refused[0]
                raise _smtp_error(code, reply, f"recipient {rcpt} refused")
            conn.putcmd("data")
            code, reply = conn.getreply()
            if code != 354:
                self._reset(conn)
                raise _smtp_error(code, reply, "DATA refused")
            body = _LEADING_DOT.sub(b"..", data)
            if not body.endswith(b"\r\n"):
                body += b"\r\n"
            conn.send(body)
        except (smtplib.SMTPServerDisconnected, OSError) as exc:
            self._drop(conn)
            raise MailError(f"SMTP server disconnected: {exc}") from exc
        try:
            confirm()
        except BaseException:
            # Closing without the final dot makes the server discard the message.
            self._drop(conn)
            raise
        try:
            conn.send(b".\r\n")
            code, reply = conn.getreply()
        except (smtplib.SMTPServerDisconnected, OSError) as exc:
            self._drop(conn)
            raise MailError(f"SMTP server disconnected after the message data: {exc}", confirmed=True) from exc
        if code != 250:
            raise _smtp_error(code, reply, "message refused", confirmed=True)

    @staticmethod
    def _mail_options(conn: smtplib.SMTP, data: bytes) -> list[str]:
        options = []
        if conn.has_extn("size"):
            options.append(f"size={len(data)}")
        if conn.has_extn("8bitmime"):
            options.append("body=8bitmime")
        return options

    def _reset(self, conn: smtplib.SMTP) -> None:
        try:
            conn.rset()
        except (smtplib.SMTPException, OSError):
            self._drop(conn)


def smtp_transport(crm: Any) -> SmtpTransport:
    """The SMTP transport configured for ``crm``."""
    return SmtpTransport(SmtpSettings.from_config(crm.config.smtp))


__all__ = ["SmtpSettings", "SmtpTransport", "smtp_transport"]
