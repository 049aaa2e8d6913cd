"""`crmkit check` and the schema loader: every problem reported at once, with file and line."""

from __future__ import annotations

import textwrap

import pytest

from crmkit import CRM, SchemaError
from crmkit.core.loader import parse_yaml
from tests.conftest import run_cli


def write(project, name, text):
    (project / "schemas" / name).write_text(textwrap.dedent(text), encoding="utf-8")


def test_builtin_schemas_pass_check(project):
    result = run_cli("check", cwd=project)
    assert result.returncode == 0, result.stderr
    assert "OK:" in result.stdout


def test_builtin_entities_have_en_and_ja_labels_everywhere(tmp_path):
    crm = CRM(tmp_path, entry_points=False)
    expected = {"lead", "account", "contact", "deal", "activity", "product_category", "product",
                "deal_stage", "marketing_activity", "team", "user"}
    assert expected <= set(crm.catalog.names())
    for entity in crm.catalog:
        assert entity.label["ja"] != entity.label["en"] or entity.label["en"] == "ID", entity.name
        for f in entity.user_fields:
            raw = f.spec.get("label")
            assert raw is not None and raw.get("en") and raw.get("ja"), f"{entity.name}.{f.name}"
            for opt in f.spec.get("options", ()):
                assert opt["label"]["en"] and opt["label"]["ja"], f"{entity.name}.{f.name}={opt['value']}"


def test_overlay_with_several_mistakes_reports_each_with_file_and_line(project):
    write(project, "lead_extra.yaml", """\
        extends: lead
        fields:
          budget: {type: mony, label: {en: Budget, ja: 予算}}
          email: {type: string}
          region: {type: string, colour: red}
          partner: {type: reference, to: partnr}
          vip: {type: boolean, visible_if: {no_such_field: true}}
        """)
    write(project, "broken.yaml", """\
        entity: broken
        fields:
          name: {type: string
        """)
    write(project, "gadget.yaml", """\
        entity: gadget
        titel_field: name
        fields:
          name: {type: string}
          name: {type: text}
        """)
    result = run_cli("check", cwd=project)
    assert result.returncode == 1
    err = result.stderr
    lead = str(project / "schemas" / "lead_extra.yaml")
    assert f"{lead}:3: fields.budget.type: unknown field type 'mony'" in err
    assert "did you mean 'money'" in err
    assert f"{lead}:4: fields.email: field lead.email is already defined at" in err
    assert "lead.yaml:" in err  # the clash names both files
    assert f"{lead}:5: fields.region.colour: unknown key 'colour'" in err
    assert f"{lead}:6: fields.partner.to: references unknown entity 'partnr'" in err
    assert f"{lead}:7: fields.vip.visible_if" in err and "no_such_field" in err
    assert f"{project / 'schemas' / 'broken.yaml'}:" in err and "YAML syntax error" in err
    gadget = str(project / "schemas" / "gadget.yaml")
    assert f"{gadget}:2: titel_field: unknown key 'titel_field' (did you mean 'title_field'?)" in err
    assert f"{gadget}:5: fields.name: duplicate key 'name' (first at line 4)" in err
    assert "problem(s) found" in err


def test_bad_list_and_form_paths_are_reported(project):
    write(project, "thing.yaml", """\
        entity: thing
        label: {en: Thing, ja: モノ}
        fields:
          name: {type: string, label: {en: Name, ja: 名前}}
          account: {type: reference, to: account}
        list:
          columns: [name, account.nam, colour]
          sort: [-nme]
        form:
          sections:
            - {label: Main, fields: [name, acount]}
        """)
    with pytest.raises(SchemaError) as exc:
        CRM(project, entry_points=False)
    text = str(exc.value)
    assert "thing.yaml:7: list.columns[1]" in text and "'nam'" in text
    assert "thing.yaml:7: list.columns[2]" in text
    assert "thing.yaml:8: list.sort[0]" in text
    assert "thing.yaml:11: form.sections[0].fields[1]" in text and "did you mean 'account'" in text


