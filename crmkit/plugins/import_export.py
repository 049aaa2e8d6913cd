"""Built-in plugin: spreadsheet import and export (``crmkit import`` / ``crmkit export``, admin pages).

Public hooks only: ``register_tables`` (the import journal), ``register_commands``,
``register_routes`` (the import wizard, the import history, XLSX export), ``menu_links``,
``register_ui_strings`` and ``extra_css_urls``. The work itself is :mod:`crmkit.dataio`.

CLI::

    crmkit import lead leads.csv --dry-run          # validate everything, write nothing
    crmkit import lead leads.csv --upsert-key email --errors leads.errors.csv
    crmkit import contact contacts.xlsx --map "会社=account" --ignore メモ --save-mapping "名刺アプリ"
    crmkit imports list            # recent imports
    crmkit imports undo 12         # delete what import 12 created, restore what it changed
    crmkit export lead --format xlsx --columns list --filter '{"status": "new"}' -o new-leads.xlsx

Exit status of ``crmkit import``: 0 all rows imported, 2 some rows were rejected (see the error
file), 1 nothing was imported (unreadable file, unmapped columns, no permission).
"""

from __future__ import annotations

import datetime as dt
import json
import sys
from pathlib import Path
from typing import Any

import click

from crmkit.cli import project_option
from crmkit.hookspecs import hookimpl

