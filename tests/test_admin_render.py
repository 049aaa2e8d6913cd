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


# The box of one widget exactly as form.html draws it through the _macros.html macro.
_MACRO_BOX = """{% import "widgets/_macros.html" as widgets with context %}
    {% for w in ws %}
      <div {{ w.box_attrs }}>
        {% if w.macro %}{{ widgets[w.macro](w, section_label) }}{% endif %}
        {% if w.help %}<p class="help" id="{{ w.id }}-help">{{ w.help }}</p>{% endif %}
        {% if w.errors %}<p class="error" id="{{ w.id }}-err">{% for m in w.errors %}{{ m }}\
{% if not loop.last %} {% endif %}{% endfor %}</p>{% endif %}
      </div>
    {% endfor %}
"""


def test_python_widgets_draw_exactly_the_macros_markup(crm, org):
    """forms.py's widgets in Python against their _macros.html macros, in every state, both languages."""
    import dataclasses

    from starlette.requests import Request

    from crmkit.web.auth import actor_for, load_user
    from crmkit.web.forms import PYTHON_WIDGETS, FormBuilder
    from crmkit.web.site import PageContext, admin_site

    store = crm.records
    store.create("account", {"name": XSS, **owned(org, "alice")}, actor=SYSTEM)
    site = admin_site(crm)
    assert site.python_widgets == frozenset(PYTHON_WIDGETS)
    actor = actor_for(crm, load_user(crm, username="admin"))
    macro_box = site.env.from_string(_MACRO_BOX)
    drawn: set[str] = set()
    for lang in ("en", "ja"):
        request = Request({"type": "http", "method": "GET", "path": "/admin/x", "headers": [], "query_string": b""})
        ctx = PageContext(request, site, actor, lang)
        for entity in crm.catalog:
            builder = FormBuilder(ctx, entity)
            for section in builder.sections({}):
                for base in section.widgets:
                    if not base.python:
                        continue
                    kinds = [base]
                    if base.macro == "select":  # the same choices as checkboxes (no multi_enum field is built in)
                        kinds.append(dataclasses.replace(base, macro="multiselect", kind="multiselect"))
                    for base in kinds:
                        _compare_widget(ctx, macro_box, section.label, base, drawn)
    assert drawn >= set(PYTHON_WIDGETS) | {"pills"}  # every Python widget was compared


def _compare_widget(ctx, macro_box, section_label, base, drawn) -> None:
    """One widget in many states (values, required, read-only, help, errors): Python == macro."""
    import dataclasses

    first = (base.choices or [{"value": XSS}])[0]["value"]
    variants = []
    values = (None, "", XSS, first, [first], "12") + (() if base.macro == "multiselect" else (True,))
    if base.macro == "address":  # a mapping of parts (or nothing)
        values = (None, "", {}, {"postal_code": XSS, "city": "大阪市", "building": None}, {"street": 'a"<&'})
    for value in values:
        for state in ({}, {"required": True}, {"readonly": True, "help": 'h<"&'},
                      {"errors": ["bad <x>", "two"], "placeholder": 'p"<', "required": True}):
            w = dataclasses.replace(base, value=value, **state)
            w.extra = type(base.extra)(base.extra)
            if base.macro == "reference":
                w.extra["title"] = XSS if value else None
            variants.append(w)
    python = "".join(w.box_html(ctx._) for w in variants)
    macro = macro_box.render(ws=variants, _=ctx._, lang=ctx.lang, section_label=section_label)
    assert python == macro, f"{base.name} ({base.macro}, {ctx.lang})"
    drawn.add("pills" if base.extra.get("pills") and base.macro == "select" else base.macro)
    assert "<script>" not in python


def test_an_overridden_macros_file_turns_the_python_widgets_off(crm, org, tmp_path):
    from crmkit.web.templating import templates_dir

    widgets = tmp_path / "templates" / "widgets"
    widgets.mkdir(parents=True)
    source = (templates_dir() / "widgets" / "_macros.html").read_text("utf-8")
    (widgets / "_macros.html").write_text(
        source.replace('<input id="{{ w.id }}"', '<input class="house" id="{{ w.id }}"'),
        encoding="utf-8",
    )
    acc = crm.records.create("account", {"name": "Nishi KK", **owned(org, "alice")}, actor=SYSTEM)
    html = login(crm).get(f"/admin/account/{acc['id']}/edit").text
    assert '<input class="house" id="f-name" name="name"' in html


def test_the_menu_built_in_python_is_base_htmls_loop(crm, org):
    from crmkit.web.auth import actor_for, load_user
    from crmkit.web.i18n import Translator
    from crmkit.web.site import admin_site

    site = admin_site(crm)
    menu = [
        {"label": "Records", "items": [
            {"href": "/admin/lead/", "label": "Leads", "icon": "user", "current": True},
            {"href": "/admin/x/?a=1&b=2", "label": XSS, "icon": 'dot"<', "current": False},
        ]},
        {"label": Markup("<b>Master</b> & data"), "items": [{"href": "/admin/team/", "label": "Teams", "icon": "dot"}]},
    ]
    variables = {"menu": menu, "icons": site.icons_url, "_": Translator("en"), "lang": "en",
                 "static": site.static_url, "current_path": "/admin/lead/",
                 "actor": actor_for(crm, load_user(crm, username="alice"))}
    base = site.env.get_template("base.html")
    looped = base.render(variables)
    built = base.render({**variables, "menu_html": site.menu_html(menu)})
    assert built == looped and "<script>" not in built
    assert '<li><a href="/admin/lead/" aria-current="page">' in built and "<b>Master</b> & data" in built


