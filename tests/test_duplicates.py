"""Duplicate rules, the warning on create (form and API), the duplicates page and merging,
on SQLite and PostgreSQL."""

from __future__ import annotations

import pytest
import sqlalchemy as sa

from crmkit import hookimpl
from crmkit.core import duplicates as dup
from crmkit.core.actors import SYSTEM
from crmkit.core.errors import NotFound, PermissionDenied
from crmkit.core.text import normalize_search
from crmkit.dataio import import_file
from crmkit.plugins import PluginError
from tests.support import actor_of, login, make_crm, make_org, owned, token


# ---------------------------------------------------------------------------------------------
# Normalised keys
# ---------------------------------------------------------------------------------------------
def test_normalisers():
    assert dup.normalize("email", "  Taro.Yamada@Example.CO.JP ") == "taro.yamada@example.co.jp"
    for phone in ("03-1234-5678", "０３（１２３４）５６７８", "+81 3 1234 5678", "03ー1234ー5678", "0312345678"):
        assert dup.normalize("phone", phone) == "+81312345678", phone
    assert dup.normalize("phone", "090-1234-5678") == "+819012345678"
    assert dup.normalize("phone", "+1 (415) 555-0100") == "+14155550100"
    for name in ("株式会社テスト", "(株)テスト", "ﾃｽﾄ株式会社", "テスト ㈱", "てすと"):
        assert dup.normalize("company", name) == "てすと", name
    assert dup.normalize("company", "ACME, Inc.") == dup.normalize("company", "acme") == "acme"
    assert dup.normalize("text", "ヤマダ　タロウ") == dup.normalize("text", "やまだたろう")
    assert dup.similarity("やまだたろう", "やまだたろー") >= 80 and dup.similarity("smith john", "john smith") == 100



def test_text_and_phone_keys_ignore_every_kind_of_whitespace_and_punctuation():
    for phone in ("(03) 1234.5678", "03 1234 5678", "03\t1234\u30005678", "０３−１２３４−５６７８", " 03.1234.5678 "):
        assert dup.normalize("phone", phone) == "+81312345678", phone
    for name in ("ヤマダ\tタロウ", "やまだ\u3000 たろう", "ﾔﾏﾀﾞ\x1fﾀﾛｳ", " YAMADA taro\n"):
        assert dup.normalize("text", name) == dup._SPACES.sub("", normalize_search(name.strip())), name
    assert dup.normalize("text", {"a": "ヤマダ", "b": "", "c": "タロウ"}) == "やまだたろう"
    assert dup.normalize("exact", 12) == "12"
    assert dup.normalize("email", None) == "" and dup.normalize("phone", " ") == ""


def test_keys_of_is_each_rules_key_of(crm):
    keys = dup.Keys(crm)
    keys.rules = {"lead": dup.rules_of(crm.catalog["lead"]) + [
        dup.Rule("lead", "pair", {}, (dup.Key("last_name", "text"), dup.Key("email", "email"))),
        dup.Rule("lead", "exact", {}, (dup.Key("company", "exact"),)),
    ]}
    records = [
        {"email": " A@Example.COM ", "phone": "03-1234-5678", "company": "株式会社テスト", "last_name": "ヤマダ"},
        {"email": None, "phone": "", "company": "  ", "last_name": "x"},
        {"email": "b@example.com", "last_name": None, "company": "A" * 300, "phone": "+1 (415) 555-0100"},
        {"email": "c@example.com", "last_name": "Ｓｍｉｔｈ", "company": {"name": "ACME Inc."}, "phone": 312345678},
    ]
    for record in records:
        expected = [(r.name, k) for r in keys.rules["lead"] if (k := r.key_of(record, keys.region)) is not None]
        assert keys.keys_of("lead", record) == expected
    assert [name for name, _k in keys.keys_of("lead", records[0])] == ["email", "phone", "company_person", "pair",
                                                                      "exact"]
    assert dict(keys.keys_of("lead", records[2]))["exact"].startswith("#")  # over KEY_MAX: a digest


