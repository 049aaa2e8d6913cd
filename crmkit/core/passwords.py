"""Password hashing with argon2id (argon2-cffi), the OWASP-recommended default."""

from __future__ import annotations

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

_hasher = PasswordHasher()


def hash_password(password: str) -> str:
    """Return an argon2id hash of ``password`` (salted; safe to store)."""
    return _hasher.hash(password)


def verify_password(stored_hash: str | None, password: str) -> bool:
    """True when ``password`` matches ``stored_hash``; False for a missing or malformed hash."""
    if not stored_hash:
        # Hash anyway so a missing user takes as long as a wrong password (no user enumeration).
        _hasher.hash(password)
        return False
    try:
        return _hasher.verify(stored_hash, password)
    except (VerificationError, InvalidHashError):
        return False


def needs_rehash(stored_hash: str) -> bool:
    """True when the hash was made with weaker parameters than today's defaults."""
    return _hasher.check_needs_rehash(stored_hash)