STRINGS: dict[str, tuple[str, str]] = {
    "dataio_import": ("Import data", "データのインポート"),
    "dataio_imports": ("Imports", "インポート履歴"),
    "dataio_import_entity": ("Import {entity}", "{entity}のインポート"),
    "dataio_entity": ("Import into", "インポート先"),
    "dataio_file": ("File (CSV or Excel .xlsx)", "ファイル（CSV または Excel .xlsx）"),
    "dataio_file_help": (
        "CSV in UTF-8 or Shift_JIS (as Excel saves it) or an .xlsx workbook; the first row names the columns.",
        "UTF-8 または Shift_JIS（Excel の保存形式）の CSV、または .xlsx ファイル。1 行目に列名が必要です。",
    ),
    "dataio_upload": ("Upload and map columns", "アップロードして列を対応付け"),
    "dataio_no_file": ("Choose a file to import.", "インポートするファイルを選んでください。"),
    "dataio_step_upload": ("Upload", "アップロード"),
    "dataio_step_map": ("Map columns", "列の対応付け"),
    "dataio_step_preview": ("Preview", "プレビュー"),
    "dataio_step_run": ("Import", "インポート"),
    "dataio_step_result": ("Result", "結果"),
    "dataio_file_info": (
        "{name}: {format}, {encoding}, about {rows} rows", "{name}：{format}、{encoding}、約 {rows} 行"
    ),
    "dataio_column": ("Column in the file", "ファイルの列"),
    "dataio_sample": ("Sample values", "値の例"),
    "dataio_field": ("Field", "項目"),
    "dataio_ignore": ("— ignore this column —", "— この列は取り込まない —"),
    "dataio_choose": ("— choose a field —", "— 項目を選択 —"),
    "dataio_readonly": ("set by crmkit, not imported", "自動で設定される項目のため取り込みません"),
    "dataio_error_column": ("error file column, ignored", "エラーファイルの列のため無視します"),
    "dataio_unmapped": (
        "Map this column to a field or ignore it.", "この列を項目に対応付けるか、取り込まない設定にしてください。"
    ),
    "dataio_upsert_key": ("Match existing records by", "既存レコードの照合キー"),
    "dataio_upsert_none": ("— always create new records —", "— 常に新規作成 —"),
    "dataio_upsert_help": (
        "Rows whose value matches an existing record update it; the others create new records.",
        "値が一致する既存レコードは更新し、それ以外は新規作成します。",
    ),
    "dataio_blank": ("Blank cells when updating", "更新時の空欄"),
    "dataio_blank_keep": ("keep the stored value", "既存の値を残す"),
    "dataio_blank_clear": ("clear the stored value", "既存の値を消す"),
    "dataio_saved_mapping": ("Saved mapping", "保存済みの対応付け"),
    "dataio_apply": ("Apply", "適用"),
    "dataio_save_as": ("Save this mapping as", "この対応付けを保存"),
    "dataio_preview": ("Preview", "プレビュー"),
    "dataio_run": ("Import {rows} rows", "{rows} 行をインポート"),
    "dataio_preview_title": ("Preview of the first {n} rows", "先頭 {n} 行のプレビュー"),
    "dataio_preview_counts": (
        "{create} would be created, {update} updated, {failed} rejected.",
        "新規 {create} 件、更新 {update} 件、エラー {failed} 件となる見込みです。",
    ),
    "dataio_row": ("Row", "行"),
    "dataio_action": ("Action", "処理"),
    "dataio_will_create": ("create", "新規"),
    "dataio_will_update": ("update", "更新"),
    "dataio_problems": ("Problems", "エラー"),
    "dataio_running": ("Importing… {done} of about {total} rows", "インポート中… {done} / 約 {total} 行"),
    "dataio_undoing": ("Undoing the import…", "インポートを取り消しています…"),
    "dataio_refresh": ("This page refreshes by itself.", "このページは自動で更新されます。"),
    "dataio_done": (
        "{created} created, {updated} updated, {failed} rejected (of {total} rows).",
        "{total} 行中：新規 {created} 件、更新 {updated} 件、エラー {failed} 件",
    ),
    "dataio_errors_title": ("Rejected rows", "取り込めなかった行"),
    "dataio_errors_help": (
        "Download the error file, fix the cells and import it again (its _row, _column and _error columns "
        "are ignored).",
        "エラーファイルをダウンロードして修正し、再度インポートしてください"
        "（_row・_column・_error 列は無視されます）。",
    ),
    "dataio_download_errors": ("Download the error file", "エラーファイルをダウンロード"),
    "dataio_undo": ("Undo this import", "このインポートを取り消す"),
    "dataio_undo_confirm": (
        "Delete the {created} records this import created and restore the {updated} it changed?",
        "このインポートで作成した {created} 件を削除し、更新した {updated} 件を元に戻しますか？",
    ),
    "dataio_undone": (
        "Import undone: {deleted} deleted, {restored} restored.",
        "インポートを取り消しました：削除 {deleted} 件、復元 {restored} 件",
    ),
    "dataio_undo_problems": ("Not undone", "取り消せなかったもの"),
    "dataio_status": ("Status", "状態"),
    "dataio_status_uploaded": ("uploaded", "アップロード済み"),
    "dataio_status_running": ("running", "実行中"),
    "dataio_status_done": ("done", "完了"),
    "dataio_status_failed": ("failed", "失敗"),
    "dataio_status_undoing": ("undoing", "取り消し中"),
    "dataio_status_undone": ("undone", "取り消し済み"),
    "dataio_status_interrupted": ("interrupted", "中断"),
    "dataio_when": ("When", "日時"),
    "dataio_who": ("By", "実行者"),
    "dataio_filename": ("File", "ファイル"),
    "dataio_counts": ("Created / updated / rejected", "新規 / 更新 / エラー"),
    "dataio_no_imports": ("No imports yet.", "インポート履歴はまだありません。"),
    "dataio_new_import": ("New import", "新しいインポート"),
    "dataio_export_xlsx": ("Excel", "Excel"),
    "dataio_mapping_saved": ("Mapping “{name}” saved.", "対応付け「{name}」を保存しました。"),
    "dataio_view_records": ("View the records", "レコードを見る"),
    "dataio_failed": ("The import stopped: {message}", "インポートが停止しました：{message}"),
}


# ---------------------------------------------------------------------------------------------
# Hooks
# ---------------------------------------------------------------------------------------------
@hookimpl
def register_tables(crm, metadata):
    """The import journal and saved mappings (see :mod:`crmkit.dataio.journal`)."""
    from crmkit.dataio.journal import define_tables

    return define_tables(metadata)


@hookimpl
def register_ui_strings(crm):
    """English and Japanese words of the import pages."""
    return STRINGS


@hookimpl
def register_commands(cli):
    """``crmkit import``, ``crmkit imports list|undo`` and ``crmkit export``."""
    cli.add_command(import_cmd)
    cli.add_command(imports_group)
    cli.add_command(export_cmd)


