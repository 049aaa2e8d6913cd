"""RecordStore through its public surface, on SQLite and PostgreSQL."""

from __future__ import annotations

import datetime as dt
import decimal
import time

import pytest
import sqlalchemy as sa

from crmkit import CRM, hookimpl
from crmkit.core.actors import SYSTEM, Actor
from crmkit.core.errors import BadRequest, ConflictError, NotFound, PermissionDenied, ValidationError
from crmkit.core.migrations import apply_migration
from crmkit.core.records import utcnow
from crmkit.plugins import PluginError
from tests.support import MASK_OVERLAY


def make_crm(tmp_path, db_url, plugins=()):
    crm = CRM(tmp_path, database_url=db_url, plugins=list(plugins), entry_points=False)
    apply_migration(crm)
    return crm


@pytest.fixture
def crm(tmp_path, db_url):
    crm = make_crm(tmp_path, db_url)
    yield crm
    crm.close()


def setup_org(crm):
    """Two teams, a rep in each, a manager; returns actors."""
    store = crm.records
    east = store.create("team", {"name": "East"}, actor=SYSTEM)
    west = store.create("team", {"name": "West"}, actor=SYSTEM)
    users = {}
    for username, role, team in [("alice", "sales_rep", east), ("bob", "sales_rep", west),
                                 ("mia", "manager", east)]:
        u = store.create("user", {"username": username, "display_name": username.title(), "role": role,
                                  "primary_team": team["id"], "password": "correct horse"}, actor=SYSTEM)
        users[username] = Actor(u["id"], username, role, frozenset({team["id"]}), team["id"])
    return users


def test_create_get_update_delete_roundtrip(crm):
    store = crm.records
    acc = store.create("account", {"name": "株式会社テスト", "employees": "120", "website": "example.co.jp"},
                       actor=SYSTEM)
    assert acc["id"] and acc["version"] == 1
    assert acc["employees"] == 120
    assert acc["website"] == "https://example.co.jp"
    got = store.get("account", acc["id"], actor=SYSTEM)
    assert got["name"] == "株式会社テスト"
    upd = store.update("account", acc["id"], {"employees": 130}, actor=SYSTEM, version=1)
    assert upd["version"] == 2 and upd["employees"] == 130
    store.delete("account", acc["id"], actor=SYSTEM)
    with pytest.raises(NotFound):
        store.get("account", acc["id"], actor=SYSTEM)


def test_validation_reports_every_field(crm):
    with pytest.raises(ValidationError) as exc:
        crm.records.create("contact", {"first_name": "X", "email": "not-an-email", "birthday": "31/31/2020",
                                       "account": 99999, "nonsense": 1}, actor=SYSTEM)
    fields = exc.value.by_field()
    assert "is required" in fields["last_name"] if "last_name" in fields else True
    assert "email" in fields and "birthday" in fields and "nonsense" in fields


def test_required_and_reference_existence(crm):
    with pytest.raises(ValidationError) as exc:
        crm.records.create("contact", {"last_name": "山田", "account": 424242}, actor=SYSTEM)
    assert exc.value.by_field()["account"] == ["no account with id 424242"]
    with pytest.raises(ValidationError) as exc:
        crm.records.create("contact", {"first_name": "太郎"}, actor=SYSTEM)
    assert "is required" in exc.value.by_field()["last_name"]


def test_required_if_and_compute(crm):
    store = crm.records
    acc = store.create("account", {"name": "ACME"}, actor=SYSTEM)
    stage = store.create("deal_stage", {"name": "Proposal", "sort_order": 3, "probability": 40}, actor=SYSTEM)
    deal = store.create("deal", {"name": "Big deal", "account": acc["id"], "stage": stage["id"],
                                 "amount": "1000000", "probability": 40}, actor=SYSTEM)
    assert deal["expected_revenue"] == decimal.Decimal("400000.00")
    with pytest.raises(ValidationError) as exc:
        store.update("deal", deal["id"], {"status": "lost"}, actor=SYSTEM)
    errors = exc.value.by_field()
    assert "close_date" in errors and "lost_reason" in errors
    ok = store.update("deal", deal["id"], {"status": "lost", "close_date": "2026-11-01",
                                          "lost_reason": "price"}, actor=SYSTEM)
    assert ok["status"] == "lost"


