"""The deal workflow (crmkit.plugins.deals) on SQLite and PostgreSQL: stage probabilities, won/lost
closing (API actions and admin pages), line items keeping the deal's amount, their permissions,
and the "open deals" default list view (YAML ``list.views``) on the list and the board."""

from __future__ import annotations

import datetime as dt
import warnings
from decimal import Decimal

import pytest

from crmkit import CRM, hookimpl
from crmkit.core.actors import SYSTEM
from crmkit.core.errors import NotFound, PermissionDenied, ValidationError
from crmkit.core.loader import SchemaError
from crmkit.core.tokens import create_token
from crmkit.plugins import PluginError
from crmkit.plugins.deals import close_deal, reopen_deal
from tests.support import PASSWORD_HASH, XSS, actor_of, csrf_of, login, make_crm, make_org, owned, token

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    from starlette.testclient import TestClient


@pytest.fixture
def org(crm):
    org = make_org(crm)
    store = crm.records
    org["won_stage"] = store.create("deal_stage", {"name": "Closed won", "sort_order": 90, "probability": 100,
                                                   "is_closed": True, "is_won": True}, actor=SYSTEM)
    org["lost_stage"] = store.create("deal_stage", {"name": "Closed lost", "sort_order": 91, "probability": 0,
                                                    "is_closed": True, "is_won": False}, actor=SYSTEM)
    org["account"] = store.create("account", {"name": "Acme", **owned(org, "alice")}, actor=SYSTEM)
    org["widget"] = store.create("product", {"name": "Widget", "unit_price": 1000}, actor=SYSTEM)
    org["gadget"] = store.create("product", {"name": "Gadget", "unit_price": "250.50"}, actor=SYSTEM)
    return org


def new_deal(crm, org, user="alice", **values):
    base = {"name": "Deal", "account": org["account"]["id"], "stage": org["stages"][0]["id"], **owned(org, user)}
    return crm.records.create("deal", {**base, **values}, actor=SYSTEM)


def api_client(crm, username):
    secret, _info = create_token(crm, username, "tests")
    return TestClient(crm.asgi(), headers={"authorization": f"Bearer {secret}"})


# ---------------------------------------------------------------------------------------------
# Probability from the stage
# ---------------------------------------------------------------------------------------------
def test_stage_sets_probability_unless_overridden_in_the_same_save(crm, org):
    store = crm.records
    prospecting, proposal, negotiation = org["stages"]
    deal = new_deal(crm, org, amount=1000)
    assert deal["probability"] == Decimal("10.00") and deal["expected_revenue"] == Decimal("100.00")
    deal = store.update("deal", deal["id"], {"stage": proposal["id"]}, actor=SYSTEM)
    assert deal["probability"] == Decimal("40.00") and deal["expected_revenue"] == Decimal("400.00")
    # stage and probability changed together: the user's probability wins
    deal = store.update("deal", deal["id"], {"stage": negotiation["id"], "probability": 55}, actor=SYSTEM)
    assert deal["probability"] == Decimal("55.00")
    # an unrelated edit keeps the override; re-sending the same probability is not an override
    deal = store.update("deal", deal["id"], {"name": "Renamed", "probability": 55}, actor=SYSTEM)
    assert deal["probability"] == Decimal("55.00")
    deal = store.update("deal", deal["id"], {"stage": proposal["id"], "probability": 55}, actor=SYSTEM)
    assert deal["probability"] == Decimal("40.00")
    # on create, an explicit probability is kept
    assert new_deal(crm, org, probability=33)["probability"] == Decimal("33.00")


def test_admin_form_stage_change_resets_probability(crm, org):
    deal = new_deal(crm, org, amount=500)
    client = login(crm, "alice")
    page = client.get(f"/admin/deal/{deal['id']}/edit").text
    response = client.post(f"/admin/deal/{deal['id']}/edit", data={
        "name": "Deal", "account": str(org["account"]["id"]), "stage": str(org["stages"][2]["id"]),
        "status": "open", "probability": "10", "amount": "500", "version": str(deal["version"]),
        "_csrf": csrf_of(page),
    })
    assert response.status_code == 303, response.text[:1000]
    assert crm.records.get("deal", deal["id"], actor=SYSTEM)["probability"] == Decimal("80.00")