def test_rules_come_from_yaml_and_bad_rules_are_refused(crm, tmp_path, db_url):
    assert [r.name for r in dup.rules_of(crm.catalog["lead"])] == ["email", "phone", "company_person"]
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "x.yaml").write_text(
        "extends: account\nduplicates:\n  rules:\n    - {name: r, keys: [{field: nope}]}\n", encoding="utf-8")
    from crmkit import CRM
    from crmkit.core.loader import SchemaError

    with pytest.raises(SchemaError) as exc:
        CRM(tmp_path, database_url=db_url, schema_paths=[tmp_path / "bad"], entry_points=False)
    assert "duplicates rule 'r': account has no field 'nope'" in str(exc.value)


def test_keys_are_indexed_on_save_update_and_delete(crm):
    store = crm.records
    lead = store.create("lead", {"last_name": "A", "email": "A@X.com", "phone": "03-1234-5678"}, actor=SYSTEM)
    keys = crm.system_tables[dup.KEY_TABLE]

    def stored():
        with crm.engine.connect() as conn:
            return set(conn.execute(sa.select(keys.c.rule, keys.c.key).where(keys.c.record_id == lead["id"],
                                                                              keys.c.entity == "lead")).all())

    assert stored() == {("email", "a@x.com"), ("phone", "+81312345678")}
    store.update("lead", lead["id"], {"email": "b@x.com", "company": "(株)テスト"}, actor=SYSTEM)
    assert stored() == {("email", "b@x.com"), ("phone", "+81312345678"), ("company_person", "てすと")}
    store.delete("lead", lead["id"], actor=SYSTEM)
    assert stored() == set()


def test_candidates_by_exact_keys_and_fuzzy_names(crm, org):
    store = crm.records
    yamada = store.create("lead", {"last_name": "山田", "first_name": "太郎", "company": "株式会社テスト",
                                   "email": "taro@example.com"}, actor=SYSTEM)
    store.create("lead", {"last_name": "佐藤", "first_name": "花子", "company": "株式会社テスト"}, actor=SYSTEM)
    found = dup.find_candidates(crm, "lead", {"last_name": "山田", "first_name": "太朗", "company": "ﾃｽﾄ㈱"},
                                actor=SYSTEM)
    assert [c.id for c in found] == [yamada["id"]] and found[0].rules == ["company_person"]
    assert 50 < found[0].score < 100
    by_email = dup.find_candidates(crm, "lead", {"last_name": "X", "email": "TARO@example.com"}, actor=SYSTEM)
    assert [(c.id, c.rules, c.score) for c in by_email] == [(yamada["id"], ["email"], 100)]
    assert dup.find_candidates(crm, "lead", {"last_name": "別人", "company": "株式会社テスト"}, actor=SYSTEM) == []


def test_candidates_respect_read_permission(crm, org):
    store = crm.records
    store.create("lead", {"last_name": "West", "email": "w@example.com", **owned(org, "bob")}, actor=SYSTEM)
    alice = actor_of(org["users"]["alice"])
    assert dup.find_candidates(crm, "lead", {"email": "w@example.com"}, actor=alice) == []
    assert len(dup.find_candidates(crm, "lead", {"email": "w@example.com"}, actor=SYSTEM)) == 1


def test_imported_records_are_indexed_too(crm, tmp_path):
    path = tmp_path / "l.csv"
    path.write_text("last_name,email\nA,a@example.com\nB,A@EXAMPLE.COM\n", encoding="utf-8")
    assert import_file(crm, "lead", path, actor=SYSTEM).created == 2
    groups = dup.groups(crm, "lead", actor=SYSTEM)
    assert [(g.rule.name, len(g.ids)) for g in groups] == [("email", 2)]


# ---------------------------------------------------------------------------------------------
# Warning on create: API and form
# ---------------------------------------------------------------------------------------------
def test_api_answers_409_with_candidates_unless_confirmed(crm, org):
    from crmkit.core.tokens import create_token

    store = crm.records
    acc = store.create("account", {"name": "株式会社サンプル", **owned(org, "admin")}, actor=SYSTEM)
    secret, _info = create_token(crm, "admin", "t")
    client = login(crm, "admin")
    headers = {"authorization": f"Bearer {secret}"}
    refused = client.post("/api/v1/account", json={"name": "サンプル株式会社"}, headers=headers)
    assert refused.status_code == 409
    body = refused.json()
    assert body["duplicates"] == [{"id": acc["id"], "title": "株式会社サンプル", "rules": ["name"], "score": 100}]
    assert "allow_duplicates" in body["errors"][0]["message"]
    assert store.list("account", actor=SYSTEM).count == 1
    made = client.post("/api/v1/account?allow_duplicates=true", json={"name": "サンプル株式会社"}, headers=headers)
    assert made.status_code == 201
    also = client.post("/api/v1/account", json={"name": "(株)サンプル"}, headers={**headers, "x-allow-duplicates": "1"})
    assert also.status_code == 201
    fresh = client.post("/api/v1/account", json={"name": "全く別の会社"}, headers=headers)
    assert fresh.status_code == 201
    found = client.post(f"/api/v1/account/{acc['id']}/duplicates", json={}, headers=headers)
    assert found.status_code == 200 and len(found.json()["duplicates"]) == 2


