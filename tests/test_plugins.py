"""The plugin manager and the schema hooks, exercised with inline plugins (Datasette style)."""

from __future__ import annotations

import pytest
import sqlalchemy as sa

from crmkit import CRM, FieldType, SchemaError, hookimpl
from tests.conftest import run_cli


class ScoringFields:
    __name__ = "scoring-test"

    @hookimpl
    def extend_entity(self, crm, name, definition):
        if name == "lead":
            return {"fields": {"scoring_score": {"type": "integer", "label": {"en": "Score", "ja": "スコア"}}}}


class ColourType:
    __name__ = "colour-type"

    @hookimpl
    def register_field_types(self, crm):
        def coerce(field, value):
            return None if value in (None, "") else str(value).lower()

        return [FieldType("colour", lambda f: sa.String(7), coerce, {"palette": {"type": "string"}})]


def test_extend_entity_adds_prefixed_fields(tmp_path):
    crm = CRM(tmp_path, plugins=[ScoringFields()], entry_points=False)
    assert crm.catalog["lead"].field("scoring_score").type == "integer"
    assert "scoring_score" in crm.table("lead").c


def test_extend_entity_clash_is_refused_naming_the_plugin(tmp_path):
    class Clash:
        __name__ = "clash-plugin"

        @hookimpl
        def extend_entity(self, crm, name, definition):
            if name == "lead":
                return {"fields": {"email": {"type": "string"}}}

    with pytest.raises(SchemaError) as exc:
        CRM(tmp_path, plugins=[Clash()], entry_points=False)
    assert "<plugin clash-plugin>" in str(exc.value)
    assert "lead.email is already defined" in str(exc.value)


def test_plugin_field_type_with_its_own_options(tmp_path):
    (tmp_path / "schemas").mkdir()
    (tmp_path / "schemas" / "x.yaml").write_text(
        "extends: account\nfields:\n  brand_colour: {type: colour, palette: warm, label: {en: Colour, ja: 色}}\n",
        encoding="utf-8",
    )
    crm = CRM(tmp_path, plugins=[ColourType()], entry_points=False)
    f = crm.catalog["account"].field("brand_colour")
    assert f.spec["palette"] == "warm"
    assert crm.field_types["colour"].coerce(f, "#ABCDEF") == "#abcdef"
    assert isinstance(crm.table("account").c.brand_colour.type, sa.String)


def test_schema_paths_and_schema_loaded_hooks(tmp_path):
    plugin_dir = tmp_path / "plugin_schemas"
    plugin_dir.mkdir()
    (plugin_dir / "ticket.yaml").write_text(
        "entity: ticket\nlabel: {en: Ticket, ja: チケット}\nfields:\n  subject: {type: string}\n", encoding="utf-8"
    )
    seen = []

    class Tickets:
        __name__ = "tickets"

        @hookimpl
        def schema_paths(self, crm):
            return [str(plugin_dir)]

        @hookimpl
        def schema_loaded(self, crm, catalog):
            seen.append(sorted(catalog.names()))
            return [] if "ticket" in catalog else ["ticket entity missing"]

    crm = CRM(tmp_path, plugins=[Tickets()], entry_points=False)
    assert "ticket" in crm.catalog and "ticket" in seen[0]

    class Refuse:
        __name__ = "refuser"

        @hookimpl
        def schema_loaded(self, crm, catalog):
            return ["deals need a currency field"]

    with pytest.raises(SchemaError) as exc:
        CRM(tmp_path, plugins=[Refuse()], entry_points=False)
    assert "plugin refuser: deals need a currency field" in str(exc.value)


def test_plugins_command_lists_builtins_and_config_plugins(project):
    plugin = project / "my_plugin.py"
    plugin.write_text(
        "from crmkit import hookimpl\n\n@hookimpl\ndef schema_loaded(crm, catalog):\n    return []\n",
        encoding="utf-8",
    )
    (project / "crmkit.yaml").write_text("plugins: [my_plugin]\n", encoding="utf-8")
    result = run_cli("plugins", cwd=project, env={"PYTHONPATH": str(project)})
    assert result.returncode == 0, result.stderr
    assert "crmkit.plugins.field_types  [built-in]" in result.stdout
    assert "my_plugin  [crmkit.yaml]" in result.stdout
    assert "schema_loaded" in result.stdout


def test_plugin_ui_strings_are_translated_on_plugin_pages(tmp_path, db_url):
    """register_ui_strings: a plugin page speaks the user's language; built-in keys cannot be replaced."""
    from starlette.responses import HTMLResponse
    from starlette.routing import Route

    from crmkit.web.site import admin_page
    from tests.support import login, make_crm, make_org

    def hello(ctx):
        return HTMLResponse(f"<p>{ctx._('hello_plugin_greeting', name='Mia')}|{ctx._('sign_out')}</p>")

    class Greeter:
        @hookimpl
        def register_ui_strings(self, crm):
            return {"hello_plugin_greeting": ("Hello {name}", "{name}さん、こんにちは"), "sign_out": ("X", "X")}

        @hookimpl
        def register_routes(self, crm):
            return [Route("/admin/hello", admin_page(hello))]

    crm = make_crm(tmp_path, db_url, plugins=[Greeter()])
    make_org(crm)
    assert "Hello Mia|Sign out" in login(crm, "admin").get("/admin/hello").text
    assert "Miaさん、こんにちは|ログアウト" in login(crm, "mia").get("/admin/hello").text
    crm.close()


def test_plugin_tables_are_created_by_migrate(tmp_path, db_url):
    """register_tables: a plugin's ledger table is created by the same migration as the entities."""
    from tests.support import make_crm

    class Ledger:
        @hookimpl
        def register_tables(self, crm, metadata):
            return [sa.Table("ledger_points", metadata, sa.Column("id", sa.Integer, primary_key=True),
                             sa.Column("points", sa.Numeric(10, 2), nullable=False))]

    crm = make_crm(tmp_path, db_url, plugins=[Ledger()])
    table = crm.system_tables["ledger_points"]
    with crm.engine.begin() as conn:
        conn.execute(table.insert().values(points=3))
        assert conn.execute(sa.select(table.c.points)).scalar_one() == 3
    crm.close()