def test_unique_ignores_nulls(crm):
    store = crm.records
    store.create("product", {"name": "A", "code": "P-1"}, actor=SYSTEM)
    store.create("product", {"name": "B"}, actor=SYSTEM)
    store.create("product", {"name": "C"}, actor=SYSTEM)  # two NULL codes are fine
    with pytest.raises(ValidationError) as exc:
        store.create("product", {"name": "D", "code": "P-1"}, actor=SYSTEM)
    assert "already has this value" in exc.value.by_field()["code"][0]


def test_stale_version_is_a_conflict_never_an_overwrite(crm):
    store = crm.records
    acc = store.create("account", {"name": "Conflict Co"}, actor=SYSTEM)
    store.update("account", acc["id"], {"phone": "03-1111-2222"}, actor=SYSTEM, version=1)
    with pytest.raises(ConflictError) as exc:
        store.update("account", acc["id"], {"phone": "03-9999-9999"}, actor=SYSTEM, version=1)
    assert exc.value.current["phone"] == "03-1111-2222"
    assert store.get("account", acc["id"], actor=SYSTEM)["phone"] == "03-1111-2222"


def test_many_to_many_with_through_fields(crm):
    store = crm.records
    u1 = store.create("user", {"username": "u1", "display_name": "U1", "role": "sales_rep"}, actor=SYSTEM)
    u2 = store.create("user", {"username": "u2", "display_name": "U2", "role": "sales_rep"}, actor=SYSTEM)
    team = store.create("team", {"name": "T", "members": [{"id": u1["id"], "role": "manager"},
                                                          {"id": u2["id"], "role": "member"}]}, actor=SYSTEM)
    got = store.get("team", team["id"], actor=SYSTEM)
    assert [(m["id"], m["role"]) for m in got["members"]] == [(u1["id"], "manager"), (u2["id"], "member")]


def test_delete_restricted_by_references_names_them(crm):
    store = crm.records
    acc = store.create("account", {"name": "Parent"}, actor=SYSTEM)
    store.create("contact", {"last_name": "佐藤", "account": acc["id"]}, actor=SYSTEM)
    with pytest.raises(ValidationError) as exc:
        store.delete("account", acc["id"], actor=SYSTEM)
    assert "contacts" in exc.value.errors[0]["message"].lower()


def test_audit_history_field_level(crm):
    users = setup_org(crm)
    store = crm.records
    alice = users["alice"]
    acc = store.create("account", {"name": "Audited"}, actor=alice, source="ui")
    store.update("account", acc["id"], {"phone": "03-0000-0000"}, actor=alice, source="api")
    history = store.history("account", acc["id"], actor=alice)
    phone = [h for h in history if h["field"] == "phone"]
    assert phone and phone[0]["old"] is None and phone[0]["new"] == "03-0000-0000"
    assert phone[0]["source"] == "api" and phone[0]["actor_name"] in ("Alice", "alice")
    assert any(h["action"] == "create" and h["field"] == "name" and h["source"] == "ui" for h in history)




@pytest.fixture
def masked_crm(tmp_path, db_url):
    """A CRM whose accounts have a field sales reps may not see and phones they see masked."""
    overlay = tmp_path / "overlay"
    overlay.mkdir()
    (overlay / "account_mask.yaml").write_text(MASK_OVERLAY, encoding="utf-8")
    crm = CRM(tmp_path, database_url=db_url, schema_paths=[overlay], entry_points=False)
    apply_migration(crm)
    yield crm
    crm.close()