def test_form_warns_with_candidates_and_creates_anyway(crm, org):
    store = crm.records
    existing = store.create("lead", {"last_name": "Dup", "email": "dup@example.com"}, actor=SYSTEM)
    client = login(crm, "admin")
    data = {"last_name": "Again", "email": "DUP@example.com", "status": "new", "_csrf": token(client)}
    warned = client.post("/admin/lead/new", data=data)
    assert warned.status_code == 409
    assert "Possible duplicates" in warned.text and f'/admin/lead/{existing["id"]}' in warned.text
    assert 'name="_allow_duplicates"' in warned.text and 'value="Again"' in warned.text  # the input is kept
    assert store.list("lead", actor=SYSTEM).count == 1
    created = client.post("/admin/lead/new", data={**data, "_allow_duplicates": "1"})
    assert created.status_code == 303 and store.list("lead", actor=SYSTEM).count == 2
    detail = client.get(created.headers["location"])
    assert "Possible duplicates" in detail.text and "/admin/lead/merge?" in detail.text


# ---------------------------------------------------------------------------------------------
# Merge
# ---------------------------------------------------------------------------------------------
def make_customer(crm, org, name, suffix):
    store = crm.records
    acc = store.create("account", {"name": name, "phone": "03-0000-000" + suffix}, actor=SYSTEM)
    contact = store.create("contact", {"account": acc["id"], "last_name": "担当" + suffix}, actor=SYSTEM)
    deal = store.create("deal", {"name": "案件" + suffix, "account": acc["id"], "stage": org["stages"][0]["id"]},
                        actor=SYSTEM)
    activity = store.create("activity", {"subject": "訪問" + suffix, "type": "visit", "account": acc["id"],
                                         "contact": contact["id"]}, actor=SYSTEM)
    return acc, contact, deal, activity


def test_merge_moves_contacts_deals_and_activities_and_keeps_both_histories(crm, org):
    store = crm.records
    winner, c1, d1, a1 = make_customer(crm, org, "株式会社テスト", "1")
    loser, c2, d2, a2 = make_customer(crm, org, "(株)テスト", "2")
    store.update("account", loser["id"], {"website": "https://test.example", "rank": "A"}, actor=SYSTEM)
    sub = store.create("account", {"name": "子会社", "parent": loser["id"]}, actor=SYSTEM)
    result = dup.merge(crm, "account", winner["id"], [loser["id"]], actor=SYSTEM,
                       choose={"website": loser["id"], "rank": loser["id"]})
    assert result.merged == [loser["id"]]
    assert result.moved == {"contact.account": 1, "deal.account": 1, "activity.account": 1, "account.parent": 1}
    kept = store.get("account", winner["id"], actor=SYSTEM)
    assert (kept["name"], kept["website"], kept["rank"]) == ("株式会社テスト", "https://test.example", "A")
    assert {c["id"] for c in store.list("contact", actor=SYSTEM, filter={"account": winner["id"]}).items} == {
        c1["id"], c2["id"]}
    assert {d["id"] for d in store.list("deal", actor=SYSTEM, filter={"account": winner["id"]}).items} == {
        d1["id"], d2["id"]}
    assert {a["id"] for a in store.list("activity", actor=SYSTEM, filter={"account": winner["id"]}).items} == {
        a1["id"], a2["id"]}
    assert store.get("account", sub["id"], actor=SYSTEM)["parent"] == winner["id"]
    with pytest.raises(NotFound):
        store.get("account", loser["id"], actor=SYSTEM)
    # both histories stay readable: the winner's own, and the merged record's through the winner
    own = store.history("account", winner["id"], actor=SYSTEM)
    assert {h["field"] for h in own} >= {"name", "website", "rank"} and any(h["action"] == "merge" for h in own)
    merged = dup.merged_history(crm, "account", winner["id"], actor=SYSTEM)
    assert list(merged) == [loser["id"]]
    actions = [(h["action"], h["field"]) for h in merged[loser["id"]]]
    assert ("create", "name") in actions and ("update", "website") in actions and actions[-1] == ("delete", None)
    moved_contact = store.history("contact", c2["id"], actor=SYSTEM)
    assert any(h["field"] == "account" and h["new"] == str(winner["id"]) for h in moved_contact)
    with crm.engine.connect() as conn:  # the loser's keys left the index
        keys = crm.system_tables[dup.KEY_TABLE]
        assert conn.execute(sa.select(keys.c.id).where(keys.c.record_id == loser["id"],
                                                       keys.c.entity == "account")).first() is None


