"""Built-in plugin: business-card images on leads and contacts, and a data-entry task for someone.

- A "Business cards" panel on lead and contact pages shows the card images (thumbnails) and, for
  users who may edit the record, an upload form: one or more photos plus "who enters the data"
  (default: me). That person gets a task (an ``activity`` of type ``task``) linked to the record.
- Images are checked by content with Pillow (JPEG, PNG, WebP, GIF; size and pixel limits),
  re-encoded upright without their metadata (phone photos carry GPS positions) and stored under
  a configurable directory with a thumbnail::

      business_cards:
        storage_dir: cards        # relative to the project; default <upload_dir>/business_cards
        max_size_mb: 10
        thumbnail_px: 320

- ``/admin/business-cards/{id}/image`` and ``/thumb`` serve them only to users who may read the
  record; rows live in the plugin's own table ``business_card_image`` (``register_tables``).
- A converted lead's cards move to its new contact (``lead_converted``); a deleted record's
  cards are removed after the delete commits (``track_event``).
"""

from __future__ import annotations

import datetime as dt
import io
import logging
import secrets
from pathlib import Path
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa
from PIL import Image, ImageOps, UnidentifiedImageError
from starlette.datastructures import UploadFile
from starlette.responses import FileResponse, Response
from starlette.routing import Route

from crmkit.core.errors import CRMError, NotFound, ValidationError
from crmkit.hookspecs import hookimpl

if TYPE_CHECKING:
    from crmkit.app import CRM
    from crmkit.web.site import PageContext

log = logging.getLogger(__name__)

TABLE = "business_card_image"
ENTITIES = ("lead", "contact")
FORMATS = {"JPEG": "image/jpeg", "MPO": "image/jpeg", "PNG": "image/png", "WEBP": "image/webp", "GIF": "image/gif"}
MAX_PIXELS = 50_000_000  # a decompression bomb is refused before it is decoded
MAX_FILES = 10
DEFAULT_MAX_MB = 10
DEFAULT_THUMB = 320


# ---------------------------------------------------------------------------------------------
# Storage
# ---------------------------------------------------------------------------------------------
def settings(crm: CRM) -> dict[str, Any]:
    """The ``business_cards:`` section with its defaults filled in."""
    cfg = crm.config.section("business_cards")
    return {
        "max_bytes": int(float(cfg.get("max_size_mb", DEFAULT_MAX_MB)) * 1024 * 1024),
        "thumbnail_px": int(cfg.get("thumbnail_px", DEFAULT_THUMB)),
        "storage_dir": storage_dir(crm),
    }


def storage_dir(crm: CRM) -> Path:
    """Where card images are kept (``business_cards.storage_dir``, relative to the project)."""
    configured = crm.config.section("business_cards").get("storage_dir")
    base = crm.config.project_dir or Path.cwd()
    if configured:
        path = Path(configured)
        return path if path.is_absolute() else Path(base) / path
    uploads = crm.config.upload_dir or Path(base) / "uploads"
    return Path(uploads) / "business_cards"


def _resolve(crm: CRM, rel: str | None) -> Path | None:
    if not rel:
        return None
    root = storage_dir(crm).resolve()
    path = (root / rel).resolve()
    return path if root in path.parents and path.is_file() else None


def prepare_image(data: bytes, max_bytes: int, thumb_px: int) -> dict[str, Any]:
    """Check an uploaded image and produce its stored form and thumbnail.

    Returns ``{"image": bytes, "thumb": bytes, "suffix", "content_type", "width", "height"}``;
    raises ValueError with a message for the user (too big, not an image, unsupported format).
    """
    if len(data) > max_bytes:
        raise ValueError(f"is larger than {max_bytes / 1024 / 1024:.0f} MB")
    try:
        with Image.open(io.BytesIO(data)) as probe:
            fmt = probe.format
            if fmt not in FORMATS:
                raise ValueError(f"{fmt or 'this'} images are not supported; use JPEG, PNG or WebP")
            if probe.width * probe.height > MAX_PIXELS:
                raise ValueError("has too many pixels")
            probe.verify()
        with Image.open(io.BytesIO(data)) as img:
            img.load()
            upright = ImageOps.exif_transpose(img)
    except (UnidentifiedImageError, OSError, SyntaxError, Image.DecompressionBombError):
        raise ValueError("is not an image (JPEG, PNG or WebP)") from None
    keep_png = fmt in ("PNG", "GIF")
    if keep_png:
        main = upright.convert("RGBA" if "A" in upright.getbands() or upright.mode == "P" else "RGB")
    else:
        main = upright.convert("RGB")
    out = io.BytesIO()
    if keep_png:
        main.save(out, "PNG", optimize=True)  # saved without EXIF/text chunks
    else:
        main.save(out, "JPEG", quality=90, optimize=True)
    thumb = main.convert("RGB")
    thumb.thumbnail((thumb_px, thumb_px))
    tout = io.BytesIO()
    thumb.save(tout, "JPEG", quality=82, optimize=True)
    return {
        "image": out.getvalue(),
        "thumb": tout.getvalue(),
        "suffix": ".png" if keep_png else ".jpg",
        "content_type": "image/png" if keep_png else "image/jpeg",
        "width": main.width,
        "height": main.height,
    }


