"""What docs/deployment.md relies on: the ASGI factory, health checks, project-directory plugins."""

from __future__ import annotations

import warnings

import pytest
import sqlalchemy as sa

from tests.support import make_crm

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    from starlette.testclient import TestClient


def write_project(project, db_url, *, secret=True, plugins=()):
    lines = [f"database_url: {db_url}"]
    if secret:
        lines.append("secret_key: a-test-secret-key-that-is-long-enough")
    if plugins:
        lines.append(f"plugins: [{', '.join(plugins)}]")
    (project / "crmkit.yaml").write_text("\n".join(lines) + "\n", encoding="utf-8")


def test_readyz_follows_the_database_schema(tmp_path, db_url):
    """503 before the migration and after a field is added without migrating; 200 once migrated."""
    from crmkit import CRM
    from crmkit.core.migrations import apply_migration

    project = tmp_path / "p"
    (project / "schemas").mkdir(parents=True)
    write_project(project, db_url)
    crm = CRM(project, entry_points=False)
    client = TestClient(crm.asgi())
    live = client.get("/livez")
    assert (live.status_code, live.text) == (200, "ok")
    answer = client.get("/readyz")
    assert answer.status_code == 503
    assert answer.json() == {"status": "error",
                             "checks": {"database": "ok", "schema": "not migrated: run crmkit migrate"}}
    apply_migration(crm)
    assert client.get("/readyz").json() == {"status": "ok", "checks": {"database": "ok", "schema": "ok"}}
    assert client.get("/readyz").headers["cache-control"] == "no-store"
    crm.close()

    (project / "schemas" / "lead_extra.yaml").write_text(
        "extends: lead\nfields:\n  budget: {type: money}\nconversion: {ignore: [budget]}\n", encoding="utf-8")
    newer = CRM(project, entry_points=False)  # the next release's code, before `crmkit migrate`
    answer = TestClient(newer.asgi()).get("/readyz")
    assert answer.status_code == 503 and answer.json()["checks"]["schema"] == "migration pending: run crmkit migrate"
    apply_migration(newer)
    assert TestClient(newer.asgi()).get("/readyz").status_code == 200
    newer.close()


def test_readyz_reports_an_unreachable_database_without_details(tmp_path):
    from crmkit import CRM

    crm = CRM(tmp_path, database_url="postgresql://nobody:pw@127.0.0.1:1/none", entry_points=False)
    answer = TestClient(crm.asgi()).get("/readyz")
    assert answer.status_code == 503
    assert answer.json() == {"status": "error", "checks": {"database": "unreachable", "schema": "unknown"}}
    assert "nobody" not in answer.text
    crm.close()


def test_asgi_factory_runs_startup_and_shutdown_hooks(tmp_path, db_url, monkeypatch):
    from crmkit.asgi import create_app

    project = tmp_path / "p"
    project.mkdir()
    (project / "lifecycle_probe.py").write_text(
        "from crmkit import hookimpl\nCALLS = []\n\n@hookimpl\ndef startup(crm):\n    CALLS.append('startup')\n\n"
        "@hookimpl\ndef shutdown(crm):\n    CALLS.append('shutdown')\n", encoding="utf-8")
    write_project(project, db_url, plugins=["lifecycle_probe"])
    make_crm(project, db_url).close()  # migrated
    import lifecycle_probe  # loaded from the project directory by the CRM above

    lifecycle_probe.CALLS.clear()
    monkeypatch.setenv("CRMKIT_PROJECT", str(project))
    app = create_app()
    assert lifecycle_probe.CALLS == []  # building the app starts nothing yet
    with TestClient(app) as client:  # the test client sends the ASGI lifespan events
        assert lifecycle_probe.CALLS == ["startup"]
        assert client.get("/readyz").status_code == 200
    assert lifecycle_probe.CALLS == ["startup", "shutdown"]


def test_asgi_factory_refuses_to_start_without_a_secret_key(tmp_path, db_url, monkeypatch):
    from crmkit.asgi import create_app

    monkeypatch.delenv("CRMKIT_SECRET_KEY", raising=False)
    write_project(tmp_path, db_url, secret=False)
    with pytest.raises(RuntimeError, match="no secret_key"):
        create_app(tmp_path)
    monkeypatch.setenv("CRMKIT_SECRET_KEY", "from-the-environment-0123456789")
    assert create_app(tmp_path).crm.secret_key == "from-the-environment-0123456789"


def test_a_plugin_in_the_project_directory_is_found_by_name(tmp_path, db_url):
    """`plugins: [name]` imports name.py from the project directory (no PYTHONPATH, no packaging)."""
    from crmkit import CRM

    project = tmp_path / "p"
    project.mkdir()
    (project / "acme_tags.py").write_text(
        "from crmkit import hookimpl\n\n@hookimpl\ndef extend_entity(crm, name, definition):\n"
        "    if name == 'account':\n        return {'fields': {'acme_tag': {'type': 'string'}}}\n",
        encoding="utf-8")
    write_project(project, db_url, plugins=["acme_tags"])
    crm = CRM(project, entry_points=False)
    assert crm.plugin_sources["acme_tags"] == "crmkit.yaml"
    assert isinstance(crm.table("account").c.acme_tag.type, sa.String)
    crm.close()
