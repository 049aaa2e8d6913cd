"""Errors every surface (admin, API, CLI, import) turns into the same user-facing answers."""

from __future__ import annotations

from typing import Any


class CRMError(Exception):
    """Base class of crmkit's expected errors (shown to users, never a 500)."""

    status = 400


class ValidationError(CRMError):
    """One or more fields are invalid; ``errors`` is ``[{"field": path, "message": text}]``."""

    status = 422

    def __init__(self, errors: list[dict[str, str]]):
        self.errors = errors
        super().__init__("; ".join(f"{e['field'] or 'record'}: {e['message']}" for e in errors))

    def by_field(self) -> dict[str, list[str]]:
        """Messages grouped by field ("" for record-level messages)."""
        out: dict[str, list[str]] = {}
        for e in self.errors:
            out.setdefault(e["field"], []).append(e["message"])
        return out


class ConflictError(CRMError):
    """The record changed since it was read (optimistic locking); ``current`` is the stored one."""

    status = 409

    def __init__(self, message: str, current: dict[str, Any] | None = None):
        self.current = current
        super().__init__(message)


class NotFound(CRMError):
    """No such record, or the actor may not see it (the two are indistinguishable on purpose)."""

    status = 404


class PermissionDenied(CRMError):
    """The actor may not do this."""

    status = 403


class BadRequest(CRMError):
    """Malformed query input (unknown filter field, bad sort, bad cursor)."""

    status = 400
