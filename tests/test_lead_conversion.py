"""Lead conversion: the API action, the admin confirmation form, account matching, the
``lead_converted`` hook (and its rollback), the guards on converted leads, and ``crmkit check``
refusing a lead field the conversion map would drop. SQLite and PostgreSQL; one browser test."""

from __future__ import annotations

import datetime as dt
import re
import textwrap
from pathlib import Path

import pytest
import sqlalchemy as sa

from crmkit import CRM, hookimpl
from crmkit.core.actors import SYSTEM
from crmkit.core.errors import PermissionDenied, ValidationError
from crmkit.plugins import PluginError
from crmkit.plugins.account_matching import email_domain, web_domain
from crmkit.plugins.conversion_map import check_conversion
from crmkit.plugins.lead_conversion import convert_lead
from tests.conftest import need, run_cli
from tests.support import XSS, actor_of, csrf_of, login, make_crm, make_org, owned


def api(crm, org, username="admin"):
    """A TestClient with a bearer token of ``username``."""
    from starlette.testclient import TestClient

    from crmkit.core.tokens import create_token

    secret, _info = create_token(crm, username, "test")
    return TestClient(crm.asgi(), headers={"authorization": f"Bearer {secret}"})


def new_lead(crm, org, owner="alice", **values):
    base = {"last_name": "山田", "first_name": "太郎", "company": "株式会社テスト", "email": "taro@gmail.com"}
    return crm.records.create("lead", {**base, **values, **owned(org, owner)}, actor=SYSTEM)


def count(crm, entity):
    with crm.engine.connect() as conn:
        return conn.execute(sa.select(sa.func.count()).select_from(crm.table(entity))).scalar_one()


# ---------------------------------------------------------------------------------------------
# The action
# ---------------------------------------------------------------------------------------------
def test_convert_creates_account_contact_deal_and_moves_activities(crm, org):
    lead = new_lead(crm, org, title="部長", phone="03-1234-5678", website="https://www.test.co.jp",
                    industry="manufacturing", source="event", prefecture="東京都", employees=120)
    alice = actor_of(org["users"]["alice"])
    call = crm.records.create(
        "activity", {"subject": "初回電話", "type": "call", "status": "done", "lead": lead["id"],
                     "assignee": org["users"]["alice"]["id"]}, actor=SYSTEM)
    client = api(crm, org, "alice")
    response = client.post(f"/api/v1/lead/{lead['id']}/convert",
                           json={"account": "new", "deal": {"amount": 1_200_000, "close_date": "2027-03-31"}})
    assert response.status_code == 200, response.text
    body = response.json()
    account, contact, deal = body["account"], body["contact"], body["deal"]
    # mapped values, ownership kept with the lead's owner
    assert account["name"] == "株式会社テスト" and account["industry"] == "manufacturing"
    assert account["website"] == "https://www.test.co.jp" and account["employees"] == 120
    assert account["phone"] == "03-1234-5678" and account["prefecture"] == "東京都"
    assert contact["account"] == account["id"] and contact["full_name"] == "山田 太郎"
    assert contact["title"] == "部長" and contact["email"] == "taro@gmail.com"
    assert deal["account"] == account["id"] and deal["contact"] == contact["id"]
    assert deal["name"] == "株式会社テスト" and deal["source"] == "event" and float(deal["amount"]) == 1_200_000
    assert deal["stage"] == org["stages"][0]["id"] and float(deal["probability"]) == 10  # first open stage, its %
    for rec in (account, contact, deal):
        assert rec["owner"] == org["users"]["alice"]["id"]
    # the lead is converted, with references to what it became
    stored = crm.records.get("lead", lead["id"], actor=SYSTEM)
    assert stored["status"] == "converted" and stored["converted_at"] is not None
    assert (stored["converted_account"], stored["converted_contact"], stored["converted_deal"]) == (
        account["id"], contact["id"], deal["id"])
    # activities moved from the lead to the contact and account
    moved = crm.records.get("activity", call["id"], actor=SYSTEM)
    assert (moved["lead"], moved["contact"], moved["account"]) == (None, contact["id"], account["id"])
    assert [a["id"] for a in body["activities"]] == [call["id"]]
    # the audit names the user who converted, not "System"
    history = crm.records.history("lead", lead["id"], actor=alice)
    change = next(h for h in history if h["field"] == "status" and h["new"] == "converted")
    assert change["actor_id"] == org["users"]["alice"]["id"] and change["actor_name"] == "Alice"


