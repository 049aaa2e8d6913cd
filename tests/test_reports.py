"""Reports (crmkit.plugins.reports) on SQLite and PostgreSQL, against hand-computed figures:
pipeline by stage, conversion and won revenue by lead source and by marketing activity (ROI),
RFM ranking; permission scope, JSON/CSV output, escaping, and the chart module's accessibility."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal as D

import pytest

from crmkit.core.actors import SYSTEM
from crmkit.plugins.deals import close_deal
from crmkit.plugins.lead_conversion import convert_lead
from crmkit.plugins.reports import Period, by_lead_source, by_marketing_activity, pipeline_by_stage, rfm
from crmkit.web.charts import Chart, Series, bar_chart, hbar_chart, nice_ticks
from tests.support import XSS, actor_of, login, make_org, owned

AS_OF = dt.date(2026, 6, 30)


@pytest.fixture
def org(crm):
    org = make_org(crm)
    org["won_stage"] = crm.records.create("deal_stage", {"name": "Won", "sort_order": 90, "probability": 100,
                                                         "is_closed": True, "is_won": True}, actor=SYSTEM)
    return org


def make_deal(crm, org, account, user, close, amount, outcome=None, stage=0, **extra):
    deal = crm.records.create("deal", {"name": f"{account['name']} {close}", "account": account["id"],
                                       "stage": org["stages"][stage]["id"], "amount": amount, "close_date": close,
                                       **owned(org, user), **extra}, actor=SYSTEM)
    if outcome:
        close_deal(crm, deal["id"], outcome=outcome, reason="r", actor=SYSTEM, close_date=dt.date.fromisoformat(close))
    return deal


# ---------------------------------------------------------------------------------------------
# Lead sources and marketing activities
# ---------------------------------------------------------------------------------------------
@pytest.fixture
def marketing(crm, org):
    s = crm.records
    expo = s.create("marketing_activity", {"name": "Expo", "cost": 1000, "start_date": "2026-03-01"}, actor=SYSTEM)
    webinar = s.create("marketing_activity", {"name": "Webinar", "start_date": "2026-02-01"}, actor=SYSTEM)
    ads = s.create("marketing_activity", {"name": "Ads", "cost": 4000, "start_date": "2026-01-01"}, actor=SYSTEM)
    leads = {}
    for key, source, campaign, user in [("L1", "web", expo, "alice"), ("L2", "web", expo, "alice"),
                                        ("L3", "web", None, "bob"), ("L4", "web", None, "alice"),
                                        ("L5", "event", expo, "alice"), ("L6", "event", ads, "alice"),
                                        ("L7", "referral", None, "alice"), ("L8", None, None, "alice")]:
        leads[key] = s.create("lead", {"last_name": key, "company": f"{key} KK", "source": source,
                                       "marketing_activity": campaign["id"] if campaign else None,
                                       **owned(org, user)}, actor=SYSTEM)
    for key in ("L1", "L5", "L6"):
        convert_lead(crm, leads[key]["id"], SYSTEM, account="new")
    acc = s.create("account", {"name": "Buyer", **owned(org, "alice")}, actor=SYSTEM)
    make_deal(crm, org, acc, "alice", "2026-04-01", 3000, "won", source="web", marketing_activity=expo["id"])
    make_deal(crm, org, acc, "bob", "2026-04-02", 500, "won", source="web")
    make_deal(crm, org, acc, "alice", "2026-04-03", 2000, "won", source="event", marketing_activity=ads["id"])
    make_deal(crm, org, acc, "alice", "2026-04-04", 700, "lost", source="referral", marketing_activity=expo["id"])
    make_deal(crm, org, acc, "alice", "2026-09-01", 1000, None, source="event", marketing_activity=expo["id"])
    return {"expo": expo, "webinar": webinar, "ads": ads, "leads": leads}


def test_conversion_and_won_revenue_by_lead_source(crm, org, marketing):
    rows = by_lead_source(crm, SYSTEM)
    got = {r["source"]: (r["leads"], r["converted"], r["conversion_rate"], r["won_deals"], r["won_revenue"])
           for r in rows}
    assert got == {
        "web": (4, 1, D("25.0"), 2, D("3500.00")),
        "event": (2, 2, D("100.0"), 1, D("2000.00")),
        "referral": (1, 0, D("0.0"), 0, D("0.00")),
        None: (1, 0, D("0.0"), 0, D("0.00")),
    }
    assert [r["label"] for r in rows] == ["Website", "Referral", "Event / trade show", "(none)"]
    ja = by_lead_source(crm, SYSTEM, lang="ja")
    assert [r["label"] for r in ja][:2] == ["Webサイト", "紹介"]
    # bob (West) sees his own lead and deal only
    mine = {r["source"]: (r["leads"], r["converted"], r["won_deals"], r["won_revenue"])
            for r in by_lead_source(crm, actor_of(org["users"]["bob"]))}
    assert mine == {"web": (1, 0, 1, D("500.00"))}


def test_marketing_activity_roi(crm, org, marketing):
    rows = {r["label"]: r for r in by_marketing_activity(crm, SYSTEM)}
    expo, ads, webinar = rows["Expo"], rows["Ads"], rows["Webinar"]
    assert (expo["leads"], expo["converted"], expo["conversion_rate"]) == (3, 2, D("66.7"))
    assert (expo["won_deals"], expo["won_revenue"], expo["cost"], expo["roi"]) == (1, D("3000.00"), D("1000.00"),
                                                                                  D("200.0"))
    assert (ads["leads"], ads["converted"], ads["won_revenue"], ads["cost"], ads["roi"]) == (
        1, 1, D("2000.00"), D("4000.00"), D("-50.0"))
    assert (webinar["leads"], webinar["conversion_rate"], webinar["won_revenue"], webinar["cost"],
            webinar["roi"]) == (0, None, D("0.00"), None, None)
    assert list(rows) == ["Expo", "Webinar", "Ads"]  # newest first


def test_period_filters_deals_by_close_date_and_leads_by_local_day(crm, org, marketing):
    rows = {r["source"]: r for r in by_lead_source(crm, SYSTEM, Period(start=dt.date(2026, 4, 2),
                                                                       end=dt.date(2026, 4, 3)))}
    assert (rows["web"]["won_deals"], rows["web"]["won_revenue"]) == (1, D("500.00"))
    assert (rows["event"]["won_deals"], rows["event"]["won_revenue"]) == (1, D("2000.00"))
    # leads were created just now: a period that ended yesterday (in the user's zone) has none
    tz = dt.timezone(dt.timedelta(hours=9))
    yesterday = dt.datetime.now(tz).date() - dt.timedelta(days=1)
    none = by_lead_source(crm, SYSTEM, Period(start=dt.date(2020, 1, 1), end=yesterday, tz=tz))
    assert sum(r["leads"] for r in none) == 0
    today = by_lead_source(crm, SYSTEM, Period(start=yesterday + dt.timedelta(days=1), tz=tz))
    assert sum(r["leads"] for r in today) == 8


def test_campaign_and_source_pages(crm, org, marketing):
    crm.records.update("marketing_activity", marketing["ads"]["id"], {"name": XSS}, actor=SYSTEM)
    client = login(crm, "admin")
    page = client.get("/admin/reports/campaigns")
    assert page.status_code == 200
    assert "200.0%" in page.text and "-50.0%" in page.text and "roi-neg" in page.text
    assert XSS not in page.text and "&lt;script&gt;" in page.text
    body = client.get("/admin/reports/campaigns?format=json").json()
    assert {r["label"]: r["roi"] for r in body["rows"]} == {"Expo": "200.0", "Webinar": None, XSS: "-50.0"}
    csv_text = client.get("/admin/reports/sources?format=csv").text
    assert csv_text.startswith("\ufeffsource,label,leads,converted,conversion_rate,won_deals,won_revenue")
    assert "web,Website,4,1,25.0,2,3500.00" in csv_text
    sources = client.get("/admin/reports/sources").text
    assert "25.0%" in sources and "<svg" in sources
    assert client.get("/admin/reports/sources?from=nope").status_code == 400
    assert client.get("/admin/reports/sources?format=xml").status_code == 400


# ---------------------------------------------------------------------------------------------
# Pipeline by stage
# ---------------------------------------------------------------------------------------------
def test_pipeline_by_stage(crm, org):
    acc = crm.records.create("account", {"name": "A", **owned(org, "alice")}, actor=SYSTEM)
    make_deal(crm, org, acc, "alice", "2026-07-01", 1000, stage=0)  # 10 %
    make_deal(crm, org, acc, "bob", "2026-07-01", 3000, stage=1)  # 40 %
    make_deal(crm, org, acc, "alice", "2026-07-01", 500, stage=1)
    make_deal(crm, org, acc, "alice", "2026-07-01", 999, "won", stage=2)
    rows = pipeline_by_stage(crm, SYSTEM)
    assert [(r["label"], r["deals"], r["amount"], r["weighted"]) for r in rows] == [
        ("Prospecting", 1, D("1000.00"), D("100.00")),
        ("Proposal", 2, D("3500.00"), D("1400.00")),
        ("Negotiation", 0, D("0.00"), D("0.00")),
    ]
    bob = pipeline_by_stage(crm, actor_of(org["users"]["bob"]))
    assert [(r["deals"], r["amount"]) for r in bob] == [(0, D("0.00")), (1, D("3000.00")), (0, D("0.00"))]
    page = login(crm, "bob").get("/admin/reports/")
    assert page.status_code == 200 and "¥3,000" in page.text and "¥3,500" not in page.text


# ---------------------------------------------------------------------------------------------
# RFM
# ---------------------------------------------------------------------------------------------
@pytest.fixture
def customers(crm, org):
    s = crm.records
    acc = {k: s.create("account", {"name": f"Customer {k}", **owned(org, "bob" if k == "B" else "alice")},
                       actor=SYSTEM) for k in "ABCDEF"}
    won = {
        "A": [("2026-06-01", 1000), ("2026-03-01", 1000), ("2026-01-10", 1000)],
        "B": [("2026-05-15", 5000), ("2026-07-15", 9999)],  # the second is after AS_OF: ignored
        "C": [("2025-12-01", 200), ("2025-11-01", 300)],
        "D": [("2026-06-20", 100)],
        "E": [("2025-06-30", 800), ("2025-07-01", 800), ("2025-08-01", 800), ("2025-09-01", 800)],
        "F": [("2026-02-01", 50)],
    }
    for k, deals in won.items():
        for close, amount in deals:
            make_deal(crm, org, acc[k], "bob" if k == "B" else "alice", close, amount, "won")
    make_deal(crm, org, acc["F"], "alice", "2026-06-01", 7777, "lost")
    make_deal(crm, org, acc["D"], "alice", "2026-08-01", 7777)
    return acc


def test_rfm_quintile_scores(crm, org, customers):
    result = rfm(crm, SYSTEM, as_of=AS_OF)
    assert result.total == 6
    got = [(r["label"], r["last_won"], r["days"], r["frequency"], r["monetary"], r["r"], r["f"], r["m"], r["score"],
            r["segment"]) for r in result.rows]
    assert got == [
        ("Customer A", dt.date(2026, 6, 1), 29, 3, D("3000.00"), 4, 4, 3, 11, "loyal"),
        ("Customer E", dt.date(2025, 9, 1), 302, 4, D("3200.00"), 1, 5, 4, 10, "at_risk"),
        ("Customer B", dt.date(2026, 5, 15), 46, 1, D("5000.00"), 3, 1, 5, 9, "others"),
        ("Customer D", dt.date(2026, 6, 20), 10, 1, D("100.00"), 5, 1, 1, 7, "new"),
        ("Customer C", dt.date(2025, 12, 1), 211, 2, D("500.00"), 1, 3, 2, 6, "at_risk"),
        ("Customer F", dt.date(2026, 2, 1), 149, 1, D("50.00"), 2, 1, 1, 4, "hibernating"),
    ]
    assert result.segments == {"champions": 0, "loyal": 1, "new": 1, "at_risk": 2, "hibernating": 1, "others": 1}
    assert result.grid == {(4, 4): 1, (1, 5): 1, (3, 1): 1, (5, 1): 1, (1, 3): 1, (2, 1): 1}
    assert [r["label"] for r in rfm(crm, SYSTEM, as_of=AS_OF, limit=2).rows] == ["Customer A", "Customer E"]
    # a window: only deals won since 2026-01-01 (C and E drop out; A keeps all three)
    recent = rfm(crm, SYSTEM, as_of=AS_OF, since=dt.date(2026, 1, 1))
    assert recent.total == 4 and {r["label"] for r in recent.rows} == {"Customer A", "Customer B", "Customer D",
                                                                      "Customer F"}


def test_rfm_is_permission_scoped(crm, org, customers):
    bob = rfm(crm, actor_of(org["users"]["bob"]), as_of=AS_OF)
    assert bob.total == 1
    assert [(r["label"], r["frequency"], r["monetary"], r["r"], r["f"], r["m"]) for r in bob.rows] == [
        ("Customer B", 1, D("5000.00"), 1, 1, 1)]


def test_rfm_page_and_json(crm, org, customers):
    crm.records.update("account", customers["A"]["id"], {"name": XSS}, actor=SYSTEM)
    client = login(crm, "admin")
    page = client.get("/admin/reports/rfm")
    assert page.status_code == 200 and XSS not in page.text and "&lt;script&gt;" in page.text
    body = client.get("/admin/reports/rfm?format=json&limit=3").json()
    assert body["total"] == 6
    assert len(body["rows"]) == 3 and set(body["rows"][0]) >= {"r", "f", "m", "segment", "monetary"}
    assert client.get("/admin/reports/rfm?limit=0").status_code == 400
    assert client.get("/admin/reports/rfm?months=abc").status_code == 400


# ---------------------------------------------------------------------------------------------
# Charts
# ---------------------------------------------------------------------------------------------
def test_charts_are_accessible_and_escape_names():
    chart = Chart(title=f"T {XSS}", desc="Sales <b>per</b> month", categories=[XSS, "二月"],
                  series=[Series("Won", [D("1200.50"), None]), Series(XSS, [3, 4], color="javascript:alert(1)")])
    for html in (bar_chart(chart), hbar_chart(chart)):
        text = str(html)
        assert XSS not in text and "<b>" not in text and "javascript:" not in text
        assert 'role="img"' in text and "<title id=" in text and "<desc id=" in text
        assert "aria-labelledby=" in text and '<details class="chart-data">' in text
        assert "<th scope=\"row\">&lt;script&gt;" in text and "二月" in text
    assert nice_ticks(0) == [0.0, 1.0]
    assert nice_ticks(95) == [0, 25, 50, 75, 100]
    assert nice_ticks(1_230_000)[-1] >= 1_230_000


def test_reports_need_login_and_read_permission(crm, org):
    from starlette.testclient import TestClient

    anonymous = TestClient(crm.asgi(), follow_redirects=False)
    for path in ("/admin/reports/", "/admin/reports/rfm", "/admin/reports/sources", "/admin/reports/campaigns",
                 "/admin/forecast", "/admin/forecast.json"):
        assert anonymous.get(path).status_code == 303, path
