"""Built-in plugin: sales reports with charts rendered on the server (no JavaScript, no CDN).

- **Pipeline by stage**: open deals per stage — count, amount, weighted amount.
- **Lead sources**: per lead source, leads and converted leads (conversion rate), deals won
  and won revenue.
- **Marketing activities**: the same per marketing activity, with its cost and the ROI
  ``(won revenue − cost) / cost``.
- **RFM ranking**: accounts ranked by the recency, frequency and monetary value of their won
  deals, each scored 1–5 by quintile (``1 + ⌊5 × (rank − 1) / n⌋`` over ascending values, ties
  sharing the lower rank), so 5 is the best fifth.

Every figure is one ``GROUP BY`` (or window function) query in SQL over what the actor may read
(RecordStore's restrictions for deals, leads and accounts), identical on SQLite and PostgreSQL;
money stays Decimal. Dates: a lead's creation time is compared with day boundaries taken in the
user's time zone; deals use their close date (a calendar date). Each page answers ``?format=json``
and ``?format=csv`` too.
"""

from __future__ import annotations

import csv
import datetime as dt
import decimal
import io
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from crmkit.core import queries
from crmkit.core.actors import Actor
from crmkit.core.errors import BadRequest, PermissionDenied
from crmkit.hookspecs import hookimpl
from crmkit.plugins.forecast import CENT, _money

if TYPE_CHECKING:
    from crmkit.app import CRM
    from crmkit.web.site import PageContext

DEAL, LEAD, CAMPAIGN, ACCOUNT = "deal", "lead", "marketing_activity", "account"
CONVERTED = "converted"
RFM_LIMIT = 100

UI_STRINGS = {
    "reports_title": ("Reports", "レポート"),
    "reports_pipeline": ("Pipeline", "パイプライン"),
    "reports_pipeline_by_stage": ("Pipeline by stage", "フェーズ別パイプライン"),
    "reports_pipeline_desc": ("Open deals per stage: {n} deals, {amount} in total.",
                              "フェーズ別の進行中の商談：{n} 件、合計 {amount}。"),
    "reports_forecast_by_month": ("Forecast by month", "月別の売上予測"),
    "reports_sources": ("Lead sources", "リードソース別"),
    "reports_sources_desc": ("Leads, conversion rate and won revenue per lead source.",
                             "リードソースごとのリード数・取引開始率・受注金額です。"),
    "reports_campaigns": ("Marketing ROI", "施策のROI"),
    "reports_campaigns_desc": ("Leads, conversion and won revenue per marketing activity, against its cost.",
                               "マーケティング施策ごとのリード数・取引開始率・受注金額と費用対効果です。"),
    "reports_rfm": ("Customer ranking (RFM)", "顧客ランキング（RFM）"),
    "reports_rfm_desc": ("Accounts by recency, frequency and monetary value of won deals; scores 1–5 by quintile.",
                         "受注の最終日（R）・回数（F）・金額（M）で取引先を5段階評価します。"),
    "reports_stage": ("Stage", "フェーズ"),
    "reports_deals": ("Deals", "商談数"),
    "reports_amount": ("Amount", "金額"),
    "reports_weighted": ("Weighted", "加重金額"),
    "reports_source": ("Lead source", "リードソース"),
    "reports_campaign": ("Marketing activity", "マーケティング施策"),
    "reports_leads": ("Leads", "リード数"),
    "reports_converted": ("Converted", "取引開始"),
    "reports_conversion_rate": ("Conversion rate", "取引開始率"),
    "reports_won_deals": ("Won deals", "受注件数"),
    "reports_won_revenue": ("Won revenue", "受注金額"),
    "reports_cost": ("Cost", "費用"),
    "reports_roi": ("ROI", "ROI"),
    "reports_period": ("Period", "期間"),
    "reports_from": ("From", "開始"),
    "reports_to": ("To", "終了"),
    "reports_apply": ("Show", "表示"),
    "reports_none": ("(none)", "（なし）"),
    "reports_total": ("Total", "合計"),
    "reports_account": ("Account", "取引先"),
    "reports_last_won": ("Last won", "最終受注日"),
    "reports_days": ("Days since", "経過日数"),
    "reports_frequency": ("Won deals", "受注回数"),
    "reports_monetary": ("Won revenue", "受注金額"),
    "reports_r": ("R", "R"),
    "reports_f": ("F", "F"),
    "reports_m": ("M", "M"),
    "reports_score": ("RFM", "RFM"),
    "reports_segment": ("Segment", "セグメント"),
    "reports_customers": ("{n} customers ranked", "{n} 社をランク付け"),
    "reports_grid": ("Customers by recency (R) and frequency (F)", "R（最近性）とF（頻度）ごとの顧客数"),
    "reports_segments": ("Customers per segment", "セグメント別の顧客数"),
    "reports_seg_champions": ("Champions", "優良顧客"),
    "reports_seg_loyal": ("Loyal", "ロイヤル顧客"),
    "reports_seg_new": ("Promising", "新規・有望"),
    "reports_seg_at_risk": ("At risk", "離反の恐れ"),
    "reports_seg_hibernating": ("Hibernating", "休眠"),
    "reports_seg_others": ("Others", "その他"),
    "reports_data_table": ("Data table", "データ表"),
    "reports_empty": ("Nothing to show yet.", "表示するデータはまだありません。"),
    "reports_won_vs_cost": ("Won revenue and cost per marketing activity", "施策ごとの受注金額と費用"),
    "reports_rate_chart": ("Conversion rate per lead source (%)", "リードソース別の取引開始率（%）"),
    "reports_revenue_chart": ("Won revenue per lead source", "リードソース別の受注金額"),
}
SEGMENTS = ("champions", "loyal", "new", "at_risk", "hibernating", "others")


