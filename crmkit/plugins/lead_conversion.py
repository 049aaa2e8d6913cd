"""Built-in plugin: lead conversion — one action turns a lead into an account, a contact and a deal.

:func:`convert_lead` does it in ONE ``crm.records.transaction()``:

1. match an existing account (:mod:`crmkit.plugins.account_matching`) or create one;
2. create the contact under it and, if asked, a deal (values from ``conversion.map`` in lead.yaml);
3. move the lead's activities to the contact and account;
4. mark the lead ``converted`` with references to what it became (``converted_*`` fields);
5. call the ``lead_converted`` hook so other plugins move their own rows (campaign history,
   business cards). Any failure, a hook's included, rolls everything back.

It is served as ``POST /api/v1/lead/{id}/convert`` (``register_record_actions``) and in the admin
as a "Convert" button on the lead page leading to a confirmation form (account to use, deal yes/no
with name, amount, stage and close date). ``status: converted`` can only be set by the action, a
converted lead is read-only, and ``crmkit check`` refuses a lead field the map would drop.
"""

from __future__ import annotations

import contextvars
import dataclasses
import datetime as dt
import weakref
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa
from starlette.responses import Response
from starlette.routing import Route

from crmkit.core import permissions
from crmkit.core.actors import Actor
from crmkit.core.errors import CRMError, NotFound, PermissionDenied, ValidationError
from crmkit.core.events import Event
from crmkit.hookspecs import hookimpl
from crmkit.plugins import PluginError, call_each
from crmkit.plugins.account_matching import AccountMatch, best_match, match_accounts
from crmkit.plugins.conversion_map import BOOKKEEPING, LEAD, check_conversion, conversion_map

if TYPE_CHECKING:
    from crmkit.app import CRM
    from crmkit.core.records import Tx
    from crmkit.web.site import PageContext

CONVERTED = "converted"
# The lead id whose conversion is writing right now: only then may status become "converted".
_converting: contextvars.ContextVar[int | None] = contextvars.ContextVar("crmkit_converting", default=None)

INPUT_SCHEMA = {
    "type": "object",
    "additionalProperties": False,
    "properties": {
        "account": {
            "description": '"auto" (default: the one matching account, else a new one), "new", or an account id.',
            "oneOf": [{"type": "string", "enum": ["auto", "new"]}, {"type": "integer", "minimum": 1}],
        },
        "deal": {
            "description": "Fields of a deal to create (name, amount, stage, close_date, ...); false or omitted: none.",
            "oneOf": [{"type": "object"}, {"type": "boolean"}, {"type": "null"}],
        },
        "owner": {"type": "integer", "minimum": 1, "description": "Owner of the new records (default: the lead's)."},
    },
}