@hookimpl
def register_routes(crm):
    """The import wizard and history, and the XLSX export of a list."""
    from starlette.routing import Route

    from crmkit.dataio import pages
    from crmkit.web.site import admin_page

    return [
        Route("/admin/data/import", admin_page(pages.upload_page), methods=["GET", "HEAD", "POST"]),
        Route("/admin/data/imports/", admin_page(pages.history_page), methods=["GET", "HEAD"]),
        Route("/admin/data/imports/{import_id:int}", admin_page(pages.import_page), methods=["GET", "HEAD", "POST"]),
        Route("/admin/data/imports/{import_id:int}/errors.csv", admin_page(pages.errors_page), methods=["GET"]),
        Route("/admin/data/imports/{import_id:int}/undo", admin_page(pages.undo_page), methods=["POST"]),
        Route("/admin/{entity}/export.xlsx", admin_page(pages.export_xlsx_page), methods=["GET"]),
    ]


@hookimpl
def menu_links(crm, actor, request):
    """"Import data" for anyone who may create or update at least one entity."""
    if actor is None:
        return None
    from crmkit.dataio.pages import can_import
    from crmkit.web.i18n import t

    if not can_import(crm, actor):
        return None
    lang = getattr(request.state, "crmkit_lang", None) or actor.locale
    return [{"href": "/admin/data/imports/", "label": t("dataio_import", lang, extra=STRINGS), "icon": "folder"}]


@hookimpl
def extra_css_urls(crm, template, request):
    """The import pages' stylesheet (only on those pages)."""
    if template.startswith("data/"):
        from crmkit.web.site import admin_site

        return [admin_site(crm).static_url("data.css")]
    return None


# ---------------------------------------------------------------------------------------------
# CLI
# ---------------------------------------------------------------------------------------------
def _actor(crm, username: str | None):
    from crmkit.core.actors import SYSTEM

    if not username:
        return SYSTEM
    from crmkit.web.auth import actor_for, load_user

    user = load_user(crm, username=username)
    if user is None or not user.active:
        raise click.BadParameter(f"no active user {username!r}", param_hint="--as")
    return actor_for(crm, user)


def _parse_map(items: tuple[str, ...]) -> dict[str, str | None]:
    out: dict[str, str | None] = {}
    for item in items:
        header, sep, field = item.rpartition("=")
        if not sep or not header:
            raise click.BadParameter(f"{item!r}: use HEADER=FIELD", param_hint="--map")
        out[header.strip()] = field.strip() or None
    return out


class _Progress:
    """A click progress bar on a terminal; silence otherwise (scripts, tests)."""

    def __init__(self, label: str, total: int):
        self.bar = None
        if sys.stderr.isatty() and total:
            self.bar = click.progressbar(length=total, label=label, file=sys.stderr, show_pos=True)
            self.bar.__enter__()
        self.done = 0

    def __call__(self, done: int, total: int) -> None:
        if self.bar is not None:
            if total > self.bar.length:
                self.bar.length = total
            self.bar.update(done - self.done)
        self.done = done

    def close(self) -> None:
        if self.bar is not None:
            self.bar.__exit__(None, None, None)


@click.command("import")
@project_option
@click.argument("entity")
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--dry-run", is_flag=True, help="Validate every row and report; write nothing.")
@click.option("--upsert-key", metavar="FIELD", help="Update the record whose FIELD matches (e.g. email); else create.")
@click.option("--map", "maps", multiple=True, metavar="HEADER=FIELD", help="Map a column to a field (repeatable).")
@click.option("--ignore", "ignores", multiple=True, metavar="HEADER", help="Leave a column out (repeatable).")
@click.option("--ignore-unmapped", is_flag=True, help="Leave out every column that matches no field (listed).")
@click.option("--mapping", "mapping_name", metavar="NAME", help="Use a saved mapping.")
@click.option("--save-mapping", metavar="NAME", help="Save the mapping used under NAME.")
@click.option("--errors", "errors_path", type=click.Path(dir_okay=False, path_type=Path),
              help="Where to write rejected rows (default: FILE.errors.csv next to FILE).")
@click.option("--blank", type=click.Choice(["keep", "clear"]), default="keep", show_default=True,
              help="On update, what a blank cell does to the stored value.")
