"""Built-in plugin: duplicate rules from the entity YAML, the duplicates page, merging.

Public hooks only: ``register_tables`` (the key index), ``schema_loaded`` (rule checks),
``after_save``/``after_delete`` (keep the keys current), ``duplicate_candidates`` (the warning
on create, in the form and the API), ``register_routes`` (duplicates and merge pages),
``record_panels`` (possible duplicates, and the history of merged records), ``menu_links``,
``register_record_actions`` (``POST /api/v1/{entity}/{id}/merge`` and ``/duplicates``),
``register_commands`` and ``register_ui_strings``. The logic is :mod:`crmkit.core.duplicates`.

CLI::

    crmkit duplicates rebuild [ENTITY]      # recompute the keys (after changing rules)
    crmkit duplicates list lead             # groups of probable duplicates
    crmkit duplicates merge lead 12 15 18   # merge 15 and 18 into 12
"""

from __future__ import annotations

import sys
from pathlib import Path

import click

from crmkit.cli import project_option
from crmkit.core import duplicates as dup
from crmkit.hookspecs import hookimpl

STRINGS: dict[str, tuple[str, str]] = {
    "dup_title": ("Duplicates", "重複データ"),
    "dup_entity": ("Records", "対象"),
    "dup_none": ("No probable duplicates found.", "重複の可能性があるデータは見つかりませんでした。"),
    "dup_no_rules": ("This entity has no duplicate rules.", "このデータには重複ルールがありません。"),
    "dup_rule": ("Rule", "ルール"),
    "dup_score": ("Similarity", "類似度"),
    "dup_merge": ("Merge…", "統合…"),
    "dup_merge_title": ("Merge {entity}", "{entity}の統合"),
    "dup_merge_help": (
        "Choose the record to keep and, for each field, the value it keeps. Related records (contacts, deals, "
        "activities …) move to the kept record; the others are deleted, and their history stays readable on it.",
        "残すレコードと、項目ごとに残す値を選んでください。関連データ（取引先責任者・商談・活動など）は残すレコードに"
        "移り、他のレコードは削除されます。削除されたレコードの履歴は残すレコードから参照できます。",
    ),
    "dup_keep": ("Keep", "残す"),
    "dup_keep_record": ("Keep this record", "このレコードを残す"),
    "dup_do_merge": ("Merge {n} records", "{n} 件を統合"),
    "dup_merged": ("Merged {n} records into “{title}”.", "{n} 件を「{title}」に統合しました。"),
    "dup_pick_two": ("Choose at least two records to merge.", "統合するレコードを 2 件以上選んでください。"),
    "dup_warning_title": ("Possible duplicates", "重複の可能性があります"),
    "dup_warning_text": (
        "Records like this one already exist. Open them to check, or create the record anyway.",
        "似たレコードがすでに存在します。内容を確認するか、このまま作成してください。",
    ),
    "dup_create_anyway": ("Create it anyway", "このまま作成する"),
    "dup_possible": ("Possible duplicates", "重複の可能性"),
    "dup_merged_records": ("Merged records", "統合されたレコード"),
    "dup_merged_from": ("#{id} (merged into this record)", "#{id}（このレコードに統合）"),
    "dup_rebuild": ("Rebuild the index", "索引を再作成"),
    "dup_rebuilt": ("Duplicate index rebuilt: {n} records.", "重複索引を再作成しました（{n} 件）。"),
    "dup_field": ("Field", "項目"),
    "dup_next": ("More groups", "次のグループ"),
}


# ---------------------------------------------------------------------------------------------
# Keys and rules
# ---------------------------------------------------------------------------------------------
@hookimpl
def register_tables(crm, metadata):
    """The duplicate key index (``duplicates_key``)."""
    return [dup.define_key_table(metadata)]


@hookimpl
def register_config_schemas(crm):
    """``duplicates: {default_region: JP}`` in crmkit.yaml: the region of phone numbers without +country."""
    return {
        "duplicates": {
            "type": "object",
            "additionalProperties": False,
            "properties": {"default_region": {"type": "string", "pattern": "^[A-Z]{2}$"}},
        }
    }