# ---------------------------------------------------------------------------------------------
# Line items
# ---------------------------------------------------------------------------------------------
def test_line_items_default_price_and_keep_the_deal_amount(crm, org):
    store = crm.records
    deal = new_deal(crm, org, amount=99, stage=org["stages"][1]["id"])  # 40 %
    first = store.create("deal_line_item", {"deal": deal["id"], "product": org["widget"]["id"], "quantity": 3},
                         actor=SYSTEM)
    assert first["unit_price"] == Decimal("1000.00") and first["description"] == "Widget"
    assert first["line_total"] == Decimal("3000.00")
    second = store.create("deal_line_item", {"deal": deal["id"], "product": org["gadget"]["id"], "quantity": 2,
                                             "discount": 10}, actor=SYSTEM)
    assert second["line_total"] == Decimal("450.90")  # 2 × 250.50 × 90 %
    got = store.get("deal", deal["id"], actor=SYSTEM)
    assert got["amount"] == Decimal("3450.90") and got["expected_revenue"] == Decimal("1380.36")
    store.update("deal_line_item", first["id"], {"quantity": 1, "unit_price": 800}, actor=SYSTEM)
    assert store.get("deal", deal["id"], actor=SYSTEM)["amount"] == Decimal("1250.90")
    store.delete("deal_line_item", second["id"], actor=SYSTEM)
    assert store.get("deal", deal["id"], actor=SYSTEM)["amount"] == Decimal("800.00")
    # moving a line to another deal updates both
    other = new_deal(crm, org, name="Other", amount=0)
    store.update("deal_line_item", first["id"], {"deal": other["id"]}, actor=SYSTEM)
    assert store.get("deal", deal["id"], actor=SYSTEM)["amount"] == Decimal("0.00")
    assert store.get("deal", other["id"], actor=SYSTEM)["amount"] == Decimal("800.00")
    # the amount is audited as changed by the line items
    amounts = [h["new"] for h in store.history("deal", other["id"], actor=SYSTEM) if h["field"] == "amount"]
    assert amounts[-1] == "800.00"


def test_amount_of_a_deal_with_lines_cannot_be_typed_over(crm, org):
    store = crm.records
    deal = new_deal(crm, org)
    store.create("deal_line_item", {"deal": deal["id"], "product": org["widget"]["id"], "quantity": 2}, actor=SYSTEM)
    with pytest.raises(ValidationError) as exc:
        store.update("deal", deal["id"], {"amount": 5}, actor=SYSTEM)
    assert exc.value.errors[0]["field"] == "amount" and "line item" in exc.value.errors[0]["message"]
    assert store.get("deal", deal["id"], actor=SYSTEM)["amount"] == Decimal("2000.00")


def test_a_failing_hook_leaves_neither_the_line_nor_the_new_amount(tmp_path, db_url):
    class Boom:
        @hookimpl
        def after_save(self, crm, entity, record, old, conn, actor):
            if entity.name == "deal" and old is not None and record.get("amount") == Decimal("7000.00"):
                raise RuntimeError("ledger unavailable")

    crm = make_crm(tmp_path, db_url, plugins=[Boom()])
    try:
        org = make_org(crm)
        acc = crm.records.create("account", {"name": "A"}, actor=SYSTEM)
        product = crm.records.create("product", {"name": "P", "unit_price": 1000}, actor=SYSTEM)
        deal = crm.records.create("deal", {"name": "D", "account": acc["id"], "stage": org["stages"][0]["id"]},
                                  actor=SYSTEM)
        with pytest.raises(PluginError):
            crm.records.create("deal_line_item", {"deal": deal["id"], "product": product["id"], "quantity": 7},
                               actor=SYSTEM)
        assert crm.records.list("deal_line_item", actor=SYSTEM).count == 0
        got = crm.records.get("deal", deal["id"], actor=SYSTEM)
        assert got["amount"] is None and got["version"] == deal["version"]
    finally:
        crm.close()