def test_merge_moves_link_table_references(crm, org):
    store = crm.records
    u1, u2 = org["users"]["alice"], org["users"]["bob"]
    mia = org["users"]["mia"]
    act = store.create("activity", {"subject": "会議", "type": "meeting",
                                    "participants": [{"id": u2["id"]}, {"id": mia["id"]}]}, actor=SYSTEM)
    both = store.create("activity", {"subject": "両方", "type": "meeting",
                                     "participants": [{"id": u1["id"]}, {"id": u2["id"]}]}, actor=SYSTEM)
    dup.merge(crm, "user", u1["id"], [u2["id"]], actor=SYSTEM)
    assert sorted(p["id"] for p in store.get("activity", act["id"], actor=SYSTEM)["participants"]) == sorted(
        [u1["id"], org["users"]["mia"]["id"]])
    assert [p["id"] for p in store.get("activity", both["id"], actor=SYSTEM)["participants"]] == [u1["id"]]


def test_merge_is_all_or_nothing(crm, org):
    store = crm.records
    winner, *_ = make_customer(crm, org, "Keep KK", "1")
    loser, contact, *_ = make_customer(crm, org, "Keep Inc.", "2")

    class Refuses:
        @hookimpl
        def records_merged(self, crm, entity, winner, losers, tx, actor):
            raise RuntimeError("ledger is locked")

    crm.pm.register(Refuses())
    with pytest.raises(PluginError, match="ledger is locked"):
        dup.merge(crm, "account", winner["id"], [loser["id"]], actor=SYSTEM)
    assert store.get("contact", contact["id"], actor=SYSTEM)["account"] == loser["id"]  # nothing moved
    assert store.get("account", loser["id"], actor=SYSTEM)["name"] == "Keep Inc."


def test_merge_needs_update_and_delete_rights(crm, org):
    store = crm.records
    mine = store.create("account", {"name": "Mine KK", **owned(org, "alice")}, actor=SYSTEM)
    other = store.create("account", {"name": "Mine Inc.", **owned(org, "alice")}, actor=SYSTEM)
    with pytest.raises(PermissionDenied):
        dup.merge(crm, "account", mine["id"], [other["id"]], actor=actor_of(org["users"]["alice"]))
    assert store.get("account", other["id"], actor=SYSTEM)


# ---------------------------------------------------------------------------------------------
# Admin pages, API and CLI
# ---------------------------------------------------------------------------------------------
def test_duplicates_page_and_merge_page(crm, org):
    store = crm.records
    winner, c1, *_ = make_customer(crm, org, "株式会社アルファ", "1")
    loser, c2, *_ = make_customer(crm, org, "アルファ（株）", "2")
    store.update("account", loser["id"], {"industry": "it"}, actor=SYSTEM)
    client = login(crm, "admin")
    page = client.get("/admin/data/duplicates/?entity=account")
    assert page.status_code == 200 and "Same company name" in page.text and "株式会社アルファ" in page.text
    merge_url = f"/admin/account/merge?ids={winner['id']}&ids={loser['id']}"
    assert merge_url.replace("&", "&amp;") in page.text
    form = client.get(merge_url)
    assert form.status_code == 200 and 'name="winner"' in form.text and 'name="f.industry"' in form.text
    done = client.post("/admin/account/merge", data={
        "_csrf": token(client), "ids": [winner["id"], loser["id"]], "winner": winner["id"],
        "f.industry": loser["id"], "f.name": winner["id"],
    })
    assert done.status_code == 303 and done.headers["location"] == f"/admin/account/{winner['id']}"
    kept = store.get("account", winner["id"], actor=SYSTEM)
    assert kept["industry"] == "it" and kept["name"] == "株式会社アルファ"
    assert store.get("contact", c2["id"], actor=SYSTEM)["account"] == winner["id"]
    detail = client.get(done.headers["location"])
    assert "Merged records" in detail.text and "アルファ（株）" in detail.text
    assert "No probable duplicates found." in client.get("/admin/data/duplicates/?entity=account").text
    rep = login(crm, "alice")
    assert rep.get(merge_url).status_code == 403