@click.option("--as", "as_user", metavar="USERNAME", help="Import as this user (their permissions); default: system.")
@click.option("--sheet", help="XLSX: the sheet to read (default: the first).")
@click.option("--encoding", help="CSV: force an encoding instead of detecting it (utf-8, cp932 ...).")
@click.option("--batch-size", type=click.IntRange(1, 50_000), default=None, help="Rows per transaction.")
def import_cmd(project: Path, entity: str, file: Path, dry_run: bool, upsert_key: str | None,
               maps: tuple[str, ...], ignores: tuple[str, ...], ignore_unmapped: bool, mapping_name: str | None,
               save_mapping: str | None, errors_path: Path | None, blank: str, as_user: str | None,
               sheet: str | None, encoding: str | None, batch_size: int | None) -> None:
    """Import FILE (CSV or XLSX) into ENTITY records, validating every row."""
    from crmkit.cli import open_crm
    from crmkit.core.errors import CRMError
    from crmkit.dataio import ImportRefused, ReadError, import_file, journal, map_columns, open_table

    crm = open_crm(project)
    try:
        if entity not in crm.catalog:
            raise click.BadParameter(f"no entity {entity!r}", param_hint="ENTITY")
        actor = _actor(crm, as_user)
        mapping = _parse_map(maps)
        mapping.update(dict.fromkeys(ignores))
        if mapping_name:
            saved = journal.load_mapping(crm, entity, mapping_name)
            mapping = {**saved, **mapping}
        with open_table(file, sheet=sheet, encoding=encoding) as table:
            columns = map_columns(crm.catalog[entity], table.header, mapping)
            click.echo(
                f"Reading {file.name}: {table.format.upper()}"
                + (f", {table.encoding_label}" if table.encoding else "")
                + f", about {table.estimated_rows} rows",
                err=True,
            )
            if ignore_unmapped:
                for c in columns:
                    if c.problem:
                        mapping[c.header] = None
                columns = map_columns(crm.catalog[entity], table.header, mapping)
            for c in columns:
                if c.status == "mapped":
                    click.echo(f"  {c.header} -> {c.field}", err=True)
                else:
                    click.echo(f"  {c.header}: {c.status} ({c.reason})", err=True)
            total = table.estimated_rows
        errors_to = errors_path or file.with_name(file.stem + ".errors.csv")
        progress = _Progress("Validating" if dry_run else "Importing", total)
        try:
            result = import_file(
                crm, entity, file, actor=actor, mapping=mapping, upsert_key=upsert_key, dry_run=dry_run,
                blank=blank, errors_to=errors_to, source="import", sheet=sheet, encoding=encoding,
                batch_size=batch_size, on_progress=progress, lang=crm.config.locale or "en",
            )
        finally:
            progress.close()
        if save_mapping:
            journal.save_mapping(crm, entity, save_mapping, {c.header: c.field for c in result.columns
                                                           if c.status in ("mapped", "ignored")}, actor.id)
            click.echo(f"Saved the mapping as {save_mapping!r}.", err=True)
    except (ReadError, ImportRefused) as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(1)
    except CRMError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(1)
    finally:
        crm.close()
    verb = "Would import" if dry_run else "Imported"
    click.echo(
        f"{verb} {result.total} rows: {result.created} created, {result.updated} updated, "
        f"{result.unchanged} unchanged, {result.failed} rejected."
        + (" Dry run: nothing was written." if dry_run else "")
    )
    if result.failed:
        for e in result.errors[:10]:
            click.echo(f"  row {e.row}: {e.message}", err=True)
        if result.failed > 10:
            click.echo(f"  … and {result.failed - 10} more", err=True)
        click.echo(f"Rejected rows with the reasons: {result.error_path}", err=True)
    if result.import_id is not None:
        click.echo(f"Import #{result.import_id}; undo it with: crmkit imports undo {result.import_id}")
    sys.exit(2 if result.failed else 0)


@click.group("imports")
def imports_group() -> None:
    """List past imports and undo one."""


@imports_group.command("list")
@project_option
@click.argument("entity", required=False)
@click.option("--limit", default=20, show_default=True, type=click.IntRange(1, 1000))
def imports_list(project: Path, entity: str | None, limit: int) -> None:
    """Recent imports, newest first."""
    from crmkit.cli import open_crm
    from crmkit.dataio import journal

    crm = open_crm(project)
    try:
        rows = journal.recent(crm, entity=entity, limit=limit)
    finally:
        crm.close()
    if not rows:
        click.echo("No imports.")
    for r in rows:
        when = r["created_at"].strftime("%Y-%m-%d %H:%M") if r["created_at"] else ""
        click.echo(
            f"#{r['id']}  {when}  {r['entity']}  {r['filename']}  {r['status']}  "
            f"created {r['created']}, updated {r['updated']}, rejected {r['failed']}  by {r['actor_name']}"
        )