def test_inactive_products_and_closed_deals_refuse_lines(crm, org):
    store = crm.records
    deal = new_deal(crm, org)
    old = store.create("product", {"name": "Legacy", "unit_price": 1, "active": False}, actor=SYSTEM)
    with pytest.raises(ValidationError) as exc:
        store.create("deal_line_item", {"deal": deal["id"], "product": old["id"]}, actor=SYSTEM)
    assert exc.value.errors == [
        {"field": "product", "message": "this product is inactive and cannot be added to deals"}
    ]
    close_deal(crm, deal["id"], outcome="won", actor=SYSTEM)
    with pytest.raises(ValidationError) as exc:
        store.create("deal_line_item", {"deal": deal["id"], "product": org["widget"]["id"]}, actor=SYSTEM)
    assert "reopen" in exc.value.errors[0]["message"]


def test_line_items_follow_their_deal_permissions(crm, org):
    store = crm.records
    alice, bob = actor_of(org["users"]["alice"]), actor_of(org["users"]["bob"])
    deal = new_deal(crm, org, user="alice")
    line = store.create("deal_line_item", {"deal": deal["id"], "product": org["widget"]["id"]}, actor=alice)
    assert store.get("deal", deal["id"], actor=SYSTEM)["amount"] == Decimal("1000.00")
    # bob (West) cannot read alice's (East) deal, so neither its lines
    assert store.list("deal_line_item", actor=bob).count == 0
    with pytest.raises(NotFound):
        store.get("deal_line_item", line["id"], actor=bob)
    with pytest.raises(ValidationError) as exc:
        store.create("deal_line_item", {"deal": deal["id"], "product": org["widget"]["id"]}, actor=bob)
    assert exc.value.errors[0]["field"] == "deal"
    with pytest.raises(NotFound):
        store.delete("deal_line_item", line["id"], actor=bob)
    assert store.list("deal_line_item", actor=alice).count == 1
    # a teammate may read but not change alice's deal (update: own), so not its lines either
    carol = store.create("user", {"username": "carol", "display_name": "Carol", "role": "sales_rep",
                                  "primary_team": org["teams"]["east"]["id"]}, actor=SYSTEM)
    carol_actor = actor_of(carol)
    assert store.list("deal_line_item", actor=carol_actor).count == 1
    with pytest.raises(PermissionDenied):
        store.delete("deal_line_item", line["id"], actor=carol_actor)
    assert store.get("deal", deal["id"], actor=SYSTEM)["amount"] == Decimal("1000.00")


# ---------------------------------------------------------------------------------------------
# Closing: API actions
# ---------------------------------------------------------------------------------------------
def test_close_won_through_the_api(crm, org):
    deal = new_deal(crm, org, amount=1000, stage=org["stages"][1]["id"])
    client = api_client(crm, "alice")
    response = client.post(f"/api/v1/deal/{deal['id']}/close",
                           json={"outcome": "won", "close_date": "2026-10-15", "reason": "Best demo"})
    assert response.status_code == 200, response.text
    got = response.json()["deal"]
    assert got["status"] == "won" and got["close_date"] == "2026-10-15" and got["won_reason"] == "Best demo"
    assert got["stage"] == org["won_stage"]["id"] and Decimal(got["probability"]) == 100
    # closing a closed deal is refused with a message
    again = client.post(f"/api/v1/deal/{deal['id']}/close", json={"outcome": "lost", "reason": "x"})
    assert again.status_code == 422
    assert again.json()["errors"] == [{"field": "status", "message": "this deal is already won; reopen it first"}]