def test_convert_without_deal_and_defaults_to_auto_matching(crm, org):
    lead = new_lead(crm, org)
    out = convert_lead(crm, lead["id"], actor_of(org["users"]["alice"]))
    assert out["deal"] is None and count(crm, "deal") == 0
    assert out["account"]["name"] == "株式会社テスト" and count(crm, "account") == 1


@pytest.mark.parametrize(
    "company", ["株式会社テスト", "(株)テスト", "ﾃｽﾄ株式会社", "テスト㈱", "（株）テスト", "テスト 株式会社"]
)
def test_conversion_matches_existing_account_across_company_name_variants(crm, org, company):
    existing = crm.records.create("account", {"name": "株式会社テスト", **owned(org, "alice")}, actor=SYSTEM)
    crm.records.create("account", {"name": "株式会社テストシステムズ", **owned(org, "alice")}, actor=SYSTEM)
    lead = new_lead(crm, org, company=company)
    out = convert_lead(crm, lead["id"], actor_of(org["users"]["alice"]))
    assert out["account"]["id"] == existing["id"]
    assert out["contact"]["account"] == existing["id"]
    assert count(crm, "account") == 2  # nothing new


def test_latin_legal_forms_match_too(crm, org):
    existing = crm.records.create("account", {"name": "ACME Co., Ltd.", **owned(org, "alice")}, actor=SYSTEM)
    lead = new_lead(crm, org, company="Acme Inc.")
    assert convert_lead(crm, lead["id"], actor_of(org["users"]["alice"]))["account"]["id"] == existing["id"]


def test_matching_by_email_domain_ignores_free_mail(crm, org):
    alice = actor_of(org["users"]["alice"])
    by_site = crm.records.create("account", {"name": "Example Holdings", "website": "https://www.ekusa.co.jp/",
                                             **owned(org, "alice")}, actor=SYSTEM)
    lead = new_lead(crm, org, company="エグザンプル販売", email="sato@ekusa.co.jp")
    assert convert_lead(crm, lead["id"], alice)["account"]["id"] == by_site["id"]
    # a colleague's address at another account's domain finds that account
    other = crm.records.create("account", {"name": "Foo KK", **owned(org, "alice")}, actor=SYSTEM)
    crm.records.create("contact", {"account": other["id"], "last_name": "Foo", "email": "a@foo-kk.jp",
                                   **owned(org, "alice")}, actor=SYSTEM)
    lead = new_lead(crm, org, company="フー", email="b@FOO-KK.jp")
    assert convert_lead(crm, lead["id"], alice)["account"]["id"] == other["id"]
    # gmail.com says nothing about the company: a new account
    crm.records.create("account", {"name": "Gmail user KK", "email": "info@gmail.com", **owned(org, "alice")},
                       actor=SYSTEM)
    lead = new_lead(crm, org, company="New Co", email="someone@gmail.com")
    out = convert_lead(crm, lead["id"], alice)
    assert out["account"]["name"] == "New Co"
    # a domain at many accounts is a provider's (an ISP), not a company's
    for i in range(4):
        crm.records.create("account", {"name": f"ISP user {i}", "email": f"info{i}@isp-mail.ne.jp",
                                       **owned(org, "alice")}, actor=SYSTEM)
    lead = new_lead(crm, org, company="Another New Co", email="someone@isp-mail.ne.jp")
    assert convert_lead(crm, lead["id"], alice)["account"]["name"] == "Another New Co"
    assert email_domain("x@yahoo.co.jp") is None and email_domain("x@sub.ekusa.com") == "sub.ekusa.com"
    assert email_domain("x@example.jp") is None and email_domain("x@shop.example") is None
    assert web_domain("WWW.Ekusa.co.jp/path") == "ekusa.co.jp" and web_domain("not a url") is None