# ---------------------------------------------------------------------------------------------
# SQL helpers
# ---------------------------------------------------------------------------------------------
def where_for(crm: CRM, conn: sa.Connection, actor: Actor, entity: str, condition: Any = None) -> Any:
    """``condition`` AND the actor's read restrictions on ``entity``, as a WHERE clause."""
    store = crm.records
    if not store.can(actor, "read", entity):
        raise PermissionDenied(f"you may not read {entity} records")
    ent = crm.catalog[entity]
    return queries.build_where(conn, crm.catalog, crm.schema.tables, ent, condition, None,
                               store.restrictions(actor, ent), actor.params())


def _rate(part: int, whole: int) -> decimal.Decimal | None:
    if not whole:
        return None
    return (decimal.Decimal(part) * 100 / decimal.Decimal(whole)).quantize(decimal.Decimal("0.1"),
                                                                           rounding=decimal.ROUND_HALF_UP)


def _roi(revenue: decimal.Decimal, cost: decimal.Decimal | None) -> decimal.Decimal | None:
    if cost is None or cost <= 0:
        return None
    return ((revenue - cost) * 100 / cost).quantize(decimal.Decimal("0.1"), rounding=decimal.ROUND_HALF_UP)


@dataclass
class Period:
    """An optional date range: deals by close date, leads by creation time in ``tz``."""

    start: dt.date | None = None
    end: dt.date | None = None
    tz: dt.tzinfo = dt.UTC

    def deal_condition(self) -> list[Any]:
        out: list[Any] = []
        if self.start:
            out.append({"close_date": {"gte": self.start.isoformat()}})
        if self.end:
            out.append({"close_date": {"lte": self.end.isoformat()}})
        return out

    def lead_condition(self) -> list[Any]:
        out: list[Any] = []
        if self.start:
            begin = dt.datetime(self.start.year, self.start.month, self.start.day, tzinfo=self.tz)
            out.append({"created_at": {"gte": begin.astimezone(dt.UTC).isoformat()}})
        if self.end:
            after = dt.datetime(self.end.year, self.end.month, self.end.day, tzinfo=self.tz) + dt.timedelta(days=1)
            out.append({"created_at": {"lt": after.astimezone(dt.UTC).isoformat()}})
        return out