def test_close_lost_needs_a_reason_and_good_input(crm, org):
    deal = new_deal(crm, org, amount=1000)
    client = api_client(crm, "alice")
    url = f"/api/v1/deal/{deal['id']}/close"
    cases = [
        ({"outcome": "lost"}, [{"field": "reason", "message": "is required when a deal is lost"}]),
        ({"outcome": "lost", "reason": "   "}, [{"field": "reason", "message": "is required when a deal is lost"}]),
        ({"outcome": "maybe"}, [{"field": "outcome", "message": 'must be "won" or "lost"'}]),
        ({"outcome": "won", "close_date": "15/10/2026"},
         [{"field": "close_date", "message": "must be a date (YYYY-MM-DD)"}]),
        ({"outcome": "lost", "reason": 5}, [{"field": "reason", "message": "must be text"},
                                            {"field": "reason", "message": "is required when a deal is lost"}]),
        ({"outcome": "lost", "reason": "x" * 2001},
         [{"field": "reason", "message": "must be at most 2000 characters"}]),
    ]
    for body, errors in cases:
        response = client.post(url, json=body)
        assert response.status_code == 422, body
        assert response.json()["errors"] == errors, body
    assert crm.records.get("deal", deal["id"], actor=SYSTEM)["status"] == "open"
    response = client.post(f"/api/v1/deal/{deal['id']}/lose", json={"reason": "Price"})
    assert response.status_code == 200, response.text
    got = response.json()["deal"]
    assert got["status"] == "lost" and got["lost_reason"] == "Price" and got["stage"] == org["lost_stage"]["id"]
    assert Decimal(got["probability"]) == 0 and got["close_date"] is not None


def test_close_respects_permissions_and_versions(crm, org):
    deal = new_deal(crm, org, user="alice")
    bob = api_client(crm, "bob")
    assert bob.post(f"/api/v1/deal/{deal['id']}/win", json={}).status_code == 404  # cannot even see it
    carol = crm.records.create("user", {"username": "carol", "display_name": "Carol", "role": "sales_rep",
                                        "primary_team": org["teams"]["east"]["id"]}, actor=SYSTEM)
    assert carol
    assert api_client(crm, "carol").post(f"/api/v1/deal/{deal['id']}/win", json={}).status_code == 403
    alice = api_client(crm, "alice")
    stale = alice.post(f"/api/v1/deal/{deal['id']}/win", json={"version": deal["version"] + 5})
    assert stale.status_code == 409
    assert crm.records.get("deal", deal["id"], actor=SYSTEM)["status"] == "open"


def test_win_without_closed_stages_keeps_the_stage(tmp_path, db_url):
    crm = make_crm(tmp_path, db_url)
    try:
        org = make_org(crm)
        acc = crm.records.create("account", {"name": "A"}, actor=SYSTEM)
        deal = crm.records.create("deal", {"name": "D", "account": acc["id"], "stage": org["stages"][2]["id"]},
                                  actor=SYSTEM)
        won = close_deal(crm, deal["id"], outcome="won", actor=SYSTEM, close_date=dt.date(2026, 1, 31))
        assert won["stage"] == org["stages"][2]["id"] and won["status"] == "won"
        assert won["close_date"] == dt.date(2026, 1, 31) and won["probability"] == Decimal("100.00")
    finally:
        crm.close()


def test_reopen(crm, org):
    deal = new_deal(crm, org, stage=org["stages"][1]["id"])
    close_deal(crm, deal["id"], outcome="lost", reason="Budget", actor=SYSTEM)
    client = api_client(crm, "alice")
    response = client.post(f"/api/v1/deal/{deal['id']}/reopen", json={"stage": org["stages"][0]["id"]})
    assert response.status_code == 200, response.text
    got = response.json()["deal"]
    assert got["status"] == "open" and got["stage"] == org["stages"][0]["id"] and Decimal(got["probability"]) == 10
    assert client.post(f"/api/v1/deal/{deal['id']}/reopen", json={}).json()["errors"][0]["message"] == (
        "this deal is already open")
    # without a stage: back to the last open stage
    close_deal(crm, deal["id"], outcome="won", actor=SYSTEM)
    assert reopen_deal(crm, deal["id"], actor=SYSTEM)["stage"] == org["stages"][2]["id"]
    # an open deal in a closed stage is refused
    with pytest.raises(ValidationError) as exc:
        crm.records.update("deal", deal["id"], {"stage": org["won_stage"]["id"], "status": "lost",
                                                "lost_reason": "x"}, actor=SYSTEM)
    assert exc.value.errors[0]["field"] == "status"