def test_several_equally_good_matches_must_be_chosen(crm, org):
    a = crm.records.create("account", {"name": "テスト株式会社", **owned(org, "alice")}, actor=SYSTEM)
    b = crm.records.create("account", {"name": "(株)テスト", **owned(org, "alice")}, actor=SYSTEM)
    lead = new_lead(crm, org)
    client = api(crm, org, "alice")
    response = client.post(f"/api/v1/lead/{lead['id']}/convert", json={})
    assert response.status_code == 422
    error = response.json()["errors"][0]
    assert error["field"] == "account" and f"#{a['id']}" in error["message"] and f"#{b['id']}" in error["message"]
    assert count(crm, "contact") == 0
    response = client.post(f"/api/v1/lead/{lead['id']}/convert", json={"account": b["id"]})
    assert response.status_code == 200 and response.json()["account"]["id"] == b["id"]


def test_matching_only_considers_accounts_the_user_may_read(crm, org):
    # bob (West) cannot see East's account, so his lead gets a new account of his own
    crm.records.create("account", {"name": "株式会社テスト", **owned(org, "alice")}, actor=SYSTEM)
    lead = new_lead(crm, org, owner="bob")
    out = convert_lead(crm, lead["id"], actor_of(org["users"]["bob"]))
    assert out["account"]["owner"] == org["users"]["bob"]["id"] and count(crm, "account") == 2
    # nor may he pick it by id
    hidden = crm.records.list("account", actor=SYSTEM, filter={"owner": org["users"]["alice"]["id"]}).items[0]
    lead = new_lead(crm, org, owner="bob", company="別会社")
    with pytest.raises(ValidationError) as exc:
        convert_lead(crm, lead["id"], actor_of(org["users"]["bob"]), account=hidden["id"])
    assert exc.value.errors[0]["field"] == "account"


# ---------------------------------------------------------------------------------------------
# Refusals and bad input
# ---------------------------------------------------------------------------------------------
def test_converting_twice_is_refused_with_a_message(crm, org):
    lead = new_lead(crm, org)
    client = api(crm, org)
    assert client.post(f"/api/v1/lead/{lead['id']}/convert", json={}).status_code == 200
    again = client.post(f"/api/v1/lead/{lead['id']}/convert", json={})
    assert again.status_code == 422
    assert "already converted" in again.json()["errors"][0]["message"]
    assert count(crm, "contact") == 1


def test_status_converted_cannot_be_set_by_hand_and_converted_leads_are_read_only(crm, org):
    admin = actor_of(org["users"]["admin"])
    lead = new_lead(crm, org)
    with pytest.raises(ValidationError) as exc:
        crm.records.update("lead", lead["id"], {"status": "converted"}, actor=admin)
    assert exc.value.errors[0]["field"] == "status" and "Convert" in exc.value.errors[0]["message"]
    with pytest.raises(ValidationError):
        crm.records.create("lead", {"last_name": "X", "status": "converted"}, actor=admin)
    # readonly bookkeeping fields are refused too
    response = api(crm, org).patch(f"/api/v1/lead/{lead['id']}", json={"converted_account": 1})
    assert response.status_code == 422
    convert_lead(crm, lead["id"], admin)
    with pytest.raises(PermissionDenied):
        crm.records.update("lead", lead["id"], {"status": "working"}, actor=admin)
    assert api(crm, org).patch(f"/api/v1/lead/{lead['id']}", json={"rating": "hot"}).status_code == 403
    # system processes may still touch it, but never un-convert it
    with pytest.raises(ValidationError):
        crm.records.update("lead", lead["id"], {"status": "working"}, actor=SYSTEM)


def test_the_lead_form_does_not_offer_the_converted_status(crm, org):
    """`system: true` on an enum option: shown on converted leads, never offered as a choice."""
    lead = new_lead(crm, org, owner="admin")
    client = login(crm, "admin")
    for path in ("/admin/lead/new", f"/admin/lead/{lead['id']}/edit"):
        page = client.get(path).text
        assert 'value="working"' in page and 'value="converted"' not in page, path
    convert_lead(crm, lead["id"], actor_of(org["users"]["admin"]))
    assert "Converted" in client.get(f"/admin/lead/{lead['id']}").text
    assert crm.catalog["lead"].field("status").option("converted").system