def test_a_create_is_audited_as_one_snapshot_row_read_back_field_by_field(masked_crm):
    crm = masked_crm
    users = setup_org(crm)
    alice = users["alice"]
    store, audit = crm.records, crm.system_tables["crmkit_audit"]
    values = {"name": "Snapshot KK", "phone": "03-5555-123456", "secret_code": "TOPSECRET-42",
              "employees": 12, "owner": alice.id, "team": alice.primary_team}
    single = store.create("account", values, actor=SYSTEM, source="ui")
    [bulk] = store.create_many("account", [{**values, "name": "Snapshot KK 2"}], actor=SYSTEM)

    def rows(record_id):
        with crm.engine.connect() as conn:
            return conn.execute(sa.select(audit).where(audit.c.entity == "account",
                                                       audit.c.record_id == record_id)).mappings().all()

    for record, source in ((single, "ui"), (bulk, "import")):
        [row] = rows(record["id"])  # one row per create, not one per value
        assert row["action"] == "create" and row["field"] is None and row["source"] == source
        history = store.history("account", record["id"], actor=SYSTEM)
        assert {h["field"]: h["new"] for h in history} == {
            "name": record["name"], "phone": "03-5555-123456", "secret_code": "TOPSECRET-42",
            "employees": "12", "owner": str(alice.id), "team": str(alice.primary_team),
            "type": "prospect",  # the field's default
        }
        assert {(h["action"], h["source"], h["old"]) for h in history} == {("create", source, None)}
        # the reader's field permissions apply to the snapshot's values: masked, hidden
        seen = {h["field"]: h["new"] for h in store.history("account", record["id"], actor=alice)}
        assert "secret_code" not in seen and seen["phone"].startswith("••••")
        assert "TOPSECRET" not in repr(seen) and "5555" not in repr(seen)

    # histories written before snapshots (one row per initial value) read exactly the same
    with crm.engine.begin() as conn:
        conn.execute(sa.delete(audit).where(audit.c.record_id == single["id"], audit.c.entity == "account"))
        at = utcnow()
        conn.execute(sa.insert(audit), [
            {"entity": "account", "record_id": single["id"], "action": "create", "field": name,
             "old_value": None, "new_value": value, "actor_id": None, "actor_name": "system",
             "source": "ui", "at": at}
            for name, value in (("name", "Snapshot KK"), ("phone", "03-5555-123456"),
                                ("secret_code", "TOPSECRET-42"))
        ])
    old_style = store.history("account", single["id"], actor=alice)
    assert [(h["field"], h["new"][:4]) for h in old_style] == [("name", "Snap"), ("phone", "••••")]


def test_sales_rep_cannot_touch_another_teams_records(crm):
    users = setup_org(crm)
    store = crm.records
    alice, bob = users["alice"], users["bob"]
    # Records readable by team only for this test: use the YAML rules (sales_rep: read team)
    acc = store.create("account", {"name": "Alice Co"}, actor=alice)
    assert acc["owner"] == alice.id
    with pytest.raises((NotFound, PermissionDenied)):
        store.update("account", acc["id"], {"name": "Hijacked"}, actor=bob)
    with pytest.raises((NotFound, PermissionDenied)):
        store.delete("account", acc["id"], actor=bob)
    assert store.get("account", acc["id"], actor=SYSTEM)["name"] == "Alice Co"
    scope = crm.catalog["account"].permissions.get("sales_rep", {}).get("read")
    if scope == "team":
        with pytest.raises(NotFound):
            store.get("account", acc["id"], actor=bob)
        assert all(r["id"] != acc["id"] for r in store.list("account", actor=bob).items)


def test_password_is_hashed_and_never_returned(crm):
    users = setup_org(crm)
    store = crm.records
    got = store.get("user", users["alice"].id, actor=SYSTEM)
    assert "password" not in got
    with crm.engine.connect() as conn:
        stored = conn.execute(sa.select(crm.table("user").c.password)).scalars().first()
    assert stored.startswith("$argon2")


class Veto:
    __name__ = "veto-plugin"

    def __init__(self):
        self.events = []

    @hookimpl
    def validate_record(self, entity, record, old):
        if entity.name == "account" and record.get("name") == "Forbidden":
            return {"name": "this name is reserved"}

    @hookimpl
    def after_save(self, entity, record, conn):
        if entity.name == "account" and record.get("name") == "Explode":
            raise RuntimeError("boom at the last step")

    @hookimpl
    def before_save(self, entity, record):
        if entity.name == "account" and record.get("name"):
            record["name"] = record["name"].strip()

    @hookimpl
    def track_event(self, event):
        self.events.append((event.name, event.entity, event.record_id))


def test_inline_plugin_vetoes_rolls_back_and_gets_events_after_commit(tmp_path, db_url):
    plugin = Veto()
    crm = make_crm(tmp_path, db_url, plugins=[plugin])
    store = crm.records
    with pytest.raises(ValidationError) as exc:
        store.create("account", {"name": "Forbidden"}, actor=SYSTEM)
    assert exc.value.by_field()["name"] == ["this name is reserved"]
    with pytest.raises(PluginError) as perr:
        store.create("account", {"name": "Explode"}, actor=SYSTEM)
    assert perr.value.plugin == "veto-plugin" and "boom" in str(perr.value)
    names = [r["name"] for r in store.list("account", actor=SYSTEM).items]
    assert "Explode" not in names and "Forbidden" not in names
    ok = store.create("account", {"name": "  Fine  "}, actor=SYSTEM)
    assert ok["name"] == "Fine"
    assert plugin.events == [("record.created", "account", ok["id"])]
    crm.close()


