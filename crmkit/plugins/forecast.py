"""Built-in plugin: the sales forecast — Σ amount × probability of open deals, by period and more.

:func:`forecast` is one or two set-based SQL queries (``GROUP BY``), never a loop over deals:

- the deals counted are the open deals the actor may read (RecordStore's restrictions, the same
  as the deal list), filtered by close date range, owner, team, stage and product category;
- rows are grouped by month or quarter of the close date (dates are calendar dates, so a month
  is the same in every time zone; "this month" is taken in the user's zone), or by owner, team,
  stage or product category;
- with a product category (filter or grouping), a deal counts with its line items of that
  category (line total × the deal's probability); deals without line items fall under "none";
- each row also has the won amount of the same group (deals won with a close date in range).

The admin page ``/admin/forecast`` shows a chart and a table with filters; ``/admin/forecast.json``
and ``/admin/forecast.csv`` return the same rows (an API token works there too).
"""

from __future__ import annotations

import csv
import datetime as dt
import decimal
import io
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from crmkit.core import queries
from crmkit.core.actors import Actor
from crmkit.core.errors import BadRequest, PermissionDenied
from crmkit.hookspecs import hookimpl

if TYPE_CHECKING:
    from crmkit.app import CRM
    from crmkit.web.site import PageContext

DEAL, LINE = "deal", "deal_line_item"
CENT = decimal.Decimal("0.01")
PERIODS = ("month", "quarter")
GROUPS = ("period", "owner", "team", "stage", "category")
MAX_MONTHS = 60

UI_STRINGS = {
    "forecast_title": ("Forecast", "売上予測"),
    "forecast_desc": (
        "Open deals: amount × probability, by close date.",
        "進行中の商談の「金額 × 確度」を完了予定日ごとに集計します。",
    ),
    "forecast_period": ("Period", "期間の単位"),
    "forecast_month": ("Month", "月"),
    "forecast_quarter": ("Quarter", "四半期"),
    "forecast_from": ("From", "開始"),
    "forecast_to": ("To", "終了"),
    "forecast_group": ("Group by", "集計軸"),
    "forecast_by_period": ("Period", "期間"),
    "forecast_by_owner": ("Owner", "担当者"),
    "forecast_by_team": ("Team", "チーム"),
    "forecast_by_stage": ("Stage", "フェーズ"),
    "forecast_by_category": ("Product category", "商品カテゴリ"),
    "forecast_owner": ("Owner", "担当者"),
    "forecast_team": ("Team", "チーム"),
    "forecast_stage": ("Stage", "フェーズ"),
    "forecast_category": ("Product category", "商品カテゴリ"),
    "forecast_any": ("Any", "すべて"),
    "forecast_apply": ("Show", "表示"),
    "forecast_deals": ("Open deals", "進行中の件数"),
    "forecast_pipeline": ("Pipeline", "パイプライン金額"),
    "forecast_weighted": ("Forecast (weighted)", "予測金額（加重）"),
    "forecast_won": ("Won", "受注金額"),
    "forecast_total": ("Total", "合計"),
    "forecast_none": ("(none)", "（なし）"),
    "forecast_no_date": ("No close date", "完了予定日なし"),
    "forecast_chart_desc": (
        "Weighted forecast and pipeline per {group}, {start} to {end}; total forecast {total}.",
        "{start}〜{end} の{group}別の予測金額とパイプライン金額。予測合計 {total}。",
    ),
    "forecast_data_table": ("Data table", "データ表"),
    "forecast_download_csv": ("CSV", "CSV"),
    "forecast_download_json": ("JSON", "JSON"),
    "forecast_empty": ("No open deals match.", "条件に合う進行中の商談はありません。"),
}