def test_bad_input_is_a_422_per_field_and_leaves_nothing(crm, org):
    lead = new_lead(crm, org)
    client = api(crm, org)
    url = f"/api/v1/lead/{lead['id']}/convert"
    cases = [
        ({"bogus": 1}, "bogus"),
        ({"account": "maybe"}, "account"),
        ({"account": 999999}, "account"),
        ({"deal": "yes please"}, "deal"),
        ({"deal": {"stage": 999999}}, "deal.stage"),
        ({"deal": {"amount": "lots"}}, "deal.amount"),
        ({"deal": {"close_date": "31/31/2027"}}, "deal.close_date"),
        ({"owner": "me"}, "owner"),
    ]
    for payload, field in cases:
        response = client.post(url, json=payload)
        assert response.status_code == 422, (payload, response.text)
        assert field in [e["field"] for e in response.json()["errors"]], (payload, response.json())
    assert client.post(url, content=b"{not json", headers={"content-type": "application/json"}).status_code in (
        400, 422)
    for entity in ("account", "contact", "deal"):
        assert count(crm, entity) == 0
    assert crm.records.get("lead", lead["id"], actor=SYSTEM)["status"] == "new"


def test_sales_rep_cannot_convert_another_teams_or_a_teammates_lead(crm, org):
    lead = new_lead(crm, org, owner="alice")
    # bob is in another team: the lead does not exist for him
    assert api(crm, org, "bob").post(f"/api/v1/lead/{lead['id']}/convert", json={}).status_code == 404
    # mia's lead is in alice's team: alice sees it but may not change it
    mias = new_lead(crm, org, owner="mia", company="ミア商事")
    response = api(crm, org, "alice").post(f"/api/v1/lead/{mias['id']}/convert", json={})
    assert response.status_code == 403
    # the manager may convert her team's leads
    assert api(crm, org, "mia").post(f"/api/v1/lead/{lead['id']}/convert", json={}).status_code == 200
    assert count(crm, "contact") == 1


# ---------------------------------------------------------------------------------------------
# The lead_converted hook
# ---------------------------------------------------------------------------------------------
class CarryOver:
    """A plugin with its own history rows keyed by lead, moving them to the contact."""

    __name__ = "carry-over"

    def __init__(self):
        self.calls = []

    @hookimpl
    def lead_converted(self, crm, lead, account, contact, deal, tx, actor):
        self.calls.append((lead["id"], account["id"], contact["id"], deal and deal["id"], actor.username))
        tx.create("activity", {"subject": f"Converted from lead #{lead['id']}", "type": "task", "status": "done",
                               "contact": contact["id"]})


class FailsLast:
    """Fails at the very end of the conversion, after every record was written."""

    __name__ = "fails-last"

    @hookimpl(trylast=True)
    def lead_converted(self, crm, lead, account, contact, deal, tx, actor):
        assert tx.get("lead", lead["id"])["status"] == "converted"  # everything is written by now
        raise RuntimeError("campaign history could not be moved")


def test_lead_converted_hook_writes_in_the_same_transaction(tmp_path, db_url):
    plugin = CarryOver()
    crm = make_crm(tmp_path, db_url, plugins=[plugin])
    org = make_org(crm)
    lead = new_lead(crm, org)
    out = convert_lead(crm, lead["id"], actor_of(org["users"]["alice"]), deal=True)
    assert plugin.calls == [(lead["id"], out["account"]["id"], out["contact"]["id"], out["deal"]["id"], "alice")]
    notes = crm.records.list("activity", actor=SYSTEM, filter={"contact": out["contact"]["id"]}).items
    assert [n["subject"] for n in notes] == [f"Converted from lead #{lead['id']}"]
    crm.close()


def test_a_failing_hook_at_the_last_step_rolls_the_whole_conversion_back(tmp_path, db_url):
    crm = make_crm(tmp_path, db_url, plugins=[CarryOver(), FailsLast()])
    org = make_org(crm)
    existing = crm.records.create("account", {"name": "Old KK", **owned(org, "alice")}, actor=SYSTEM)
    lead = new_lead(crm, org)
    call = crm.records.create("activity", {"subject": "call", "type": "call", "status": "done",
                                           "lead": lead["id"]}, actor=SYSTEM)
    before = {e: count(crm, e) for e in ("account", "contact", "deal", "activity")}
    with pytest.raises(PluginError) as exc:
        convert_lead(crm, lead["id"], actor_of(org["users"]["alice"]), account="new", deal={"amount": 5})
    assert exc.value.plugin == "fails-last"
    assert {e: count(crm, e) for e in before} == before
    stored = crm.records.get("lead", lead["id"], actor=SYSTEM)
    assert stored["status"] == "new" and stored["converted_at"] is None and stored["converted_contact"] is None
    assert crm.records.get("activity", call["id"], actor=SYSTEM)["lead"] == lead["id"]
    assert crm.records.get("account", existing["id"], actor=SYSTEM)["version"] == 1
    # over HTTP: refused naming the plugin (as the API answers every failing hook), nothing written
    response = api(crm, org, "alice").post(f"/api/v1/lead/{lead['id']}/convert", json={"account": "new"})
    assert response.status_code == 422 and "fails-last" in response.text
    # and the admin form says so, without a half-converted lead
    client = login(crm, "alice")
    page = client.get(f"/admin/lead/{lead['id']}/convert")
    response = client.post(f"/admin/lead/{lead['id']}/convert",
                           data={"_csrf": csrf_of(page.text), "account": "new"})
    assert "Nothing was converted" in response.text and "fails-last" in response.text
    assert {e: count(crm, e) for e in before} == before
    crm.close()