def _all(conds: Sequence[Any]) -> Any:
    conds = [c for c in conds if c]
    if not conds:
        return None
    return conds[0] if len(conds) == 1 else {"all": list(conds)}


# ---------------------------------------------------------------------------------------------
# Reports (plain functions: the pages, JSON/CSV and tests call them)
# ---------------------------------------------------------------------------------------------
def pipeline_by_stage(crm: CRM, actor: Actor) -> list[dict[str, Any]]:
    """Open deals per open stage (in stage order, empty stages included)."""
    deal, stage = crm.table(DEAL), crm.table("deal_stage")
    with crm.engine.connect() as conn:
        where = where_for(crm, conn, actor, DEAL, {"status": "open"})
        amount = sa.func.coalesce(deal.c.amount, 0)
        prob = sa.func.coalesce(deal.c.probability, 0)
        totals = {
            r[0]: r for r in conn.execute(
                sa.select(deal.c.stage, sa.func.count(), sa.func.sum(amount), sa.func.sum(amount * prob) / 100)
                .where(where).group_by(deal.c.stage)
            )
        }
        stages = conn.execute(sa.select(stage.c.id, stage.c.name, stage.c.color, stage.c.is_closed)
                              .order_by(stage.c.sort_order, stage.c.id)).all()
    rows = []
    for sid, name, color, closed in stages:
        t = totals.get(sid)
        if closed and not t:
            continue
        rows.append({"stage": sid, "label": name, "color": color, "deals": int(t[1]) if t else 0,
                     "amount": _money(t[2] if t else 0), "weighted": _money(t[3] if t else 0)})
    return rows


def _lead_counts(crm: CRM, conn: sa.Connection, actor: Actor, column: str, period: Period) -> dict[Any, tuple]:
    lead = crm.table(LEAD)
    where = where_for(crm, conn, actor, LEAD, _all(period.lead_condition()))
    converted = sa.func.sum(sa.case((lead.c.status == CONVERTED, 1), else_=0))
    return {r[0]: (int(r[1]), int(r[2] or 0)) for r in conn.execute(
        sa.select(lead.c[column], sa.func.count(), converted).where(where).group_by(lead.c[column]))}


def _won_totals(crm: CRM, conn: sa.Connection, actor: Actor, column: str, period: Period) -> dict[Any, tuple]:
    deal = crm.table(DEAL)
    where = where_for(crm, conn, actor, DEAL, _all([{"status": "won"}, *period.deal_condition()]))
    return {r[0]: (int(r[1]), _money(r[2])) for r in conn.execute(
        sa.select(deal.c[column], sa.func.count(), sa.func.sum(sa.func.coalesce(deal.c.amount, 0)))
        .where(where).group_by(deal.c[column]))}


def by_lead_source(crm: CRM, actor: Actor, period: Period | None = None, lang: str = "en") -> list[dict[str, Any]]:
    """Per lead source: leads, converted, conversion rate %, won deals and won revenue."""
    from crmkit.web.i18n import t

    period = period or Period()
    with crm.engine.connect() as conn:
        leads = _lead_counts(crm, conn, actor, "source", period) if "source" in crm.catalog[LEAD].fields else {}
        won = _won_totals(crm, conn, actor, "source", period) if "source" in crm.catalog[DEAL].fields else {}
    options: dict[str, str] = {}
    for ent in (DEAL, LEAD):
        f = crm.catalog[ent].fields.get("source")
        for o in f.options if f is not None else ():
            options.setdefault(o.value, o.text(lang))
    keys = [k for k in options if k in leads or k in won]
    keys += sorted(k for k in set(leads) | set(won) if k not in options and k is not None)
    if None in leads or None in won:
        keys.append(None)
    rows = []
    for key in keys:
        n, conv = leads.get(key, (0, 0))
        wn, revenue = won.get(key, (0, decimal.Decimal("0.00")))
        rows.append({"source": key, "label": options.get(key, key) if key is not None else
                     t("reports_none", lang, extra=UI_STRINGS), "leads": n, "converted": conv,
                     "conversion_rate": _rate(conv, n), "won_deals": wn, "won_revenue": revenue})
    return rows


