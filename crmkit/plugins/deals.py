"""Built-in plugin: the deal workflow — stage probabilities, won/lost closing and line items.

Rules, all applied inside the write transaction through the public record hooks, so the admin,
the API, imports and the kanban board behave the same:

- **Probability**: when a deal enters a stage, its probability becomes the stage's default,
  unless the same save also changed the probability (a per-deal override).
- **Closing**: ``status`` won/lost and the closed stages of ``deal_stage`` (``is_closed``,
  ``is_won``) are kept in step: moving a card to a won stage wins the deal (close date today),
  winning moves it to the won stage. A lost deal needs a reason. Closed deals leave the default
  list view and the forecast; closing a closed deal is refused.
- **Line items** (``deal_line_item``): the unit price defaults to the product's list price; the
  deal's amount is the total of its lines, updated in the same transaction whenever a line is
  added, changed or deleted. Lines follow their deal's permissions (read the deal to read its
  lines, update the deal to change them) and are frozen while the deal is closed.

Record actions ``POST /api/v1/deal/{id}/close`` (``{"outcome": "won"|"lost", "reason", "close_date"}``),
``…/win``, ``…/lose`` and ``…/reopen``; admin buttons and pages for the same.
"""

from __future__ import annotations

import datetime as dt
import decimal
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa
from markupsafe import Markup
from starlette.responses import Response
from starlette.routing import Route

from crmkit.core.actors import Actor
from crmkit.core.errors import CRMError, ValidationError
from crmkit.hookspecs import hookimpl
from crmkit.plugins import per_record

if TYPE_CHECKING:
    from crmkit.app import CRM
    from crmkit.web.site import PageContext

DEAL, LINE, STAGE = "deal", "deal_line_item", "deal_stage"
OPEN, WON, LOST = "open", "won", "lost"
CLOSED = (WON, LOST)
CENT = decimal.Decimal("0.01")
REASON_MAX = 2000

UI_STRINGS = {
    "deals_win": ("Won", "受注"),
    "deals_lose": ("Lost", "失注"),
    "deals_reopen": ("Reopen", "再開"),
    "deals_close_won_title": ("Close as won: {name}", "受注として完了: {name}"),
    "deals_close_lost_title": ("Close as lost: {name}", "失注として完了: {name}"),
    "deals_close_date": ("Close date", "完了日"),
    "deals_win_reason": ("Why did we win? (optional)", "受注理由（任意）"),
    "deals_lost_reason": ("Why was it lost?", "失注理由"),
    "deals_confirm_won": ("Mark as won", "受注にする"),
    "deals_confirm_lost": ("Mark as lost", "失注にする"),
    "deals_closed_won": ("{name} is won.", "{name} を受注にしました。"),
    "deals_closed_lost": ("{name} is lost.", "{name} を失注にしました。"),
    "deals_reopened": ("{name} is open again.", "{name} を再開しました。"),
    "deals_line_items": ("Line items", "明細"),
    "deals_add_line": ("Add a line", "明細を追加"),
    "deals_no_lines": (
        "No line items yet: the amount is entered by hand.", "明細はまだありません（金額は手入力です）。"
    ),
    "deals_total": ("Total", "合計"),
    "deals_product": ("Product", "商品"),
    "deals_quantity": ("Qty", "数量"),
    "deals_unit_price": ("Unit price", "単価"),
    "deals_discount": ("Discount", "値引"),
    "deals_line_total": ("Line total", "明細金額"),
}


# ---------------------------------------------------------------------------------------------
# Reading helpers (on the transaction's connection)
# ---------------------------------------------------------------------------------------------
def _row(crm: CRM, conn: sa.Connection, entity: str, id: Any) -> dict[str, Any] | None:
    if id is None:
        return None
    t = crm.table(entity)
    row = conn.execute(sa.select(t).where(t.c.id == int(id))).mappings().first()
    return dict(row) if row else None


