"""How the admin draws forms and lists, on SQLite and PostgreSQL.

The form widgets are macros of ``widgets/_macros.html`` imported once per page, and the list rows
are joined in Python (``rows_html``): these tests pin the markup those fast paths produce (values,
selected options, required / read-only / error state, escaping) and that a project's own
templates still win over them.
"""

from __future__ import annotations

import re

from markupsafe import Markup

from crmkit import CRM, hookimpl
from crmkit.core.actors import SYSTEM
from crmkit.plugins.admin_commands import migrate
from tests.support import PASSWORD_HASH, XSS, login, owned, token


def _field(html: str, name: str) -> str:
    """The ``<div class="field …" data-field="name">`` block of a form, up to the next field."""
    m = re.search(rf'<div class="field [^"]*" data-field="{name}".*?(?=<div class="field |</fieldset>)', html, re.S)
    assert m, f"no field {name}"
    return m.group(0)


def test_form_widgets_show_values_choices_state_and_escape(crm, org):
    store = crm.records
    parent = store.create("account", {"name": XSS, **owned(org, "alice")}, actor=SYSTEM)
    acc = store.create(
        "account",
        {"name": "Kita KK", "industry": "retail", "type": "partner", "parent": parent["id"], **owned(org, "alice")},
        actor=SYSTEM,
    )
    client = login(crm)
    html = client.get(f"/admin/account/{acc['id']}/edit").text
    name = _field(html, "name")
    assert '<label for="f-name" class="req">Account name</label>' in name
    assert 'value="Kita KK"' in name and ' required aria-required="true"' in name
    assert 'placeholder="e.g. 株式会社サンプル"' in name and "aria-invalid" not in name
    industry = _field(html, "industry")  # a select: the stored option selected, the others not
    assert '<option value="retail" selected>Retail</option>' in industry
    assert '<option value="it">Information &amp; communications</option>' in industry
    kind = _field(html, "type")  # few coloured options: radio pills
    assert re.search(r'<input type="radio" name="type" value="partner" checked>', kind)
    parent_field = _field(html, "parent")  # a reference to a small table: a select, its title escaped
    assert f'<option value="{parent["id"]}" selected>&lt;script&gt;' in parent_field
    assert "<script>" not in html and 'aria-describedby="f-rank-help"' in _field(html, "rank")

    # A failed save shows the error on the field, with the user's input kept.
    bad = client.post(
        f"/admin/account/{acc['id']}/edit",
        data={"_csrf": token(client), "version": acc["version"], "name": "", "industry": "it",
              "type": "customer", "parent": str(parent["id"])},
    )
    assert bad.status_code == 422
    name = _field(bad.text, "name")
    assert 'class="field field-string has-error"' in name
    assert ' required aria-required="true" aria-invalid="true" aria-describedby="f-name-err"' in name
    assert '<option value="it" selected>' in _field(bad.text, "industry")


def test_read_only_fields_and_japanese_labels(crm, org):
    store = crm.records
    acc = store.create("account", {"name": "Minami KK", **owned(org, "mia")}, actor=SYSTEM)
    client = login(crm, "mia")  # a manager, in Japanese
    html = client.get(f"/admin/account/{acc['id']}/edit").text
    assert "取引先名" in _field(html, "name") and "選択してください" in _field(html, "industry")
    owner = _field(html, "owner")
    assert f'<option value="{org["users"]["mia"]["id"]}" selected>Mia</option>' in owner


def test_a_projects_widget_template_replaces_the_builtin_one(crm, org, tmp_path):
    # Written before the admin starts (the first request builds its templates).
    widgets = tmp_path / "templates" / "widgets"
    widgets.mkdir(parents=True)
    (widgets / "input.html").write_text(
        '<input class="house-style" id="{{ w.id }}" name="{{ w.name }}" value="{{ w.value }}">\n', encoding="utf-8"
    )
    acc = crm.records.create("account", {"name": "Higashi <KK>", **owned(org, "alice")}, actor=SYSTEM)
    html = login(crm).get(f"/admin/account/{acc['id']}/edit").text
    assert '<input class="house-style" id="f-name" name="name" value="Higashi &lt;KK&gt;">' in html
    assert '<option value="">Choose…</option>' in _field(html, "industry")  # the others stay built in


def test_list_rows_links_plugin_columns_and_selected_filters(tmp_path, db_url):
    class Extras:
        __name__ = "list-extras-test"

        @hookimpl
        def list_columns(self, crm, entity, actor):
            if entity.name == "account":
                return [{"name": "plain", "label": "Plain", "render": lambda r: "<b>not bold</b>"},
                        {"name": "html", "label": "Html", "render": lambda r: Markup("<i>italic</i>")}]

    crm = CRM(tmp_path, database_url=db_url, entry_points=False, plugins=[Extras()])
    migrate(crm)
    admin = crm.records.create(
        "user", {"username": "admin", "display_name": "Ada <Admin>", "role": "admin", "password": PASSWORD_HASH},
        actor=SYSTEM,
    )
    acc = crm.records.create("account", {"name": XSS, "industry": "it", "owner": admin["id"]}, actor=SYSTEM)
    html = login(crm).get("/admin/account/?f.industry=it").text
    crm.close()
    row = re.search(r"<tbody>(.*?)</tbody>", html, re.S).group(1)
    assert row.count("<tr>") == 1
    assert (f'<td class="cb"><input type="checkbox" name="ids" value="{acc["id"]}" form="bulk" '
            f'aria-label="&lt;script&gt;') in row
    assert f'<td><a href="/admin/account/{acc["id"]}">&lt;script&gt;alert(&#34;x&#34;)' in row
    assert f'<td><a href="/admin/user/{admin["id"]}">Ada &lt;Admin&gt;</a></td>' in row
    assert "<td>&lt;b&gt;not bold&lt;/b&gt;</td><td><i>italic</i></td></tr>" in row
    assert "<script>" not in html
    # (no locale set: the project's default language, Japanese)
    assert '<option value="it" selected>情報通信業</option>' in html
    assert '<option value="retail">小売業</option>' in html


def test_a_projects_list_template_gets_safe_cells(crm, org, tmp_path):
    (tmp_path / "templates").mkdir()
    (tmp_path / "templates" / "list.html").write_text(
        "{% for r in rows %}<p>{% for c in r.cells %}[{{ c }}]{% endfor %}|{{ r.cells[0] }}</p>{% endfor %}\n",
        encoding="utf-8",
    )
    acc = crm.records.create("account", {"name": "Nishi & Co", **owned(org, "alice")}, actor=SYSTEM)
    html = login(crm).get("/admin/account/").text
    link = f'<a href="/admin/account/{acc["id"]}">Nishi &amp; Co</a>'
    assert f"<p>[{link}]" in html and f"|{link}</p>" in html