# ---------------------------------------------------------------------------------------------
# The conversion
# ---------------------------------------------------------------------------------------------
def convert_lead(
    crm: CRM,
    lead_id: int,
    actor: Actor,
    *,
    account: Any = "auto",
    deal: Mapping[str, Any] | bool | None = None,
    owner: int | None = None,
    source: str = "api",
) -> dict[str, Any]:
    """Convert a lead; returns ``{"lead", "account", "contact", "deal", "activities"}`` as ``actor`` sees them.

    ``account`` is ``"auto"`` (the single best match, else a new account; several equally good
    matches are refused so the user chooses), ``"new"`` or an account id. ``deal`` is a mapping of
    deal fields (``True`` for the defaults) or None for no deal. Raises ValidationError (bad input,
    already converted), PermissionDenied, NotFound or PluginError; nothing is written then.
    """
    store = crm.records
    problems = map_problems(crm)
    if problems:
        raise ValidationError([{"field": "", "message": "the lead conversion map is incomplete, so conversion would "
                                f"drop data; fix it (crmkit check): {problems[0]}"}])
    cmap = conversion_map(crm.catalog)
    # Lead conversion writes fields users may not edit by hand (converted_*, readonly target fields)
    # and re-parents activities the actor may not own. The actor's rights are checked up front;
    # the writes then run with system rights under the actor's name, so the audit shows who did it.
    elevated = dataclasses.replace(actor, system=True)
    with store.transaction(actor=actor, source=source) as tx:
        lead = tx.get(LEAD, lead_id)  # NotFound when the actor may not see it
        raw = tx.get(LEAD, lead_id, actor=elevated)
        if raw.get("status") == CONVERTED or raw.get("converted_at"):
            raise ValidationError([{"field": "", "message": _already_converted(raw)}])
        if not store.can(actor, "update", LEAD, raw):
            raise PermissionDenied("you may not convert this lead")
        owner_id = _owner(crm, actor, raw, owner)
        team_id = _team_of(tx, owner_id) if owner_id != raw.get("owner") else raw.get("team")
        owned = {"owner": owner_id, "team": team_id}

        acc, created = _account(crm, tx, actor, elevated, raw, account, cmap, owned)
        contact = _create(tx, crm, actor, elevated, "contact",
                          {**cmap.values_for("contact", raw), "account": acc["id"], **owned}, "contact")
        new_deal = None
        if deal:
            new_deal = _create(tx, crm, actor, elevated, "deal",
                               _deal_values(crm, tx, raw, cmap, deal, acc, contact, owned), "deal")
        moved = _move_activities(crm, tx, elevated, lead_id, acc["id"], contact["id"])
        token = _converting.set(lead_id)
        try:
            tx.update(LEAD, lead_id, {
                "status": CONVERTED,
                "converted_at": dt.datetime.now(dt.UTC),
                "converted_account": acc["id"],
                "converted_contact": contact["id"],
                "converted_deal": new_deal["id"] if new_deal else None,
            }, version=raw["version"], actor=elevated)
        finally:
            _converting.reset(token)
        for _ in call_each(crm.pm, "lead_converted", crm=crm, lead=raw, account=acc, contact=contact,
                           deal=new_deal, tx=tx, actor=actor):
            pass
        tx.events.append(Event("lead.converted", LEAD, lead_id, actor, {
            "account": acc["id"], "contact": contact["id"], "deal": new_deal["id"] if new_deal else None,
            "account_created": created,
        }, source))
    return {
        "lead": _visible(crm, LEAD, lead["id"], actor),
        "account": _visible(crm, "account", acc["id"], actor),
        "contact": _visible(crm, "contact", contact["id"], actor),
        "deal": _visible(crm, "deal", new_deal["id"], actor) if new_deal else None,
        "activities": [a for a in (_visible(crm, "activity", i, actor) for i in moved) if a],
    }


def _already_converted(lead: Mapping[str, Any]) -> str:
    when = lead.get("converted_at")
    day = f" on {when:%Y-%m-%d}" if isinstance(when, dt.datetime) else ""
    return f"this lead was already converted{day}; open its contact or account instead"


def _owner(crm: CRM, actor: Actor, lead: Mapping[str, Any], requested: int | None) -> int | None:
    """Owner of the new records: as requested, else the lead's; "own"-scoped creators get themselves."""
    owner = requested if requested is not None else (lead.get("owner") or actor.id)
    for entity in ("account", "contact"):
        if not actor.system and permissions.scope(crm.catalog[entity], actor, "create") == "own":
            if requested is not None and requested != actor.id:
                raise ValidationError([{"field": "owner", "message": "you may only create records you own"}])
            return actor.id
    return owner


def _team_of(tx: Tx, user_id: int | None) -> int | None:
    if user_id is None:
        return None
    table = tx.store.tables["user"]
    if "primary_team" not in table.c:
        return None
    row = tx.conn.execute(sa.select(table.c.primary_team).where(table.c.id == user_id)).first()
    if row is None:
        raise ValidationError([{"field": "owner", "message": f"no user with id {user_id}"}])
    return row[0]


def _require_create(crm: CRM, actor: Actor, entity: str) -> None:
    if not crm.records.can(actor, "create", entity):
        raise PermissionDenied(f"you may not create {crm.catalog[entity].text(actor.locale, plural=True).lower()}")


def _create(tx: Tx, crm: CRM, actor: Actor, elevated: Actor, entity: str, values: dict[str, Any],
            prefix: str) -> dict[str, Any]:
    """Create a record with the actor's create right checked first; errors name ``prefix.field``."""
    _require_create(crm, actor, entity)
    try:
        return tx.create(entity, values, actor=elevated)
    except ValidationError as exc:
        raise ValidationError([
            {"field": f"{prefix}.{e['field']}" if e["field"] else prefix, "message": e["message"]}
            for e in exc.errors
        ]) from None