_CJK_FONTS = ("/usr/share/fonts/opentype/noto/NotoSansCJK-Regular.ttc",
              "/usr/share/fonts/truetype/noto/NotoSansCJK-Regular.ttc")


def demo_card(person: dict[str, Any]) -> bytes:
    """A PNG picture of a business card for ``person`` (a lead), for ``crmkit demo``.

    Drawn with a CJK font when the system has one, else Pillow's built-in font (Latin only).
    """
    from PIL import ImageDraw, ImageFont

    img = Image.new("RGB", (910, 550), (252, 252, 250))
    draw = ImageDraw.Draw(img)
    draw.rectangle((18, 18, 891, 531), outline=(40, 60, 120), width=3)
    draw.rectangle((18, 18, 891, 60), fill=(40, 60, 120))

    def font(size: int) -> Any:
        for path in _CJK_FONTS:
            if Path(path).exists():
                return ImageFont.truetype(path, size)
        return ImageFont.load_default(size)

    name = " ".join(str(person.get(k) or "") for k in ("last_name", "first_name")).strip()
    lines = [(str(person.get("company") or ""), 34, 110), (str(person.get("title") or ""), 26, 200),
             (name, 54, 245), (str(person.get("email") or ""), 24, 420), (str(person.get("phone") or ""), 24, 460)]
    for text, size, y in lines:
        if text:
            draw.text((70, y), text, fill=(20, 20, 30), font=font(size))
    out = io.BytesIO()
    img.save(out, "PNG")
    return out.getvalue()


def images_of(crm: CRM, entity: str, record_id: int) -> list[dict[str, Any]]:
    """The card images of a record, oldest first."""
    table = crm.system_tables[TABLE]
    with crm.engine.connect() as conn:
        rows = conn.execute(
            sa.select(table).where(table.c.entity == entity, table.c.record_id == record_id).order_by(table.c.id)
        ).mappings().all()
    return [dict(r) for r in rows]