def closing_stage(crm: CRM, conn: sa.Connection, won: bool) -> dict[str, Any] | None:
    """The first closed stage (by sort order) for a won or a lost deal, or None if there is none."""
    t = crm.table(STAGE)
    row = conn.execute(
        sa.select(t).where(t.c.is_closed.is_(True), t.c.is_won.is_(won)).order_by(t.c.sort_order, t.c.id).limit(1)
    ).mappings().first()
    return dict(row) if row else None


def first_open_stage(crm: CRM, conn: sa.Connection, *, last: bool = False) -> dict[str, Any] | None:
    """The first (or last) stage that is not closed."""
    t = crm.table(STAGE)
    order = [t.c.sort_order.desc(), t.c.id.desc()] if last else [t.c.sort_order, t.c.id]
    row = conn.execute(
        sa.select(t).where(sa.or_(t.c.is_closed.is_(False), t.c.is_closed.is_(None))).order_by(*order).limit(1)
    ).mappings().first()
    return dict(row) if row else None


def line_totals(crm: CRM, conn: sa.Connection, deal_id: int) -> tuple[int, decimal.Decimal]:
    """``(number of lines, total of their line_total)`` for a deal, in one query."""
    t = crm.table(LINE)
    n, total = conn.execute(
        sa.select(sa.func.count(), sa.func.coalesce(sa.func.sum(t.c.line_total), 0)).where(t.c.deal == deal_id)
    ).one()
    return int(n), decimal.Decimal(str(total)).quantize(CENT)


def actor_today(crm: CRM, actor: Actor) -> dt.date:
    """Today in the actor's time zone (their user setting, else the project's)."""
    from crmkit.web.templating import zone

    name = None
    if actor.id is not None and "user" in crm.catalog and "time_zone" in crm.catalog["user"].fields:
        t = crm.table("user")
        with crm.engine.connect() as conn:
            name = conn.execute(sa.select(t.c.time_zone).where(t.c.id == actor.id)).scalar()
    return dt.datetime.now(zone(name, crm.config.time_zone)).date()


def _changed(record: Mapping[str, Any], old: Mapping[str, Any] | None, name: str) -> bool:
    return old is None or record.get(name) != old.get(name)


# ---------------------------------------------------------------------------------------------
# Deal rules
# ---------------------------------------------------------------------------------------------
def _deal_rules(
    crm: CRM, conn: sa.Connection, record: dict[str, Any], old: dict[str, Any] | None, actor: Actor
) -> tuple[dict[str, Any], list[dict[str, str]]]:
    """What a deal save implies (changes to apply) and what it may not do (errors)."""
    changes: dict[str, Any] = {}
    errors: list[dict[str, str]] = []
    stage = _row(crm, conn, STAGE, record.get("stage"))
    stage_changed = _changed(record, old, "stage")
    status = record.get("status") or OPEN
    status_changed = old is not None and status != (old.get("status") or OPEN)
    prob_overridden = record.get("probability") is not None and (
        old is None or record.get("probability") != old.get("probability")
    )
    if stage is not None and stage_changed and stage.get("is_closed"):
        implied = WON if stage.get("is_won") else LOST
        if status_changed and status != implied:
            errors.append({"field": "status", "message": f"does not match the stage {stage['name']!r} ({implied})"})
        status = implied
    elif status in CLOSED and (status_changed or old is None) and (stage is None or not stage.get("is_closed")):
        target = closing_stage(crm, conn, won=status == WON)
        if target is not None:
            stage = target
            changes["stage"] = target["id"]
    elif status == OPEN and stage is not None and stage.get("is_closed"):
        errors.append({"field": "stage", "message": "an open deal needs an open stage; pick one to reopen it"})
    if status != (record.get("status") or OPEN):
        changes["status"] = status
    if status in CLOSED:
        closing_now = old is None or (old.get("status") or OPEN) not in CLOSED
        if status == LOST and not (record.get("lost_reason") or "").strip():
            errors.append({"field": "lost_reason", "message": "is required to close a deal as lost"})
        if record.get("close_date") is None:
            changes["close_date"] = actor_today(crm, actor)
        if closing_now or _changed(record, old, "status"):
            changes["probability"] = decimal.Decimal(100 if status == WON else 0)
    elif stage is not None and (stage_changed or "stage" in changes) and not prob_overridden:
        changes["probability"] = stage.get("probability")
    elif status_changed and status == OPEN and not prob_overridden and stage is not None:
        changes["probability"] = stage.get("probability")  # reopened: back to the stage's default
    if old is not None and "amount" in crm.catalog[DEAL].fields:
        n, total = line_totals(crm, conn, old["id"])
        if n:
            amount = record.get("amount")
            if _changed(record, old, "amount") and amount is not None and decimal.Decimal(amount) != total:
                errors.append({
                    "field": "amount",
                    "message": f"is the total of the {n} line item(s) ({total}); change the line items instead",
                })
            changes["amount"] = total
    return changes, errors