def test_openapi_lists_the_deal_actions(crm, org):
    doc = api_client(crm, "admin").get("/api/v1/openapi.json").json()
    for name in ("close", "win", "lose", "reopen"):
        assert f"/api/v1/deal/{{id}}/{name}" in doc["paths"]


# ---------------------------------------------------------------------------------------------
# Admin: buttons, close page, board, default view
# ---------------------------------------------------------------------------------------------
def test_admin_close_page(crm, org):
    deal = new_deal(crm, org, name=XSS, amount=10)
    client = login(crm, "alice")
    detail = client.get(f"/admin/deal/{deal['id']}").text
    assert f'href="/admin/deal/{deal["id"]}/close?outcome=won"' in detail
    assert f'href="/admin/deal/{deal["id"]}/close?outcome=lost"' in detail
    page = client.get(f"/admin/deal/{deal['id']}/close?outcome=lost")
    assert page.status_code == 200 and XSS not in page.text and "&lt;script&gt;" in page.text
    data = {"outcome": "lost", "close_date": "2026-11-02", "reason": "", "version": str(deal["version"]),
            "_csrf": csrf_of(page.text)}
    refused = client.post(f"/admin/deal/{deal['id']}/close", data=data)
    assert refused.status_code == 422 and 'id="reason-err"' in refused.text
    assert crm.records.get("deal", deal["id"], actor=SYSTEM)["status"] == "open"
    done = client.post(f"/admin/deal/{deal['id']}/close", data={**data, "reason": "Too expensive"})
    assert done.status_code == 303 and done.headers["location"] == f"/admin/deal/{deal['id']}"
    got = crm.records.get("deal", deal["id"], actor=SYSTEM)
    assert (got["status"], got["lost_reason"], got["close_date"]) == ("lost", "Too expensive", dt.date(2026, 11, 2))
    detail = client.get(f"/admin/deal/{deal['id']}").text
    assert f'action="/admin/deal/{deal["id"]}/reopen"' in detail
    reopened = client.post(f"/admin/deal/{deal['id']}/reopen", data={"_csrf": token(client)})
    assert reopened.status_code == 303
    assert crm.records.get("deal", deal["id"], actor=SYSTEM)["status"] == "open"


def test_no_close_buttons_for_who_may_not_update(crm, org):
    deal = new_deal(crm, org, user="alice")
    crm.records.create("user", {"username": "carol", "display_name": "Carol", "role": "sales_rep",
                                "primary_team": org["teams"]["east"]["id"], "password": PASSWORD_HASH}, actor=SYSTEM)
    client = login(crm, "carol")
    detail = client.get(f"/admin/deal/{deal['id']}").text
    assert "/close?outcome=won" not in detail
    assert client.get(f"/admin/deal/{deal['id']}/close").status_code == 403
    assert client.post(f"/admin/deal/{deal['id']}/close",
                       data={"outcome": "won", "_csrf": token(client)}).status_code == 403


def test_line_items_panel_escapes_and_totals(crm, org):
    deal = new_deal(crm, org)
    product = crm.records.create("product", {"name": XSS, "unit_price": 12}, actor=SYSTEM)
    crm.records.create("deal_line_item", {"deal": deal["id"], "product": product["id"], "quantity": 2},
                       actor=SYSTEM)
    html = login(crm, "alice").get(f"/admin/deal/{deal['id']}").text
    assert XSS not in html and "&lt;script&gt;" in html
    assert "¥24" in html and f"/admin/deal_line_item/new?deal={deal['id']}" in html