def test_plugin_added_lead_fields_need_no_mapping(tmp_path):
    class Scoring:
        __name__ = "scoring-fields"

        @hookimpl
        def extend_entity(self, crm, name, definition):
            if name == "lead":
                return {"fields": {"scoring_points": {"type": "integer"}}}

    crm = CRM(tmp_path, plugins=[Scoring()], entry_points=False)
    assert "scoring_points" in crm.catalog["lead"].fields
    assert check_conversion(crm.catalog) == []  # the plugin carries its own data in lead_converted


def test_an_incomplete_map_refuses_conversion_instead_of_dropping_data(tmp_path, db_url):
    (tmp_path / "schemas").mkdir()
    write(tmp_path, "lead_extra.yaml", "extends: lead\nfields:\n  budget: {type: money}\n")
    crm = make_crm(tmp_path, db_url)  # the CRM runs (migrations, admin) while the map is being fixed
    org = make_org(crm)
    lead = new_lead(crm, org, budget=5)
    with pytest.raises(ValidationError) as exc:
        convert_lead(crm, lead["id"], actor_of(org["users"]["alice"]))
    assert "lead.budget would be dropped" in exc.value.errors[0]["message"]
    assert "crmkit check" in exc.value.errors[0]["message"]
    assert count(crm, "contact") == 0 and count(crm, "account") == 0
    crm.close()


# ---------------------------------------------------------------------------------------------
# crmkit check and the conversion map
# ---------------------------------------------------------------------------------------------
def write(project, name, text):
    path = project / "schemas" / name
    path.write_text(textwrap.dedent(text).lstrip(), encoding="utf-8")
    return path


def test_crmkit_check_refuses_a_lead_field_that_would_be_dropped(project):
    path = write(project, "lead_extra.yaml", """
        extends: lead
        fields:
          budget: {type: money, label: {en: Budget, ja: 予算}}
          hobby:  {type: string, max_length: 50}
        """)
    result = run_cli("check", cwd=project)
    assert result.returncode == 1
    out = result.stderr
    assert f"{path}:3: fields.budget: lead.budget would be dropped" in out
    assert f"{path}:4: fields.hobby: lead.hobby would be dropped" in out
    assert "conversion.ignore" in out
    write(project, "lead_extra.yaml", """
        extends: lead
        fields:
          budget: {type: money, label: {en: Budget, ja: 予算}}
          hobby:  {type: string, max_length: 50}
        conversion:
          map:
            budget: deal.amount
          ignore: [hobby]
        """)
    result = run_cli("check", cwd=project)
    assert result.returncode == 0, result.stderr


def test_crmkit_check_reports_bad_map_targets_at_their_line(project):
    path = write(project, "lead_extra.yaml", """
        extends: lead
        fields:
          budget: {type: money}
          note:   {type: text}
        conversion:
          map:
            budget: deal.amont
            note: [contact.description, account.nope]
            rating: contact.title
          ignore: [status_x]
        """)
    result = run_cli("check", cwd=project)
    assert result.returncode == 1
    out = result.stderr
    assert f"{path}:7: conversion.map.budget: deal has no field 'amont' (did you mean deal.amount?)" in out
    assert f"{path}:8: conversion.map.note[1]: account has no field 'nope'" in out
    assert f"{path}:8: conversion.map.note[0]: contact.description is already filled from lead.description" in out
    assert f"{path}:9: conversion.map.rating: lead.rating is both mapped and ignored" not in out  # overlay wins
    assert "lead.rating is enum but contact.title is string" not in out  # enum -> string is fine
    assert f"{path}:10: conversion.ignore[0]: lead has no field 'status_x' to ignore" in out


