"""Login throttling: lock a username (and, more loosely, a client address) after repeated failures.

Two implementations with one interface (``retry_after``, ``failure``, ``success``):

- :class:`DatabaseLoginThrottle` keeps the counters in the ``crmkit_login_throttle`` table, so
  every app process (several uvicorn workers, several hosts) sees the same failures and the same
  lock-out. It is what the admin uses whenever the table is registered (the built-in
  ``session_auth`` plugin registers it; ``crmkit migrate`` creates it).
- :class:`LoginThrottle` keeps them in memory, per process (a CRM without that table).

A key is ``"<kind>:<value>"`` (``user:alice``, ``ip:203.0.113.7``). The database stores only a
keyed hash of the value: the table never holds client addresses or usernames in clear.

Each key has a sliding window: a key is locked for ``lockout`` seconds as soon as it has
``limit`` failures within the last ``window`` seconds (the limit depends on the kind: an address
shared by a whole office behind one NAT gets a higher one than a username).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa

from crmkit.core.db import single_statement_connection, write_connection

if TYPE_CHECKING:
    from crmkit.app import CRM

log = logging.getLogger(__name__)

THROTTLE_TABLE = "crmkit_login_throttle"
CONFIG_SECTION = "login_throttle"
DEFAULT_MAX_FAILURES = 5  # per username
DEFAULT_ADDRESS_MAX_FAILURES = 30  # per client address: many users may sit behind one NAT
DEFAULT_WINDOW = 15 * 60
DEFAULT_LOCKOUT = 15 * 60

CONFIG_SCHEMA: dict[str, Any] = {
    "type": "object",
    "additionalProperties": False,
    "properties": {
        "max_failures": {"type": "integer", "minimum": 1, "maximum": 1000},
        "address_max_failures": {"type": "integer", "minimum": 1, "maximum": 10000},
        "window": {"type": "integer", "minimum": 1},
        "lockout": {"type": "integer", "minimum": 1},
    },
}


def define_throttle_table(md: sa.MetaData) -> sa.Table:
    """Add the ``crmkit_login_throttle`` table to ``md`` and return it.

    One row per throttled key: the times (epoch seconds) of its recent failures, at most
    ``limit`` of them, and until when it is locked. ``updated_at`` lets stale rows be purged.
    """
    return sa.Table(
        THROTTLE_TABLE,
        md,
        sa.Column("key", sa.String(64), primary_key=True),
        sa.Column("failures", sa.Text, nullable=False),
        sa.Column("locked_until", sa.Float, nullable=False),
        sa.Column("updated_at", sa.Float, nullable=False),
        sa.Index("ix_crmkit_login_throttle_updated_at", "updated_at"),
    )


def _limit_of(key: str, limits: Mapping[str, int], default: int) -> int:
    return int(limits.get(key.split(":", 1)[0], default))


@dataclass
class LoginThrottle:
    """In-memory throttle, per process (see the module docstring). ``clock`` is injectable for tests."""

    max_failures: int = DEFAULT_MAX_FAILURES
    window: float = DEFAULT_WINDOW
    lockout: float = DEFAULT_LOCKOUT
    clock: Callable[[], float] = time.monotonic
    limits: dict[str, int] = field(default_factory=dict)
    _failures: dict[str, list[float]] = field(default_factory=dict)
    _locked_until: dict[str, float] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def retry_after(self, *keys: str) -> float:
        """Seconds until these keys may try again (0 when none is locked)."""
        now = self.clock()
        with self._lock:
            waits = [self._locked_until.get(k, 0) - now for k in keys]
        return max([0.0, *waits])

    def failure(self, *keys: str, limits: Mapping[str, int] | None = None) -> None:
        """Record a failed attempt; lock a key that reached its limit (``limits`` per key kind)."""
        now = self.clock()
        limits = {**self.limits, **(limits or {})}
        with self._lock:
            for key in keys:
                recent = [t for t in self._failures.get(key, []) if now - t < self.window] + [now]
                self._failures[key] = recent
                if len(recent) >= _limit_of(key, limits, self.max_failures):
                    self._locked_until[key] = now + self.lockout
                    self._failures[key] = []

    def success(self, *keys: str) -> None:
        """Forget failures and lock-outs of these keys (after a good login, or an admin's unlock)."""
        with self._lock:
            for key in keys:
                self._failures.pop(key, None)
                self._locked_until.pop(key, None)


class DatabaseLoginThrottle:
    """The throttle shared by every process using one database (see the module docstring).

    Atomic per key on PostgreSQL and SQLite alike: :meth:`failure` first upserts the key's row
    (``INSERT … ON CONFLICT (key) DO UPDATE``), which takes PostgreSQL's row lock, or SQLite's
    write lock (the transaction begins IMMEDIATE), before it reads the failures. Two processes
    failing on the same key at the same moment therefore queue, and no failure is lost. Keys are
    locked in sorted order, so two attempts touching the same username and address cannot deadlock.
    """

    def __init__(
        self,
        engine: sa.Engine,
        table: sa.Table,
        *,
        max_failures: int = DEFAULT_MAX_FAILURES,
        window: float = DEFAULT_WINDOW,
        lockout: float = DEFAULT_LOCKOUT,
        limits: Mapping[str, int] | None = None,
        secret: str | None = None,
        clock: Callable[[], float] | None = None,
    ):
        if engine.dialect.name not in ("sqlite", "postgresql"):
            raise ValueError(f"the login throttle supports SQLite and PostgreSQL, not {engine.dialect.name}")
        self.engine = engine
        self.table = table
        self.max_failures = max_failures
        self.window = float(window)
        self.lockout = float(lockout)
        self.limits = dict(limits or {})
        self._secret = (secret or "crmkit-login-throttle").encode()
        self._clock = clock
        # Used only while the table cannot be read (a database not migrated since an upgrade):
        # logins keep working and stay throttled, per process, instead of failing with a 500.
        self._fallback = LoginThrottle(max_failures, window, lockout, clock=self.now, limits=dict(self.limits))

    def now(self) -> float:
        """Wall-clock seconds (shared between hosts, unlike a monotonic clock)."""
        return self._clock() if self._clock is not None else time.time()

    def stored_key(self, key: str) -> str:
        """The row key of ``key``: its kind and a keyed hash of its value (never the value itself)."""
        kind, _, value = key.partition(":")
        digest = hmac.new(self._secret, value.encode("utf-8", "surrogatepass"), hashlib.sha256).hexdigest()
        return f"{kind[:20]}:{digest[:40]}"

    def retry_after(self, *keys: str) -> float:
        """Seconds until these keys may try again (0 when none is locked)."""
        if not keys:
            return 0.0
        t = self.table
        stored = [self.stored_key(k) for k in keys]
        try:
            with single_statement_connection(self.engine) as conn:
                until = conn.execute(sa.select(sa.func.max(t.c.locked_until)).where(t.c.key.in_(stored))).scalar()
        except (sa.exc.OperationalError, sa.exc.ProgrammingError) as exc:
            self._unavailable(exc)
            return self._fallback.retry_after(*keys)
        return max(0.0, float(until or 0) - self.now(), self._fallback.retry_after(*keys))

    def failure(self, *keys: str, limits: Mapping[str, int] | None = None) -> None:
        """Record a failed attempt for each key; lock a key that reached its limit in the window."""
        try:
            self._record_failure(keys, limits)
        except (sa.exc.OperationalError, sa.exc.ProgrammingError) as exc:
            self._unavailable(exc)
            self._fallback.failure(*keys, limits=limits)
            return
        try:
            self.purge()
        except (sa.exc.OperationalError, sa.exc.ProgrammingError) as exc:  # housekeeping: the next one will do
            log.warning("login throttle: purging stale rows failed: %s", exc.__class__.__name__)

    def _unavailable(self, exc: Exception) -> None:
        log.error("login throttle table %s unavailable (run `crmkit migrate`); counting in this process only: %s",
                  self.table.name, exc.__class__.__name__)

    def _record_failure(self, keys: Iterable[str], limits: Mapping[str, int] | None) -> None:
        limits = {**self.limits, **(limits or {})}
        now = self.now()
        by_stored = {self.stored_key(k): _limit_of(k, limits, self.max_failures) for k in keys}
        t = self.table
        with write_connection(self.engine) as conn, conn.begin():
            for stored in sorted(by_stored):
                conn.execute(self._touch(stored, now))  # the row exists now, and is ours until commit
                row = conn.execute(sa.select(t.c.failures, t.c.locked_until).where(t.c.key == stored)).one()
                recent = [x for x in _times(row.failures) if now - x < self.window] + [now]
                locked_until = float(row.locked_until or 0)
                if len(recent) >= by_stored[stored]:
                    locked_until, recent = max(locked_until, now + self.lockout), []
                conn.execute(
                    sa.update(t)
                    .where(t.c.key == stored)
                    .values(failures=json.dumps(recent), locked_until=locked_until, updated_at=now)
                )

    def success(self, *keys: str) -> None:
        """Forget failures and lock-outs of these keys (after a good login, or an admin's unlock)."""
        if not keys:
            return
        self._fallback.success(*keys)
        t = self.table
        try:
            with write_connection(self.engine) as conn, conn.begin():
                conn.execute(sa.delete(t).where(t.c.key.in_([self.stored_key(k) for k in keys])))
        except (sa.exc.OperationalError, sa.exc.ProgrammingError) as exc:
            self._unavailable(exc)

    def purge(self, now: float | None = None) -> int:
        """Delete rows whose failures left the window and whose lock-out is over; returns how many.

        Its own transaction, after the failure's commit: deleting other keys' rows while holding
        this key's lock could deadlock with a concurrent attempt.
        """
        now = self.now() if now is None else now
        t = self.table
        with write_connection(self.engine) as conn, conn.begin():
            result = conn.execute(
                sa.delete(t).where(t.c.updated_at < now - self.window, t.c.locked_until < now)
            )
        return result.rowcount or 0

    def _touch(self, stored: str, now: float) -> Any:
        """``INSERT … ON CONFLICT (key) DO UPDATE``: create the row or lock the existing one."""
        if self.engine.dialect.name == "postgresql":
            from sqlalchemy.dialects.postgresql import insert
        else:
            from sqlalchemy.dialects.sqlite import insert
        stmt = insert(self.table).values(key=stored, failures="[]", locked_until=0.0, updated_at=now)
        return stmt.on_conflict_do_update(
            index_elements=[self.table.c.key], set_={"updated_at": stmt.excluded.updated_at}
        )


def _times(raw: str | None) -> Iterable[float]:
    """The stored failure times; a damaged value counts as none rather than breaking logins."""
    try:
        values = json.loads(raw or "[]")
    except ValueError:
        return []
    return [float(v) for v in values if isinstance(v, int | float)] if isinstance(values, list) else []


def throttle_settings(crm: CRM) -> dict[str, Any]:
    """The ``login_throttle:`` section of crmkit.yaml, with defaults filled in."""
    section = crm.config.section(CONFIG_SECTION)
    return {
        "max_failures": int(section.get("max_failures", DEFAULT_MAX_FAILURES)),
        "window": float(section.get("window", DEFAULT_WINDOW)),
        "lockout": float(section.get("lockout", DEFAULT_LOCKOUT)),
        "limits": {"ip": int(section.get("address_max_failures", DEFAULT_ADDRESS_MAX_FAILURES))},
    }


def login_throttle(crm: CRM) -> DatabaseLoginThrottle | LoginThrottle:
    """The throttle for ``crm``: shared through the database when the table is registered."""
    settings = throttle_settings(crm)
    table = crm.system_tables.get(THROTTLE_TABLE)
    if table is None or crm.engine.dialect.name not in ("sqlite", "postgresql"):
        return LoginThrottle(**settings)
    # The configured secret (not crm.secret_key, which is random per process when unset): every
    # process must compute the same row key.
    return DatabaseLoginThrottle(crm.engine, table, secret=crm.config.secret_key, **settings)