def _line_rules(
    crm: CRM, conn: sa.Connection, record: dict[str, Any], old: dict[str, Any] | None, actor: Actor
) -> list[dict[str, str]]:
    """A line may only change on an open deal the actor may update, with an active product."""
    errors: list[dict[str, str]] = []
    deals = {record.get("deal")} | ({old.get("deal")} if old else set())
    for deal_id in deals - {None}:
        deal = _row(crm, conn, DEAL, deal_id)
        if deal is None:
            continue  # the core reports the missing reference
        if not actor.system and not _may_update_deal(crm, conn, deal, actor):
            errors.append({"field": "deal", "message": "you may not change this deal's line items"})
        elif (deal.get("status") or OPEN) in CLOSED:
            errors.append({"field": "deal",
                           "message": f"the deal is {deal['status']}; reopen it to change its line items"})
    if _changed(record, old, "product"):
        product = _row(crm, conn, "product", record.get("product"))
        if product is not None and product.get("active") is False:
            errors.append({"field": "product", "message": "this product is inactive and cannot be added to deals"})
    return errors


def _may_update_deal(crm: CRM, conn: sa.Connection, deal: dict[str, Any], actor: Actor) -> bool:
    from crmkit.core import conditions

    store = crm.records
    if not store.can(actor, "update", DEAL, deal):
        return False
    ent = crm.catalog[DEAL]
    def fetch(entity: str, id: Any) -> dict[str, Any] | None:
        return _row(crm, conn, entity, id)

    return all(
        conditions.evaluate(c, deal, DEAL, crm.catalog, fetch=fetch, params=actor.params())
        for c in store.restrictions(actor, ent)
    )


def _sync_amount(crm: CRM, conn: sa.Connection, deal_id: Any, actor: Actor) -> None:
    """Write the deal's amount as the total of its lines, through RecordStore in this transaction."""
    deal = _row(crm, conn, DEAL, deal_id)
    if deal is None:
        return  # deleted with its lines (cascade)
    _n, total = line_totals(crm, conn, int(deal_id))
    if deal.get("amount") is None or decimal.Decimal(deal["amount"]) != total:
        crm.records.tx_for(conn).update(DEAL, int(deal_id), {"amount": total}, actor=actor)


def _prefixed(cond: Any, prefix: str) -> Any:
    """A condition on the deal rewritten for its line items (``owner`` -> ``deal.owner``)."""
    if isinstance(cond, list | tuple):
        return [_prefixed(c, prefix) for c in cond]
    if not isinstance(cond, Mapping):
        return cond
    out = {}
    for key, value in cond.items():
        if key in ("all", "any"):
            out[key] = _prefixed(value, prefix)
        elif key == "not":
            out[key] = _prefixed(value, prefix)
        else:
            out[f"{prefix}.{key}"] = value
    return out