def by_marketing_activity(crm: CRM, actor: Actor, period: Period | None = None) -> list[dict[str, Any]]:
    """Per marketing activity: leads, converted, rate, won deals, won revenue, cost and ROI %."""
    period = period or Period()
    camp = crm.table(CAMPAIGN)
    with crm.engine.connect() as conn:
        leads = _lead_counts(crm, conn, actor, CAMPAIGN, period) if CAMPAIGN in crm.catalog[LEAD].fields else {}
        won = _won_totals(crm, conn, actor, CAMPAIGN, period) if CAMPAIGN in crm.catalog[DEAL].fields else {}
        where = where_for(crm, conn, actor, CAMPAIGN)
        activities = conn.execute(
            sa.select(camp.c.id, camp.c.name, camp.c.cost, camp.c.start_date, camp.c.end_date).where(where)
            .order_by(camp.c.start_date.desc(), camp.c.id.desc())
        ).all()
    rows = []
    for aid, name, cost, start, end in activities:
        n, conv = leads.get(aid, (0, 0))
        wn, revenue = won.get(aid, (0, decimal.Decimal("0.00")))
        cost = _money(cost) if cost is not None else None
        rows.append({"activity": aid, "label": name, "start_date": start, "end_date": end, "leads": n,
                     "converted": conv, "conversion_rate": _rate(conv, n), "won_deals": wn, "won_revenue": revenue,
                     "cost": cost, "roi": _roi(revenue, cost)})
    return rows


def segment(r: int, f: int, m: int) -> str:
    """A simple RFM segment name from the three scores."""
    if r >= 4 and f >= 4 and m >= 4:
        return "champions"
    if r >= 3 and f >= 4:
        return "loyal"
    if r >= 4 and f <= 2:
        return "new"
    if r <= 2 and f >= 3:
        return "at_risk"
    if r <= 2 and f <= 2:
        return "hibernating"
    return "others"


@dataclass
class RFMResult:
    """The top-ranked accounts, how many were ranked, and the R × F grid of counts."""

    rows: list[dict[str, Any]]
    total: int
    grid: dict[tuple[int, int], int]
    segments: dict[str, int]


