"""The forecast (crmkit.plugins.forecast) on SQLite and PostgreSQL, against hand-computed figures.

Fixture (close dates in 2026; stages Prospecting 10 %, Proposal 40 %, Negotiation 80 %):

====  =====  ===========  ==========  ===========================================  ======
deal  owner  stage        close date  amount                                       status
====  =====  ===========  ==========  ===========================================  ======
d1    alice  Proposal     2026-01-10  1000 (no lines)                              open
d2    alice  Negotiation  2026-01-20  1300 = Software 2 × 500 + Hardware 1 × 300   open
d3    bob    Prospecting  2026-02-05  2000 (no lines)                              open
d4    bob    Proposal*    2026-04-30  900 = Hardware 4 × 250 − 10 %               open (* probability 25)
d5    alice  Negotiation  2026-03-15  500                                          won
d6    alice  Proposal     2026-02-01  700                                          lost
d7    alice  Proposal     2027-01-01  9999                                         open (outside the range)
d8    alice  Proposal     —           123                                          open (no close date)
====  =====  ===========  ==========  ===========================================  ======

Weighted: d1 400, d2 1040 (Software 800 + Hardware 240), d3 200, d4 225.
"""

from __future__ import annotations

import datetime as dt
from decimal import Decimal as D

import pytest

from crmkit.core.actors import SYSTEM
from crmkit.core.errors import BadRequest
from crmkit.plugins.deals import close_deal
from crmkit.plugins.forecast import ForecastQuery, forecast
from tests.support import XSS, actor_of, login, make_org, owned

JAN1, JUN30 = dt.date(2026, 1, 1), dt.date(2026, 6, 30)


@pytest.fixture
def data(crm):
    org = make_org(crm)
    s = crm.records
    prospecting, proposal, negotiation = org["stages"]
    s.create("deal_stage", {"name": "Closed won", "sort_order": 90, "probability": 100, "is_closed": True,
                            "is_won": True}, actor=SYSTEM)
    software = s.create("product_category", {"name": "Software"}, actor=SYSTEM)
    hardware = s.create("product_category", {"name": "Hardware"}, actor=SYSTEM)
    app = s.create("product", {"name": "App", "unit_price": 500, "category": software["id"]}, actor=SYSTEM)
    box = s.create("product", {"name": "Box", "unit_price": 300, "category": hardware["id"]}, actor=SYSTEM)
    acc = s.create("account", {"name": "Acme"}, actor=SYSTEM)

    def deal(name, user, stage, close, amount=None, **extra):
        values = {"name": name, "account": acc["id"], "stage": stage["id"], "close_date": close, **owned(org, user)}
        if amount is not None:
            values["amount"] = amount
        return s.create("deal", {**values, **extra}, actor=SYSTEM)

    d = {}
    d["d1"] = deal("d1", "alice", proposal, "2026-01-10", 1000)
    d["d2"] = deal("d2", "alice", negotiation, "2026-01-20")
    s.create("deal_line_item", {"deal": d["d2"]["id"], "product": app["id"], "quantity": 2}, actor=SYSTEM)
    s.create("deal_line_item", {"deal": d["d2"]["id"], "product": box["id"], "quantity": 1}, actor=SYSTEM)
    d["d3"] = deal("d3", "bob", prospecting, "2026-02-05", 2000)
    d["d4"] = deal("d4", "bob", proposal, "2026-04-30", probability=25)
    s.create("deal_line_item", {"deal": d["d4"]["id"], "product": box["id"], "quantity": 4, "unit_price": 250,
                                "discount": 10}, actor=SYSTEM)
    d["d5"] = deal("d5", "alice", negotiation, "2026-03-31", 500)
    close_deal(crm, d["d5"]["id"], outcome="won", actor=SYSTEM, close_date=dt.date(2026, 3, 15))
    d["d6"] = deal("d6", "alice", proposal, "2026-02-01", 700)
    close_deal(crm, d["d6"]["id"], outcome="lost", reason="price", actor=SYSTEM, close_date=dt.date(2026, 2, 1))
    deal("d7", "alice", proposal, "2027-01-01", 9999)
    deal("d8", "alice", proposal, None, 123)
    return {"org": org, "deals": d, "software": software, "hardware": hardware}