def test_closed_deals_leave_the_default_list_and_board(crm, org):
    open_deal = new_deal(crm, org, name="Still open")
    won = new_deal(crm, org, name="Already won")
    close_deal(crm, won["id"], outcome="won", actor=SYSTEM)
    client = login(crm, "alice")
    listing = client.get("/admin/deal/").text
    assert "Still open" in listing and "Already won" not in listing
    assert 'href="/admin/deal/?view=all"' in listing
    everything = client.get("/admin/deal/?view=all").text
    assert "Still open" in everything and "Already won" in everything
    assert "Already won" in client.get("/admin/deal/?view=won").text
    assert "Still open" not in client.get("/admin/deal/?view=won").text
    # an explicit filter replaces the default view
    assert "Already won" in client.get("/admin/deal/?f.status=won").text
    board = client.get("/admin/deal/kanban").text
    assert "Still open" in board and "Already won" not in board
    assert "Already won" in client.get("/admin/deal/kanban?view=all").text
    assert client.get("/admin/deal/?view=nope").status_code == 400
    # the API is not filtered by views
    assert crm.records.list("deal", actor=actor_of(org["users"]["alice"])).count == 2
    assert open_deal


def test_moving_a_card_to_a_closed_stage_closes_the_deal(crm, org):
    deal = new_deal(crm, org)
    client = login(crm, "alice")
    csrf = token(client)
    moved = client.post(f"/admin/deal/{deal['id']}/move",
                        data={"value": str(org["won_stage"]["id"]), "version": str(deal["version"]), "_csrf": csrf})
    assert moved.status_code == 200, moved.text
    got = crm.records.get("deal", deal["id"], actor=SYSTEM)
    assert got["status"] == "won" and got["close_date"] is not None and got["probability"] == Decimal("100.00")
    other = new_deal(crm, org, name="Other")
    refused = client.post(f"/admin/deal/{other['id']}/move",
                          data={"value": str(org["lost_stage"]["id"]), "version": "1", "_csrf": csrf})
    assert refused.status_code == 422 and "is required to close a deal as lost" in refused.json()["error"]
    assert crm.records.get("deal", other["id"], actor=SYSTEM)["status"] == "open"


def test_list_views_are_checked_at_load(tmp_path):
    project = tmp_path / "p"
    (project / "schemas").mkdir(parents=True)
    (project / "schemas" / "deal_views.yaml").write_text(
        "extends: deal\nlist:\n  views:\n"
        "    - {name: mine, label: Mine, filter: {nope: 1}, default: true}\n"
        "    - {name: mine, label: Again, filter: {status: open}, default: true}\n",
        encoding="utf-8",
    )
    with pytest.raises(SchemaError) as exc:
        CRM(project, database_url="sqlite://", entry_points=False)
    text = str(exc.value)
    assert "nope" in text and "two views are called 'mine'" in text and "only one view may be the default" in text


def test_master_data_rules(crm, org):
    store = crm.records
    with pytest.raises(ValidationError) as exc:
        store.create("deal_stage", {"name": "Odd", "sort_order": 5, "probability": 100, "is_won": True}, actor=SYSTEM)
    assert exc.value.errors == [{"field": "is_won", "message": "a won stage must also be a closed stage"}]
    with pytest.raises(ValidationError) as exc:
        store.create("marketing_activity", {"name": "Fair", "start_date": "2026-05-10", "end_date": "2026-05-01"},
                     actor=SYSTEM)
    assert exc.value.errors == [{"field": "end_date", "message": "is before the start date"}]
    fair = store.create("marketing_activity", {"name": "Fair", "start_date": "2026-05-01", "end_date": "2026-05-03",
                                               "cost": "150000"}, actor=SYSTEM)
    assert fair["cost"] == Decimal("150000.00")
    # master data pages: stages listed in their order, with probability
    html = login(crm, "admin").get("/admin/deal_stage/").text
    assert html.index("Prospecting") < html.index("Proposal") < html.index("Negotiation") < html.index("Closed won")