# ---------------------------------------------------------------------------------------------
# Public operations (actions, admin pages, demo and tests use them)
# ---------------------------------------------------------------------------------------------
def parse_close_payload(payload: Mapping[str, Any], outcome: str | None = None) -> dict[str, Any]:
    """Check a close request; returns ``{"outcome", "reason", "close_date"}`` or raises ValidationError."""
    errors = []
    outcome = outcome or payload.get("outcome")
    if outcome not in CLOSED:
        errors.append({"field": "outcome", "message": "must be \"won\" or \"lost\""})
    reason = payload.get("reason")
    if reason is not None and not isinstance(reason, str):
        errors.append({"field": "reason", "message": "must be text"})
        reason = None
    reason = (reason or "").strip() or None
    if outcome == LOST and not reason:
        errors.append({"field": "reason", "message": "is required when a deal is lost"})
    if reason and len(reason) > REASON_MAX:
        errors.append({"field": "reason", "message": f"must be at most {REASON_MAX} characters"})
    close_date = payload.get("close_date")
    if close_date in (None, ""):
        close_date = None
    else:
        try:
            close_date = dt.date.fromisoformat(str(close_date))
        except ValueError:
            errors.append({"field": "close_date", "message": "must be a date (YYYY-MM-DD)"})
    version = payload.get("version")
    if version is not None and (isinstance(version, bool) or not str(version).isdigit()):
        errors.append({"field": "version", "message": "must be a whole number (the deal's version)"})
    if errors:
        raise ValidationError(errors)
    return {"outcome": outcome, "reason": reason, "close_date": close_date,
            "version": int(version) if version is not None else None}


def close_deal(
    crm: CRM, deal_id: int, *, outcome: str, actor: Actor, reason: str | None = None,
    close_date: dt.date | None = None, version: int | None = None, source: str = "api",
) -> dict[str, Any]:
    """Close a deal as won or lost (one transaction); a closed deal is refused with a message."""
    args = parse_close_payload({"reason": reason, "close_date": close_date and str(close_date),
                                "version": version}, outcome)
    with crm.records.transaction(actor=actor, source=source) as tx:
        deal = tx.get(DEAL, deal_id)
        status = deal.get("status") or OPEN
        if status in CLOSED:
            raise ValidationError([{"field": "status", "message": f"this deal is already {status}; reopen it first"}])
        values: dict[str, Any] = {
            "status": args["outcome"],
            "close_date": args["close_date"] or actor_today(crm, actor),
        }
        reason_field = "lost_reason" if args["outcome"] == LOST else "won_reason"
        if reason_field in crm.catalog[DEAL].fields:
            values[reason_field] = args["reason"]
        try:
            return tx.update(DEAL, deal_id, values, version=args["version"])
        except ValidationError as exc:  # name the request's fields, not the columns behind them
            raise ValidationError([
                {**e, "field": "reason" if e.get("field") == reason_field else e.get("field", "")} for e in exc.errors
            ]) from None


def reopen_deal(
    crm: CRM, deal_id: int, *, actor: Actor, stage: int | None = None, version: int | None = None,
    source: str = "api",
) -> dict[str, Any]:
    """Reopen a won or lost deal, in ``stage`` (default: the last open stage)."""
    with crm.records.transaction(actor=actor, source=source) as tx:
        deal = tx.get(DEAL, deal_id)
        if (deal.get("status") or OPEN) not in CLOSED:
            raise ValidationError([{"field": "status", "message": "this deal is already open"}])
        if stage is None:
            current = _row(crm, tx.conn, STAGE, deal.get("stage"))
            if current is not None and not current.get("is_closed"):
                stage = current["id"]
            else:
                target = first_open_stage(crm, tx.conn, last=True)
                if target is None:
                    raise ValidationError([{"field": "stage", "message": "there is no open stage to reopen into"}])
                stage = target["id"]
        return tx.update(DEAL, deal_id, {"status": OPEN, "stage": stage}, version=version)