def rows(result):
    return [(r.key, r.deals, r.pipeline, r.weighted, r.won) for r in result.rows]


def test_by_month_and_quarter(crm, data):
    result = forecast(crm, SYSTEM, ForecastQuery(start=JAN1, end=JUN30))
    assert rows(result) == [
        ("2026-01", 2, D("2300.00"), D("1440.00"), D("0.00")),
        ("2026-02", 1, D("2000.00"), D("200.00"), D("0.00")),
        ("2026-03", 0, D("0.00"), D("0.00"), D("500.00")),
        ("2026-04", 1, D("900.00"), D("225.00"), D("0.00")),
        ("2026-05", 0, D("0.00"), D("0.00"), D("0.00")),
        ("2026-06", 0, D("0.00"), D("0.00"), D("0.00")),
    ]
    total = result.total
    assert (total.deals, total.pipeline, total.weighted, total.won) == (4, D("5200.00"), D("1865.00"), D("500.00"))
    quarters = forecast(crm, SYSTEM, ForecastQuery(start=JAN1, end=JUN30, period="quarter"))
    assert rows(quarters) == [
        ("2026-Q1", 3, D("4300.00"), D("1640.00"), D("500.00")),
        ("2026-Q2", 1, D("900.00"), D("225.00"), D("0.00")),
    ]


def test_by_owner_team_stage(crm, data):
    org = data["org"]
    alice, bob = org["users"]["alice"]["id"], org["users"]["bob"]["id"]
    by_owner = forecast(crm, SYSTEM, ForecastQuery(start=JAN1, end=JUN30, group="owner"))
    assert {r.label: (r.deals, r.pipeline, r.weighted, r.won) for r in by_owner.rows} == {
        "Alice": (2, D("2300.00"), D("1440.00"), D("500.00")),
        "Bob": (2, D("2900.00"), D("425.00"), D("0.00")),
    }
    assert {r.key for r in by_owner.rows} == {alice, bob}
    by_team = forecast(crm, SYSTEM, ForecastQuery(start=JAN1, end=JUN30, group="team"))
    assert {r.label: (r.deals, r.weighted) for r in by_team.rows} == {"East": (2, D("1440.00")),
                                                                       "West": (2, D("425.00"))}
    by_stage = forecast(crm, SYSTEM, ForecastQuery(start=JAN1, end=JUN30, group="stage"))
    assert [(r.label, r.deals, r.pipeline, r.weighted, r.won) for r in by_stage.rows] == [
        ("Prospecting", 1, D("2000.00"), D("200.00"), D("0.00")),
        ("Proposal", 2, D("1900.00"), D("625.00"), D("0.00")),
        ("Negotiation", 1, D("1300.00"), D("1040.00"), D("0.00")),
        ("Closed won", 0, D("0.00"), D("0.00"), D("500.00")),
    ]


def test_by_product_category(crm, data):
    result = forecast(crm, SYSTEM, ForecastQuery(start=JAN1, end=JUN30, group="category"))
    assert {r.label: (r.deals, r.pipeline, r.weighted, r.won) for r in result.rows} == {
        "Software": (1, D("1000.00"), D("800.00"), D("0.00")),
        "Hardware": (2, D("1200.00"), D("465.00"), D("0.00")),
        "(none)": (2, D("3000.00"), D("600.00"), D("500.00")),
    }
    assert result.rows[-1].key is None
    assert sum((r.weighted for r in result.rows), D(0)) == D("1865.00")