@hookimpl
def schema_loaded(crm, catalog):
    """Refuse rules that name unknown fields or normalisers."""
    problems = []
    for entity in catalog:
        problems += dup.check_rules(entity)
    return problems


@hookimpl
def after_save(crm, entity, record, old, conn, actor):
    """Keep the record's keys current (same transaction as the write)."""
    keys = dup.keys_for(crm)
    if keys.rules.get(entity.name):
        keys.write(conn, entity.name, record, new=old is None)


@hookimpl
def bulk_load_tables(crm, entity):
    """A large import of an entity with duplicate rules writes several key rows per record."""
    if dup.keys_for(crm).rules.get(entity.name):
        return [dup.KEY_TABLE]
    return None


@hookimpl
def after_create_many(crm, entity, records, conn, actor):
    """Bulk creates (imports): the keys of the whole batch in one executemany."""
    keys = dup.keys_for(crm)
    if keys.rules.get(entity.name):
        keys.write_many(conn, entity.name, records)


@hookimpl
def after_delete(crm, entity, record, conn, actor):
    """A deleted record is nobody's duplicate."""
    dup.keys_for(crm).forget(conn, entity.name, record["id"])


@hookimpl
def duplicate_candidates(crm, entity, record, actor):
    """Candidates by the entity's YAML rules (only records the actor may read)."""
    return [c.as_dict() for c in dup.find_candidates(crm, entity.name, record, actor=actor)]


@hookimpl
def register_ui_strings(crm):
    """English and Japanese words of the duplicate pages."""
    return STRINGS


# ---------------------------------------------------------------------------------------------
# Admin
# ---------------------------------------------------------------------------------------------
@hookimpl
def register_routes(crm):
    """The duplicates page and the merge page."""
    from starlette.routing import Route

    from crmkit.web import merge_pages
    from crmkit.web.site import admin_page

    return [
        Route("/admin/data/duplicates/", admin_page(merge_pages.duplicates_page), methods=["GET", "HEAD", "POST"]),
        Route("/admin/{entity}/merge", admin_page(merge_pages.merge_page), methods=["GET", "HEAD", "POST"]),
    ]


@hookimpl
def menu_links(crm, actor, request):
    """"Duplicates" for people who may delete records of an entity that has rules (merging deletes)."""
    if actor is None:
        return None
    from crmkit.web.i18n import t

    if not any(dup.rules_of(e) and crm.records.can(actor, "delete", e.name) for e in crm.catalog):
        return None
    lang = getattr(request.state, "crmkit_lang", None) or actor.locale
    return [{"href": "/admin/data/duplicates/", "label": t("dup_title", lang, extra=STRINGS), "icon": "link"}]


@hookimpl
def extra_css_urls(crm, template, request):
    """The merge and duplicates pages' styles (shared with the import pages), and the form warning."""
    if template.startswith("data/dup") or template == "form.html":
        from crmkit.web.site import admin_site

        return [admin_site(crm).static_url("data.css")]
    return None


@hookimpl
def record_panels(crm, entity, record, actor, request):
    """On a record page: its possible duplicates, and the history of records merged into it."""
    from crmkit.web.merge_pages import duplicates_panel, merged_panel

    panels = [p for p in (duplicates_panel(request, entity, record), merged_panel(request, entity, record)) if p]
    return panels or None


# ---------------------------------------------------------------------------------------------
# API
# ---------------------------------------------------------------------------------------------
@hookimpl
def register_record_actions(crm):
    """``POST /api/v1/{entity}/{id}/duplicates`` and ``/merge`` for entities with duplicate rules."""
    from crmkit.web.api import RecordAction

    out = []
    for e in crm.catalog:
        if not dup.rules_of(e):
            continue
        out.append(RecordAction(
            e.name, "duplicates", _api_duplicates,
            "Records that may be duplicates of this one (by the entity's duplicate rules).",
        ))
        out.append(RecordAction(
            e.name, "merge", _api_merge,
            "Merge other records into this one: {\"losers\": [ids], \"choose\": {field: record id}}.",
            {
                "type": "object", "required": ["losers"], "additionalProperties": False,
                "properties": {
                    "losers": {"type": "array", "items": {"type": "integer"}, "minItems": 1},
                    "choose": {"type": "object", "additionalProperties": {"type": "integer"}},
                },
            },
        ))
    return out


