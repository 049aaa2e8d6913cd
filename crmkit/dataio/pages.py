"""Admin pages of the import wizard: upload -> map columns -> preview -> run -> result -> undo.

An upload is stored under ``<upload_dir>/imports/`` and journaled as an import in state
``uploaded``; the mapping page keeps the chosen mapping on that journal row. Small files import
inside the request; bigger ones in a background thread while the result page refreshes itself
with the progress (the journal row's ``processed`` count). Every step checks on the server that
the actor may create or update the entity, and only the person who ran an import (or an admin)
sees, downloads or undoes it.
"""

from __future__ import annotations

import datetime as dt
import logging
import secrets
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from starlette.responses import FileResponse, Response, StreamingResponse

from crmkit.core.errors import BadRequest, CRMError, NotFound, PermissionDenied
from crmkit.dataio import journal
from crmkit.dataio.importer import ImportRefused
from crmkit.dataio.mapping import importable, map_columns
from crmkit.dataio.readers import ReadError, open_table

if TYPE_CHECKING:
    from crmkit.app import CRM
    from crmkit.core.actors import Actor
    from crmkit.core.catalog import Entity
    from crmkit.web.site import PageContext

log = logging.getLogger(__name__)

INLINE_ROWS = 1000  # files up to this many rows import within the request
PREVIEW_ROWS = 200
PREVIEW_SHOWN = 20
MAX_UPLOAD = 200 * 1024 * 1024
SAMPLE_VALUES = 3


def importable_entities(crm: CRM, actor: Actor) -> list[Entity]:
    """Entities the actor may create or update records of (what the import page offers)."""
    return list(_importable(crm, actor))


def can_import(crm: CRM, actor: Actor) -> bool:
    """Whether the actor may import into any entity (stops at the first: the menu asks on every page)."""
    return next(_importable(crm, actor), None) is not None


def _importable(crm: CRM, actor: Actor) -> Iterator[Entity]:
    store = crm.records
    return (
        e for e in crm.catalog
        if e.menu and e.name not in ("user", "saved_view")
        and (store.can(actor, "create", e.name) or store.can(actor, "update", e.name))
    )


def _root(ctx: PageContext) -> Path:
    from crmkit.web.forms import upload_root

    return upload_root(ctx) / "imports"


def _own_import(ctx: PageContext) -> dict[str, Any]:
    """The import in the URL, if the actor ran it (or is an admin); 404 otherwise."""
    if not journal.has_journal(ctx.crm):
        raise NotFound("imports are not available")
    info = journal.get(ctx.crm, int(ctx.params["import_id"]))
    if info["actor_id"] != ctx.actor.id and not ctx.actor.is_admin:
        raise NotFound(f"no import #{info['id']}")
    return info


def _require_import(ctx: PageContext, entity: str) -> None:
    if not (ctx.store.can(ctx.actor, "create", entity) or ctx.store.can(ctx.actor, "update", entity)):
        raise PermissionDenied(ctx._("forbidden_text"))