# ---------------------------------------------------------------------------------------------
# Record hooks
# ---------------------------------------------------------------------------------------------
@hookimpl
def register_ui_strings(crm):
    """The deal workflow's words in English and Japanese."""
    return UI_STRINGS


@hookimpl
def validate_record(crm, entity, record, old, conn, actor):
    """Refuse saves that break the deal rules (see the module docstring) or the master data's."""
    if entity.name == DEAL and DEAL in crm.catalog and STAGE in crm.catalog:
        return _deal_rules(crm, conn, record, old, actor)[1] or None
    if entity.name == LINE and LINE in crm.catalog:
        return _line_rules(crm, conn, record, old, actor) or None
    if entity.name == STAGE and record.get("is_won") and not record.get("is_closed"):
        return {"is_won": "a won stage must also be a closed stage"}
    if entity.name == "marketing_activity":
        start, end = record.get("start_date"), record.get("end_date")
        if start is not None and end is not None and end < start:
            return {"end_date": "is before the start date"}
    return None


@hookimpl
def before_save(crm, entity, record, old, conn, actor):
    """Apply the implied changes: stage probability, status/stage, close date, amount, line defaults."""
    if entity.name == DEAL and DEAL in crm.catalog and STAGE in crm.catalog:
        changes, _errors = _deal_rules(crm, conn, record, old, actor)
        record.update(changes)
    elif entity.name == LINE and LINE in crm.catalog:
        product = _row(crm, conn, "product", record.get("product"))
        if product is not None:
            if record.get("unit_price") is None:
                record["unit_price"] = product.get("unit_price")
            if not (record.get("description") or "").strip():
                record["description"] = product.get("name")
        if record.get("discount") is None:
            record["discount"] = decimal.Decimal(0)


@hookimpl
def after_save(crm, entity, record, old, conn, actor):
    """A line was written: its deal's amount (and its old deal's, if it moved) follows."""
    if entity.name != LINE:
        return
    for deal_id in {record.get("deal"), (old or {}).get("deal")} - {None}:
        _sync_amount(crm, conn, deal_id, actor)


@hookimpl
def after_delete(crm, entity, record, conn, actor):
    """A line was deleted: its deal's amount follows (zero when no line is left)."""
    if entity.name == LINE and record.get("deal") is not None:
        _sync_amount(crm, conn, record["deal"], actor)


@hookimpl
def restrict_query(crm, entity, actor):
    """Line items are visible exactly when their deal is."""
    if entity != LINE or DEAL not in crm.catalog or actor.system:
        return None
    conds = crm.records.restrictions(actor, crm.catalog[DEAL])
    if not conds:
        return None
    cond = conds[0] if len(conds) == 1 else {"all": list(conds)}
    return _prefixed(cond, "deal")


@hookimpl
def permission_allowed(crm, actor, action, entity, record):
    """Changing or deleting a line needs the right to update its deal."""
    if entity != LINE or record is None or action not in ("update", "delete") or actor.system:
        return None
    with crm.engine.connect() as conn:
        deal = _row(crm, conn, DEAL, record.get("deal"))
        if deal is not None and not _may_update_deal(crm, conn, deal, actor):
            return False
    return None


# ---------------------------------------------------------------------------------------------
# API actions
# ---------------------------------------------------------------------------------------------
CLOSE_SCHEMA = {
    "type": "object",
    "properties": {
        "outcome": {"enum": [WON, LOST]},
        "reason": {"type": "string", "maxLength": REASON_MAX, "description": "Required when lost."},
        "close_date": {"type": "string", "format": "date", "description": "Defaults to today."},
        "version": {"type": "integer", "description": "Optimistic locking: the deal's version you saw."},
    },
    "required": ["outcome"],
}


def _close_action(outcome: str | None):
    def handler(crm, record, payload, actor):
        args = parse_close_payload(payload, outcome)
        deal = close_deal(crm, record["id"], outcome=args["outcome"], actor=actor, reason=args["reason"],
                          close_date=args["close_date"], version=args["version"])
        return {"deal": deal}

    return handler