def test_conversion_uses_a_company_overlay_mapping(tmp_path, db_url):
    (tmp_path / "schemas").mkdir()
    write(tmp_path, "lead_extra.yaml", """
        extends: lead
        fields:
          budget: {type: money}
        conversion:
          map: {budget: deal.amount}
        """)
    crm = make_crm(tmp_path, db_url)
    org = make_org(crm)
    lead = new_lead(crm, org, budget=777)
    out = convert_lead(crm, lead["id"], actor_of(org["users"]["alice"]), deal=True)
    assert float(out["deal"]["amount"]) == 777
    crm.close()


# ---------------------------------------------------------------------------------------------
# Admin
# ---------------------------------------------------------------------------------------------
def test_admin_convert_button_form_and_result(crm, org):
    existing = crm.records.create("account", {"name": "株式会社テスト", **owned(org, "alice")}, actor=SYSTEM)
    lead = new_lead(crm, org, company="(株)テスト")
    client = login(crm, "alice")
    page = client.get(f"/admin/lead/{lead['id']}")
    assert f'href="/admin/lead/{lead["id"]}/convert"' in page.text
    form = client.get(f"/admin/lead/{lead['id']}/convert")
    assert form.status_code == 200
    assert re.search(rf'name="account" value="{existing["id"]}" checked', form.text)
    assert "same company name" in form.text
    # without the CSRF token: refused, nothing written
    assert client.post(f"/admin/lead/{lead['id']}/convert", data={"account": "new"}).status_code == 403
    assert count(crm, "contact") == 0
    # a bad deal amount comes back as a field error, with what was typed
    bad = client.post(f"/admin/lead/{lead['id']}/convert", data={
        "_csrf": csrf_of(form.text), "account": str(existing["id"]), "create_deal": "1", "deal_name": "大型案件",
        "deal_amount": "many", "deal_stage": str(org["stages"][1]["id"])})
    assert bad.status_code == 422 and 'id="err-deal-amount"' in bad.text and 'value="大型案件"' in bad.text
    assert count(crm, "contact") == 0
    done = client.post(f"/admin/lead/{lead['id']}/convert", data={
        "_csrf": csrf_of(form.text), "account": str(existing["id"]), "create_deal": "1", "deal_name": "大型案件",
        "deal_amount": "3000000", "deal_stage": str(org["stages"][1]["id"]), "deal_close_date": "2027-01-31"})
    assert done.status_code == 303
    contact = crm.records.list("contact", actor=SYSTEM).items[0]
    assert done.headers["location"] == f"/admin/contact/{contact['id']}"
    deal = crm.records.list("deal", actor=SYSTEM).items[0]
    assert deal["name"] == "大型案件" and deal["stage"] == org["stages"][1]["id"] and float(deal["probability"]) == 40
    assert deal["close_date"] == dt.date(2027, 1, 31) and contact["account"] == existing["id"]
    landing = client.get(done.headers["location"])
    assert "Converted: contact 山田 太郎 at 株式会社テスト, deal 大型案件." in landing.text
    # the lead page now shows what it became, and neither Convert nor Edit
    page = client.get(f"/admin/lead/{lead['id']}")
    assert "Converted account" in page.text and f'href="/admin/contact/{contact["id"]}"' in page.text
    assert f"/admin/lead/{lead['id']}/convert" not in page.text and f"/admin/lead/{lead['id']}/edit" not in page.text
    # visiting the form again explains instead of converting twice
    again = client.get(f"/admin/lead/{lead['id']}/convert")
    assert again.status_code == 303
    assert "already converted" in client.get(again.headers["location"]).text


def test_admin_convert_page_escapes_and_checks_permissions(crm, org):
    crm.records.create("account", {"name": XSS, **owned(org, "alice")}, actor=SYSTEM)
    lead = new_lead(crm, org, company=XSS, last_name=XSS)
    client = login(crm, "alice")
    page = client.get(f"/admin/lead/{lead['id']}/convert")
    assert page.status_code == 200
    assert "<script>alert" not in page.text and "&lt;script&gt;" in page.text
    # Japanese labels for a Japanese user (mia), and a 403 for a teammate's lead she may not change? (manager may)
    mia = login(crm, "mia")
    assert "取引開始" in mia.get(f"/admin/lead/{lead['id']}/convert").text
    bob = login(crm, "bob")
    assert bob.get(f"/admin/lead/{lead['id']}/convert").status_code == 404
    mias = new_lead(crm, org, owner="mia", company="ミア商事")
    assert client.get(f"/admin/lead/{mias['id']}/convert").status_code == 403
    assert f"/admin/lead/{mias['id']}/convert" not in client.get(f"/admin/lead/{mias['id']}").text


