"""List pages: columns, sort, filters and search from the YAML ``list`` section, keyset paging,
a capped count, saved views per user, bulk actions and CSV export.

Built for big tables: one RecordStore query per page (keyset, capped count, only the shown
columns) plus one title query per referenced entity; the HTML stays small.
"""

from __future__ import annotations

import datetime as dt
import io
import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any
from urllib.parse import urlencode

from markupsafe import Markup
from starlette.responses import JSONResponse, Response, StreamingResponse

from crmkit.core.catalog import thaw
from crmkit.core.errors import BadRequest, CRMError, PermissionDenied
from crmkit.plugins import call_each
from crmkit.web.display import Display, html_text
from crmkit.web.forms import translate_message

if TYPE_CHECKING:
    from crmkit.core.catalog import Entity, Field, ListView
    from crmkit.web.site import PageContext

SAVED_VIEW = "saved_view"
ALL_VIEW = "all"
KEEP_PARAMS = ("q", "sort", "filter")
FILTER_PREFIX = "f."
EXPORT_PAGE = 500
BULK_LIMIT = 1000
SETTABLE_TYPES = ("enum", "boolean", "reference", "date", "string", "integer", "money", "percent")


# ---------------------------------------------------------------------------------------------
# Query state: URL <-> condition
# ---------------------------------------------------------------------------------------------
@dataclass
class ListState:
    """What the list URL asks for: search, sort, filters (as condition data) and the cursor."""

    q: str = ""
    sort: str = ""
    cursor: str | None = None
    raw_filter: str = ""
    filters: dict[str, list[str]] = field(default_factory=dict)
    conditions: list[Any] = field(default_factory=list)
    view: str = ""  # the YAML view applied (``list.views``), "" for none, "all" for every record
    view_explicit: bool = False  # the URL named the view (else it is the entity's default)

    @property
    def condition(self) -> Any:
        if not self.conditions:
            return None
        return self.conditions[0] if len(self.conditions) == 1 else {"all": self.conditions}

    def params(self, **changes: Any) -> list[tuple[str, str]]:
        """The query string pairs of this state (without the cursor), with ``changes`` applied."""
        pairs: list[tuple[str, str]] = []
        values = {"q": self.q, "sort": self.sort, "filter": self.raw_filter}
        values.update({k: v for k, v in changes.items() if k in values})
        for key in KEEP_PARAMS:
            if values.get(key):
                pairs.append((key, values[key]))
        for key, vals in self.filters.items():
            pairs += [(key, v) for v in vals]
        if self.view and self.view_explicit:
            pairs.append(("view", self.view))
        if changes.get("cursor"):
            pairs.append(("cursor", changes["cursor"]))
        return pairs

    def url(self, entity: str, **changes: Any) -> str:
        query = urlencode(self.params(**changes))
        return f"/admin/{entity}/" + (f"?{query}" if query else "")

    @property
    def active(self) -> bool:
        return bool(self.q or self.filters or self.raw_filter)


def parse_state(ctx: PageContext, entity: Entity) -> ListState:
    """Read search, sort, cursor and ``f.<field>`` filters from the query string."""
    query = ctx.query
    state = ListState(
        q=(query.get("q") or "").strip()[:200],
        sort=(query.get("sort") or "").strip(),
        cursor=query.get("cursor") or None,
        raw_filter=(query.get("filter") or "").strip(),
    )
    for key in query.keys():
        if not key.startswith(FILTER_PREFIX):
            continue
        values = [v for v in query.getlist(key) if v.strip()]
        if values:
            state.filters[key] = values
    for key, values in state.filters.items():
        cond = _filter_condition(ctx, entity, key[len(FILTER_PREFIX) :], values)
        if cond is not None:
            state.conditions.append(cond)
    if state.raw_filter:
        try:
            state.conditions.append(json.loads(state.raw_filter))
        except json.JSONDecodeError:
            raise BadRequest("filter is not valid JSON") from None
    view, explicit = chosen_view(ctx, entity, plain=not state.active)
    if view is not None:
        state.view, state.view_explicit = view.name, explicit
        if view.filter:
            state.conditions.append(thaw(view.filter))
        if not state.sort and view.sort:
            state.sort = ",".join(view.sort)
    elif explicit:
        state.view, state.view_explicit = ALL_VIEW, True
    return state