def test_transaction_groups_writes_atomically(crm):
    store = crm.records
    with pytest.raises(ValidationError):
        with store.transaction(actor=SYSTEM) as tx:
            acc = tx.create("account", {"name": "Atomic"})
            tx.create("contact", {"last_name": "X", "account": acc["id"]})
            tx.create("contact", {"first_name": "no last name", "account": acc["id"]})
    assert store.list("account", actor=SYSTEM, filter={"name": "Atomic"}).items == []


def test_list_filter_sort_cursor_count(crm):
    store = crm.records
    with store.transaction(actor=SYSTEM) as tx:
        for i in range(57):
            tx.create("account", {"name": f"Acc {i:03d}", "employees": i % 7, "rank": "ABC"[i % 3]})
    seen = []
    cursor = None
    while True:
        page = store.list("account", actor=SYSTEM, sort="employees,-name", limit=10, cursor=cursor,
                          filter={"rank": {"in": ["A", "B"]}})
        seen += [(r["employees"], r["name"]) for r in page.items]
        cursor = page.next_cursor
        if not cursor:
            break
    expected = sorted(
        [(i % 7, f"Acc {i:03d}") for i in range(57) if "ABC"[i % 3] in "AB"], key=lambda t: (t[0], _neg(t[1]))
    )
    assert seen == expected
    assert page.count == len(expected)
    with pytest.raises(BadRequest):
        store.list("account", actor=SYSTEM, filter={"no_such_field": 1})
    with pytest.raises(BadRequest):
        store.list("account", actor=SYSTEM, sort="name; DROP TABLE account")
    with pytest.raises(BadRequest):
        store.list("account", actor=SYSTEM, cursor="garbage!!")


def _neg(s):
    return [-ord(c) for c in s]


def test_search_folds_japanese_variants(crm):
    store = crm.records
    store.create("account", {"name": "株式会社カタカナ商事"}, actor=SYSTEM)
    store.create("account", {"name": "ACME Inc."}, actor=SYSTEM)
    for q in ("ｶﾀｶﾅ", "かたかな", "カタカナ商事", "acme", "ＡＣＭＥ", "商"):
        names = [r["name"] for r in store.list("account", actor=SYSTEM, q=q).items]
        assert names, q
    assert [r["name"] for r in store.list("account", actor=SYSTEM, q="ｶﾀｶﾅ").items] == ["株式会社カタカナ商事"]
    assert store.list("account", actor=SYSTEM, q="zzzz%").items == []


def test_search_through_reference_updates_when_parent_renamed(crm):
    store = crm.records
    acc = store.create("account", {"name": "Old Name"}, actor=SYSTEM)
    stage = store.create("deal_stage", {"name": "S", "sort_order": 1, "probability": 10}, actor=SYSTEM)
    store.create("deal", {"name": "Renewal", "account": acc["id"], "stage": stage["id"]}, actor=SYSTEM)
    assert store.list("deal", actor=SYSTEM, q="old name").items
    store.update("account", acc["id"], {"name": "Brand New"}, actor=SYSTEM)
    assert store.list("deal", actor=SYSTEM, q="brand new").items
    assert not store.list("deal", actor=SYSTEM, q="old name").items


def test_search_finds_company_across_legal_form_variants(crm):
    store = crm.records
    store.create("account", {"name": "テスト株式会社"}, actor=SYSTEM)
    store.create("account", {"name": "別会社"}, actor=SYSTEM)
    for q in ("(株)テスト", "株式会社テスト", "ﾃｽﾄ", "テスト ㈱"):
        names = [r["name"] for r in store.list("account", actor=SYSTEM, q=q).items]
        assert names == ["テスト株式会社"], q


def test_list_filter_on_now_is_evaluated_on_every_call(crm):
    """List statements are reused per query shape, but ``$now`` must still mean now at each call."""
    store = crm.records
    soon = utcnow() + dt.timedelta(seconds=1)
    store.create("activity", {"subject": "Call back", "type": "call", "due_at": soon}, actor=SYSTEM)
    flt = {"due_at": {"lt": "$now"}}
    assert store.list("activity", actor=SYSTEM, filter=flt).items == []
    time.sleep(1.1)
    assert [r["subject"] for r in store.list("activity", actor=SYSTEM, filter=flt).items] == ["Call back"]