def add_cards(
    crm: CRM, entity: str, record_id: int, files: list[tuple[str, bytes]], actor: Any, enter_by: int | None,
) -> dict[str, Any]:
    """Store card images on a record and give ``enter_by`` (default: the actor) a data-entry task.

    Returns ``{"images": [rows], "task": activity}``. Raises ValidationError (per file or for
    ``enter_by``), NotFound/PermissionDenied; on any failure no row, task or file remains.
    """
    from crmkit.web.auth import actor_for, load_user

    store = crm.records
    record = store.get(entity, record_id, actor=actor)
    if not store.can(actor, "update", entity, record):
        from crmkit.core.errors import PermissionDenied

        raise PermissionDenied(f"you may not add business cards to this {entity}")
    if not files:
        raise ValidationError([{"field": "image", "message": "choose at least one image"}])
    if len(files) > MAX_FILES:
        raise ValidationError([{"field": "image", "message": f"at most {MAX_FILES} images at a time"}])
    enter_by = enter_by or actor.id
    person = load_user(crm, user_id=enter_by) if enter_by else None
    if person is None or not person.active:
        raise ValidationError([{"field": "enter_by", "message": "choose an active user"}])
    if not store.can(actor_for(crm, person), "update", entity, record):
        raise ValidationError([{
            "field": "enter_by",
            "message": f"{person.display_name} may not edit this {crm.catalog[entity].text(person.locale).lower()}",
        }])
    cfg = settings(crm)
    prepared, errors = [], []
    for name, data in files:
        try:
            prepared.append((name, prepare_image(data, cfg["max_bytes"], cfg["thumbnail_px"])))
        except ValueError as exc:
            errors.append({"field": "image", "message": f"{name or 'image'}: {exc}"})
    if errors:
        raise ValidationError(errors)
    root: Path = cfg["storage_dir"]
    written: list[Path] = []
    table = crm.system_tables[TABLE]
    try:
        rows = []
        folder = f"{entity}/{dt.datetime.now(dt.UTC):%Y%m}"
        (root / folder).mkdir(parents=True, exist_ok=True)
        for name, img in prepared:
            stem = secrets.token_urlsafe(16)
            rel, thumb_rel = f"{folder}/{stem}{img['suffix']}", f"{folder}/{stem}.thumb.jpg"
            for path, blob in ((root / rel, img["image"]), (root / thumb_rel, img["thumb"])):
                path.write_bytes(blob)
                written.append(path)
            rows.append({
                "entity": entity, "record_id": record_id, "path": rel, "thumb_path": thumb_rel,
                "content_type": img["content_type"], "size": len(img["image"]), "width": img["width"],
                "height": img["height"], "original_name": (name or "")[:255], "uploaded_by": actor.id,
                "uploaded_at": dt.datetime.now(dt.UTC), "enter_by": person.id,
            })
        with store.transaction(actor=actor, source="ui") as tx:
            task = tx.create("activity", _task_values(crm, entity, record, person, len(rows), actor), actor=actor)
            ids = []
            for row in rows:
                row["task"] = task["id"]
                ids.append(tx.conn.execute(sa.insert(table).values(row).returning(table.c.id)).scalar_one())
    except BaseException:
        for path in written:  # the transaction is gone: so are its files
            path.unlink(missing_ok=True)
        raise
    for row, new_id in zip(rows, ids, strict=True):
        row["id"] = new_id
    return {"images": rows, "task": task}


def _task_values(crm: CRM, entity: str, record: dict[str, Any], person: Any, n: int, actor: Any) -> dict[str, Any]:
    ent = crm.catalog[entity]
    title = record.get(ent.title_field) or f"#{record['id']}"
    ja = person.locale == "ja"
    subject = f"名刺の情報を入力: {title}" if ja else f"Enter business card data: {title}"
    who = actor.display_name or actor.username
    if ja:
        description = (f"{who} が名刺画像を {n} 枚アップロードしました。"
                       f"画像を見て{ent.text('ja')}の項目を入力してください。")
    else:
        description = (f"{who} uploaded {n} business card image(s). "
                       f"Enter the {ent.text('en').lower()}'s details from the card.")
    values: dict[str, Any] = {
        "subject": subject[:255],
        "type": "task",
        "status": "planned",
        "priority": "normal",
        "assignee": person.id,
        "due_at": dt.datetime.now(dt.UTC) + dt.timedelta(days=1),
        "description": description,
        entity: record["id"],
    }
    if entity == "contact" and record.get("account"):
        values["account"] = record["account"]
    fields = crm.catalog["activity"].fields
    return {k: v for k, v in values.items() if k in fields}


def remove_card(crm: CRM, image_id: int, actor: Any) -> dict[str, Any]:
    """Delete one card image (needs update rights on its record); files go after the commit."""
    row = _row(crm, image_id)
    record = crm.records.get(row["entity"], row["record_id"], actor=actor)
    if not crm.records.can(actor, "update", row["entity"], record):
        from crmkit.core.errors import PermissionDenied

        raise PermissionDenied("you may not remove this business card")
    table = crm.system_tables[TABLE]
    with crm.records.transaction(actor=actor, source="ui") as tx:
        tx.conn.execute(sa.delete(table).where(table.c.id == image_id))
    _unlink(crm, [row])
    return row


def _row(crm: CRM, image_id: int) -> dict[str, Any]:
    table = crm.system_tables[TABLE]
    with crm.engine.connect() as conn:
        row = conn.execute(sa.select(table).where(table.c.id == image_id)).mappings().first()
    if row is None:
        raise NotFound("no such business card")
    return dict(row)


def _unlink(crm: CRM, rows: list[dict[str, Any]]) -> None:
    for row in rows:
        for rel in (row.get("path"), row.get("thumb_path")):
            path = _resolve(crm, rel)
            if path is not None:
                path.unlink(missing_ok=True)