def _account(crm: CRM, tx: Tx, actor: Actor, elevated: Actor, lead: Mapping[str, Any], choice: Any,
             cmap: Any, owned: dict[str, Any]) -> tuple[dict[str, Any], bool]:
    """The account to convert into and whether it was created now."""
    if choice in (None, "", "auto"):
        matches = match_accounts(crm, lead, actor)
        chosen = best_match(matches)
        if chosen is None and matches:
            names = ", ".join(f"#{m.account['id']} {m.account.get('name') or ''}".strip() for m in matches[:5])
            raise ValidationError([{
                "field": "account",
                "message": f"several accounts match this lead ({names}); choose one, or \"new\"",
            }])
        if chosen is not None:
            return tx.get("account", chosen.account["id"]), False
        choice = "new"
    if choice == "new":
        values = {**cmap.values_for("account", lead), **owned}
        if not values.get("name"):
            name = lead.get("company") or lead.get("full_name") or lead.get("last_name")
            values["name"] = name
        return _create(tx, crm, actor, elevated, "account", values, "account"), True
    try:
        account_id = int(choice)
    except (TypeError, ValueError):
        raise ValidationError([{"field": "account", "message": 'must be "auto", "new" or an account id'}]) from None
    try:
        return tx.get("account", account_id), False  # as the actor: only an account they can see
    except NotFound:
        raise ValidationError([{"field": "account", "message": f"no account with id {account_id}"}]) from None


def _deal_values(crm: CRM, tx: Tx, lead: Mapping[str, Any], cmap: Any, deal: Any, account: Mapping[str, Any],
                 contact: Mapping[str, Any], owned: dict[str, Any]) -> dict[str, Any]:
    given = dict(deal) if isinstance(deal, Mapping) else {}
    ent = crm.catalog["deal"]
    values = {**cmap.values_for("deal", lead), **{k: v for k, v in given.items() if v not in (None, "")}}
    values.update(account=account["id"], **owned)
    if "contact" in ent.fields:
        values["contact"] = contact["id"]
    if not values.get("name"):
        values["name"] = lead.get("company") or lead.get("full_name") or lead.get("last_name")
    if "stage" in ent.fields and not values.get("stage"):
        stage = default_stage(crm)
        if stage:
            values["stage"] = stage["id"]
    if "probability" in ent.fields and values.get("probability") in (None, "") and values.get("stage"):
        stage = _stage(tx, values["stage"])
        if stage and stage.get("probability") is not None:
            values["probability"] = stage["probability"]
    return values


def default_stage(crm: CRM) -> dict[str, Any] | None:
    """The first open stage of the sales process (lowest ``sort_order`` that is not closed)."""
    if "deal" not in crm.catalog or "stage" not in crm.catalog["deal"].fields:
        return None
    target = crm.catalog["deal"].fields["stage"].to
    ent = crm.catalog[target]
    table = crm.table(target)
    stmt = sa.select(table)
    if "is_closed" in table.c:
        stmt = stmt.where(sa.or_(table.c.is_closed.is_(None), table.c.is_closed == sa.false()))
    stmt = stmt.order_by(*([table.c.sort_order] if "sort_order" in ent.fields else []), table.c.id).limit(1)
    with crm.engine.connect() as conn:
        row = conn.execute(stmt).mappings().first()
    return dict(row) if row else None


def _stage(tx: Tx, stage_id: Any) -> dict[str, Any] | None:
    try:
        table = tx.store.tables["deal_stage"]
        row = tx.conn.execute(sa.select(table).where(table.c.id == int(stage_id))).mappings().first()
    except (KeyError, TypeError, ValueError):
        return None
    return dict(row) if row else None


def _move_activities(crm: CRM, tx: Tx, elevated: Actor, lead_id: int, account_id: int, contact_id: int) -> list[int]:
    """Re-parent the lead's activities onto the contact and account (the lead stays a stub)."""
    if "activity" not in crm.catalog or "lead" not in crm.catalog["activity"].fields:
        return []
    table = tx.store.tables["activity"]
    ids = [r[0] for r in tx.conn.execute(sa.select(table.c.id).where(table.c.lead == lead_id).order_by(table.c.id))]
    fields = crm.catalog["activity"].fields
    for activity_id in ids:
        values: dict[str, Any] = {"lead": None}
        if "contact" in fields:
            values["contact"] = contact_id
        if "account" in fields:
            values["account"] = account_id
        tx.update("activity", activity_id, values, actor=elevated)
    return ids