def test_list_headers_and_bulk_choices_built_in_python_are_the_template_loops(crm):
    from crmkit.web.listing import _header_html
    from crmkit.web.site import admin_site
    from crmkit.web.templating import choice_templates, options_by, options_html

    env = admin_site(crm).env
    headers = [
        {"label": "ID", "href": None, "dir": None},
        {"label": XSS, "href": "/admin/lead/?sort=-a&q=x%22", "dir": "asc"},
        {"label": "Status", "href": "/admin/lead/?sort=status", "dir": "desc"},
        {"label": Markup("<b>Mine</b>"), "href": "/admin/lead/?sort=b", "dir": None},
        {"label": "Plain", "href": None, "dir": "asc"},
    ]
    loop = env.from_string(
        """{% for h in headers %}<th scope="col"{% if h.dir %} aria-sort="{{ 'ascending' if h.dir == 'asc' """
        """else 'descending' }}"{% endif %}>{% if h.href %}<a href="{{ h.href }}">{{ h.label }}{% if h.dir %}"""
        """<span aria-hidden="true" class="sort-{{ h.dir }}"></span>{% endif %}</a>{% else %}{{ h.label }}"""
        """{% endif %}</th>{% endfor %}"""
    )
    assert "".join(map(_header_html, headers)) == loop.render(headers=headers)
    settable = [
        {"name": "status", "label": "Status", "choices": [("new", "New"), (XSS, XSS)]},
        {"name": 'n"<', "label": XSS},
        {"name": "flag", "label": "Flag", "choices": [("1", "Yes"), ("0", "No")]},
        {"name": "empty", "label": "Empty", "choices": []},
    ]
    loops = env.from_string(
        """{% for f in settable %}<option value="{{ f.name }}">{{ f.label }}</option>{% endfor %}|"""
        """{% for f in settable if f.choices %}<template data-choices-for="{{ f.name }}">{{ f.choices|options }}"""
        """</template>{% endfor %}"""
    )
    assert f"{options_by(settable)}|{choice_templates(settable)}" == loops.render(settable=settable)
    # Options drawn again (kept halves) are the same markup, selected or not.
    colored = [{"value": "a", "label": XSS, "color": "#fff"}, {"value": 1, "label": "One"}, (XSS, "x")]
    first = str(options_html(colored, ["a", 1]))
    assert str(options_html(colored, ["a", 1])) == first
    assert first.count(" selected") == 2 and "<script>" not in first
    assert str(options_html(colored)) == first.replace(" selected", "")


def test_list_cell_renderers_draw_what_cell_html_draws(crm, org):
    import datetime as dt

    from starlette.requests import Request

    from crmkit.web.auth import actor_for, load_user
    from crmkit.web.display import Display
    from crmkit.web.site import PageContext, admin_site

    site = admin_site(crm)
    actor = actor_for(crm, load_user(crm, username="admin"))
    values = [None, "", [], XSS, 0, 12, "2", True, dt.datetime(2026, 1, 2, 3, 4, tzinfo=dt.UTC), dt.date(2026, 1, 2),
              [{"id": 1}], {"city": XSS}]

    def outcome(draw, *args):
        try:
            return draw(*args)
        except Exception as exc:  # the same failure either way
            return type(exc)

    compared = 0
    for lang in ("en", "ja"):
        request = Request({"type": "http", "method": "GET", "path": "/admin/x", "headers": [], "query_string": b""})
        ctx = PageContext(request, site, actor, lang, tz=dt.timezone(dt.timedelta(hours=9)))
        for entity in crm.catalog:
            display = Display(ctx, entity)
            for f in entity.fields.values():
                render = display.cell_renderer(f)
                for value in [*values, *(o.value for o in f.options)]:
                    record = {"id": 7, f.name: value}
                    assert outcome(render, record) == outcome(display.cell_html, f, record), (f.name, value)
                    compared += 1
    assert compared > 1000


def test_a_hooks_menu_replaces_the_built_one(tmp_path, db_url):
    class OwnMenu:
        __name__ = "own-menu-test"

        @hookimpl
        def extra_template_vars(self, crm, template, request):
            return {"menu": [{"label": "Ours", "items": [{"href": "/admin/ours/", "label": "<Ours>", "icon": "dot"}]}]}

    crm = CRM(tmp_path, database_url=db_url, entry_points=False, plugins=[OwnMenu()])
    migrate(crm)
    crm.records.create("user", {"username": "admin", "display_name": "Ada", "role": "admin", "password": PASSWORD_HASH},
                       actor=SYSTEM)
    try:
        html = login(crm).get("/admin/").text
        assert '<h2 class="nav-h">Ours</h2>' in html and ">&lt;Ours&gt;</a></li>" in html
        assert 'href="/admin/lead/"' not in html
    finally:
        crm.close()