def chosen_view(ctx: PageContext, entity: Entity, *, plain: bool = True) -> tuple[ListView | None, bool]:
    """The YAML list view a page shows: ``?view=<name>``, else the default one when ``plain``.

    Returns ``(view, explicit)``; ``?view=all`` gives ``(None, True)`` (every record). Numeric
    ``view`` values are saved views (their query is already in the URL) and are ignored here.
    """
    names = [v for v in ctx.query.getlist("view") if v and not v.isdigit()]
    if names:
        name = names[-1]
        if name == ALL_VIEW and entity.list.view(name) is None:
            return None, True
        view = entity.list.view(name)
        if view is None:
            raise BadRequest(f"{entity.name} has no view {name!r}")
        return view, True
    return (entity.list.default_view if plain else None), False


def builtin_views(ctx: PageContext, entity: Entity, state: ListState, base: str | None = None) -> list[dict[str, Any]]:
    """Tabs for the YAML views (plus "All" when there is a default view), for list and board pages."""
    if not entity.list.views:
        return []
    base = base or f"/admin/{entity.name}/"
    out = [
        {"name": v.name, "label": v.text(ctx.lang), "href": f"{base}?view={v.name}",
         "current": state.view == v.name and not state.active}
        for v in entity.list.views
    ]
    if entity.list.default_view is not None:
        out.insert(0, {"name": ALL_VIEW, "label": ctx._("all_records"), "href": f"{base}?view={ALL_VIEW}",
                       "current": state.view == ALL_VIEW and not state.active})
    return out


def _filter_condition(ctx: PageContext, entity: Entity, name: str, values: list[str]) -> Any:
    """One ``f.<field>`` parameter as a condition (``f.close_date.from`` / ``.to`` for ranges)."""
    bound = None
    if name.endswith((".from", ".to")):
        name, bound = name.rsplit(".", 1)
    f = entity.fields.get(name)
    if f is None or f.type in ("references", "password", "json", "file", "image"):
        raise BadRequest(f"cannot filter {entity.name} by {name!r}")
    value = values[-1]
    if bound is not None:
        if f.type == "datetime":
            try:
                day = dt.date.fromisoformat(value)
            except ValueError:
                raise BadRequest(f"{value!r} is not a date") from None
            start = dt.datetime(day.year, day.month, day.day, tzinfo=ctx.tz)
            if bound == "from":
                return {name: {"gte": start.isoformat()}}
            return {name: {"lt": (start + dt.timedelta(days=1)).isoformat()}}
        return {name: {"gte" if bound == "from" else "lte": value}}
    if f.type == "boolean":
        return {name: value in ("1", "true", "yes")}
    if f.type in ("enum", "reference") or f.name in ("owner", "team", "created_by"):
        if "me" in values and f.to == "user":
            return {name: "$me"}
        if f.type == "reference" or f.to:
            try:
                ids = [int(v) for v in values]
            except ValueError:
                raise BadRequest(f"{name} must be record ids") from None
            return {name: ids[0]} if len(ids) == 1 else {name: {"in": ids}}
        return {name: values[0]} if len(values) == 1 else {name: {"in": values}}
    if f.type == "multi_enum":
        return {name: {"in": values}}
    if f.type in ("string", "text", "email", "phone", "url", "address"):
        return {name: {"contains": value}}
    return {name: value}


# ---------------------------------------------------------------------------------------------
# Columns and filters
# ---------------------------------------------------------------------------------------------
def list_columns(ctx: PageContext, entity: Entity) -> list[Field]:
    """The YAML list columns the actor may see (direct fields; the title field first if missing)."""
    access = ctx.store.field_access(ctx.actor, entity.name)
    names = list(entity.list.columns) or [entity.title_field]
    out = []
    for name in names:
        f = entity.fields.get(name.split(".")[0])
        if f is None or access.get(f.name) in ("none", "write-only") or f in out:
            continue
        out.append(f)
    return out