def _visible(crm: CRM, entity: str, id: int, actor: Actor) -> dict[str, Any] | None:
    try:
        return crm.records.get(entity, id, actor=actor)
    except CRMError:
        return None


# ---------------------------------------------------------------------------------------------
# Hooks
# ---------------------------------------------------------------------------------------------
@hookimpl
def check_project(crm):
    """``crmkit check``: refuse a lead field the conversion would drop, and bad map targets.

    A check problem, not a schema error: migrations and the admin keep working while the map is
    fixed, and :func:`convert_lead` refuses to run (rather than drop data) until it is.
    """
    return map_problems(crm)


_PROBLEMS: weakref.WeakKeyDictionary[Any, list[Any]] = weakref.WeakKeyDictionary()


def map_problems(crm: CRM) -> list[Any]:
    """The conversion map's problems (computed once per CRM: the catalog never changes)."""
    if crm not in _PROBLEMS:
        _PROBLEMS[crm] = check_conversion(crm.catalog)
    return _PROBLEMS[crm]


@hookimpl
def register_config_schemas(crm):
    """``lead_conversion: {free_mail_domains: [...]}``: more domains that never identify a company."""
    return {
        "lead_conversion": {
            "type": "object",
            "additionalProperties": False,
            "properties": {"free_mail_domains": {"type": "array", "items": {"type": "string"}}},
        }
    }


@hookimpl
def validate_record(crm, entity, record, old, conn, actor):
    """Only the Convert action sets ``status: converted``; a converted lead stays converted."""
    if entity.name != LEAD or "status" not in entity.fields:
        return None
    status, before = record.get("status"), (old or {}).get("status")
    converting = _converting.get()
    if status == CONVERTED and before != CONVERTED and (converting is None or converting != record.get("id")):
        return {"status": "a lead becomes converted only through the Convert action"}
    if before == CONVERTED and status != CONVERTED:
        return {"status": "a converted lead stays converted"}
    return None


@hookimpl
def permission_allowed(crm, actor, action, entity, record):
    """A converted lead is read-only for users (its contact and account carry on)."""
    if entity == LEAD and action == "update" and record is not None and not actor.system:
        if record.get("converted_at") or record.get("status") == CONVERTED:
            return False
    return None


@hookimpl
def register_record_actions(crm):
    """``POST /api/v1/lead/{id}/convert``."""
    if LEAD not in crm.catalog or not {"contact", "account"} <= set(crm.catalog.names()):
        return None

    def convert(crm, record, payload, actor):
        unknown = sorted(set(payload) - set(INPUT_SCHEMA["properties"]))
        if unknown:
            raise ValidationError([{"field": k, "message": "unknown option of convert"} for k in unknown])
        owner = payload.get("owner")
        if owner is not None and (isinstance(owner, bool) or not isinstance(owner, int)):
            raise ValidationError([{"field": "owner", "message": "must be a user id"}])
        deal = payload.get("deal")
        if deal is not None and not isinstance(deal, Mapping | bool):
            raise ValidationError([{"field": "deal", "message": "must be an object of deal fields, or false"}])
        return convert_lead(crm, record["id"], actor, account=payload.get("account", "auto"),
                            deal=deal, owner=owner, source="api")

    return [{
        "entity": LEAD,
        "name": "convert",
        "handler": convert,
        "description": "Convert the lead: match or create the account, create the contact and optionally a "
        "deal, move its activities, mark it converted — all in one transaction.",
        "input_schema": INPUT_SCHEMA,
    }]


@hookimpl
def record_actions(crm, entity, record, actor, request):
    """A "Convert" button on leads the actor may convert."""
    if entity.name != LEAD or record.get("status") == CONVERTED or record.get("converted_at"):
        return None
    if actor is None or not crm.records.can(actor, "update", LEAD, record):
        return None
    if not crm.records.can(actor, "create", "contact"):
        return None
    return [{"name": "convert", "label": _t(crm, request, "conversion_convert"),
             "href": f"/admin/lead/{record['id']}/convert"}]