def test_list_cursor_pages_reuse_statements_with_new_values(crm):
    """Walking pages by cursor (same statement shape, new cursor values) visits every row once."""
    store = crm.records
    for i in range(7):
        store.create("account", {"name": f"Acct {i:02d}"}, actor=SYSTEM)
    seen, cursor = [], None
    for _ in range(10):
        page = store.list("account", actor=SYSTEM, sort="name", limit=2, cursor=cursor)
        seen += [r["name"] for r in page.items]
        cursor = page.next_cursor
        if not cursor:
            break
    assert seen == [f"Acct {i:02d}" for i in range(7)]


class OwnOnlyLeads:
    """A restrict_query hook whose condition is the same data for every actor (``$me``)."""

    __name__ = "own-only-leads"

    @hookimpl
    def restrict_query(self, entity, actor):
        if entity == "lead" and not actor.system:
            return {"owner": "$me"}
        return None


def _interleaved_reads(store, readers, leads, expect):
    """Every reader reads every lead, in alternating order, twice: ``expect(reader, lead)`` says whether
    they may. Reads kept per shape (statements, parsed scopes) must never carry one actor's scope into
    another's call."""
    order = [(r, lead) for lead in leads for r in readers] + [(r, lead) for r in reversed(readers) for lead in leads]
    for reader, lead in order * 2:
        if expect(reader, lead):
            assert store.get("lead", lead["id"], actor=reader)["last_name"] == lead["last_name"]
        else:
            with pytest.raises(NotFound):
                store.get("lead", lead["id"], actor=reader)
    for reader in readers + list(reversed(readers)):
        for action in ("read", "update"):
            seen = [r["id"] for r in store.list("lead", actor=reader, action=action, sort="last_name", limit=1).items]
            allowed = [lead["id"] for lead in sorted(leads, key=lambda x: x["last_name"])
                       if expect(reader, lead, action)]
            assert seen == allowed[:1], (reader.username, action)
            page, walked = None, []
            while page is None or page.next_cursor:
                page = store.list("lead", actor=reader, action=action, sort="last_name", limit=1,
                                  cursor=page.next_cursor if page else None)
                walked += [r["id"] for r in page.items]
            assert walked == allowed and page.count == len(allowed), (reader.username, action)
        found = [i for i, _title in store.search_titles("lead", "lead", actor=reader)]
        assert sorted(found) == sorted(lead["id"] for lead in leads if expect(reader, lead)), reader.username


def test_reads_of_interleaved_actors_keep_each_ones_scope(crm):
    """Team (read) and own (update) scopes differ only in bound ids: alice and carol (East) and bob
    (West) alternate get/list/search calls, and each sees exactly their own scope."""
    users = setup_org(crm)
    store = crm.records
    east = users["alice"].primary_team
    carol_row = store.create("user", {"username": "carol", "display_name": "Carol", "role": "sales_rep",
                                      "primary_team": east, "password": "correct horse"}, actor=SYSTEM)
    carol = Actor(carol_row["id"], "carol", "sales_rep", frozenset({east}), east)
    alice, bob = users["alice"], users["bob"]
    leads = [store.create("lead", {"last_name": f"Lead {who.username}", "company": "Lead KK"}, actor=who)
             for who in (alice, bob, carol)]
    owners = {lead["id"]: lead["owner"] for lead in leads}
    teams = {lead["id"]: lead["team"] for lead in leads}

    def expect(reader, lead, action="read"):
        if action == "update":  # sales_rep: update own
            return owners[lead["id"]] == reader.id
        return teams[lead["id"]] in reader.team_ids  # sales_rep: read team

    _interleaved_reads(store, [alice, bob, carol], leads, expect)


