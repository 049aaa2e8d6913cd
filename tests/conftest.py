"""Shared fixtures: every DB test runs on SQLite and, when CRMKIT_TEST_DATABASE_URL is set, on
PostgreSQL too (each test in a schema of its own, dropped afterwards). Never a mocked database."""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
from pathlib import Path
from urllib.parse import quote

import pytest
import sqlalchemy as sa

PG_URL = os.environ.get("CRMKIT_TEST_DATABASE_URL")
BACKENDS = ["sqlite"] + (["postgresql"] if PG_URL else [])
# .ci/run sets this: a test that would skip for want of PostgreSQL or chromium fails instead.
STRICT = os.environ.get("CRMKIT_CI_STRICT") == "1"


def need(condition: bool, reason: str) -> None:
    """Skip (fail under CI) when a real dependency of the test is missing."""
    if not condition:
        if STRICT:
            pytest.fail(f"required in CI: {reason}")
        pytest.skip(reason)


def _pg_engine() -> sa.Engine:
    from crmkit.core.db import normalize_url

    return sa.create_engine(normalize_url(PG_URL), isolation_level="AUTOCOMMIT")


@pytest.fixture(scope="session")
def pg_admin():
    """An AUTOCOMMIT engine on the test PostgreSQL database, with pg_trgm installed in public."""
    need(bool(PG_URL), "PostgreSQL not configured (set CRMKIT_TEST_DATABASE_URL)")
    engine = _pg_engine()
    with engine.connect() as conn:
        conn.exec_driver_sql("CREATE EXTENSION IF NOT EXISTS pg_trgm SCHEMA public")
        # Each test's schema comes first on its search_path, then public (for pg_trgm): tables left in
        # public by hand would shadow missing ones and make tests fail in confusing ways.
        leftovers = conn.exec_driver_sql(
            "SELECT table_name FROM information_schema.tables WHERE table_schema = 'public' ORDER BY 1"
        ).scalars().all()
    if leftovers:
        pytest.fail(f"the test database's public schema holds tables ({', '.join(leftovers[:8])}…): "
                    "use an empty database for CRMKIT_TEST_DATABASE_URL")
    yield engine
    engine.dispose()


def _pg_schema_url(schema: str) -> str:
    from crmkit.core.db import normalize_url

    sep = "&" if "?" in PG_URL else "?"
    return normalize_url(PG_URL) + sep + "options=" + quote(f"-csearch_path={schema},public")


@pytest.fixture
def pg_url(request):
    """A PostgreSQL URL whose search_path is a fresh schema (PostgreSQL-only tests)."""
    admin = request.getfixturevalue("pg_admin")
    schema = "t_" + secrets.token_hex(6)
    with admin.connect() as conn:
        conn.exec_driver_sql(f"CREATE SCHEMA {schema}")
    yield _pg_schema_url(schema)
    with admin.connect() as conn:
        conn.exec_driver_sql(f"DROP SCHEMA {schema} CASCADE")


@pytest.fixture(params=BACKENDS)
def db_url(request, tmp_path):
    """A database URL for each backend under test: a SQLite file, or a PostgreSQL schema."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'crm.db'}"
    else:
        yield request.getfixturevalue("pg_url")


@pytest.fixture
def backend(db_url) -> str:
    """'sqlite' or 'postgresql', matching db_url."""
    return "sqlite" if db_url.startswith("sqlite") else "postgresql"


@pytest.fixture
def project(tmp_path) -> Path:
    """An empty project directory (tests add crmkit.yaml / schemas as needed)."""
    d = tmp_path / "project"
    (d / "schemas").mkdir(parents=True)
    return d


def run_cli(*args: str, cwd: Path | None = None, env: dict | None = None, input: str | None = None):
    """Run the real ``crmkit`` command in a subprocess; returns CompletedProcess (text)."""
    full_env = {**os.environ, **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", "crmkit.cli", *args],
        cwd=cwd,
        env=full_env,
        capture_output=True,
        text=True,
        input=input,
        timeout=300,
    )


@pytest.fixture
def cli(db_url, project):
    """Run ``crmkit`` against the test project and database: ``cli("migrate", "--plan")``."""

    def run(*args: str, input: str | None = None, cwd: Path | None = None):
        return run_cli(*args, cwd=cwd or project, env={"CRMKIT_DATABASE_URL": db_url}, input=input)

    return run


@pytest.fixture
def crm(db_url, tmp_path):
    """A migrated CRM (built-in plugins only) on each backend; closed afterwards."""
    from tests.support import make_crm

    crm = make_crm(tmp_path, db_url)
    yield crm
    crm.close()


@pytest.fixture
def org(crm):
    """Teams East and West with admin, alice, bob and mia (see tests.support.make_org)."""
    from tests.support import make_org

    return make_org(crm)