@hookimpl
def record_panels(crm, entity, record, actor, request):
    """On a converted lead: what it became, with links."""
    if entity.name != LEAD or not record.get("converted_at"):
        return None
    from crmkit.web.display import Display

    ctx = request.state.crmkit_ctx
    display = Display(ctx, entity)
    fields = [entity.fields[n] for n in BOOKKEEPING if n in entity.fields]
    display.prefetch([record], fields)
    rows = [{"label": f.text(ctx.lang), "html": display.html(f, record.get(f.name), record)}
            for f in fields if record.get(f.name)]
    return [{"title": ctx._("conversion_converted_panel"), "template": "workflows/converted_panel.html",
             "context": {"rows": rows}}]


@hookimpl
def register_routes(crm):
    """The confirmation form ``/admin/lead/{id}/convert``."""
    from crmkit.web.site import admin_page

    return [Route("/admin/lead/{id:int}/convert", admin_page(convert_page), methods=["GET", "HEAD", "POST"])]


@hookimpl
def extra_css_urls(crm, template, request):
    """The workflow stylesheet on the confirmation form."""
    from crmkit.web.site import admin_site

    return [admin_site(crm).static_url("workflows.css")] if template == "workflows/convert.html" else None


@hookimpl
def register_ui_strings(crm):
    """English and Japanese words of the conversion screens."""
    return UI_STRINGS


UI_STRINGS = {
    "conversion_convert": ("Convert", "取引開始"),
    "conversion_title": ("Convert lead: {name}", "取引開始: {name}"),
    "conversion_intro": (
        "Converting creates a contact (and optionally a deal) from this lead, under an existing or a new "
        "account, moves its activities there and marks the lead converted. All of it happens at once, or "
        "nothing does.",
        "この見込み客から取引先責任者（必要なら商談も）を作成し、既存または新規の取引先に紐づけます。活動履歴も移し、"
        "見込み客は「取引開始済み」になります。すべて一括で行われ、途中で失敗した場合は何も変更されません。",
    ),
    "conversion_account": ("Account", "取引先"),
    "conversion_use_existing": ("Use {name}", "{name} を使用"),
    "conversion_matched_by_name": ("same company name", "会社名が一致"),
    "conversion_matched_by_domain": ("same email/web domain", "メール・Webのドメインが一致"),
    "conversion_create_account": ("Create a new account: {name}", "新しい取引先を作成: {name}"),
    "conversion_contact": ("Contact", "取引先責任者"),
    "conversion_contact_text": ("A contact {name} is created under the account.",
                                "取引先の下に取引先責任者「{name}」を作成します。"),
    "conversion_deal": ("Deal", "商談"),
    "conversion_create_deal": ("Also create a deal", "商談も作成する"),
    "conversion_deal_name": ("Deal name", "商談名"),
    "conversion_amount": ("Amount", "金額"),
    "conversion_stage": ("Stage", "フェーズ"),
    "conversion_close_date": ("Expected close date", "完了予定日"),
    "conversion_activities": ("{n} activities move to the contact and account.",
                              "{n} 件の活動を取引先責任者・取引先に移します。"),
    "conversion_submit": ("Convert", "取引開始する"),
    "conversion_done": ("Converted: contact {contact} at {account}.", "取引開始しました: {account} の {contact}"),
    "conversion_done_deal": ("Converted: contact {contact} at {account}, deal {deal}.",
                             "取引開始しました: {account} の {contact}、商談「{deal}」"),
    "conversion_failed": ("Nothing was converted: {error}", "取引開始できませんでした（変更はありません）: {error}"),
    "conversion_converted_panel": ("Converted", "取引開始済み"),
    "conversion_already": ("This lead was already converted.", "この見込み客は取引開始済みです。"),
}


def _t(crm: CRM, request: Any, key: str, **kwargs: Any) -> str:
    from crmkit.web.i18n import plugin_strings, t

    lang = getattr(request.state, "crmkit_lang", None) or "en"
    return t(key, lang, extra=plugin_strings(crm), **kwargs)