def _reopen_action(crm, record, payload, actor):
    stage = payload.get("stage")
    if stage is not None and (isinstance(stage, bool) or not str(stage).isdigit()):
        raise ValidationError([{"field": "stage", "message": "must be a deal stage id"}])
    version = payload.get("version")
    if version is not None and (isinstance(version, bool) or not str(version).isdigit()):
        raise ValidationError([{"field": "version", "message": "must be a whole number (the deal's version)"}])
    deal = reopen_deal(crm, record["id"], actor=actor, stage=int(stage) if stage is not None else None,
                       version=int(version) if version is not None else None)
    return {"deal": deal}


@hookimpl
def register_record_actions(crm):
    """``deal/{id}/close`` (and ``win``/``lose`` shortcuts) and ``deal/{id}/reopen``."""
    if DEAL not in crm.catalog or "status" not in crm.catalog[DEAL].fields:
        return None
    one_outcome = {k: v for k, v in CLOSE_SCHEMA.items() if k != "required"}
    return [
        {"entity": DEAL, "name": "close", "handler": _close_action(None), "input_schema": CLOSE_SCHEMA,
         "description": "Close the deal as won or lost (a lost deal needs a reason)."},
        {"entity": DEAL, "name": "win", "handler": _close_action(WON), "input_schema": one_outcome,
         "description": "Close the deal as won."},
        {"entity": DEAL, "name": "lose", "handler": _close_action(LOST), "input_schema": one_outcome,
         "description": "Close the deal as lost (reason required)."},
        {"entity": DEAL, "name": "reopen", "handler": _reopen_action,
         "input_schema": {"type": "object",
                          "properties": {"stage": {"type": "integer"}, "version": {"type": "integer"}}},
         "description": "Reopen a won or lost deal (in the given open stage, else the last open one)."},
    ]


# ---------------------------------------------------------------------------------------------
# Admin: buttons, pages and the line items panel
# ---------------------------------------------------------------------------------------------
@hookimpl
def record_actions(crm, entity, record, actor, request):
    """Won / Lost buttons on an open deal, Reopen on a closed one (for those who may update it)."""
    if entity.name != DEAL or "status" not in entity.fields or not crm.records.can(actor, "update", DEAL, record):
        return None
    ctx = request.state.crmkit_ctx
    if (record.get("status") or OPEN) in CLOSED:
        return [{"name": "reopen", "label": ctx._("deals_reopen"), "action": f"/admin/deal/{record['id']}/reopen",
                 "method": "post"}]
    return [
        {"name": "win", "label": ctx._("deals_win"), "href": f"/admin/deal/{record['id']}/close?outcome=won"},
        {"name": "lose", "label": ctx._("deals_lose"), "href": f"/admin/deal/{record['id']}/close?outcome=lost"},
    ]


@hookimpl
def register_routes(crm):
    """The close form and the reopen endpoint."""
    from crmkit.web.site import admin_page

    return [
        Route("/admin/deal/{id:int}/close", admin_page(close_page), methods=["GET", "HEAD", "POST"]),
        Route("/admin/deal/{id:int}/reopen", admin_page(reopen_page), methods=["POST"]),
    ]