def rfm(crm: CRM, actor: Actor, *, as_of: dt.date, since: dt.date | None = None, limit: int = RFM_LIMIT) -> RFMResult:
    """Rank accounts by their won deals (close date on or before ``as_of``, after ``since``)."""
    deal = crm.table(DEAL)
    conds: list[Any] = [{"status": "won"}, {"close_date": {"lte": as_of.isoformat()}},
                        {"account": {"is_null": False}}]
    if since:
        conds.append({"close_date": {"gte": since.isoformat()}})
    with crm.engine.connect() as conn:
        where = where_for(crm, conn, actor, DEAL, {"all": conds})
        agg = (
            sa.select(deal.c.account.label("account"), sa.func.max(deal.c.close_date).label("last"),
                      sa.func.count().label("freq"), sa.func.sum(sa.func.coalesce(deal.c.amount, 0)).label("money"))
            .where(where).group_by(deal.c.account).subquery("agg")
        )
        n = sa.func.count().over()

        def score(col: Any) -> Any:
            # Quintile by rank over ascending values; ties share the lower rank.
            return (1 + (5 * (sa.func.rank().over(order_by=col) - 1)) // n)

        scored = sa.select(agg.c.account, agg.c.last, agg.c.freq, agg.c.money, score(agg.c.last).label("r"),
                           score(agg.c.freq).label("f"), score(agg.c.money).label("m")).cte("scored")
        # One statement: the scored CTE is computed once (both databases materialise a CTE used twice)
        # and feeds both the top rows and the R × F × M counts.
        order = [(scored.c.r + scored.c.f + scored.c.m).desc(), scored.c.money.desc(), scored.c.account]
        top = (sa.select(scored.c.account, scored.c.last, scored.c.freq, scored.c.money, scored.c.r, scored.c.f,
                         scored.c.m, sa.cast(sa.null(), sa.Integer).label("cnt"))
               .order_by(*order).limit(limit).subquery("top"))
        grid_q = sa.select(sa.cast(sa.null(), deal.c.account.type), sa.cast(sa.null(), deal.c.close_date.type),
                           sa.cast(sa.null(), sa.Integer), sa.cast(sa.null(), deal.c.amount.type),
                           scored.c.r, scored.c.f, scored.c.m, sa.func.count()).group_by(scored.c.r, scored.c.f,
                                                                                         scored.c.m)
        both = conn.execute(sa.union_all(sa.select(*top.c), grid_q)).all()
    keys = ("account", "last", "freq", "money", "r", "f", "m")
    # UNION ALL keeps no order: sort the (at most ``limit``) top rows again, the same way.
    top = sorted((dict(zip(keys, row[:7], strict=True)) for row in both if row[7] is None),
                 key=lambda t: (-(t["r"] + t["f"] + t["m"]), -(t["money"] or 0), t["account"]))
    grid_rows = [(row[4], row[5], row[6], row[7]) for row in both if row[7] is not None]
    total = sum(int(c) for *_k, c in grid_rows)
    grid: dict[tuple[int, int], int] = {}
    segments = dict.fromkeys(SEGMENTS, 0)
    for r, f, m, c in grid_rows:
        grid[(int(r), int(f))] = grid.get((int(r), int(f)), 0) + int(c)
        segments[segment(int(r), int(f), int(m))] += int(c)
    titles = crm.records.titles(ACCOUNT, [row["account"] for row in top])
    last_of = lambda v: v if isinstance(v, dt.date) else dt.date.fromisoformat(str(v)[:10])  # noqa: E731
    rows = [
        {"account": row["account"], "label": titles.get(row["account"], f"#{row['account']}"),
         "last_won": last_of(row["last"]), "days": (as_of - last_of(row["last"])).days, "frequency": int(row["freq"]),
         "monetary": _money(row["money"]), "r": int(row["r"]), "f": int(row["f"]), "m": int(row["m"]),
         "score": int(row["r"]) + int(row["f"]) + int(row["m"]), "segment": segment(int(row["r"]), int(row["f"]),
                                                                                     int(row["m"]))}
        for row in top
    ]
    return RFMResult(rows, total, grid, segments)


# ---------------------------------------------------------------------------------------------
# Pages
# ---------------------------------------------------------------------------------------------
def _period(ctx: PageContext) -> Period:
    out = Period(tz=ctx.tz)
    try:
        if ctx.query.get("from"):
            out.start = dt.date.fromisoformat(ctx.query["from"])
        if ctx.query.get("to"):
            out.end = dt.date.fromisoformat(ctx.query["to"])
    except ValueError:
        raise BadRequest("from/to must be dates (YYYY-MM-DD)") from None
    if out.start and out.end and out.end < out.start:
        raise BadRequest("the end date is before the start date")
    return out


def _jsonable(value: Any) -> Any:
    if isinstance(value, decimal.Decimal):
        return str(value)
    if isinstance(value, dt.date):
        return value.isoformat()
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_jsonable(v) for v in value]
    return value