@dataclass
class ForecastQuery:
    """What to forecast: the close-date range, the bucket size, the grouping and the filters."""

    start: dt.date
    end: dt.date
    period: str = "month"
    group: str = "period"
    owners: list[int] = field(default_factory=list)
    teams: list[int] = field(default_factory=list)
    stages: list[int] = field(default_factory=list)
    category: int | None = None

    def validate(self) -> None:
        """Raise BadRequest naming the bad parameter."""
        if self.period not in PERIODS:
            raise BadRequest(f"period must be one of {', '.join(PERIODS)}")
        if self.group not in GROUPS:
            raise BadRequest(f"group must be one of {', '.join(GROUPS)}")
        if self.end < self.start:
            raise BadRequest("the end date is before the start date")
        if (self.end.year - self.start.year) * 12 + self.end.month - self.start.month >= MAX_MONTHS:
            raise BadRequest(f"the range may span at most {MAX_MONTHS} months")


@dataclass
class ForecastRow:
    """One group: its key (``2026-11``, ``2026-Q4``, an id or None), label and money figures."""

    key: Any
    label: str
    deals: int = 0
    pipeline: decimal.Decimal = decimal.Decimal("0.00")
    weighted: decimal.Decimal = decimal.Decimal("0.00")
    won: decimal.Decimal = decimal.Decimal("0.00")

    def as_dict(self) -> dict[str, Any]:
        return {"key": self.key, "label": self.label, "deals": self.deals, "pipeline": self.pipeline,
                "weighted": self.weighted, "won": self.won}


@dataclass
class Forecast:
    """The rows and their totals."""

    query: ForecastQuery
    rows: list[ForecastRow]

    @property
    def total(self) -> ForecastRow:
        t = ForecastRow("total", "total")
        for r in self.rows:
            t.deals += r.deals
            t.pipeline += r.pipeline
            t.weighted += r.weighted
            t.won += r.won
        return t


# ---------------------------------------------------------------------------------------------
# SQL
# ---------------------------------------------------------------------------------------------
def month_key(conn: sa.Connection, column: Any) -> Any:
    """``'YYYY-MM'`` of a date column, on SQLite and PostgreSQL alike."""
    if conn.dialect.name == "postgresql":
        return sa.func.to_char(column, "YYYY-MM")
    return sa.func.strftime("%Y-%m", column)


def quarter_of(month: str) -> str:
    """``'2026-11'`` -> ``'2026-Q4'``."""
    year, m = month.split("-")
    return f"{year}-Q{(int(m) - 1) // 3 + 1}"


def months_between(start: dt.date, end: dt.date) -> list[str]:
    """Every ``YYYY-MM`` from start's month to end's month."""
    out, y, m = [], start.year, start.month
    while (y, m) <= (end.year, end.month):
        out.append(f"{y:04d}-{m:02d}")
        y, m = (y + 1, 1) if m == 12 else (y, m + 1)
    return out


def _money(value: Any) -> decimal.Decimal:
    if value is None:
        return decimal.Decimal("0.00")
    return decimal.Decimal(str(value)).quantize(CENT, rounding=decimal.ROUND_HALF_UP)


def deal_where(crm: CRM, conn: sa.Connection, actor: Actor, condition: Any) -> Any:
    """WHERE clause over the deal table: ``condition`` AND what the actor may read."""
    store = crm.records
    ent = crm.catalog[DEAL]
    return queries.build_where(conn, crm.catalog, crm.schema.tables, ent, condition, None,
                               store.restrictions(actor, ent), actor.params())


def _deal_condition(q: ForecastQuery) -> dict[str, Any]:
    # Won deals come along (their amount is the "won" column) unless a stage filter asks for open ones.
    statuses = ["open"] if q.stages else ["open", "won"]
    conds: list[Any] = [{"status": {"in": statuses}},
                        {"close_date": {"between": [q.start.isoformat(), q.end.isoformat()]}}]
    if q.owners:
        conds.append({"owner": {"in": q.owners}})
    if q.teams:
        conds.append({"team": {"in": q.teams}})
    if q.stages:
        conds.append({"stage": {"in": q.stages}})
    return {"all": conds}