def close_page(ctx: PageContext) -> Response:
    """GET: the won/lost form (close date, reason); POST: close the deal."""
    from crmkit.web.forms import translate_message

    deal_id = int(ctx.params["id"])
    deal = ctx.store.get(DEAL, deal_id, actor=ctx.actor)
    ctx.require("update", DEAL, deal)
    source = ctx.form if ctx.form is not None else ctx.query
    outcome = source.get("outcome") if source.get("outcome") in CLOSED else WON
    errors: dict[str, str] = {}
    values = {"close_date": actor_today(ctx.crm, ctx.actor).isoformat(), "reason": ""}
    if ctx.form is not None:
        values = {"close_date": str(ctx.form.get("close_date") or ""), "reason": str(ctx.form.get("reason") or "")}
        try:
            close_deal(ctx.crm, deal_id, outcome=outcome, actor=ctx.actor, reason=values["reason"],
                       close_date=_parse_date_or_raise(values["close_date"]), version=_int(ctx.form.get("version")),
                       source="ui")
        except ValidationError as exc:
            for e in exc.errors:
                errors[e.get("field") or ""] = translate_message(e["message"], ctx.lang)
        except CRMError as exc:
            errors[""] = str(exc)
        else:
            key = "deals_closed_won" if outcome == WON else "deals_closed_lost"
            return ctx.redirect(f"/admin/deal/{deal_id}", ctx._(key, name=deal.get("name") or f"#{deal_id}"))
    title_key = "deals_close_won_title" if outcome == WON else "deals_close_lost_title"
    return ctx.render(
        "deals/close.html",
        status=422 if errors else 200,
        title=ctx._(title_key, name=deal.get("name") or f"#{deal_id}"),
        deal=deal,
        entity=ctx.crm.catalog[DEAL],
        outcome=outcome,
        values=values,
        errors=errors,
    )


def _parse_date_or_raise(value: str) -> dt.date | None:
    if not value.strip():
        return None
    try:
        return dt.date.fromisoformat(value.strip())
    except ValueError:
        raise ValidationError([{"field": "close_date", "message": "must be a date (YYYY-MM-DD)"}]) from None


def _int(value: Any) -> int | None:
    return int(value) if value is not None and str(value).isdigit() else None


def reopen_page(ctx: PageContext) -> Response:
    """POST /admin/deal/{id}/reopen."""
    deal_id = int(ctx.params["id"])
    try:
        deal = reopen_deal(ctx.crm, deal_id, actor=ctx.actor, source="ui")
    except ValidationError as exc:
        return ctx.redirect(f"/admin/deal/{deal_id}", "; ".join(e["message"] for e in exc.errors), "error")
    return ctx.redirect(f"/admin/deal/{deal_id}", ctx._("deals_reopened", name=deal.get("name") or f"#{deal_id}"))


@hookimpl
def record_panels(crm, entity, record, actor, request):
    """The deal's line items with their total, and a link to add one."""
    if entity.name != DEAL or LINE not in crm.catalog or not crm.records.can(actor, "read", LINE):
        return None
    from crmkit.web.templating import format_money, format_number

    ctx = request.state.crmkit_ctx
    page = crm.records.list(LINE, actor=actor, filter={"deal": record["id"]}, sort="sort_order", limit=200,
                            with_count=False)
    titles = crm.records.titles("product", [r.get("product") for r in page.items])
    rows = [
        {
            "id": r["id"],
            "product": titles.get(r.get("product"), ""),
            "description": r.get("description") or "",
            "quantity": format_number(r.get("quantity")),
            "unit_price": format_money(r.get("unit_price")),
            "discount": f"{format_number(r.get('discount'))}%" if r.get("discount") else "",
            "total": format_money(r.get("line_total")),
        }
        for r in page.items
    ]
    total = sum((decimal.Decimal(r.get("line_total") or 0) for r in page.items), decimal.Decimal(0))
    can_add = (record.get("status") or OPEN) == OPEN and crm.records.can(actor, "update", DEAL, record)
    html = ctx.site.env.get_template("deals/line_items.html").render(
        rows=rows, total=format_money(total), deal=record, can_add=can_add, _=ctx._
    )
    return [{"title": ctx._("deals_line_items"), "html": Markup(html)}]


# Bulk creates (imports) run the per-record hooks only for the entities they concern.
before_create_many = hookimpl(per_record(before_save, DEAL, LINE), specname="before_create_many")
after_create_many = hookimpl(per_record(after_save, LINE), specname="after_create_many")