# ---------------------------------------------------------------------------------------------
# Admin: the confirmation form
# ---------------------------------------------------------------------------------------------
def convert_page(ctx: PageContext) -> Response:
    """GET shows what conversion will do; POST converts and opens the new contact."""
    lead_id = int(ctx.params["id"])
    lead = ctx.store.get(LEAD, lead_id, actor=ctx.actor)
    name = lead.get("full_name") or lead.get("last_name") or f"#{lead_id}"
    if lead.get("converted_at") or lead.get("status") == CONVERTED:
        return ctx.redirect(f"/admin/lead/{lead_id}", ctx._("conversion_already"), "error")
    ctx.require("update", LEAD, lead)
    ctx.require("create", "contact")
    matches = match_accounts(ctx.crm, lead, ctx.actor)
    best = best_match(matches)
    form = {
        "account": str(best.account["id"]) if best else ("" if matches else "new"),
        "create_deal": "",
        "deal_name": lead.get("company") or name,
        "deal_amount": "",
        "deal_stage": str((default_stage(ctx.crm) or {}).get("id") or ""),
        "deal_close_date": "",
    }
    errors: dict[str, list[str]] = {}
    status = 200
    if ctx.request.method == "POST":
        posted = ctx.form
        form.update({k: str(posted.get(k) or "").strip() for k in form})
        deal = None
        if form["create_deal"]:
            deal = {"name": form["deal_name"], "amount": form["deal_amount"], "stage": form["deal_stage"],
                    "close_date": form["deal_close_date"]}
        if not form["account"]:
            errors["account"] = [ctx._("required")]
        else:
            try:
                result = convert_lead(ctx.crm, lead_id, ctx.actor, account=form["account"], deal=deal, source="ui")
            except ValidationError as exc:
                errors = exc.by_field()
            except PluginError as exc:
                errors = {"": [ctx._("conversion_failed", error=str(exc))]}
            else:
                return ctx.redirect(f"/admin/contact/{result['contact']['id']}", _done_message(ctx, result))
        status = 422
    return ctx.render(
        "workflows/convert.html",
        status=status,
        title=ctx._("conversion_title", name=name),
        lead=lead,
        lead_name=name,
        matches=[_match_view(ctx, m) for m in matches],
        form=form,
        errors=errors,
        general_errors=[m for k, msgs in errors.items() if not k.startswith(("account", "deal")) for m in msgs],
        stages=_stage_choices(ctx),
        activity_count=_activity_count(ctx, lead_id),
        can_create_account=ctx.store.can(ctx.actor, "create", "account"),
        can_create_deal="deal" in ctx.crm.catalog and ctx.store.can(ctx.actor, "create", "deal"),
    )


def _done_message(ctx: PageContext, result: dict[str, Any]) -> str:
    def title(rec: Mapping[str, Any] | None, field: str) -> str:
        return str((rec or {}).get(field) or (f"#{rec['id']}" if rec else ""))

    contact, account, deal = result["contact"], result["account"], result["deal"]
    if deal:
        return ctx._("conversion_done_deal", contact=title(contact, "full_name"), account=title(account, "name"),
                     deal=title(deal, "name"))
    return ctx._("conversion_done", contact=title(contact, "full_name"), account=title(account, "name"))


def _match_view(ctx: PageContext, m: AccountMatch) -> dict[str, Any]:
    labels = {"name": ctx._("conversion_matched_by_name"), "domain": ctx._("conversion_matched_by_domain")}
    return {"id": str(m.account["id"]), "name": m.account.get("name") or f"#{m.account['id']}",
            "why": [labels[r] for r in m.reasons if r in labels], "website": m.account.get("website") or ""}


def _stage_choices(ctx: PageContext) -> list[dict[str, str]]:
    if "deal" not in ctx.crm.catalog or "stage" not in ctx.crm.catalog["deal"].fields:
        return []
    target = ctx.crm.catalog["deal"].fields["stage"].to
    ent = ctx.crm.catalog[target]
    filt = {"is_closed": False} if "is_closed" in ent.fields else None
    sort = "sort_order" if "sort_order" in ent.fields else None
    page = ctx.store.list(target, actor=ctx.actor, filter=filt, sort=sort, limit=100, with_count=False,
                          columns=[ent.title_field])
    return [{"value": str(r["id"]), "label": str(r.get(ent.title_field) or f"#{r['id']}")} for r in page.items]


def _activity_count(ctx: PageContext, lead_id: int) -> int:
    if "activity" not in ctx.crm.catalog:
        return 0
    table = ctx.crm.table("activity")
    with ctx.crm.engine.connect() as conn:
        return conn.execute(sa.select(sa.func.count()).where(table.c.lead == lead_id)).scalar_one()