def test_api_merge_action(crm, org):
    from crmkit.core.tokens import create_token

    store = crm.records
    a = store.create("lead", {"last_name": "A", "email": "same@example.com"}, actor=SYSTEM)
    b = store.create("lead", {"last_name": "B", "email": "same@example.com", "phone": "03-1111-2222"}, actor=SYSTEM)
    secret, _info = create_token(crm, "admin", "t")
    client = login(crm, "admin")
    headers = {"authorization": f"Bearer {secret}"}
    response = client.post(f"/api/v1/lead/{a['id']}/merge", json={"losers": [b["id"]], "choose": {"phone": b["id"]}},
                           headers=headers)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["merged"] == [b["id"]] and body["record"]["phone"] == "03-1111-2222"
    bad = client.post(f"/api/v1/lead/{a['id']}/merge", json={"losers": "x"}, headers=headers)
    assert bad.status_code == 422


def test_cli_rebuild_list_and_merge(cli, db_url, project, tmp_path):
    assert cli("migrate").returncode == 0
    path = tmp_path / "a.csv"
    path.write_text("name,phone\n株式会社ベータ,03-1234-0000\nベータ株式会社,\n", encoding="utf-8")
    assert cli("import", "account", str(path)).returncode == 0
    rebuilt = cli("duplicates", "rebuild", "account")
    assert rebuilt.returncode == 0 and "account: 2 records indexed" in rebuilt.stdout
    listed = cli("duplicates", "list", "account")
    assert "[name] #1 株式会社ベータ, #2 ベータ株式会社" in listed.stdout
    merged = cli("duplicates", "merge", "account", "1", "2")
    assert merged.returncode == 0 and "Merged 1 records into #1" in merged.stdout
    assert "No probable duplicates." in cli("duplicates", "list", "account").stdout


def test_fast_japanese_phone_path_agrees_with_phonenumbers():
    import random

    import phonenumbers

    rng = random.Random(8)
    for _ in range(3000):
        digits = "0" + str(rng.randrange(1, 10)) + "".join(str(rng.randrange(10)) for _ in range(rng.choice([7, 8, 9])))
        for raw in (digits, f"{digits[:3]}-{digits[3:7]}-{digits[7:]}", f"({digits[:3]}) {digits[3:]}"):
            try:
                number = phonenumbers.parse(raw, "JP")
                expected = (phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)
                            if phonenumbers.is_possible_number(number) else "".join(c for c in raw if c.isdigit()))
            except phonenumbers.NumberParseException:
                expected = "".join(c for c in raw if c.isdigit())
            assert dup.normalize_phone(raw) == expected, raw


def test_a_plugin_can_answer_duplicate_candidates(tmp_path, db_url):
    """The hook, from a third-party plugin, drives the same warning for an entity without YAML rules."""

    class SameName:
        @hookimpl
        def duplicate_candidates(self, crm, entity, record, actor):
            if entity.name != "product_category":
                return None
            page = crm.records.list("product_category", actor=actor, filter={"name": record.get("name") or ""})
            return [{"id": r["id"], "title": r["name"], "rules": ["same_name"], "score": 100} for r in page.items]

    crm = make_crm(tmp_path, db_url, plugins=[SameName()])
    try:
        make_org(crm)
        first = crm.records.create("product_category", {"name": "Software"}, actor=SYSTEM)
        client = login(crm, "admin")
        csrf = {"x-csrf-token": token(client)}
        again = client.post("/api/v1/product_category", json={"name": "Software"}, headers=csrf)
        assert again.status_code == 409 and again.json()["duplicates"][0]["id"] == first["id"]
        other = client.post("/api/v1/product_category", json={"name": "Hardware"}, headers=csrf)
        assert other.status_code == 201
    finally:
        crm.close()
