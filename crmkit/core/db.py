"""Database engines: SQLite (embedded default) and PostgreSQL (production), configured alike."""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

import sqlalchemy as sa
from sqlalchemy.engine import make_url


def is_sqlite(engine_or_conn: sa.Engine | sa.Connection) -> bool:
    """True when the engine or connection talks to SQLite."""
    return engine_or_conn.dialect.name == "sqlite"


def normalize_url(url: str) -> str:
    """Pick our drivers: ``postgresql://`` means psycopg 3 (the maintained driver)."""
    u = make_url(url)
    if u.drivername in ("postgresql", "postgres"):
        u = u.set(drivername="postgresql+psycopg")
    return u.render_as_string(hide_password=False)


def create_engine(url: str, **kwargs) -> sa.Engine:
    """Create an engine; SQLite gets foreign keys on, WAL and real (transactional) BEGINs.

    pysqlite by default commits before DDL and opens transactions lazily, which would make a
    failed migration leave half its DDL behind; taking over BEGIN (SQLAlchemy's documented
    recipe) makes DDL and DML share one transaction that can roll back.
    """
    url = normalize_url(url)
    u = make_url(url)
    if u.get_backend_name() != "sqlite":
        kwargs.setdefault("pool_pre_ping", True)
        return sa.create_engine(url, **kwargs)
    if u.database and u.database != ":memory:":
        Path(u.database).parent.mkdir(parents=True, exist_ok=True)
    connect_args = kwargs.pop("connect_args", {})
    connect_args.setdefault("timeout", 30)
    connect_args.setdefault("check_same_thread", False)
    engine = sa.create_engine(url, connect_args=connect_args, **kwargs)

    @sa.event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn, _record):
        dbapi_conn.isolation_level = None  # we issue BEGIN ourselves (below)
        cur = dbapi_conn.cursor()
        cur.execute("PRAGMA foreign_keys=ON")
        cur.execute("PRAGMA journal_mode=WAL")
        cur.execute("PRAGMA synchronous=NORMAL")
        cur.execute("PRAGMA busy_timeout=30000")
        cur.close()

    @sa.event.listens_for(engine, "begin")
    def _on_begin(conn):
        # Writers ask for IMMEDIATE (execution option ``crmkit_write``): they take the write lock
        # up front and queue on busy_timeout instead of failing with "database is locked" when a
        # read transaction tries to upgrade. Readers stay deferred and run concurrently (WAL).
        options = conn.get_execution_options()
        if options.get("crmkit_single_statement"):
            return  # one self-contained SELECT: SQLite's implicit per-statement transaction is enough
        conn.exec_driver_sql("BEGIN IMMEDIATE" if options.get("crmkit_write", False) else "BEGIN")

    return engine


def single_statement_connection(engine: sa.Engine) -> sa.Connection:
    """A connection for reads that need no snapshot across statements (each SELECT stands alone).

    On SQLite it skips the explicit BEGIN/ROLLBACK pair around the read, which costs about as much
    as a small indexed query; elsewhere it is a plain connection.
    """
    return engine.connect().execution_options(crmkit_single_statement=True)


class ReadConnections:
    """Connections for single-statement reads, kept checked out between reads on SQLite.

    Checking a connection out of the pool and back costs about as much as a 50-row indexed query
    on SQLite, so a few idle ones are kept ready (in autocommit: no transaction and no snapshot is
    held between statements, so each read sees the latest commit). Each is used by one thread at
    a time. PostgreSQL connections are not kept: an idle one there would sit in an open transaction.
    """

    def __init__(self, engine: sa.Engine, keep: int = 4):
        self.engine = engine
        self.keep = keep if is_sqlite(engine) else 0  # stays below the pool size (5)
        self._idle: deque[sa.Connection] = deque()
        self._closed = False

    @contextmanager
    def connect(self) -> Iterator[sa.Connection]:
        """A connection for reads whose statements each stand alone."""
        if not self.keep:
            with single_statement_connection(self.engine) as conn:
                yield conn
            return
        try:
            conn = self._idle.pop()  # deque.pop/append are atomic: no lock needed
        except IndexError:
            conn = single_statement_connection(self.engine)
        try:
            yield conn
        except BaseException:
            conn.close()  # whatever state the error left it in, do not reuse it
            raise
        if self._closed or conn.invalidated or len(self._idle) >= self.keep:
            conn.close()
        else:
            self._idle.append(conn)

    def close(self) -> None:
        """Return the idle connections to the pool (before the engine is disposed)."""
        self._closed = True
        while self._idle:
            try:
                self._idle.pop().close()
            except IndexError:
                break


def write_connection(engine: sa.Engine) -> sa.Connection:
    """A connection whose transactions take SQLite's write lock at BEGIN (no-op elsewhere)."""
    return engine.connect().execution_options(crmkit_write=True)


def newest_rows(engine: sa.Engine, table: sa.Table, *, equal: dict[str, object] | None = None, limit: int = 50,
                before_id: int | None = None) -> list[dict[str, object]]:
    """Rows of a queue-like table (jobs, outbox) newest first, keyset-paged by ``before_id``;
    ``equal`` filters by column values (None values are ignored). At most 500 rows."""
    stmt = sa.select(table).order_by(table.c.id.desc()).limit(max(1, min(limit, 500)))
    for column, value in (equal or {}).items():
        if value:
            stmt = stmt.where(table.c[column] == value)
    if before_id:
        stmt = stmt.where(table.c.id < before_id)
    with engine.connect() as conn:
        return [dict(r) for r in conn.execute(stmt).mappings()]


def count_by(engine: sa.Engine, table: sa.Table, column: str, values: Iterable[str]) -> dict[str, int]:
    """How many rows hold each value of ``column`` (every one of ``values`` listed, 0 if none)."""
    with engine.connect() as conn:
        rows = conn.execute(sa.select(table.c[column], sa.func.count()).group_by(table.c[column])).all()
    out = dict.fromkeys(values, 0)
    out.update({value: n for value, n in rows})
    return out