def sortable(ctx: PageContext, f: Field) -> bool:
    ftype = ctx.crm.field_types.get(f.type)
    return bool(ftype and ftype.sortable) and f.type not in ("references", "multi_enum")


def filter_widgets(ctx: PageContext, entity: Entity, state: ListState) -> list[dict[str, Any]]:
    """The filter controls of the list page, from ``list.filters``."""
    out = []
    lang = ctx.lang
    for name in entity.list.filters:
        f = entity.fields.get(name)
        if f is None or "." in name:
            continue
        key = FILTER_PREFIX + name
        item: dict[str, Any] = {
            "name": key,
            "label": f.text(lang),
            "type": f.type,
            "values": state.filters.get(key, []),
        }
        if f.type in ("enum", "multi_enum"):
            item["kind"] = "select"
            item["choices"] = [(o.value, o.text(lang)) for o in f.options]
        elif f.type == "boolean":
            item["kind"] = "select"
            item["choices"] = [("1", ctx._("yes")), ("0", ctx._("no"))]
        elif f.type == "reference" and f.to:
            pairs = _small_choices(ctx, f.to)
            if pairs is None:
                item["kind"] = "reference"
                item["target"] = f.to
                chosen = state.filters.get(key, [])
                item["title"] = ", ".join(
                    ctx.store.titles(f.to, [int(v) for v in chosen if v.isdigit()]).values()
                )
            else:
                item["kind"] = "select"
                item["choices"] = ([("me", ctx._("me"))] if f.to == "user" else []) + [
                    (str(i), t) for i, t in pairs
                ]
        elif f.type in ("date", "datetime", "integer", "money", "decimal", "percent"):
            item["kind"] = "range"
            item["input_type"] = "date" if f.type in ("date", "datetime") else "number"
            item["from"] = (state.filters.get(key + ".from") or [""])[-1]
            item["to"] = (state.filters.get(key + ".to") or [""])[-1]
        else:
            item["kind"] = "text"
        out.append(item)
    return out


def _small_choices(ctx: PageContext, target: str, limit: int = 100) -> list[tuple[int, str]] | None:
    """Every record of ``target`` as (id, title) when there are at most ``limit``, else None.

    Kept for the request: filters and bulk actions often ask for the same master data.
    """
    memo = ctx.request.state.__dict__.setdefault("crmkit_small_choices", {})
    if target not in memo:
        try:
            memo[target] = ctx.store.search_titles(target, "", actor=ctx.actor, limit=100 + 1)
        except CRMError:
            memo[target] = []
    pairs = memo[target]
    return None if len(pairs) > limit else pairs[:limit]


# ---------------------------------------------------------------------------------------------
# The page
# ---------------------------------------------------------------------------------------------
class HTMLCells(list):
    """The cells of a list row: escaped HTML kept as plain strings, handed out as Markup.

    list.html prints the prebuilt ``rows_html``; a project's own list.html looping over
    ``row.cells`` still gets safe Markup, without a Markup object per cell on every page.
    """

    def __iter__(self) -> Iterator[Markup]:
        return map(Markup, list.__iter__(self))

    def __getitem__(self, index: Any) -> Any:
        item = list.__getitem__(self, index)
        return Markup(item) if isinstance(index, int) else [Markup(c) for c in item]