def _data_response(ctx: PageContext, name: str, rows: list[dict[str, Any]], columns: list[str],
                   extra: dict[str, Any] | None = None) -> Response | None:
    """JSON or CSV of ``rows`` when ``?format=`` asks for it, else None."""
    fmt = ctx.query.get("format")
    if fmt == "json":
        return JSONResponse(_jsonable({"rows": rows, **(extra or {})}), headers={"cache-control": "no-store"})
    if fmt == "csv":
        buf = io.StringIO()
        w = csv.writer(buf)
        w.writerow(columns)
        for r in rows:
            w.writerow(["" if r.get(c) is None else _jsonable(r.get(c)) for c in columns])
        return Response("\ufeff" + buf.getvalue(), media_type="text/csv; charset=utf-8", headers={
            "content-disposition": f'attachment; filename="{name}-{dt.date.today().isoformat()}.csv"',
            "cache-control": "no-store"})
    if fmt not in (None, "", "html"):
        raise BadRequest("format must be json or csv")
    return None


def _pct(value: decimal.Decimal | None) -> str:
    return "—" if value is None else f"{value}%"


def pipeline_page(ctx: PageContext) -> Response:
    """GET /admin/reports/ — pipeline by stage and forecast by month."""
    from crmkit.plugins.forecast import ForecastQuery, default_range, forecast
    from crmkit.web.charts import Chart, Series, bar_chart, hbar_chart
    from crmkit.web.templating import format_money

    ctx.require("read", DEAL)
    _ = ctx._
    rows = pipeline_by_stage(ctx.crm, ctx.actor)
    data = _data_response(ctx, "pipeline", rows, ["stage", "label", "deals", "amount", "weighted"])
    if data is not None:
        return data
    total_amount = sum((r["amount"] for r in rows), decimal.Decimal("0.00"))
    pipe_chart = hbar_chart(Chart(
        title=_("reports_pipeline_by_stage"),
        desc=_("reports_pipeline_desc", n=sum(r["deals"] for r in rows), amount=format_money(total_amount)),
        categories=[r["label"] for r in rows], series=[Series(_("reports_amount"), [r["amount"] for r in rows])],
        colors=[r["color"] for r in rows], fmt=format_money, table_label=_("reports_data_table"),
        category_label=_("reports_stage"),
    ))
    start, end = default_range(dt.datetime.now(ctx.tz).date(), "month")
    fc = forecast(ctx.crm, ctx.actor, ForecastQuery(start=start, end=end), ctx.lang)
    fc_chart = bar_chart(Chart(
        title=_("reports_forecast_by_month"),
        desc=_("forecast_chart_desc", group=_("forecast_month"), start=start.isoformat(), end=end.isoformat(),
               total=format_money(fc.total.weighted)),
        categories=[r.label for r in fc.rows],
        series=[Series(_("forecast_weighted"), [r.weighted for r in fc.rows]),
                Series(_("forecast_won"), [r.won for r in fc.rows], "#16a34a")],
        fmt=format_money, table_label=_("reports_data_table"), category_label=_("forecast_month"),
    ))
    return ctx.render(
        "reports/pipeline.html", title=_("reports_title"), pipe_chart=pipe_chart, fc_chart=fc_chart,
        rows=[{**r, "amount": format_money(r["amount"]), "weighted": format_money(r["weighted"])} for r in rows],
        total={"deals": sum(r["deals"] for r in rows), "amount": format_money(total_amount),
               "weighted": format_money(sum((r["weighted"] for r in rows), decimal.Decimal(0)))},
    )