# ---------------------------------------------------------------------------------------------
# Hooks
# ---------------------------------------------------------------------------------------------
@hookimpl
def register_tables(crm, metadata):
    """``business_card_image``: one row per stored card image."""
    return [
        sa.Table(
            TABLE,
            metadata,
            sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
            sa.Column("entity", sa.String(40), nullable=False),
            sa.Column("record_id", sa.Integer, nullable=False),
            sa.Column("path", sa.String(500), nullable=False),
            sa.Column("thumb_path", sa.String(500), nullable=False),
            sa.Column("content_type", sa.String(50), nullable=False),
            sa.Column("size", sa.Integer, nullable=False),
            sa.Column("width", sa.Integer),
            sa.Column("height", sa.Integer),
            sa.Column("original_name", sa.String(255)),
            sa.Column("uploaded_by", sa.Integer),
            sa.Column("uploaded_at", sa.DateTime(timezone=True), nullable=False),
            sa.Column("enter_by", sa.Integer),
            sa.Column("task", sa.Integer),
            sa.Index("ix_business_card_image_record", "entity", "record_id"),
        )
    ]


@hookimpl
def register_config_schemas(crm):
    """The ``business_cards:`` section of crmkit.yaml."""
    return {
        "business_cards": {
            "type": "object",
            "additionalProperties": False,
            "properties": {
                "storage_dir": {"type": "string", "minLength": 1},
                "max_size_mb": {"type": "number", "exclusiveMinimum": 0, "maximum": 100},
                "thumbnail_px": {"type": "integer", "minimum": 32, "maximum": 2000},
            },
        }
    }


@hookimpl
def lead_converted(crm, lead, account, contact, deal, tx, actor):
    """A converted lead's card images now belong to its contact."""
    table = crm.system_tables[TABLE]
    tx.conn.execute(
        sa.update(table).where(table.c.entity == "lead", table.c.record_id == lead["id"])
        .values(entity="contact", record_id=contact["id"])
    )


@hookimpl
def track_event(crm, event):
    """After a lead or contact is deleted (and committed), its card rows and files go too."""
    if event.name != "record.deleted" or event.entity not in ENTITIES or event.record_id is None:
        return
    table = crm.system_tables[TABLE]
    with crm.engine.begin() as conn:
        rows = [dict(r) for r in conn.execute(
            sa.select(table).where(table.c.entity == event.entity, table.c.record_id == event.record_id)
        ).mappings()]
        conn.execute(sa.delete(table).where(table.c.entity == event.entity, table.c.record_id == event.record_id))
    _unlink(crm, rows)


@hookimpl
def record_panels(crm, entity, record, actor, request):
    """The "Business cards" panel: thumbnails, and the upload form for users who may edit."""
    if entity.name not in ENTITIES or actor is None or "activity" not in crm.catalog:
        return None
    from crmkit.web.auth import csrf_token

    ctx = request.state.crmkit_ctx
    images = images_of(crm, entity.name, record["id"])
    can_edit = crm.records.can(actor, "update", entity.name, record) and crm.records.can(actor, "create", "activity")
    users = _users(ctx) if can_edit else []
    return [{
        "title": ctx._("cards_title"),
        "template": "workflows/cards_panel.html",
        "context": {
            "images": images,
            "entity": entity.name,
            "record_id": record["id"],
            "can_edit": can_edit,
            "users": users,
            "me": str(actor.id or ""),
            "csrf_token": csrf_token(request),
            "max_mb": settings(crm)["max_bytes"] // (1024 * 1024),
        },
    }]


def _users(ctx: PageContext) -> list[dict[str, str]]:
    ent = ctx.crm.catalog["user"]
    filt = {"active": True} if "active" in ent.fields else None
    page = ctx.store.list("user", actor=ctx.actor, filter=filt, sort=ent.title_field, limit=500, with_count=False,
                          columns=[ent.title_field])
    return [{"value": str(r["id"]), "label": str(r.get(ent.title_field) or f"#{r['id']}")} for r in page.items]


@hookimpl
def extra_css_urls(crm, template, request):
    """The workflow stylesheet on record pages (the panel's grid)."""
    from crmkit.web.site import admin_site

    return [admin_site(crm).static_url("workflows.css")] if template == "detail.html" else None