def list_page(ctx: PageContext) -> Response:
    """GET /admin/{entity}/ — the list of records."""
    entity = ctx.entity()
    ctx.require("read", entity.name)
    state = parse_state(ctx, entity)
    columns = list_columns(ctx, entity)
    wanted = [f.name for f in columns]
    if entity.title_field in entity.fields and entity.title_field not in wanted:
        wanted.append(entity.title_field)
    page = ctx.store.list(
        entity.name,
        actor=ctx.actor,
        filter=state.condition,
        q=state.q or None,
        sort=state.sort or None,
        cursor=state.cursor,
        columns=wanted,
        with_count=True,
    )
    # The filters and bulk actions read small master tables whole (users, ...): read them first,
    # so the titles of the page's references to them need no query of their own.
    filters = filter_widgets(ctx, entity, state)
    bulk = bulk_actions(ctx, entity)
    settable = settable_fields(ctx, entity)
    owners = _small_choices(ctx, "user") if entity.ownable else None
    display = Display(ctx, entity)
    _reuse_small_choices(ctx, display, columns)
    display.prefetch(page.items, columns)
    extra_cols = [
        c
        for _p, cols in call_each(ctx.crm.pm, "list_columns", crm=ctx.crm, entity=entity, actor=ctx.actor)
        for c in cols
    ]
    first = columns[0].name if columns else None
    # The first column links to the record, unless it links elsewhere (then an ID column does).
    id_column = first is not None and columns[0].type in ("reference", "email", "url", "phone")
    rows = []
    parts: list[str] = []  # the <tbody> rows as one string: no template loop or Markup per cell
    renderers = [display.cell_renderer(f) for f in columns]
    for r in page.items:
        rid = r["id"]
        link = f'<a href="/admin/{entity.name}/{rid}">'
        cells = [render(r) for render in renderers]
        if first is not None:
            if id_column:
                cells.insert(0, f"{link}#{rid}</a>")
            else:
                cells[0] = link + (cells[0] or f"#{rid}") + "</a>"
        for c in extra_cols:
            cells.append(html_text(c["render"](r)))  # plain text is escaped; Markup passes
        title = _row_title(display, entity, r)
        rows.append({"id": rid, "title": title, "cells": HTMLCells(cells)})
        parts.append("<tr>")
        if bulk:
            parts.append(f'<td class="cb"><input type="checkbox" name="ids" value="{rid}" form="bulk" '
                         f'aria-label="{html_text(title)}"></td>')
        for c in cells:
            parts += ("<td>", c, "</td>")
        parts.append("</tr>\n")
    rows_html = Markup("".join(parts))
    sort_keys = _sort_keys(entity, state.sort)
    headers = []
    if id_column:
        headers.append({"label": "ID", "href": None, "dir": None})
    for f in columns:
        dir_ = sort_keys.get(f.name)
        href = None
        if sortable(ctx, f):
            new_sort = f"-{f.name}" if dir_ == "asc" else f.name
            href = state.url(entity.name, sort=new_sort)
        headers.append({"label": f.text(ctx.lang), "href": href, "dir": dir_})
    headers += [{"label": c["label"], "href": None, "dir": None} for c in extra_cols]
    headers_html = Markup("".join(map(_header_html, headers)))
    return ctx.render(
        "list.html",
        entity=entity,
        title=entity.text(ctx.lang, plural=True),
        state=state,
        headers=headers,
        headers_html=headers_html,
        rows=rows,
        rows_html=rows_html,
        page=page,
        next_url=state.url(entity.name, cursor=page.next_cursor) if page.next_cursor else None,
        first_url=state.url(entity.name) if state.cursor else None,
        filters=filters,
        views=saved_views(ctx, entity),
        builtin_views=builtin_views(ctx, entity, state),
        current_query=urlencode(state.params()),
        can_create=ctx.store.can(ctx.actor, "create", entity.name),
        bulk=bulk,
        settable=settable,
        owners=owners,
        can_export=ctx.store.can(ctx.actor, "export", entity.name),
        has_search=bool(entity.search_paths),
        board=_board_link(ctx, entity),
    )


def _reuse_small_choices(ctx: PageContext, display: Display, columns: list[Field]) -> None:
    """Hand ``display`` the titles :func:`_small_choices` already read for the reference columns.

    Those pairs are the title column as read for the actor: they equal ``RecordStore.titles``
    for a text title the actor's role neither masks nor hides (otherwise they are not used).
    """
    memo = ctx.request.state.__dict__.get("crmkit_small_choices")
    if not memo:
        return
    for f in columns:
        pairs = memo.get(f.to) if f.type == "reference" and f.to else None
        if not pairs or f.to not in ctx.crm.catalog:
            continue
        target = ctx.crm.catalog[f.to]
        title = target.fields.get(target.title_field)
        if title is None or title.type not in ("string", "text"):  # read as stored only when text
            continue
        if ctx.store.field_access(ctx.actor, f.to).get(title.name, "read") in ("read", "write"):
            display.known_titles(f.to, pairs)