# ---------------------------------------------------------------------------------------------
# Browser
# ---------------------------------------------------------------------------------------------
@pytest.mark.browser
def test_browser_convert_a_lead(tmp_path):
    from crmkit.web.liveserver import live_server
    from crmkit.web.screenshots import CHROMIUM_ARGS
    from tests.support import PASSWORD

    need(Path("/usr/bin/chromium").exists(), "chromium not installed")
    from playwright.sync_api import sync_playwright

    crm = make_crm(tmp_path, f"sqlite:///{tmp_path / 'crm.db'}")
    org = make_org(crm)
    existing = crm.records.create("account", {"name": "株式会社ブラウザ", **owned(org, "alice")}, actor=SYSTEM)
    lead = new_lead(crm, org, company="ﾌﾞﾗｳｻﾞ(株)", last_name="佐藤", first_name="花子")
    crm.records.create("activity", {"subject": "展示会で名刺交換", "type": "meeting", "status": "done",
                                    "lead": lead["id"], "assignee": org["users"]["alice"]["id"]}, actor=SYSTEM)
    with live_server(crm.asgi()) as base, sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path="/usr/bin/chromium", args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 375, "height": 800}, locale="en-US", base_url=base)
        errors = []
        page.on("pageerror", lambda exc: errors.append(str(exc)))
        page.goto("/admin/login")
        page.get_by_label("Username").fill("alice")
        page.get_by_label("Password").fill(PASSWORD)
        page.get_by_role("button", name="Sign in").click()
        page.wait_for_url(f"{base}/admin/")
        page.goto(f"/admin/lead/{lead['id']}")
        page.get_by_role("link", name="Convert").click()
        page.wait_for_url(re.compile(r"/convert$"))
        assert page.get_by_role("radio", name=re.compile("Use 株式会社ブラウザ")).is_checked()
        page.get_by_label("Also create a deal").check()
        page.get_by_label("Deal name").fill("ブラウザ 年間契約")
        page.get_by_label("Amount").fill("480000")
        page.get_by_label("Stage").select_option(label="Proposal")
        page.get_by_role("button", name="Convert").click()
        page.wait_for_url(re.compile(r"/admin/contact/\d+$"))
        assert "Converted: contact 佐藤 花子 at 株式会社ブラウザ, deal ブラウザ 年間契約." in page.content()
        assert "展示会で名刺交換" in page.content()  # the lead's history came along
        browser.close()
        assert not errors, errors
    contact = crm.records.list("contact", actor=SYSTEM).items[0]
    assert contact["account"] == existing["id"]
    deal = crm.records.list("deal", actor=SYSTEM).items[0]
    assert float(deal["amount"]) == 480000 and deal["stage"] == org["stages"][1]["id"]
    crm.close()


# ---------------------------------------------------------------------------------------------
# The docs' examples
# ---------------------------------------------------------------------------------------------
def test_docs_workflows_examples_pass_crmkit_check(project):
    doc = (Path(__file__).resolve().parent.parent / "docs" / "workflows.md").read_text(encoding="utf-8")
    blocks = re.findall(r"```yaml\n(.*?)```", doc, re.S)
    overlay = next(b for b in blocks if b.startswith("extends: lead"))
    config = next(b for b in blocks if b.startswith("business_cards:"))
    (project / "schemas" / "lead_extra.yaml").write_text(overlay, encoding="utf-8")
    (project / "crmkit.yaml").write_text(config, encoding="utf-8")
    result = run_cli("check", cwd=project)
    assert result.returncode == 0, result.stderr
    # and without its conversion section the same overlay is refused
    (project / "schemas" / "lead_extra.yaml").write_text(overlay.split("conversion:")[0], encoding="utf-8")
    result = run_cli("check", cwd=project)
    assert result.returncode == 1 and "lead.budget would be dropped" in result.stderr