def test_a_hook_condition_with_me_is_resolved_for_each_actor(tmp_path, db_url):
    """The parsed ``{"owner": "$me"}`` is kept across calls; ``$me`` is still each caller's id."""
    crm = make_crm(tmp_path, db_url, plugins=[OwnOnlyLeads()])
    try:
        users = setup_org(crm)
        store = crm.records
        alice, bob = users["alice"], users["bob"]
        # Both in one team, so the role's own read scope (team) lets each see both: only the hook hides.
        team = alice.primary_team
        leads = [store.create("lead", {"last_name": f"Lead {who.username}", "company": "Lead KK", "owner": who.id,
                                       "team": team}, actor=SYSTEM) for who in (alice, bob)]
        bob = Actor(bob.id, "bob", "sales_rep", frozenset({team}), team)

        def expect(reader, lead, action="read"):
            return lead["owner"] == reader.id

        _interleaved_reads(store, [alice, bob], leads, expect)
    finally:
        crm.close()


def test_get_reads_many_to_many_links_and_hides_fields_per_role(crm):
    """get (one kept statement per entity) still attaches links and leaves out what a role may not read."""
    users = setup_org(crm)
    store = crm.records
    team = store.get("team", users["alice"].primary_team, actor=SYSTEM)
    store.update("team", team["id"], {"members": [{"id": users["alice"].id, "role": "member"}]}, actor=SYSTEM)
    got = store.get("team", team["id"], actor=users["bob"])
    assert got["members"] == [{"id": users["alice"].id, "role": "member"}]
    assert "search_text" not in got and got["created_at"].tzinfo is not None
    me = store.get("user", users["alice"].id, actor=users["alice"])
    assert "password" not in me and me["username"] == "alice"
    with pytest.raises(NotFound):
        store.get("user", "not-a-number", actor=SYSTEM)
    assert store.titles("user", [users["alice"].id, users["bob"].id, 999999]) == {
        users["alice"].id: "Alice", users["bob"].id: "Bob"}


def test_search_statements_are_reused_with_each_querys_words(crm):
    """Queries of the same shape (words per folded form) share a statement; results and counts follow
    each query's own words, also when a page comes back empty and the count runs on its own."""
    store = crm.records
    for name in ("Alpha Works", "Bravo Works", "Alpha Bravo", "qx one", "zy two"):
        store.create("account", {"name": name}, actor=SYSTEM)

    def names(q, **kw):
        page = store.list("account", actor=SYSTEM, q=q, sort="name", **kw)
        return [r["name"] for r in page.items], page.count

    assert names("alpha") == (["Alpha Bravo", "Alpha Works"], 2)
    kept = len(store._list_statements)
    assert names("bravo") == (["Alpha Bravo", "Bravo Works"], 2)
    assert names("works") == (["Alpha Works", "Bravo Works"], 2)
    assert names("zulu") == ([], 0)  # no rows: the count statement gets this query's words too
    assert len(store._list_statements) == kept  # one shape, one statement
    assert names("alpha works") == (["Alpha Works"], 1)
    assert names("bravo works") == (["Bravo Works"], 1)
    assert names("qx") == (["qx one"], 1)  # short words: LIKE on SQLite, with their own parameter
    assert names("zy") == (["zy two"], 1)
    assert names("%") == ([], 0) and names("_") == ([], 0)  # LIKE wildcards stay literal
    first = store.list("account", actor=SYSTEM, q="works", sort="name", limit=1)
    second = store.list("account", actor=SYSTEM, q="works", sort="name", limit=1, cursor=first.next_cursor)
    assert [r["name"] for r in first.items + second.items] == ["Alpha Works", "Bravo Works"]
    assert sorted(t for _i, t in store.search_titles("account", "bravo", actor=SYSTEM)) == [
        "Alpha Bravo", "Bravo Works"]


def test_get_masks_and_hides_per_role_whichever_role_reads_first(masked_crm):
    """What get leaves out or masks is kept per role: a rep's masks never reach an admin, nor the reverse."""
    crm = masked_crm
    users = setup_org(crm)
    alice, mia = users["alice"], users["mia"]
    store = crm.records
    acc = store.create("account", {"name": "Masked KK", "phone": "03-5555-123456", "secret_code": "TOP-42",
                                   "owner": alice.id, "team": alice.primary_team}, actor=SYSTEM)
    for reader in (alice, SYSTEM, mia, alice, SYSTEM):
        got = store.get("account", acc["id"], actor=reader)
        if reader is alice:
            assert got["phone"] == "••••3456" and "secret_code" not in got
        else:
            assert got["phone"] == "03-5555-123456" and got["secret_code"] == "TOP-42"
        assert got["name"] == "Masked KK" and "search_text" not in got