def _header_html(h: dict[str, Any]) -> str:
    """One column header of list.html's ``headers`` loop (sort link and ``aria-sort``), in Python."""
    dir_ = h.get("dir")
    out = '<th scope="col"'
    if dir_:
        out += ' aria-sort="' + ("ascending" if dir_ == "asc" else "descending") + '"'
    label = html_text(h.get("label", ""))
    if h.get("href"):
        out += '><a href="' + html_text(h["href"]) + '">' + label
        if dir_:
            out += '<span aria-hidden="true" class="sort-' + html_text(dir_) + '"></span>'
        return out + "</a></th>"
    return out + ">" + label + "</th>"


def _board_link(ctx: PageContext, entity: Entity) -> str | None:
    from crmkit.plugins.admin_dashboard import board_field

    return f"/admin/{entity.name}/kanban" if board_field(ctx.crm, entity.name) else None


def _row_title(display: Display, entity: Entity, r: dict[str, Any]) -> str:
    f = entity.fields.get(entity.title_field)
    if f is None:
        return f"#{r['id']}"
    return display.text(f, r.get(f.name)) or f"#{r['id']}"


def _sort_keys(entity: Entity, sort: str) -> dict[str, str]:
    items = [s.strip() for s in (sort or ",".join(entity.list.sort)).split(",") if s.strip()]
    out: dict[str, str] = {}
    for item in items[:1]:
        out[item.lstrip("-+")] = "desc" if item.startswith("-") else "asc"
    return out


# ---------------------------------------------------------------------------------------------
# Saved views
# ---------------------------------------------------------------------------------------------
def saved_views(ctx: PageContext, entity: Entity) -> list[dict[str, Any]]:
    """The actor's saved views of this entity (empty when the saved_view entity is absent)."""
    if SAVED_VIEW not in ctx.crm.catalog or not ctx.store.can(ctx.actor, "read", SAVED_VIEW):
        return []
    page = ctx.store.list(
        SAVED_VIEW,
        actor=ctx.actor,
        filter={"target_entity": entity.name, "owner": "$me"},
        sort="name",
        limit=50,
        with_count=False,
    )
    current = ctx.query.get("view")
    return [
        {
            "id": v["id"],
            "name": v["name"],
            "href": f"/admin/{entity.name}/?{v['query'] or ''}"
            + ("&" if v["query"] else "")
            + f"view={v['id']}",
            "current": str(v["id"]) == current,
        }
        for v in page.items
    ]


def save_view(ctx: PageContext) -> Response:
    """POST /admin/{entity}/views — save the current search, filters and sort under a name."""
    entity = ctx.entity()
    ctx.require("read", entity.name)
    name = str(ctx.form.get("name") or "").strip()[:100]
    query = str(ctx.form.get("query") or "")[:2000]
    if not name:
        return ctx.redirect(f"/admin/{entity.name}/?{query}")
    view = ctx.store.create(
        SAVED_VIEW, {"name": name, "target_entity": entity.name, "query": query}, actor=ctx.actor, source="ui"
    )
    return ctx.redirect(f"/admin/{entity.name}/?{query}&view={view['id']}", ctx._("view_saved", name=name))


def delete_view(ctx: PageContext) -> Response:
    """POST /admin/{entity}/views/{view_id}/delete."""
    entity = ctx.entity()
    ctx.store.delete(SAVED_VIEW, int(ctx.params["view_id"]), actor=ctx.actor, source="ui")
    return ctx.redirect(f"/admin/{entity.name}/", ctx._("view_deleted"))


