"""Shared pieces of the Playwright tests (test_browser.py, test_admin_a11y.py).

- :func:`backend_database`: a database URL per backend for a *module-scoped* fixture (a SQLite
  file, or a PostgreSQL schema of its own), so each browser module serves one seeded site per
  backend and every scenario runs on SQLite and, with CRMKIT_TEST_DATABASE_URL, on PostgreSQL.
- :func:`chromium`: Debian's Chromium through Playwright (never ``playwright install``).
- :func:`watch_errors`: collects JS errors and CSP violations of a page.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from crmkit.web.screenshots import CHROMIUM_ARGS
from tests.conftest import BACKENDS, _pg_schema_url, need

CHROMIUM = Path("/usr/bin/chromium")

__all__ = ["BACKENDS", "CHROMIUM", "backend_database", "chromium", "watch_errors"]


def backend_database(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """Yield a fresh database URL for ``request.param`` ("sqlite" or "postgresql"); drop it afterwards."""
    need(CHROMIUM.exists(), "chromium not installed")
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path_factory.mktemp('browser') / 'crm.db'}"
        return
    admin = request.getfixturevalue("pg_admin")
    schema = "b_" + secrets.token_hex(6)
    with admin.connect() as conn:
        conn.exec_driver_sql(f"CREATE SCHEMA {schema}")
    try:
        yield _pg_schema_url(schema)
    finally:
        with admin.connect() as conn:
            conn.exec_driver_sql(f"DROP SCHEMA {schema} CASCADE")


@contextmanager
def chromium() -> Iterator[Any]:
    """A headless Chromium (the system one) for the block."""
    need(CHROMIUM.exists(), "chromium not installed")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            browser.close()


def watch_errors(page: Any) -> list[str]:
    """A list that fills with the page's uncaught JS errors and console errors (CSP reports included)."""
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.on(
        "console",
        lambda msg: (
            errors.append(msg.text)
            if msg.type == "error" and not msg.text.startswith("Failed to load resource")
            else None
        ),
    )
    return errors