# ---------------------------------------------------------------------------------------------
# Upload
# ---------------------------------------------------------------------------------------------
def upload_page(ctx: PageContext) -> Response:
    """GET/POST /admin/data/import — choose the entity and the file."""
    entities = importable_entities(ctx.crm, ctx.actor)
    if not entities:
        raise PermissionDenied(ctx._("forbidden_text"))
    chosen = ctx.query.get("entity") or (ctx.form.get("entity") if ctx.form is not None else None) or ""
    if ctx.request.method == "GET":
        return _upload_form(ctx, entities, str(chosen), None)
    entity = str(chosen)
    if entity not in {e.name for e in entities}:
        return _upload_form(ctx, entities, entity, ctx._("forbidden_text"), status=403)
    upload = ctx.form.get("file")
    if upload is None or isinstance(upload, str) or not getattr(upload, "filename", ""):
        return _upload_form(ctx, entities, entity, ctx._("dataio_no_file"), status=422)
    root = _root(ctx)
    root.mkdir(parents=True, exist_ok=True)
    name = Path(upload.filename).name[:200]
    suffix = ".xlsx" if name.lower().endswith((".xlsx", ".xlsm")) else ".csv"
    path = root / f"{secrets.token_urlsafe(12)}{suffix}"
    size = 0
    with path.open("wb") as out:
        while chunk := upload.file.read(1 << 20):
            size += len(chunk)
            if size > MAX_UPLOAD:
                out.close()
                path.unlink(missing_ok=True)
                return _upload_form(ctx, entities, entity, ctx._("upload_too_large", mb=MAX_UPLOAD // 2**20), 413)
            out.write(chunk)
    try:
        with open_table(path, filename=name) as table:
            fmt, encoding, total = table.format, table.encoding, table.estimated_rows
    except ReadError as exc:
        path.unlink(missing_ok=True)
        return _upload_form(ctx, entities, entity, str(exc), status=422)
    import_id = journal.start(
        ctx.crm, entity=entity, filename=name, actor=ctx.actor, source="import", status="uploaded",
        file_path=str(path), fmt=fmt, encoding=encoding, total=total,
    )
    return ctx.redirect(f"/admin/data/imports/{import_id}")


def _upload_form(ctx: PageContext, entities: list[Entity], chosen: str, error: str | None,
                 status: int = 200) -> Response:
    return ctx.render(
        "data/upload.html", status=status, title=ctx._("dataio_import"), entities=entities, chosen=chosen,
        error=error,
    )


# ---------------------------------------------------------------------------------------------
# One import: mapping, preview, run, progress, result
# ---------------------------------------------------------------------------------------------
def import_page(ctx: PageContext) -> Response:
    """GET/POST /admin/data/imports/{id} — the mapping step, the progress or the result."""
    info = _own_import(ctx)
    entity = ctx.entity(info["entity"])
    if info["status"] == "uploaded":
        _require_import(ctx, entity.name)
        if ctx.request.method == "POST":
            return _mapping_post(ctx, info, entity)
        return _mapping_form(ctx, info, entity, dict(info["mapping"] or {}), dict(info["options"] or {}))
    if ctx.request.method == "POST":
        raise BadRequest("this import has already run")
    return _result(ctx, info, entity)


def _read_head(info: dict[str, Any]) -> tuple[list[str], list[list[Any]]]:
    with open_table(info["file_path"], filename=info["filename"]) as table:
        samples = []
        for _number, cells in table.rows():
            samples.append(cells)
            if len(samples) >= SAMPLE_VALUES:
                break
        return table.header, samples


def _choices(ctx: PageContext, entity: Entity) -> list[tuple[str, str]]:
    access = ctx.store.field_access(ctx.actor, entity.name)
    out = []
    for f in entity.fields.values():
        writable = importable(entity, f) and access.get(f.name, "write") in ("write", "write-only")
        if f.name == "id" or writable:  # id is not written: it picks the record a row updates
            out.append((f.name, f"{f.text(ctx.lang)} ({f.name})"))
    return out


def _mapping_form(ctx: PageContext, info: dict[str, Any], entity: Entity, given: dict[str, Any],
                  options: dict[str, Any], *, preview: Any = None, error: str | None = None,
                  status: int = 200) -> Response:
    try:
        header, samples = _read_head(info)
    except (ReadError, OSError) as exc:
        raise BadRequest(str(exc)) from None
    columns = map_columns(entity, header, given)
    rows = []
    for c in columns:
        rows.append({
            "column": c,
            "samples": [str(s[c.index]) for s in samples if c.index < len(s) and s[c.index] not in (None, "")],
        })
    keys = [("id", "ID")] + [
        (f.name, f.text(ctx.lang)) for f in entity.visible_fields
        if importable(entity, f) and f.type in ("string", "email", "phone", "url", "integer", "reference")
        and (f.unique or f.spec.get("index") or f.type in ("email", "phone"))
    ]
    saved = journal.mappings(ctx.crm, entity.name)
    return ctx.render(
        "data/import.html", status=status, title=ctx._("dataio_import_entity", entity=entity.text(ctx.lang)),
        info=info, entity=entity, step="map", rows=rows, encoding_label=_encoding_label(info),
        choices=_choices(ctx, entity), keys=keys,
        options=options, saved=saved, preview=preview, error=error,
        blocked=any(c.problem for c in columns),
    )


def _mapping_post(ctx: PageContext, info: dict[str, Any], entity: Entity) -> Response:
    form = ctx.form
    action = str(form.get("action") or "preview")
    header, _samples = _read_head(info)
    allowed = {name for name, _label in _choices(ctx, entity)}
    given: dict[str, Any] = {}
    for i, h in enumerate(header):
        value = form.get(f"col{i}")
        if value is None:
            continue
        value = str(value)
        if value == "-":
            given[h] = None
        elif value in allowed:
            given[h] = value
        elif value:
            raise BadRequest(f"cannot import into {value!r}")
    key = str(form.get("upsert_key") or "") or None
    if key is not None and key not in allowed:
        raise BadRequest(f"{key!r} cannot be a key")
    options = {"upsert_key": key, "blank": "clear" if form.get("blank") == "clear" else "keep"}
    if action == "load_mapping":
        name = str(form.get("saved") or "")
        try:
            given = journal.load_mapping(ctx.crm, entity.name, name)
        except NotFound as exc:
            return _mapping_form(ctx, info, entity, given, options, error=str(exc), status=404)
        journal.update(ctx.crm, info["id"], mapping=given, options=options)
        return _mapping_form(ctx, info, entity, given, options)
    journal.update(ctx.crm, info["id"], mapping=given, options=options)
    info = {**info, "mapping": given, "options": options}
    save_as = str(form.get("save_as") or "").strip()
    if save_as:
        columns = map_columns(entity, header, given)
        journal.save_mapping(ctx.crm, entity.name, save_as,
                             {c.header: c.field for c in columns if c.status in ("mapped", "ignored")}, ctx.actor.id)
        ctx.flash(ctx._("dataio_mapping_saved", name=save_as))
    if action == "run":
        return _run(ctx, info, entity, given, options)
    try:
        preview = _preview(ctx, info, entity, given, options)
    except (ImportRefused, ReadError) as exc:
        return _mapping_form(ctx, info, entity, given, options, error=str(exc), status=422)
    return _mapping_form(ctx, info, entity, given, options, preview=preview)


def _preview(ctx: PageContext, info: dict[str, Any], entity: Entity, given: dict[str, Any],
             options: dict[str, Any]) -> dict[str, Any]:
    """A dry run of the first PREVIEW_ROWS rows: what would be created, updated, rejected."""
    from crmkit.dataio import import_file
    from crmkit.web.forms import translate_message

    result = import_file(
        ctx.crm, entity.name, info["file_path"], actor=ctx.actor, mapping=given, dry_run=True,
        upsert_key=options.get("upsert_key"), blank=options.get("blank", "keep"), tz=ctx.tz, lang=ctx.lang,
        filename=info["filename"], limit=PREVIEW_ROWS, sample=PREVIEW_SHOWN,
    )
    failed_rows = {e.row: e for e in result.errors}
    shown = []
    fields = [c.field for c in result.columns if c.field]
    for s in result.sample:
        error = failed_rows.get(s["row"])
        shown.append({
            "row": s["row"],
            "update": s["update"],
            "values": [_shown(s["values"].get(f)) for f in fields],
            "problems": [f"{c}: {translate_message(m, ctx.lang)}" if c else translate_message(m, ctx.lang)
                         for c, m in (error.problems if error else [])],
        })
    return {
        "n": result.total, "create": result.created, "update": result.updated + result.unchanged,
        "failed": result.failed, "rows": shown,
        "fields": [entity.fields[f].text(ctx.lang) for f in fields],
    }


def _shown(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, list):
        return "; ".join(str(v) for v in value)
    if isinstance(value, dt.datetime):
        return value.isoformat(sep=" ", timespec="minutes")
    return str(value)


def _run(ctx: PageContext, info: dict[str, Any], entity: Entity, given: dict[str, Any],
         options: dict[str, Any]) -> Response:
    from crmkit.dataio import import_file

    crm, actor = ctx.crm, ctx.actor
    path = Path(info["file_path"])
    kwargs = dict(
        actor=actor, mapping=given, upsert_key=options.get("upsert_key"), blank=options.get("blank", "keep"),
        tz=ctx.tz, lang=ctx.lang, filename=info["filename"], import_id=info["id"],
        errors_to=path.with_name(path.stem + ".errors.csv"),
    )
    try:  # refuse unmapped columns here, with the form, before anything runs
        with open_table(path, filename=info["filename"]) as table:
            from crmkit.dataio.importer import Importer, ImportOptions

            Importer(crm, actor, ImportOptions(entity.name, given or None, options.get("upsert_key"))).plan(
                table.header
            )
    except (ImportRefused, ReadError) as exc:
        return _mapping_form(ctx, info, entity, given, options, error=str(exc), status=422)
    journal.update(crm, info["id"], status="running", processed=0)

    def work() -> None:
        try:
            import_file(crm, entity.name, path, **kwargs)
        except Exception as exc:  # the journal row says what stopped it; the page shows it
            log.exception("import #%s failed", info["id"])
            journal.update(crm, info["id"], status="failed", message=str(exc)[:2000],
                           finished_at=dt.datetime.now(dt.UTC))

    if (info["total"] or 0) <= INLINE_ROWS:
        work()
    else:
        threading.Thread(target=work, name=f"crmkit-import-{info['id']}", daemon=True).start()
    return ctx.redirect(f"/admin/data/imports/{info['id']}")


def _encoding_label(info: dict[str, Any]) -> str:
    from crmkit.dataio.readers import ENCODING_LABELS

    return ENCODING_LABELS.get(info.get("encoding") or "", info.get("encoding") or "-")


def _result(ctx: PageContext, info: dict[str, Any], entity: Entity) -> Response:
    errors: list[dict[str, Any]] = []
    error_path = info.get("error_path")
    if error_path and Path(error_path).is_file():
        import csv
        import itertools

        with Path(error_path).open(encoding="utf-8-sig", newline="") as fh:
            reader = csv.reader(fh)
            next(reader, None)
            for cells in itertools.islice(reader, 50):
                errors.append({"row": cells[-3], "column": cells[-2], "message": cells[-1]})
    running = info["status"] in ("running", "undoing")
    return ctx.render(
        "data/import.html", title=ctx._("dataio_import_entity", entity=entity.text(ctx.lang)), info=info,
        entity=entity, step="result", errors=errors, running=running, encoding_label=_encoding_label(info),
        can_undo=info["status"] == "done" and (info["created"] or info["updated"]),
        undo=info.get("undo_report"),
    )


# ---------------------------------------------------------------------------------------------
# History, error file, undo, XLSX export
# ---------------------------------------------------------------------------------------------
def history_page(ctx: PageContext) -> Response:
    """GET /admin/data/imports/ — the actor's imports (an admin sees everyone's)."""
    if not importable_entities(ctx.crm, ctx.actor):
        raise PermissionDenied(ctx._("forbidden_text"))
    rows = journal.recent(ctx.crm, actor_id=None if ctx.actor.is_admin else ctx.actor.id, limit=100)
    for r in rows:
        ent = ctx.crm.catalog[r["entity"]] if r["entity"] in ctx.crm.catalog else None
        r["entity_label"] = ent.text(ctx.lang, plural=True) if ent else r["entity"]
    return ctx.render("data/history.html", title=ctx._("dataio_imports"), imports=rows)


def errors_page(ctx: PageContext) -> Response:
    """GET /admin/data/imports/{id}/errors.csv — the rejected rows with their reasons."""
    info = _own_import(ctx)
    path = info.get("error_path")
    if not path or not Path(path).is_file():
        raise NotFound("this import has no rejected rows")
    stem = Path(info["filename"]).stem or "import"
    return FileResponse(
        path, media_type="text/csv; charset=utf-8", filename=f"{stem}-errors.csv",
        headers={"cache-control": "no-store"},
    )


def undo_page(ctx: PageContext) -> Response:
    """POST /admin/data/imports/{id}/undo — delete what the import created, restore what it changed."""
    info = _own_import(ctx)
    crm, actor = ctx.crm, ctx.actor
    _require_import(ctx, info["entity"])
    if info["status"] != "done":
        raise BadRequest("only a finished import can be undone")
    if ctx.form.get("confirm") != "1":  # a destructive step: ask first (works without JavaScript)
        entity = ctx.entity(info["entity"])
        return ctx.render("data/confirm_undo.html", title=ctx._("dataio_undo"), info=info, entity=entity)

    def work() -> None:
        try:
            journal.undo_import(crm, info["id"], actor)
        except CRMError as exc:
            journal.update(crm, info["id"], status="done", message=str(exc)[:2000])
        except Exception as exc:
            log.exception("undoing import #%s failed", info["id"])
            journal.update(crm, info["id"], status="done", message=str(exc)[:2000])

    if (info["created"] or 0) + (info["updated"] or 0) <= INLINE_ROWS:
        work()
        after = journal.get(crm, info["id"])
        report = after.get("undo_report") or {}
        if after["status"] == "undone":
            return ctx.redirect(
                f"/admin/data/imports/{info['id']}",
                ctx._("dataio_undone", deleted=report.get("deleted", 0), restored=report.get("restored", 0)),
            )
        return ctx.redirect(f"/admin/data/imports/{info['id']}", after.get("message") or "", "error")
    journal.update(crm, info["id"], status="undoing")
    threading.Thread(target=work, name=f"crmkit-undo-{info['id']}", daemon=True).start()
    return ctx.redirect(f"/admin/data/imports/{info['id']}")


def export_xlsx_page(ctx: PageContext) -> Response:
    """GET /admin/{entity}/export.xlsx — the list (search, filters, sort) as an Excel workbook."""
    from crmkit.dataio.exporter import build_exporter
    from crmkit.dataio.writers import xlsx_chunks
    from crmkit.web.listing import parse_state

    entity = ctx.entity()
    ctx.require("export", entity.name)
    state = parse_state(ctx, entity)
    exporter = build_exporter(
        ctx.crm, entity.name, ctx.actor, columns=ctx.query.get("columns") or None, filter=state.condition,
        q=state.q or None, sort=state.sort or None, lang=ctx.lang, tz=ctx.tz, typed=True,
    )
    first = exporter.first_page()
    stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%d-%H%M")
    return StreamingResponse(
        xlsx_chunks(exporter.header(), exporter.rows(first), title=entity.text(ctx.lang, plural=True)),
        media_type="application/vnd.openxmlformats-officedocument.spreadsheetml.sheet",
        headers={
            "content-disposition": f'attachment; filename="{entity.name}-{stamp}.xlsx"',
            "cache-control": "no-store",
        },
    )