# ---------------------------------------------------------------------------------------------
# Bulk actions
# ---------------------------------------------------------------------------------------------
def bulk_actions(ctx: PageContext, entity: Entity) -> list[dict[str, Any]]:
    """Built-in bulk actions the actor may run here, then those of the ``list_actions`` hooks."""
    store, actor, name = ctx.store, ctx.actor, entity.name
    out = []
    if store.can(actor, "update", name):
        if entity.ownable and store.field_access(actor, name).get("owner", "write") == "write":
            out.append({"name": "assign_owner", "label": ctx._("bulk_assign_owner")})
        out.append({"name": "set_field", "label": ctx._("bulk_set_field")})
    if store.can(actor, "delete", name):
        out.append({"name": "delete", "label": ctx._("bulk_delete")})
    if store.can(actor, "export", name):
        out.append({"name": "export", "label": ctx._("bulk_export")})
    for _p, actions in call_each(
        ctx.crm.pm, "list_actions", crm=ctx.crm, entity=entity, actor=actor, request=ctx.request
    ):
        out += [{"name": a["name"], "label": a["label"], "handler": a.get("handler")} for a in actions]
    return out


def settable_fields(ctx: PageContext, entity: Entity) -> list[dict[str, Any]]:
    """Fields "Set a field" offers: simple types the actor may write."""
    from crmkit.web.forms import editable

    out = []
    access = ctx.store.field_access(ctx.actor, entity.name)
    for f in entity.visible_fields:
        if f.type not in SETTABLE_TYPES or not editable(ctx, entity, f, access) or f.is_many:
            continue
        item: dict[str, Any] = {"name": f.name, "label": f.text(ctx.lang), "type": f.type}
        if f.type == "enum":
            item["choices"] = [(o.value, o.text(ctx.lang)) for o in f.options]
        elif f.type == "boolean":
            item["choices"] = [("1", ctx._("yes")), ("0", ctx._("no"))]
        elif f.type == "reference" and f.to:
            # Only references to master data (users, stages, teams ...): their choices are few, and
            # the list page must stay small.
            if f.to not in ctx.crm.catalog or ctx.crm.catalog[f.to].ownable:
                continue
            pairs = _small_choices(ctx, f.to, 30)
            if pairs is None:
                continue
            item["choices"] = [(str(i), t) for i, t in pairs]
        out.append(item)
    return out


def bulk_page(ctx: PageContext) -> Response:
    """POST /admin/{entity}/bulk — run a bulk action on the selected records."""
    entity = ctx.entity()
    ctx.require("read", entity.name)
    form = ctx.form
    action = str(form.get("action") or "")
    back = "/admin/" + entity.name + "/" + (f"?{form.get('query')}" if form.get("query") else "")
    try:
        ids = sorted({int(v) for v in form.getlist("ids")})[:BULK_LIMIT]
    except ValueError:
        raise BadRequest("ids must be numbers") from None
    if not ids:
        return ctx.redirect(back, ctx._("nothing_selected"), "error")
    if action == "export":
        ctx.require("export", entity.name)
        return csv_response(ctx, entity, {"id": {"in": ids}}, None)
    if action == "delete":
        ctx.require("delete", entity.name)
        if form.get("confirm") != "1":
            titles = ctx.store.titles(entity.name, ids)
            return ctx.render(
                "confirm_delete.html",
                entity=entity,
                title=ctx._("confirm_delete_title", n=len(ids)),
                items=[(i, titles.get(i, f"#{i}")) for i in ids],
                back=back,
                query=form.get("query") or "",
            )
        return _run_each(
            ctx,
            entity,
            ids,
            back,
            lambda i: ctx.store.delete(entity.name, i, actor=ctx.actor, source="ui"),
            "bulk_deleted",
        )
    if action == "assign_owner":
        ctx.require("update", entity.name)
        owner = form.get("owner")
        values = {"owner": "$me" if owner == "me" else owner}
        if values["owner"] == "$me":
            values["owner"] = ctx.actor.id
        return _run_each(
            ctx,
            entity,
            ids,
            back,
            lambda i: ctx.store.update(entity.name, i, values, actor=ctx.actor, source="ui"),
            "bulk_done",
        )
    if action == "set_field":
        ctx.require("update", entity.name)
        name = str(form.get("field") or "")
        allowed = {f["name"] for f in settable_fields(ctx, entity)}
        if name not in allowed:
            raise BadRequest(f"cannot set {name!r} in bulk")
        value = form.get("value")
        if entity.fields[name].type == "boolean":
            value = value == "1"
        return _run_each(
            ctx,
            entity,
            ids,
            back,
            lambda i: ctx.store.update(entity.name, i, {name: value}, actor=ctx.actor, source="ui"),
            "bulk_done",
        )
    for item in bulk_actions(ctx, entity):
        if item["name"] == action and item.get("handler"):
            result = item["handler"](
                crm=ctx.crm, entity=entity, ids=ids, actor=ctx.actor, request=ctx.request
            )
            if isinstance(result, Response):
                return result
            return ctx.redirect(back, str(result) if result else None)
    raise BadRequest(f"unknown bulk action {action!r}")