def sources_page(ctx: PageContext) -> Response:
    """GET /admin/reports/sources — conversion and won revenue by lead source."""
    from crmkit.web.charts import Chart, Series, hbar_chart
    from crmkit.web.templating import format_money

    ctx.require("read", LEAD)
    ctx.require("read", DEAL)
    _ = ctx._
    period = _period(ctx)
    rows = by_lead_source(ctx.crm, ctx.actor, period, ctx.lang)
    data = _data_response(ctx, "lead-sources", rows,
                          ["source", "label", "leads", "converted", "conversion_rate", "won_deals", "won_revenue"])
    if data is not None:
        return data
    cats = [r["label"] for r in rows]
    charts = [
        hbar_chart(Chart(title=_("reports_revenue_chart"), desc=_("reports_sources_desc"), categories=cats,
                         series=[Series(_("reports_won_revenue"), [r["won_revenue"] for r in rows], "#16a34a")],
                         fmt=format_money, table_label=_("reports_data_table"), category_label=_("reports_source"))),
        hbar_chart(Chart(title=_("reports_rate_chart"), desc=_("reports_sources_desc"), categories=cats,
                         series=[Series(_("reports_conversion_rate"), [r["conversion_rate"] for r in rows])],
                         fmt=_pct, table_label=_("reports_data_table"), category_label=_("reports_source"))),
    ]
    return ctx.render("reports/sources.html", title=_("reports_sources"), period=period, charts=charts,
                      rows=[_shown(r) for r in rows], total=_totals(rows))


def campaigns_page(ctx: PageContext) -> Response:
    """GET /admin/reports/campaigns — per marketing activity, with cost and ROI."""
    from crmkit.web.charts import Chart, Series, bar_chart
    from crmkit.web.templating import format_money

    ctx.require("read", CAMPAIGN)
    ctx.require("read", DEAL)
    _ = ctx._
    period = _period(ctx)
    rows = by_marketing_activity(ctx.crm, ctx.actor, period)
    data = _data_response(ctx, "marketing-roi", rows, ["activity", "label", "start_date", "end_date", "leads",
                                                        "converted", "conversion_rate", "won_deals", "won_revenue",
                                                        "cost", "roi"])
    if data is not None:
        return data
    chart = bar_chart(Chart(
        title=_("reports_won_vs_cost"), desc=_("reports_campaigns_desc"), categories=[r["label"] for r in rows],
        series=[Series(_("reports_won_revenue"), [r["won_revenue"] for r in rows], "#16a34a"),
                Series(_("reports_cost"), [r["cost"] for r in rows], "#ea580c")],
        fmt=format_money, table_label=_("reports_data_table"), category_label=_("reports_campaign"),
    ))
    shown = [{**_shown(r), "cost": format_money(r["cost"]) if r["cost"] is not None else "—",
              "roi": _pct(r["roi"]),
              "roi_class": "" if r["roi"] is None else ("roi-neg" if r["roi"] < 0 else "roi-pos")}
             for r in rows]
    return ctx.render("reports/campaigns.html", title=_("reports_campaigns"), period=period, chart=chart,
                      rows=shown, total=_totals(rows, with_cost=True))