def test_overlay_cannot_redefine_system_columns_or_unknown_entity(project):
    write(project, "x.yaml", """\
        extends: leed
        fields:
          owner: {type: string}
        """)
    write(project, "y.yaml", """\
        entity: widget
        fields:
          version: {type: integer}
        """)
    with pytest.raises(SchemaError) as exc:
        CRM(project, entry_points=False)
    text = str(exc.value)
    assert "x.yaml:1: extends: cannot extend unknown entity 'leed' (did you mean 'lead'?)" in text
    assert "y.yaml:3: fields.version: 'version' is a system column" in text


def test_overlay_adds_fields_options_and_a_new_entity(project):
    write(project, "lead_extra.yaml", """\
        extends: lead
        fields:
          budget: {type: money, label: {en: Budget, ja: 予算}}
          source:
            options:
              - {value: partner_portal, label: {en: Partner portal, ja: パートナーポータル}}
        """)
    write(project, "contract.yaml", """\
        entity: contract
        label: {en: Contract, ja: 契約}
        fields:
          title: {type: string, required: true, label: {en: Title, ja: 件名}}
          account: {type: reference, to: account, inverse: contracts}
        """)
    crm = CRM(project, entry_points=False)
    lead = crm.catalog["lead"]
    assert lead.field("budget").type == "money"
    assert lead.field("budget").text("ja") == "予算"
    assert lead.field("source").option("partner_portal").text("ja") == "パートナーポータル"
    assert lead.field("source").option("web") is not None  # built-in options kept
    assert "contract" in crm.catalog
    assert any(r.entity == "contract" and r.inverse == "contracts" for r in crm.catalog.relations_to("account"))
    assert str(project / "schemas" / "lead_extra.yaml") in lead.sources


def test_loader_keeps_line_numbers():
    doc = parse_yaml("entity: a\nfields:\n  x: {type: string}\n  y:\n    type: integer\n", "f.yaml")
    assert doc.line_of(("fields", "x")) == 3
    assert doc.line_of(("fields", "y", "type")) == 5
    assert doc.line_of(("fields", "y", "type", "nothing")) == 5


def test_catalog_is_frozen(tmp_path):
    crm = CRM(tmp_path, entry_points=False)
    lead = crm.catalog["lead"]
    with pytest.raises((AttributeError, TypeError)):
        lead.name = "x"  # type: ignore[misc]
    with pytest.raises(TypeError):
        lead.fields["x"] = None  # type: ignore[index]
    with pytest.raises(TypeError):
        lead.field("email").spec["type"] = "text"  # type: ignore[index]


def test_sortable_columns_get_indexes_and_are_checked(project):
    """``list.sortable`` picks the (column, id) indexes; unknown names are reported with their line."""
    from crmkit.core.tables import index_plan

    write(project, "thing.yaml", """\
        entity: thing
        label: {en: Thing, ja: モノ}
        fields:
          name: {type: string, label: {en: Name, ja: 名前}}
          size: {type: integer, label: {en: Size, ja: 大きさ}}
          notes: {type: text, label: {en: Notes, ja: メモ}}
        list:
          columns: [name, size, notes]
        """)
    plan = [cols for cols, _unique in index_plan(CRM(project, entry_points=False).catalog["thing"])]
    assert ("name", "id") in plan and ("size", "id") in plan  # listed columns sort by default
    assert not any(cols[0] == "notes" for cols in plan)  # long text does not sort
    write(project, "thing.yaml", """\
        entity: thing
        label: {en: Thing, ja: モノ}
        fields:
          name: {type: string, label: {en: Name, ja: 名前}}
          size: {type: integer, label: {en: Size, ja: 大きさ}}
        list:
          columns: [name, size]
          sortable: [size]
        """)
    plan = [cols for cols, _unique in index_plan(CRM(project, entry_points=False).catalog["thing"])]
    assert ("size", "id") in plan and ("name", "id") not in plan
    write(project, "thing.yaml", """\
        entity: thing
        label: {en: Thing, ja: モノ}
        fields:
          name: {type: string, label: {en: Name, ja: 名前}}
        list:
          columns: [name]
          sortable: [nmae]
        """)
    with pytest.raises(SchemaError) as exc:
        CRM(project, entry_points=False)
    assert "thing.yaml:7: list.sortable[0]" in str(exc.value) and "did you mean 'name'" in str(exc.value)