def _run_each(
    ctx: PageContext, entity: Entity, ids: list[int], back: str, fn: Any, done_key: str
) -> Response:
    """Apply ``fn`` to each id (one transaction each); report successes and failures."""
    ok, failed = 0, []
    titles = ctx.store.titles(entity.name, ids)
    for i in ids:
        try:
            fn(i)
            ok += 1
        except CRMError as exc:
            message = exc.errors[0]["message"] if getattr(exc, "errors", None) else str(exc)
            failed.append(f"{titles.get(i, f'#{i}')}: {translate_message(message, ctx.lang)}")
    if ok:
        ctx.flash(ctx._(done_key, n=ok))
    if failed:
        ctx.flash(ctx._("bulk_failed", n=len(failed)) + " " + "; ".join(failed[:10]), "error")
    return ctx.redirect(back)


# ---------------------------------------------------------------------------------------------
# Export and autocomplete
# ---------------------------------------------------------------------------------------------
def export_page(ctx: PageContext) -> Response:
    """GET /admin/{entity}/export.csv — every record matching the list's search and filters."""
    entity = ctx.entity()
    ctx.require("export", entity.name)
    state = parse_state(ctx, entity)
    return csv_response(ctx, entity, state.condition, state.q or None, state.sort or None)


def csv_response(
    ctx: PageContext, entity: Entity, condition: Any, q: str | None, sort: str | None = None
) -> Response:
    """A streamed UTF-8 CSV (with BOM for Excel) of the records the actor may export.

    The one export path of crmkit (:mod:`crmkit.dataio.exporter`): every field the actor may see
    (or ``?columns=list`` / ``?columns=a,b``), labels in the UI language, defused formulas.
    """
    from crmkit.dataio.exporter import build_exporter
    from crmkit.dataio.writers import csv_chunks

    exporter = build_exporter(
        ctx.crm, entity.name, ctx.actor, columns=ctx.query.get("columns") or None, filter=condition, q=q,
        sort=sort, lang=ctx.lang, tz=ctx.tz,
    )
    # Check permission and the query once before streaming starts (errors become proper pages).
    first = exporter.first_page()

    def rows() -> Iterator[bytes]:
        yield from csv_chunks(exporter.header(), exporter.rows(first))

    stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%d-%H%M")
    return StreamingResponse(
        rows(),
        media_type="text/csv; charset=utf-8",
        headers={
            "content-disposition": f'attachment; filename="{entity.name}-{stamp}.csv"',
            "cache-control": "no-store",
        },
    )


def _drain(buf: io.StringIO) -> str:
    text = buf.getvalue()
    buf.seek(0)
    buf.truncate()
    return text


def autocomplete_page(ctx: PageContext) -> Response:
    """GET /admin/{entity}/autocomplete?q= — ``[{"id", "title"}]`` for reference widgets."""
    entity = ctx.entity()
    if not ctx.store.can(ctx.actor, "read", entity.name):
        raise PermissionDenied(ctx._("forbidden_text"))
    q = (ctx.query.get("q") or "").strip()[:100]
    pairs = ctx.store.search_titles(entity.name, q, actor=ctx.actor, limit=10)
    return JSONResponse([{"id": i, "title": t} for i, t in pairs], headers={"cache-control": "no-store"})