def rfm_page(ctx: PageContext) -> Response:
    """GET /admin/reports/rfm — the RFM ranking."""
    from crmkit.web.charts import Chart, Series, hbar_chart
    from crmkit.web.templating import format_money

    ctx.require("read", DEAL)
    _ = ctx._
    today = dt.datetime.now(ctx.tz).date()
    months = ctx.query.get("months") or ""
    if months and (not months.isdigit() or not 1 <= int(months) <= 240):
        raise BadRequest("months must be a whole number from 1 to 240")
    since = None
    if months:
        m = today.month - int(months)
        y = today.year + (m - 1) // 12
        since = dt.date(y, (m - 1) % 12 + 1, 1)
    limit = ctx.query.get("limit") or str(RFM_LIMIT)
    if not limit.isdigit() or not 1 <= int(limit) <= 1000:
        raise BadRequest("limit must be a whole number from 1 to 1000")
    result = rfm(ctx.crm, ctx.actor, as_of=today, since=since, limit=int(limit))
    data = _data_response(ctx, "rfm", result.rows, ["account", "label", "last_won", "days", "frequency",
                                                    "monetary", "r", "f", "m", "score", "segment"],
                          {"total": result.total, "segments": result.segments})
    if data is not None:
        return data
    seg_labels = [_(f"reports_seg_{s}") for s in SEGMENTS]
    chart = hbar_chart(Chart(
        title=_("reports_segments"), desc=_("reports_customers", n=result.total), categories=seg_labels,
        series=[Series(_("reports_customers", n=""), [result.segments[s] for s in SEGMENTS])],
        colors=["#16a34a", "#2563eb", "#0891b2", "#ea580c", "#64748b", "#94a3b8"],
        table_label=_("reports_data_table"), category_label=_("reports_segment"),
    ))
    rows = [{**r, "monetary": format_money(r["monetary"]), "segment_label": _(f"reports_seg_{r['segment']}")}
            for r in result.rows]
    biggest = max(result.grid.values(), default=0) or 1
    grid = [[{"n": result.grid.get((r, f), 0), "level": round(4 * result.grid.get((r, f), 0) / biggest)}
             for f in range(1, 6)] for r in range(5, 0, -1)]
    return ctx.render("reports/rfm.html", title=_("reports_rfm"), rows=rows, total=result.total, chart=chart,
                      grid=grid, months=months)


def _shown(r: dict[str, Any]) -> dict[str, Any]:
    from crmkit.web.templating import format_money

    return {**r, "conversion_rate": _pct(r["conversion_rate"]), "won_revenue": format_money(r["won_revenue"])}


def _totals(rows: list[dict[str, Any]], with_cost: bool = False) -> dict[str, Any]:
    from crmkit.web.templating import format_money

    leads = sum(r["leads"] for r in rows)
    conv = sum(r["converted"] for r in rows)
    revenue = sum((r["won_revenue"] for r in rows), decimal.Decimal("0.00"))
    out = {"leads": leads, "converted": conv, "conversion_rate": _pct(_rate(conv, leads)),
           "won_deals": sum(r["won_deals"] for r in rows), "won_revenue": format_money(revenue)}
    if with_cost:
        cost = sum((r["cost"] or decimal.Decimal(0) for r in rows), decimal.Decimal("0.00"))
        out["cost"] = format_money(cost)
        out["roi"] = _pct(_roi(revenue, cost))
    return out


# ---------------------------------------------------------------------------------------------
# Hooks
# ---------------------------------------------------------------------------------------------
@hookimpl
def register_ui_strings(crm):
    """The reports' words."""
    return UI_STRINGS


@hookimpl
def register_routes(crm):
    """The report pages (each also answers ``?format=json`` and ``?format=csv``)."""
    if DEAL not in crm.catalog:
        return None
    from crmkit.web.site import admin_page

    out = [Route("/admin/reports/", admin_page(pipeline_page), methods=["GET", "HEAD"]),
           Route("/admin/reports/rfm", admin_page(rfm_page), methods=["GET", "HEAD"])]
    if LEAD in crm.catalog:
        out.append(Route("/admin/reports/sources", admin_page(sources_page), methods=["GET", "HEAD"]))
    if CAMPAIGN in crm.catalog:
        out.append(Route("/admin/reports/campaigns", admin_page(campaigns_page), methods=["GET", "HEAD"]))
    return out


@hookimpl
def menu_links(crm, actor, request):
    """A "Reports" link for those who may read deals."""
    if actor is None or DEAL not in crm.catalog or not crm.records.can(actor, "read", DEAL):
        return None
    from crmkit.web.i18n import t

    lang = getattr(request.state, "crmkit_lang", None) or actor.locale
    return [{"href": "/admin/reports/", "label": t("reports_title", lang, extra=UI_STRINGS), "icon": "chart"}]


__all__ = ["CENT", "Period", "RFMResult", "by_lead_source", "by_marketing_activity", "pipeline_by_stage", "rfm"]