def _sections(crm, entity="lead"):
    return [(s.label["en"], list(s.fields)) for s in crm.catalog[entity].form]


def test_a_field_an_overlay_places_nowhere_still_gets_on_the_form(tmp_path, project):
    builtin = _sections(CRM(tmp_path / "plain", entry_points=False))
    write(project, "lead_extra.yaml", """\
        extends: lead
        fields:
          budget: {type: money, label: {en: Budget, ja: 予算}}
          note_total: {type: integer, readonly: true, label: {en: Total, ja: 合計}}
        """)
    crm = CRM(project, entry_points=False)
    sections = _sections(crm)
    assert sections[:-1] == builtin  # the built-in layout is untouched
    assert sections[-1] == ("More details", ["budget"])  # read-only fields are not inputs
    assert crm.catalog["lead"].form[-1].label["ja"] == "その他の項目"


def test_overlay_adds_sections_and_fields_without_repeating_the_form(tmp_path, project):
    builtin = _sections(CRM(tmp_path / "plain", entry_points=False))
    labels = [label for label, _ in builtin]
    write(project, "lead_extra.yaml", """\
        extends: lead
        fields:
          budget: {type: money, label: {en: Budget, ja: 予算}}
          competitor: {type: string, label: {en: Competitor, ja: 競合}}
          event: {type: string, label: {en: Event, ja: イベント}}
        form:
          add_sections:
            - label: {en: Qualification, ja: 有望度}
              after: Lead details
              fields: [budget, rating]
            - label: {en: Marketing, ja: マーケティング}
              fields: [event]
          add_fields:
            連絡先: [competitor]
        """)
    crm = CRM(project, entry_points=False)
    sections = dict(_sections(crm))
    order = [label for label, _ in _sections(crm)]
    assert order.index("Qualification") == labels.index("Lead details") + 1
    assert order[-1] == "Marketing" and "More details" not in order
    assert sections["Qualification"] == ["budget", "rating"]
    assert "rating" not in sections["Lead details"]  # moved, not shown twice
    assert sections["Contact details"][-1] == "competitor"
    assert sum(fields.count("rating") for fields in sections.values()) == 1


def test_form_additions_that_name_nothing_are_reported_with_file_and_line(project):
    write(project, "lead_extra.yaml", """\
        extends: lead
        fields:
          budget: {type: money, label: {en: Budget, ja: 予算}}
        form:
          add_sections:
            - label: Qualification
              after: Lead detail
              fields: [budget, budjet]
          add_fields:
            Nowhere: [budget]
        """)
    with pytest.raises(SchemaError) as info:
        CRM(project, entry_points=False)
    text = str(info.value)
    assert "lead_extra.yaml:7: form.add_sections[0].after: lead has no form section 'Lead detail'" in text
    assert "'Lead details'" in text  # the sections it has are listed
    assert "lead_extra.yaml:8: form.add_sections[0].fields[1]: lead has no field 'budjet'" in text
    assert "lead_extra.yaml:10: form.add_fields.Nowhere: lead has no form section 'Nowhere'" in text


def test_the_added_section_is_on_the_edit_form(tmp_path, db_url, project):
    from tests.support import login, make_crm, make_org

    write(project, "lead_extra.yaml", """\
        extends: lead
        fields:
          budget: {type: money, label: {en: Budget, ja: 予算}}
        form:
          add_sections:
            - label: {en: Qualification, ja: 有望度}
              fields: [budget]
        """)
    crm = make_crm(project, db_url)
    try:
        make_org(crm)
        page = login(crm, "admin").get("/admin/lead/new").text
        assert "Qualification" in page and 'name="budget"' in page
    finally:
        crm.close()
