"""Per-user API tokens: ``Authorization: Bearer <token>`` for the REST API.

A token is 32 random bytes shown once, when it is created; the database keeps only its SHA-256.
A plain hash (no salt, no argon2) is enough because the secret is high-entropy: nobody can guess
it, so there is nothing for a slow hash to protect, and a lookup by hash stays one index probe.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import secrets
from dataclasses import dataclass
from typing import TYPE_CHECKING

import sqlalchemy as sa

from crmkit.core.db import write_connection

if TYPE_CHECKING:
    from crmkit.app import CRM

TOKEN_TABLE = "crmkit_api_token"
TOKEN_PREFIX = "crm_"
# last_used_at is written at most this often per token: a GET must not take SQLite's write lock.
LAST_USED_RESOLUTION = dt.timedelta(minutes=1)


def define_token_table(md: sa.MetaData) -> sa.Table:
    """Add the ``crmkit_api_token`` table to ``md`` and return it."""
    return sa.Table(
        TOKEN_TABLE,
        md,
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column(
            "user_id",
            sa.Integer,
            sa.ForeignKey("user.id", ondelete="CASCADE", use_alter=True),
            nullable=False,
        ),
        sa.Column("name", sa.String(100), nullable=False),
        sa.Column("token_hash", sa.String(64), nullable=False),
        sa.Column("hint", sa.String(16), nullable=False),  # first characters, to tell tokens apart
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("last_used_at", sa.DateTime(timezone=True)),
        sa.Column("revoked_at", sa.DateTime(timezone=True)),
        sa.Index("uq_crmkit_api_token_token_hash", "token_hash", unique=True),
        sa.Index("ix_crmkit_api_token_user_id", "user_id"),
    )


class TokenError(Exception):
    """A token command that cannot be done (unknown user or token); the message says why."""


@dataclass(frozen=True)
class TokenInfo:
    """A stored token as ``crmkit token list`` shows it (never the secret)."""

    id: int
    username: str
    name: str
    hint: str
    created_at: dt.datetime
    last_used_at: dt.datetime | None
    revoked_at: dt.datetime | None

    @property
    def active(self) -> bool:
        return self.revoked_at is None


def hash_token(token: str) -> str:
    """The stored form of a token: hex SHA-256."""
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).hexdigest()


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _utc(value: dt.datetime | None) -> dt.datetime | None:
    if value is not None and value.tzinfo is None:  # SQLite returns naive datetimes
        return value.replace(tzinfo=dt.UTC)
    return value


def _table(crm: CRM) -> sa.Table:
    return crm.metadata.tables[TOKEN_TABLE]


def create_token(crm: CRM, username: str, name: str = "api") -> tuple[str, TokenInfo]:
    """Create a token for ``username``; returns ``(secret, info)``. The secret is not stored."""
    users = crm.table("user")
    secret = TOKEN_PREFIX + secrets.token_urlsafe(32)
    now = _now()
    with write_connection(crm.engine) as conn, conn.begin():
        user = conn.execute(sa.select(users.c.id).where(users.c.username == username)).first()
        if user is None:
            raise TokenError(f"no user {username!r}")
        row = {
            "user_id": user.id,
            "name": name,
            "token_hash": hash_token(secret),
            "hint": secret[: len(TOKEN_PREFIX) + 4],
            "created_at": now,
        }
        token_id = conn.execute(sa.insert(_table(crm)).values(row).returning(_table(crm).c.id)).scalar_one()
    return secret, TokenInfo(token_id, username, name, row["hint"], now, None, None)


def list_tokens(crm: CRM, username: str | None = None) -> list[TokenInfo]:
    """Every token (of ``username`` if given), oldest first."""
    t, users = _table(crm), crm.table("user")
    stmt = sa.select(t, users.c.username).join(users, users.c.id == t.c.user_id).order_by(t.c.id)
    if username is not None:
        stmt = stmt.where(users.c.username == username)
    with crm.engine.connect() as conn:
        rows = conn.execute(stmt).mappings().all()
    return [
        TokenInfo(
            r["id"],
            r["username"],
            r["name"],
            r["hint"],
            _utc(r["created_at"]),
            _utc(r["last_used_at"]),
            _utc(r["revoked_at"]),
        )
        for r in rows
    ]


def revoke_token(crm: CRM, token_id: int) -> TokenInfo:
    """Revoke a token by id (idempotent); it stops working on its next request."""
    t = _table(crm)
    with write_connection(crm.engine) as conn, conn.begin():
        conn.execute(
            sa.update(t).where(t.c.id == token_id, t.c.revoked_at.is_(None)).values(revoked_at=_now())
        )
    for info in list_tokens(crm):
        if info.id == token_id:
            return info
    raise TokenError(f"no token with id {token_id}")


def token_user(crm: CRM, token: str) -> int | None:
    """The id of the user owning ``token``, or None when it is unknown or revoked.

    Records the use in ``last_used_at``. Whether the user is active is the caller's check
    (:mod:`crmkit.plugins.api_tokens` builds the actor the same way session login does).
    """
    if not token.startswith(TOKEN_PREFIX) or len(token) > 200:
        return None
    t = _table(crm)
    digest = hash_token(token)
    with crm.engine.connect() as conn:
        row = conn.execute(sa.select(t).where(t.c.token_hash == digest)).mappings().first()
    # The lookup is by hash, so timing reveals nothing about the secret; compare anyway.
    if row is None or row["revoked_at"] is not None or not hmac.compare_digest(row["token_hash"], digest):
        return None
    last, now = _utc(row["last_used_at"]), _now()
    if last is None or now - last >= LAST_USED_RESOLUTION:
        with write_connection(crm.engine) as conn, conn.begin():
            conn.execute(sa.update(t).where(t.c.id == row["id"]).values(last_used_at=now))
    return row["user_id"]