@hookimpl
def register_routes(crm):
    """Upload, serve and remove card images."""
    from crmkit.web.site import admin_page

    return [
        Route("/admin/{entity}/{id:int}/business-cards", admin_page(upload_page), methods=["POST"]),
        Route("/admin/business-cards/{image:int}/{kind}", admin_page(image_page), methods=["GET", "HEAD"]),
        Route("/admin/business-cards/{image:int}/delete", admin_page(delete_page), methods=["POST"]),
    ]


def upload_page(ctx: PageContext) -> Response:
    """POST /admin/{lead|contact}/{id}/business-cards (multipart: image…, enter_by)."""
    entity = ctx.params["entity"]
    if entity not in ENTITIES or entity not in ctx.crm.catalog:
        raise NotFound("no business cards here")
    record_id = int(ctx.params["id"])
    back = f"/admin/{entity}/{record_id}"
    files: list[tuple[str, bytes]] = []
    limit = settings(ctx.crm)["max_bytes"]
    for item in ctx.form.getlist("image"):
        if isinstance(item, UploadFile) and item.filename:
            files.append((item.filename, item.file.read(limit + 1)))
    raw_enter = str(ctx.form.get("enter_by") or "").strip()
    if raw_enter and not raw_enter.isdigit():
        return ctx.redirect(back, ctx._("cards_bad_user"), "error")
    try:
        out = add_cards(ctx.crm, entity, record_id, files, ctx.actor, int(raw_enter) if raw_enter else None)
    except ValidationError as exc:
        return ctx.redirect(back, "; ".join(e["message"] for e in exc.errors), "error")
    except CRMError as exc:
        if exc.status == 409:
            return ctx.redirect(back, str(exc), "error")
        raise
    task = out["task"]
    assignee = ctx.store.titles("user", [task.get("assignee")]).get(task.get("assignee"), "")
    return ctx.redirect(back, ctx._("cards_uploaded", n=len(out["images"]), name=assignee))


def image_page(ctx: PageContext) -> Response:
    """GET /admin/business-cards/{id}/image|thumb — only for users who may read the record."""
    kind = ctx.params["kind"]
    if kind not in ("image", "thumb"):
        raise NotFound("no such file")
    row = _row(ctx.crm, int(ctx.params["image"]))
    ctx.store.get(row["entity"], row["record_id"], actor=ctx.actor)  # NotFound unless readable
    path = _resolve(ctx.crm, row["path"] if kind == "image" else row["thumb_path"])
    if path is None:
        raise NotFound("the file is missing")
    media = row["content_type"] if kind == "image" else "image/jpeg"
    return FileResponse(path, media_type=media, headers={
        "cache-control": "private, max-age=300",
        "content-disposition": "inline",
        "x-content-type-options": "nosniff",
    })


def delete_page(ctx: PageContext) -> Response:
    """POST /admin/business-cards/{id}/delete."""
    row = remove_card(ctx.crm, int(ctx.params["image"]), ctx.actor)
    return ctx.redirect(f"/admin/{row['entity']}/{row['record_id']}", ctx._("cards_removed"))


@hookimpl
def register_ui_strings(crm):
    """English and Japanese words of the business-card panel."""
    return UI_STRINGS


UI_STRINGS = {
    "cards_title": ("Business cards", "名刺"),
    "cards_none": ("No business card images yet.", "名刺画像はまだありません。"),
    "cards_upload": ("Upload", "アップロード"),
    "cards_images": ("Card images (JPEG, PNG or WebP, up to {mb} MB each)",
                     "名刺画像（JPEG・PNG・WebP、1枚{mb}MBまで）"),
    "cards_enter_by": ("Who enters the data", "データ入力の担当者"),
    "cards_enter_by_help": ("They get a task to type in the card's details.",
                            "担当者に名刺情報の入力タスクが作成されます。"),
    "cards_me": ("Me", "自分"),
    "cards_uploaded": ("{n} card image(s) uploaded; {name} has a data-entry task.",
                       "名刺画像を{n}枚アップロードしました。{name} さんに入力タスクを作成しました。"),
    "cards_removed": ("Business card image removed.", "名刺画像を削除しました。"),
    "cards_remove": ("Remove", "削除"),
    "cards_open": ("Open full size", "原寸で開く"),
    "cards_bad_user": ("Choose a user from the list.", "一覧からユーザーを選んでください。"),
}