def _aggregate(crm: CRM, conn: sa.Connection, actor: Actor, q: ForecastQuery) -> dict[str, dict[Any, dict]]:
    """``{status: {group key: {deals, pipeline, weighted}}}`` — one GROUP BY (two with line items)."""
    deal = crm.table(DEAL)
    where = deal_where(crm, conn, actor, _deal_condition(q))
    prob = sa.func.coalesce(deal.c.probability, 0)
    by_lines = q.category is not None or q.group == "category"
    out: dict[str, dict[Any, dict]] = {"open": {}, "won": {}}

    def key_expr(extra: Any = None) -> Any:
        if q.group == "period":
            return month_key(conn, deal.c.close_date)
        if q.group == "category":
            return extra
        return deal.c[q.group]

    def add(rows: Any) -> None:
        for key, status, n, amount, weighted in rows:
            if q.group == "period" and key is not None and q.period == "quarter":
                key = quarter_of(key)
            slot = out.setdefault(status, {}).setdefault(
                key, {"deals": 0, "pipeline": decimal.Decimal(0), "weighted": decimal.Decimal(0)})
            slot["deals"] += int(n or 0)
            slot["pipeline"] += _money(amount)
            slot["weighted"] += _money(weighted)

    if not by_lines:
        amount = sa.func.coalesce(deal.c.amount, 0)
        key = key_expr().label("k")
        stmt = (sa.select(key, deal.c.status, sa.func.count(), sa.func.sum(amount), sa.func.sum(amount * prob) / 100)
                .where(where).group_by(key, deal.c.status))
        add(conn.execute(stmt).all())
        return out
    # One pass over the deals in range: each deal's line items (LEFT JOIN), a deal without lines
    # counting whole under "no category" (key NULL).
    line, product = crm.table(LINE), crm.table("product")
    amount = sa.case((line.c.id.is_(None), sa.func.coalesce(deal.c.amount, 0)),
                     else_=sa.func.coalesce(line.c.line_total, 0))
    key = key_expr(product.c.category).label("k")
    joined = deal.outerjoin(line, line.c.deal == deal.c.id).outerjoin(product, line.c.product == product.c.id)
    conds = [where] + ([product.c.category == q.category] if q.category is not None else [])
    stmt = (sa.select(key, deal.c.status, sa.func.count(sa.distinct(deal.c.id)), sa.func.sum(amount),
                      sa.func.sum(amount * prob) / 100)
            .select_from(joined).where(*conds).group_by(key, deal.c.status))
    add(conn.execute(stmt).all())
    return out


def forecast(crm: CRM, actor: Actor, q: ForecastQuery, lang: str = "en") -> Forecast:
    """The forecast for ``q`` as the actor may see it (see the module docstring)."""
    q.validate()
    store = crm.records
    if not store.can(actor, "read", DEAL):
        raise PermissionDenied("you may not read deals")
    with crm.engine.connect() as conn:
        found = _aggregate(crm, conn, actor, q)
    open_, won = found["open"], found["won"]
    keys = _ordered_keys(crm, q, set(open_) | set(won))
    labels = _labels(crm, q, keys, lang)
    rows = []
    for key in keys:
        o, w = open_.get(key, {}), won.get(key, {})
        rows.append(ForecastRow(key, labels.get(key, str(key)), o.get("deals", 0),
                                _money(o.get("pipeline")), _money(o.get("weighted")), _money(w.get("pipeline"))))
    return Forecast(q, rows)


def _ordered_keys(crm: CRM, q: ForecastQuery, keys: set[Any]) -> list[Any]:
    if q.group == "period":
        months = months_between(q.start, q.end)
        periods = months if q.period == "month" else list(dict.fromkeys(quarter_of(m) for m in months))
        return periods  # every period in range, empty ones too (a timeline has no gaps)
    if q.group == "stage":
        t = crm.table("deal_stage")
        with crm.engine.connect() as conn:
            order = [r[0] for r in conn.execute(sa.select(t.c.id).order_by(t.c.sort_order, t.c.id))]
        return [k for k in order if k in keys] + sorted((k for k in keys if k not in order), key=str)
    real = sorted((k for k in keys if k is not None), key=lambda k: (str(type(k)), k))
    return real + ([None] if None in keys else [])


def _labels(crm: CRM, q: ForecastQuery, keys: list[Any], lang: str) -> dict[Any, str]:
    from crmkit.web.i18n import t

    none = t("forecast_none", lang, extra=UI_STRINGS)
    if q.group == "period":
        return {k: k for k in keys}
    target = {"owner": "user", "team": "team", "stage": "deal_stage", "category": "product_category"}[q.group]
    titles = crm.records.titles(target, [k for k in keys if k is not None])
    return {k: (titles.get(k, f"#{k}") if k is not None else none) for k in keys}