def _api_duplicates(crm, entity, record, actor):
    found = dup.find_candidates(crm, entity, record, actor=actor, exclude=[record["id"]])
    return {"duplicates": [c.as_dict() for c in found]}


def _api_merge(crm, entity, record, payload, actor):
    from crmkit.core.errors import ValidationError

    losers = payload.get("losers")
    if not isinstance(losers, list) or not losers or not all(isinstance(i, int) for i in losers):
        raise ValidationError([{"field": "losers", "message": "must be a list of record ids"}])
    choose = payload.get("choose") or {}
    if not isinstance(choose, dict) or not all(isinstance(v, int) for v in choose.values()):
        raise ValidationError([{"field": "choose", "message": "must map field names to record ids"}])
    result = dup.merge(crm, entity, record["id"], losers, actor=actor, choose=choose, source="api")
    return {"record": result.record, "merged": result.merged, "moved": result.moved}


# ---------------------------------------------------------------------------------------------
# CLI
# ---------------------------------------------------------------------------------------------
@hookimpl
def register_commands(cli):
    """``crmkit duplicates rebuild|list|merge``."""
    cli.add_command(duplicates_group)


@click.group("duplicates")
def duplicates_group() -> None:
    """Find and merge duplicate records (rules: ``duplicates:`` in the entity YAML)."""


@duplicates_group.command("rebuild")
@project_option
@click.argument("entity", required=False)
def rebuild_cmd(project: Path, entity: str | None) -> None:
    """Recompute the duplicate keys of ENTITY (default: every entity with rules)."""
    from crmkit.cli import open_crm

    crm = open_crm(project)
    try:
        keys = dup.keys_for(crm)
        names = [entity] if entity else [n for n, rules in keys.rules.items() if rules]
        for name in names:
            if name not in crm.catalog:
                raise click.BadParameter(f"no entity {name!r}", param_hint="ENTITY")
            n = keys.rebuild(name)
            click.echo(f"{name}: {n} records indexed")
    finally:
        crm.close()


@duplicates_group.command("list")
@project_option
@click.argument("entity")
@click.option("--rule", help="Only this rule.")
@click.option("--limit", default=50, show_default=True, type=click.IntRange(1, 1000))
def list_cmd(project: Path, entity: str, rule: str | None, limit: int) -> None:
    """Groups of probable duplicates of ENTITY."""
    from crmkit.cli import open_crm
    from crmkit.core.actors import SYSTEM

    crm = open_crm(project)
    try:
        found = dup.groups(crm, entity, actor=SYSTEM, rule=rule, limit=limit)
        for g in found:
            titles = crm.records.titles(entity, g.ids)
            click.echo(f"[{g.rule.name}] " + ", ".join(f"#{i} {titles.get(i, '')}" for i in g.ids))
        if not found:
            click.echo("No probable duplicates.")
    finally:
        crm.close()


@duplicates_group.command("merge")
@project_option
@click.argument("entity")
@click.argument("winner", type=int)
@click.argument("losers", type=int, nargs=-1, required=True)
def merge_cmd(project: Path, entity: str, winner: int, losers: tuple[int, ...]) -> None:
    """Merge LOSERS into WINNER (the winner keeps its values; references move to it)."""
    from crmkit.cli import open_crm
    from crmkit.core.actors import SYSTEM
    from crmkit.core.errors import CRMError

    crm = open_crm(project)
    try:
        result = dup.merge(crm, entity, winner, losers, actor=SYSTEM, source="cli")
    except CRMError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(1)
    finally:
        crm.close()
    moved = ", ".join(f"{n} {k}" for k, n in result.moved.items()) or "nothing"
    click.echo(f"Merged {len(result.merged)} records into #{winner}; moved: {moved}.")