@imports_group.command("undo")
@project_option
@click.argument("import_id", type=int)
@click.option("--as", "as_user", metavar="USERNAME", help="Undo as this user (their permissions); default: system.")
def imports_undo(project: Path, import_id: int, as_user: str | None) -> None:
    """Delete the records import IMPORT_ID created and restore the values it changed."""
    from crmkit.cli import open_crm
    from crmkit.core.errors import CRMError
    from crmkit.dataio import journal

    crm = open_crm(project)
    try:
        actor = _actor(crm, as_user)
        info = journal.get(crm, import_id)
        progress = _Progress("Undoing", info["created"] + info["updated"])
        try:
            report = journal.undo_import(crm, import_id, actor, on_progress=progress)
        finally:
            progress.close()
    except CRMError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(1)
    finally:
        crm.close()
    click.echo(f"Import #{import_id} undone: {report.deleted} deleted, {report.restored} restored.")
    for problem in report.problems[:20]:
        click.echo(f"  not undone: {problem}", err=True)
    if report.problems:
        sys.exit(2)


@click.command("export")
@project_option
@click.argument("entity")
@click.option("--format", "fmt", type=click.Choice(["csv", "xlsx"]), default="csv", show_default=True)
@click.option("-o", "--output", type=click.Path(dir_okay=False, allow_dash=True),
              help="File to write ('-' for standard output); default ENTITY-YYYYmmdd-HHMM.FORMAT.")
@click.option("--columns", default="all", show_default=True,
              help="'all', 'list' (the list view's columns) or field names separated by commas.")
@click.option("--filter", "filter_json", metavar="JSON", help='A condition, e.g. \'{"status": "new"}\'.')
@click.option("-q", "--search", "q", help="Search text, as in the list's search box.")
@click.option("--sort", help="Sort, e.g. -created_at,last_name.")
@click.option("--view", help="A list view of the entity's YAML (list.views).")
@click.option("--lang", type=click.Choice(["en", "ja"]), help="Language of headers and labels (default: project).")
@click.option("--encoding", type=click.Choice(["utf-8-sig", "utf-8", "cp932"]), default="utf-8-sig",
              show_default=True, help="CSV encoding (utf-8-sig adds the BOM Excel needs).")
@click.option("--as", "as_user", metavar="USERNAME", help="Export as this user (their permissions and masks).")
def export_cmd(project: Path, entity: str, fmt: str, output: str | None, columns: str, filter_json: str | None,
               q: str | None, sort: str | None, view: str | None, lang: str | None, encoding: str,
               as_user: str | None) -> None:
    """Export ENTITY records (a list view: filter, search, columns) to CSV or XLSX."""
    from crmkit.cli import open_crm
    from crmkit.core.errors import CRMError
    from crmkit.dataio import export_file

    crm = open_crm(project)
    try:
        if entity not in crm.catalog:
            raise click.BadParameter(f"no entity {entity!r}", param_hint="ENTITY")
        actor = _actor(crm, as_user)
        flt = None
        if filter_json:
            try:
                flt = json.loads(filter_json)
            except json.JSONDecodeError as exc:
                raise click.BadParameter(f"not JSON: {exc}", param_hint="--filter") from None
        target: Any
        if output == "-":
            target = sys.stdout.buffer
        else:
            stamp = dt.datetime.now().strftime("%Y%m%d-%H%M")
            target = Path(output or f"{entity}-{stamp}.{fmt}")
        cols: Any = columns if columns in ("all", "list") else [c for c in columns.split(",") if c.strip()]
        n = export_file(crm, entity, target, actor=actor, format=fmt, columns=cols, filter=flt, q=q, sort=sort,
                        view=view, lang=lang, encoding=encoding)
    except CRMError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(1)
    finally:
        crm.close()
    if output != "-":
        click.echo(f"Exported {n} rows to {target}", err=True)