# ---------------------------------------------------------------------------------------------
# Request parsing and output
# ---------------------------------------------------------------------------------------------
def _ids(values: list[str], name: str) -> list[int]:
    out = []
    for v in values:
        if not v.strip():
            continue
        if not v.strip().isdigit():
            raise BadRequest(f"{name} must be record ids")
        out.append(int(v))
    return out


def default_range(today: dt.date, period: str) -> tuple[dt.date, dt.date]:
    """From the first day of this quarter, twelve months (four quarters) ahead."""
    first_month = (today.month - 1) // 3 * 3 + 1
    start = dt.date(today.year, first_month, 1)
    y, m = start.year + (start.month + 11 - 1) // 12, (start.month + 11 - 1) % 12 + 1
    end = (dt.date(y + (m == 12), m % 12 + 1, 1) - dt.timedelta(days=1))
    return start, end


def query_from_request(ctx: PageContext) -> ForecastQuery:
    """A ForecastQuery from the page's query string (BadRequest names a bad parameter)."""
    qp = ctx.query
    period = qp.get("period") or "month"
    today = dt.datetime.now(ctx.tz).date()
    start, end = default_range(today, period)
    try:
        if qp.get("from"):
            start = dt.date.fromisoformat(qp["from"] + ("-01" if len(qp["from"]) == 7 else ""))
        if qp.get("to"):
            raw = qp["to"]
            if len(raw) == 7:  # a month: up to its last day
                y, m = int(raw[:4]), int(raw[5:7])
                end = dt.date(y + (m == 12), m % 12 + 1, 1) - dt.timedelta(days=1)
            else:
                end = dt.date.fromisoformat(raw)
    except ValueError:
        raise BadRequest("from/to must be dates (YYYY-MM-DD or YYYY-MM)") from None
    category = _ids(qp.getlist("category"), "category")
    q = ForecastQuery(
        start=start, end=end, period=period, group=qp.get("group") or "period",
        owners=_ids(qp.getlist("owner"), "owner"), teams=_ids(qp.getlist("team"), "team"),
        stages=_ids(qp.getlist("stage"), "stage"), category=category[0] if category else None,
    )
    q.validate()
    return q


def csv_text(result: Forecast, headers: list[str]) -> str:
    """The rows as CSV (UTF-8 with BOM so spreadsheet programs read Japanese correctly)."""
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(headers)
    for r in result.rows:
        w.writerow([r.key if r.key is not None else "", r.label, r.deals, r.pipeline, r.weighted, r.won])
    return "\ufeff" + buf.getvalue()


def _choices(ctx: PageContext, entity: str) -> list[tuple[int, str]]:
    if entity not in ctx.crm.catalog or not ctx.store.can(ctx.actor, "read", entity):
        return []
    page = ctx.store.list(entity, actor=ctx.actor, limit=200, with_count=False,
                          columns=[ctx.crm.catalog[entity].title_field])
    titles = ctx.store.titles(entity, [r["id"] for r in page.items])
    return [(r["id"], titles.get(r["id"], f"#{r['id']}")) for r in page.items]