def test_filters(crm, data):
    org = data["org"]
    hardware = forecast(crm, SYSTEM, ForecastQuery(start=JAN1, end=JUN30, category=data["hardware"]["id"]))
    assert [(r.key, r.deals, r.pipeline, r.weighted) for r in hardware.rows if r.deals] == [
        ("2026-01", 1, D("300.00"), D("240.00")), ("2026-04", 1, D("900.00"), D("225.00"))]
    bob = forecast(crm, SYSTEM, ForecastQuery(start=JAN1, end=JUN30, owners=[org["users"]["bob"]["id"]]))
    assert [(r.key, r.weighted) for r in bob.rows if r.deals] == [("2026-02", D("200.00")), ("2026-04", D("225.00"))]
    west = forecast(crm, SYSTEM, ForecastQuery(start=JAN1, end=JUN30, teams=[org["teams"]["west"]["id"]]))
    assert west.total.weighted == D("425.00")
    proposal = forecast(crm, SYSTEM, ForecastQuery(start=JAN1, end=JUN30, stages=[org["stages"][1]["id"]]))
    assert [(r.key, r.pipeline, r.weighted) for r in proposal.rows if r.deals] == [
        ("2026-01", D("1000.00"), D("400.00")), ("2026-04", D("900.00"), D("225.00"))]
    wide = forecast(crm, SYSTEM, ForecastQuery(start=JAN1, end=dt.date(2027, 12, 31)))
    assert wide.total.pipeline == D("15199.00")  # d7 counts now; d8 (no close date) never does


def test_closing_a_deal_takes_it_out_of_the_forecast(crm, data):
    close_deal(crm, data["deals"]["d3"]["id"], outcome="lost", reason="no budget", actor=SYSTEM)
    assert forecast(crm, SYSTEM, ForecastQuery(start=JAN1, end=JUN30)).total.weighted == D("1665.00")


def test_each_rep_forecasts_only_what_they_may_read(crm, data):
    users = data["org"]["users"]
    q = ForecastQuery(start=JAN1, end=JUN30)
    assert forecast(crm, actor_of(users["bob"]), q).total.weighted == D("425.00")
    assert forecast(crm, actor_of(users["alice"]), q).total.weighted == D("1440.00")
    assert forecast(crm, actor_of(users["mia"]), q).total.weighted == D("1865.00")  # manager: read all
    by_category = forecast(crm, actor_of(users["bob"]), ForecastQuery(start=JAN1, end=JUN30, group="category"))
    assert {r.label: r.weighted for r in by_category.rows} == {"Hardware": D("225.00"), "(none)": D("200.00")}


def test_bad_queries_are_refused(crm, data):
    for q in (ForecastQuery(start=JUN30, end=JAN1), ForecastQuery(start=JAN1, end=JUN30, period="week"),
              ForecastQuery(start=JAN1, end=JUN30, group="colour"),
              ForecastQuery(start=JAN1, end=dt.date(2031, 1, 1))):
        with pytest.raises(BadRequest):
            forecast(crm, SYSTEM, q)


def test_forecast_page_json_and_csv(crm, data):
    client = login(crm, "bob")
    base = "/admin/forecast?from=2026-01&to=2026-06"
    page = client.get(base)
    assert page.status_code == 200
    assert '<svg class="chart-svg"' in page.text and 'role="img"' in page.text and "<desc" in page.text
    assert "¥425" in page.text and "¥1,865" not in page.text  # bob's scope only
    body = client.get(base.replace("forecast?", "forecast.json?") + "&group=owner").json()
    assert body["total"] == {"deals": 2, "pipeline": "2900.00", "weighted": "425.00", "won": "0.00"}
    assert [r["label"] for r in body["rows"]] == ["Bob"]
    csv_text = client.get(base.replace("forecast?", "forecast.csv?")).text
    assert csv_text.startswith("\ufeffkey,label,deals,pipeline,weighted,won")
    assert "2026-04,2026-04,1,900.00,225.00,0.00" in csv_text
    for bad in ("?period=week", "?from=yesterday", "?owner=abc", "?from=2026-05-01&to=2026-01-01"):
        response = client.get("/admin/forecast" + bad)
        assert response.status_code == 400, bad
    assert client.get("/admin/forecast.json?group=nope", headers={"accept": "application/json"}).status_code == 400


def test_names_in_charts_and_tables_are_escaped(crm, data):
    org = data["org"]
    crm.records.update("user", org["users"]["alice"]["id"], {"display_name": XSS}, actor=SYSTEM)
    html = login(crm, "admin").get("/admin/forecast?from=2026-01-01&to=2026-06-30&group=owner").text
    assert XSS not in html and "&lt;script&gt;" in html
    assert "<title" in html and "chart-data" in html  # the accessible title and data-table fallback


def test_menu_has_forecast_and_reports(crm, data):
    html = login(crm, "alice").get("/admin/").text
    assert 'href="/admin/forecast"' in html and 'href="/admin/reports/"' in html