def forecast_page(ctx: PageContext) -> Response:
    """GET /admin/forecast[.json|.csv]."""
    from crmkit.web.charts import Chart, Series, bar_chart, hbar_chart
    from crmkit.web.templating import format_money

    ctx.require("read", DEAL)
    q = query_from_request(ctx)
    result = forecast(ctx.crm, ctx.actor, q, ctx.lang)
    fmt = ctx.request.url.path.rsplit(".", 1)[-1] if "." in ctx.request.url.path else "html"
    headers = ["key", "label", "deals", "pipeline", "weighted", "won"]
    if fmt == "json":
        total = result.total
        return JSONResponse(
            {"query": {"from": q.start.isoformat(), "to": q.end.isoformat(), "period": q.period, "group": q.group,
                       "owner": q.owners, "team": q.teams, "stage": q.stages, "category": q.category},
             "rows": [_jsonable(r.as_dict()) for r in result.rows],
             "total": _jsonable({k: v for k, v in total.as_dict().items() if k not in ("key", "label")})},
            headers={"cache-control": "no-store"},
        )
    if fmt == "csv":
        stamp = dt.date.today().isoformat()
        return Response(csv_text(result, headers), media_type="text/csv; charset=utf-8", headers={
            "content-disposition": f'attachment; filename="forecast-{stamp}.csv"', "cache-control": "no-store"})
    _ = ctx._
    group_label = _(f"forecast_by_{q.group}")
    total = result.total
    chart = Chart(
        title=f"{_('forecast_title')} · {group_label}",
        desc=_("forecast_chart_desc", group=group_label, start=q.start.isoformat(), end=q.end.isoformat(),
               total=format_money(total.weighted)),
        categories=[r.label if q.group != "period" or r.key else _("forecast_no_date") for r in result.rows],
        series=[Series(_("forecast_weighted"), [r.weighted for r in result.rows]),
                Series(_("forecast_pipeline"), [r.pipeline for r in result.rows], "#94a3b8"),
                Series(_("forecast_won"), [r.won for r in result.rows], "#16a34a")],
        fmt=format_money, table_label=_("forecast_data_table"), category_label=group_label,
    )
    if q.group == "period":
        svg = bar_chart(chart)
    else:
        chart.series = chart.series[:1]
        svg = hbar_chart(chart)
    query = ctx.request.url.query
    return ctx.render(
        "reports/forecast.html",
        title=_("forecast_title"),
        q=q,
        chart=svg,
        rows=[{**r.as_dict(), "pipeline": format_money(r.pipeline), "weighted": format_money(r.weighted),
               "won": format_money(r.won)} for r in result.rows],
        total={"deals": total.deals, "pipeline": format_money(total.pipeline),
               "weighted": format_money(total.weighted), "won": format_money(total.won)},
        owners=_choices(ctx, "user"), teams=_choices(ctx, "team"), stages=_open_stages(ctx),
        categories=_choices(ctx, "product_category"),
        json_url="/admin/forecast.json" + (f"?{query}" if query else ""),
        csv_url="/admin/forecast.csv" + (f"?{query}" if query else ""),
        periods=PERIODS, groups=GROUPS,
    )


def _open_stages(ctx: PageContext) -> list[tuple[int, str]]:
    page = ctx.store.list("deal_stage", actor=ctx.actor, limit=100, with_count=False, sort="sort_order",
                          filter={"any": [{"is_closed": False}, {"is_closed": {"is_null": True}}]})
    return [(r["id"], r["name"]) for r in page.items]


def _jsonable(d: dict[str, Any]) -> dict[str, Any]:
    return {k: (str(v) if isinstance(v, decimal.Decimal) else v) for k, v in d.items()}


# ---------------------------------------------------------------------------------------------
# Hooks
# ---------------------------------------------------------------------------------------------
@hookimpl
def register_ui_strings(crm):
    """The forecast page's words."""
    return UI_STRINGS


@hookimpl
def register_routes(crm):
    """The forecast page and its JSON/CSV twins."""
    if DEAL not in crm.catalog:
        return None
    from crmkit.web.site import admin_page

    page = admin_page(forecast_page)
    return [Route(p, page, methods=["GET", "HEAD"]) for p in
            ("/admin/forecast", "/admin/forecast.json", "/admin/forecast.csv")]


@hookimpl
def menu_links(crm, actor, request):
    """A "Forecast" link after Deals for those who may read deals."""
    if actor is None or DEAL not in crm.catalog or not crm.records.can(actor, "read", DEAL):
        return None
    from crmkit.web.i18n import t

    lang = getattr(request.state, "crmkit_lang", None) or actor.locale
    return [{"href": "/admin/forecast", "label": t("forecast_title", lang, extra=UI_STRINGS), "icon": "chart",
             "after": DEAL}]


@hookimpl
def extra_css_urls(crm, template, request):
    """The charts' and reports' stylesheet."""
    from crmkit.web.site import admin_site

    return [admin_site(crm).static_url("reports.css")]
