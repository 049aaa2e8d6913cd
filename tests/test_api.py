"""The REST API through HTTP (httpx + ASGI transport, in process), on SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
import base64
import datetime as dt
import json
import time
from pathlib import Path

import httpx
import itsdangerous
import pytest
import sqlalchemy as sa

from crmkit import CRM, hookimpl
from crmkit.core.actors import SYSTEM
from crmkit.core.tokens import TOKEN_TABLE, create_token, list_tokens, revoke_token
from crmkit.web.api import RecordAction
from tests.conftest import run_cli
from tests.support import MASK_OVERLAY

# ------------------------------------------------------------------------------------------------
# Helpers (test_openapi.py uses them too)
# ------------------------------------------------------------------------------------------------


def create_tables(crm: CRM) -> None:
    """Create the schema the way `crmkit migrate` does (create_all until migrations exist)."""
    try:
        from crmkit.core.migrations import apply_migration
    except ImportError:
        crm.metadata.create_all(crm.engine)
    else:
        apply_migration(crm)


def make_crm(tmp_path: Path, db_url: str, plugins=(), schema_paths=None) -> CRM:
    crm = CRM(
        tmp_path, database_url=db_url, plugins=list(plugins), entry_points=False, schema_paths=schema_paths
    )
    create_tables(crm)
    return crm


def asgi_app(crm: CRM):
    """The real application (admin, API and plugin routes behind the middleware)."""
    return crm.asgi()


class Client:
    """A synchronous face on httpx.AsyncClient + ASGITransport (no server, no threads of our own)."""

    def __init__(self, app, token: str | None = None, headers: dict | None = None, **kwargs):
        headers = {**({"authorization": f"Bearer {token}"} if token else {}), **(headers or {})}
        self._runner = asyncio.Runner()
        self._client = httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app), base_url="http://testserver", headers=headers, **kwargs
        )

    def request(self, method: str, url: str, **kwargs) -> httpx.Response:
        return self._runner.run(self._client.request(method, url, **kwargs))

    def get(self, url, **kw):
        return self.request("GET", url, **kw)

    def post(self, url, **kw):
        return self.request("POST", url, **kw)

    def patch(self, url, **kw):
        return self.request("PATCH", url, **kw)

    def delete(self, url, **kw):
        return self.request("DELETE", url, **kw)

    def close(self) -> None:
        self._runner.run(self._client.aclose())
        self._runner.close()


def setup_org(crm: CRM) -> dict[str, dict]:
    """Teams East and West; admin, a manager and a rep in East, a rep in West; a token each."""
    store = crm.records
    east = store.create("team", {"name": "East"}, actor=SYSTEM)
    west = store.create("team", {"name": "West"}, actor=SYSTEM)
    people = {}
    for username, role, team in [
        ("admin", "admin", east),
        ("mia", "manager", east),
        ("alice", "sales_rep", east),
        ("bob", "sales_rep", west),
    ]:
        user = store.create(
            "user",
            {
                "username": username,
                "display_name": username.title(),
                "role": role,
                "primary_team": team["id"],
                "locale": "en",
            },
            actor=SYSTEM,
        )
        token, _info = create_token(crm, username, "tests")
        people[username] = {"id": user["id"], "team": team["id"], "token": token}
    return people


@pytest.fixture
def crm(tmp_path, db_url):
    crm = make_crm(tmp_path, db_url)
    yield crm
    crm.close()


@pytest.fixture
def org(crm):
    return setup_org(crm)


@pytest.fixture
def clients(crm, org):
    app = asgi_app(crm)
    made = {name: Client(app, person["token"]) for name, person in org.items()}
    made["anonymous"] = Client(app)
    yield made
    for c in made.values():
        c.close()


# ------------------------------------------------------------------------------------------------
# CRUD and encoding
# ------------------------------------------------------------------------------------------------


def test_crud_roundtrip(clients):
    api = clients["admin"]
    r = api.post(
        "/api/v1/account", json={"name": "株式会社テスト", "employees": "120", "annual_revenue": 1500000.5}
    )
    assert r.status_code == 201, r.text
    acc = r.json()
    assert r.headers["location"] == f"/api/v1/account/{acc['id']}"
    assert r.headers["etag"] == '"1"' and acc["version"] == 1
    assert acc["employees"] == 120
    assert r.headers["cache-control"] == "no-store"

    got = api.get(f"/api/v1/account/{acc['id']}")
    assert got.status_code == 200 and got.json()["name"] == "株式会社テスト"

    upd = api.patch(f"/api/v1/account/{acc['id']}", json={"employees": 130, "version": 1})
    assert upd.status_code == 200, upd.text
    assert upd.json()["version"] == 2 and upd.json()["employees"] == 130
    upd = api.patch(f"/api/v1/account/{acc['id']}", json={"employees": 140}, headers={"if-match": '"2"'})
    assert upd.status_code == 200 and upd.json()["version"] == 3

    stale = api.delete(f"/api/v1/account/{acc['id']}", params={"version": 1})
    assert stale.status_code == 409
    gone = api.delete(f"/api/v1/account/{acc['id']}", params={"version": 3})
    assert gone.status_code == 204 and gone.content == b""
    missing = api.get(f"/api/v1/account/{acc['id']}")
    assert missing.status_code == 404 and missing.json()["errors"][0]["message"]


def test_json_encoding_of_decimals_dates_and_datetimes(clients):
    api = clients["admin"]
    acc = api.post("/api/v1/account", json={"name": "ACME"}).json()
    stage = api.post(
        "/api/v1/deal_stage", json={"name": "Proposal", "sort_order": 3, "probability": 40}
    ).json()
    r = api.post(
        "/api/v1/deal",
        json={
            "name": "Big",
            "account": acc["id"],
            "stage": stage["id"],
            "amount": "1000000",
            "probability": 40,
            "close_date": "2026-12-24",
        },
    )
    assert r.status_code == 201, r.text
    deal = r.json()
    # Decimal: a fixed-point string, never a float.
    assert deal["amount"] == "1000000.00" and deal["expected_revenue"] == "400000.00"
    assert deal["close_date"] == "2026-12-24"
    created = dt.datetime.fromisoformat(deal["created_at"])
    assert created.utcoffset() == dt.timedelta(0)
    assert deal["created_at"].endswith("+00:00")
    # Numbers are accepted on input; amounts come back exactly (13 digits: SQLite stores REAL).
    r = api.patch(f"/api/v1/deal/{deal['id']}", json={"amount": 12345678901.23})
    assert r.status_code == 200 and r.json()["amount"] == "12345678901.23"


def test_invalid_input_answers_422_with_field_messages(clients):
    api = clients["admin"]
    r = api.post(
        "/api/v1/contact",
        json={
            "first_name": "X",
            "email": "not-an-email",
            "birthday": "31/31/2020",
            "account": 99999,
            "nonsense": 1,
        },
    )
    assert r.status_code == 422
    errors = r.json()["errors"]
    fields = {e["field"] for e in errors}
    assert {"email", "birthday", "nonsense"} <= fields
    assert all(isinstance(e["message"], str) and e["message"] for e in errors)

    assert api.post("/api/v1/lead", json=[1, 2]).status_code == 422
    bad = api.post("/api/v1/lead", content=b'{"last_name": ', headers={"content-type": "application/json"})
    assert bad.status_code == 400 and "not valid JSON" in bad.json()["errors"][0]["message"]
    nan = api.post("/api/v1/lead", content=b'{"last_name": "x", "employees": NaN}')
    assert nan.status_code == 400
    nul = api.post("/api/v1/lead", json={"last_name": "a\u0000b"})
    assert nul.status_code == 422 and nul.json()["errors"][0]["field"] == "last_name"
    assert api.get("/api/v1/lead", params={"limit": "0"}).json()["errors"][0]["field"] == "limit"
    assert api.get("/api/v1/lead", params={"limit": "abc"}).status_code == 422
    bad_version = api.patch("/api/v1/lead/1", json={"version": "three"})
    assert bad_version.status_code == 422 and bad_version.json()["errors"][0]["field"] == "version"
    huge = api.post("/api/v1/lead", content=b'{"last_name": "' + b"x" * (1024 * 1024 + 1) + b'"}')
    assert huge.status_code == 413


def test_edge_values_found_by_fuzzing_are_answered_not_500(clients):
    """Bad input schemathesis found to crash a layer below the API: each is a 4xx now."""
    api = clients["admin"]
    acc = api.post("/api/v1/account", json={"name": "Edge"}).json()
    cases = [
        (
            "/api/v1/lead",
            {"last_name": "x", "annual_revenue": 1.2e308},
            "annual_revenue",
        ),  # quantize overflow
        (
            "/api/v1/lead",
            {"last_name": "x", "marketing_activity": 10**30},
            "marketing_activity",
        ),  # int64 overflow
        (
            "/api/v1/activity",
            {"subject": "x", "due_at": "0001-01-01T00:00:02+00:09"},
            "due_at",
        ),  # before year 1
    ]
    for url, body, field in cases:
        r = api.post(url, json=body)
        assert r.status_code == 422, (body, r.text)
        assert field in {e["field"] for e in r.json()["errors"]}
    # A computed field whose inputs are missing is empty, not a crash (deal.expected_revenue).
    stage = api.post("/api/v1/deal_stage", json={"name": "S", "sort_order": 1, "probability": 10}).json()
    deal = api.post("/api/v1/deal", json={"name": "No amount", "account": acc["id"], "stage": stage["id"]})
    assert deal.status_code == 201 and deal.json()["expected_revenue"] is None
    # Entities with many-to-many fields list (team.members, activity.participants).
    assert api.get("/api/v1/team").status_code == 200
    assert api.get("/api/v1/activity").status_code == 200


def test_stale_version_answers_409_with_the_current_record(clients):
    api = clients["admin"]
    acc = api.post("/api/v1/account", json={"name": "Conflict Co"}).json()
    assert (
        api.patch(f"/api/v1/account/{acc['id']}", json={"phone": "03-1111-2222", "version": 1}).status_code
        == 200
    )
    r = api.patch(f"/api/v1/account/{acc['id']}", json={"phone": "03-9999-9999", "version": 1})
    assert r.status_code == 409
    body = r.json()
    assert body["errors"][0]["field"] == "version"
    assert body["current"]["phone"] == "03-1111-2222" and body["current"]["version"] == 2
    assert r.headers["etag"] == '"2"'
    r = api.patch(
        f"/api/v1/account/{acc['id']}", json={"phone": "03-9999-9999"}, headers={"if-match": 'W/"1"'}
    )
    assert r.status_code == 409
    both = api.patch(f"/api/v1/account/{acc['id']}", json={"version": 2}, headers={"if-match": '"1"'})
    assert both.status_code == 422
    assert api.get(f"/api/v1/account/{acc['id']}").json()["phone"] == "03-1111-2222"


def test_errors_are_json_never_html_or_500(clients):
    api = clients["admin"]
    for path in (
        "/api/v1/nosuch",
        "/api/v1/lead/abc",
        "/api/v1/lead/0",
        "/api/v1/lead/99999999999999999999",
        "/api/v1/lead/1/2/3/4",
        "/api/v1/lead/999",
    ):
        r = api.get(path)
        assert r.status_code == 404, path
        assert r.headers["content-type"].startswith("application/json") and r.json()["errors"]
    r = api.request("PUT", "/api/v1/lead/1", json={})
    assert r.status_code == 405 and "PATCH" in r.headers["allow"]
    assert api.post("/api/v1/lead/1/nosuch_action").status_code == 404


# ------------------------------------------------------------------------------------------------
# Lists: filter, sort, cursor, search
# ------------------------------------------------------------------------------------------------


def _walk(api: Client, params: dict) -> tuple[list[int], list[dict]]:
    ids, pages = [], []
    cursor = None
    while True:
        page = api.get("/api/v1/lead", params={**params, **({"cursor": cursor} if cursor else {})})
        assert page.status_code == 200, page.text
        body = page.json()
        pages.append(body)
        ids += [item["id"] for item in body["items"]]
        cursor = body["next_cursor"]
        if cursor is None:
            return ids, pages
        assert len(pages) < 50, "pagination does not end"


def test_cursor_pagination_has_no_duplicates_or_gaps(crm, clients):
    store = crm.records
    expected = []
    for i in range(120):
        values = {
            "last_name": f"Name{i % 7}",
            "company": f"Co {i}",
            "status": ["new", "working", "qualified"][i % 3],
            "employees": None if i % 5 == 0 else i % 11,
            "annual_revenue": str((i * 37) % 13 * 1000),
        }
        expected.append(store.create("lead", values, actor=SYSTEM)["id"])
    api = clients["admin"]
    for sort in (None, "-employees,last_name", "employees", "-annual_revenue,-last_name", "status,-id"):
        params = {"limit": 17, **({"sort": sort} if sort else {})}
        ids, pages = _walk(api, params)
        assert len(ids) == len(set(ids)) == 120, sort
        assert set(ids) == set(expected), sort
        assert all(p["count"] == 120 for p in pages)
        assert all(len(p["items"]) <= 17 for p in pages)

    flt = json.dumps({"status": {"in": ["new", "working"]}, "employees": {"gte": 3}})
    ids, pages = _walk(api, {"filter": flt, "sort": "-employees,last_name", "limit": 10})
    want = {
        r for r, i in zip(expected, range(120), strict=True) if i % 3 in (0, 1) and i % 5 != 0 and i % 11 >= 3
    }
    assert set(ids) == want and len(ids) == len(want) and pages[0]["count"] == len(want)
    # Sorted as asked: employees descending.
    employees = [item["employees"] for p in pages for item in p["items"]]
    assert employees == sorted(employees, reverse=True)

    bad_cursor = api.get("/api/v1/lead", params={"sort": "last_name", "cursor": pages[0]["next_cursor"]})
    assert bad_cursor.status_code == 400 and bad_cursor.json()["errors"][0]["field"] == "cursor"


def test_search_finds_full_width_with_half_width_katakana(clients):
    api = clients["admin"]
    r = api.post("/api/v1/lead", json={"last_name": "山田", "company": "カブシキガイシャ サンプル"})
    assert r.status_code == 201, r.text
    other = api.post("/api/v1/lead", json={"last_name": "Smith", "company": "Globex"}).json()
    found = api.get("/api/v1/lead", params={"q": "ｻﾝﾌﾟﾙ"}).json()
    assert [i["id"] for i in found["items"]] == [r.json()["id"]]
    assert found["count"] == 1
    assert [i["id"] for i in api.get("/api/v1/lead", params={"q": "GLOBEX"}).json()["items"]] == [other["id"]]


def test_unknown_filter_field_is_a_400_naming_it(clients):
    api = clients["admin"]
    r = api.get("/api/v1/lead", params={"filter": json.dumps({"no_such_field": 1})})
    assert r.status_code == 400
    err = r.json()["errors"][0]
    assert err["field"] == "filter" and "no_such_field" in err["message"]
    r = api.get("/api/v1/lead", params={"filter": json.dumps({"account.nope": 1})})
    assert r.status_code == 400
    assert api.get("/api/v1/lead", params={"filter": "{not json"}).status_code == 400
    assert api.get("/api/v1/lead", params={"filter": "[1]"}).status_code == 400
    sort = api.get("/api/v1/lead", params={"sort": "-nope"})
    assert sort.status_code == 400 and sort.json()["errors"][0]["field"] == "sort"
    fields = api.get("/api/v1/lead", params={"fields": "last_name,nope"})
    assert fields.status_code == 400 and fields.json()["errors"][0]["field"] == "fields"


INJECTIONS = [
    "'; DROP TABLE lead; --",
    '" OR 1=1 --',
    "x') OR ('1'='1",
    "%' OR '%'='",
    "lead; DELETE FROM lead",
    "* NEAR ; DROP",
    '"" OR ""',
    '\') UNION SELECT username, password FROM "user" --',
]


def test_injection_strings_are_harmless(crm, clients):
    api = clients["admin"]
    api.post("/api/v1/lead", json={"last_name": "Victim", "company": "Target"})
    for bad in INJECTIONS:
        for flt in (
            {"last_name": bad},
            {"company": {"contains": bad}},
            {"last_name": {"in": [bad, "x"]}},
            {"company": {"startswith": bad}},
        ):
            r = api.get("/api/v1/lead", params={"filter": json.dumps(flt)})
            assert r.status_code == 200 and r.json()["items"] == [], (flt, r.text)
        assert api.get("/api/v1/lead", params={"filter": json.dumps({bad: 1})}).status_code == 400
        assert api.get("/api/v1/lead", params={"sort": bad}).status_code == 400
        assert api.get("/api/v1/lead", params={"fields": bad}).status_code == 400
        r = api.get("/api/v1/lead", params={"q": bad})
        assert r.status_code == 200, r.text
        assert api.get("/api/v1/lead", params={"cursor": bad}).status_code == 400
        assert api.get(f"/api/v1/lead/{bad}").status_code == 404
        assert api.get(f"/api/v1/{bad}").status_code == 404
        created = api.post("/api/v1/lead", json={"last_name": bad})
        assert created.status_code == 201 and created.json()["last_name"] == bad.strip()
    with crm.engine.connect() as conn:
        assert conn.execute(
            sa.select(sa.func.count()).select_from(crm.table("lead"))
        ).scalar_one() == 1 + len(INJECTIONS)
        assert conn.execute(sa.select(sa.func.count()).select_from(crm.table("user"))).scalar_one() == 4


# ------------------------------------------------------------------------------------------------
# Authentication
# ------------------------------------------------------------------------------------------------


def test_requests_without_a_valid_token_are_401(crm, org, clients):
    anon = clients["anonymous"]
    for method, path in [
        ("GET", "/api/v1/lead"),
        ("POST", "/api/v1/lead"),
        ("GET", "/api/v1/lead/1"),
        ("PATCH", "/api/v1/lead/1"),
        ("DELETE", "/api/v1/lead/1"),
        ("GET", "/api/v1/openapi.json"),
    ]:
        r = anon.request(method, path, json={} if method in ("POST", "PATCH") else None)
        assert r.status_code == 401, (method, path)
        assert r.headers["www-authenticate"].startswith("Bearer") and r.json()["errors"]
    app = asgi_app(crm)
    for header in (
        "Bearer crm_not-a-token",
        "Bearer ",
        "Bearer " + org["admin"]["token"] + "x",
        "Basic YTpi",
    ):
        c = Client(app, headers={"authorization": header})
        assert c.get("/api/v1/lead").status_code == 401, header
        c.close()


def test_revoked_token_is_refused_and_last_use_is_recorded(crm, org, clients):
    api = clients["alice"]
    assert api.get("/api/v1/lead").status_code == 200
    (info,) = list_tokens(crm, "alice")
    assert info.last_used_at is not None and info.active
    with crm.engine.connect() as conn:
        stored = conn.execute(sa.select(crm.metadata.tables[TOKEN_TABLE].c.token_hash)).scalars().all()
    assert org["alice"]["token"] not in stored  # only hashes are kept
    revoke_token(crm, info.id)
    r = api.get("/api/v1/lead")
    assert r.status_code == 401 and "revoked" in r.json()["errors"][0]["message"]
    assert clients["bob"].get("/api/v1/lead").status_code == 200  # other tokens unaffected


def test_inactive_users_token_is_refused(crm, org, clients):
    crm.records.update("user", org["bob"]["id"], {"active": False}, actor=SYSTEM)
    assert clients["bob"].get("/api/v1/lead").status_code == 401


def _session_cookie(crm: CRM, data: dict) -> str:
    # Exactly what Starlette's SessionMiddleware writes: signed base64 JSON.
    payload = base64.b64encode(json.dumps(data).encode())
    return itsdangerous.TimestampSigner(str(crm.secret_key)).sign(payload).decode()


def test_session_requests_need_the_csrf_header_to_write(crm, org):
    from crmkit.web.app import SESSION_COOKIE
    from crmkit.web.auth import load_user

    app = asgi_app(crm)
    now = int(time.time())
    alice = load_user(crm, user_id=org["alice"]["id"])
    # What the admin's login writes into the session (crmkit.web.auth.start_session).
    session = {"uid": alice.id, "login_at": now, "seen": now, "pw": alice.fingerprint, "csrf": "s3cret-csrf"}
    browser = Client(app, cookies={SESSION_COOKIE: _session_cookie(crm, session)})
    try:
        assert browser.get("/api/v1/lead").status_code == 200
        assert browser.post("/api/v1/lead", json={"last_name": "X"}).status_code == 403
        wrong = browser.post("/api/v1/lead", json={"last_name": "X"}, headers={"x-csrf-token": "nope"})
        assert wrong.status_code == 403 and "CSRF" in wrong.json()["errors"][0]["message"]
        csrf = {"x-csrf-token": "s3cret-csrf"}
        ok = browser.post("/api/v1/lead", json={"last_name": "X"}, headers=csrf)
        assert ok.status_code == 201 and ok.json()["owner"] == org["alice"]["id"]
        lead = ok.json()
        assert browser.delete(f"/api/v1/lead/{lead['id']}").status_code == 403
        cross_site = browser.patch(
            f"/api/v1/lead/{lead['id']}",
            json={"first_name": "Y"},
            headers={**csrf, "origin": "https://evil.example"},
        )
        assert cross_site.status_code == 403
        # A bad bearer token never falls back to the session.
        mixed = browser.get("/api/v1/lead", headers={"authorization": "Bearer crm_wrong"})
        assert mixed.status_code == 401
    finally:
        browser.close()
    no_user = Client(app, cookies={SESSION_COOKIE: _session_cookie(crm, {"csrf": "a"})})
    assert no_user.get("/api/v1/lead").status_code == 401
    assert no_user.post("/api/v1/lead", json={}, headers={"x-csrf-token": "a"}).status_code == 401
    no_user.close()


# ------------------------------------------------------------------------------------------------
# Permissions through the API
# ------------------------------------------------------------------------------------------------


def test_sales_rep_cannot_read_or_change_another_teams_record(org, clients):
    alice, bob, mia = clients["alice"], clients["bob"], clients["mia"]
    r = alice.post("/api/v1/lead", json={"last_name": "Alice's lead", "company": "East Co"})
    assert r.status_code == 201, r.text
    lead = r.json()
    url = f"/api/v1/lead/{lead['id']}"

    assert bob.get(url).status_code in (403, 404)
    assert bob.patch(url, json={"last_name": "hijacked"}).status_code in (403, 404)
    assert bob.patch(url, json={"last_name": "hijacked", "version": 1}).status_code in (403, 404)
    assert bob.delete(url).status_code in (403, 404)
    listed = bob.get("/api/v1/lead", params={"filter": json.dumps({"id": lead["id"]})}).json()
    assert listed["items"] == [] and listed["count"] == 0
    assert bob.get("/api/v1/lead", params={"q": "East Co"}).json()["items"] == []
    assert lead["id"] not in [i["id"] for i in bob.get("/api/v1/lead").json()["items"]]

    # Same team: the manager reads and may update; the record is unchanged by bob's attempts.
    assert mia.get(url).json()["last_name"] == "Alice's lead"
    assert mia.patch(url, json={"status": "working"}).status_code == 200
    # A rep may not delete at all, even their own record.
    assert alice.delete(url).status_code == 403
    # Bob cannot move his own record into alice's team's ownership scope to then edit hers either.
    own = bob.post("/api/v1/lead", json={"last_name": "Bob's"}).json()
    assert alice.patch(f"/api/v1/lead/{own['id']}", json={"last_name": "x"}).status_code in (403, 404)


@pytest.fixture
def masked_crm(tmp_path, db_url):
    schemas = tmp_path / "overlay"
    schemas.mkdir()
    (schemas / "account_mask.yaml").write_text(MASK_OVERLAY, encoding="utf-8")
    crm = make_crm(tmp_path, db_url, schema_paths=[schemas])
    yield crm
    crm.close()


def test_masked_fields_never_leave_the_server_unmasked(masked_crm):
    crm = masked_crm
    org = setup_org(crm)
    app = asgi_app(crm)
    admin, alice = Client(app, org["admin"]["token"]), Client(app, org["alice"]["token"])
    try:
        phone, secret = "03-5555-123456", "TOPSECRET-42"
        acc = admin.post(
            "/api/v1/account",
            json={
                "name": "Masked KK",
                "phone": phone,
                "secret_code": secret,
                "owner": org["alice"]["id"],
                "team": org["alice"]["team"],
            },
        ).json()
        url = f"/api/v1/account/{acc['id']}"
        assert admin.get(url).json()["phone"] == phone

        responses = [
            alice.get(url),
            alice.get("/api/v1/account"),
            alice.get("/api/v1/account", params={"fields": "name,phone,secret_code"}),
            alice.patch(url, json={"website": "example.com"}),
            alice.patch(url, json={"website": "example.org", "version": 1}),  # stale: 409 with current
            alice.patch(url, json={"phone": "03-0000-0000"}),  # may not change a masked field
        ]
        assert [r.status_code for r in responses] == [200, 200, 200, 200, 409, 422]
        for r in responses:
            assert phone not in r.text and secret not in r.text, r.text
            assert "5555" not in r.text
        record = responses[0].json()
        assert record["phone"].startswith("••••") and "secret_code" not in record
        assert responses[4].json()["current"]["phone"].startswith("••••")

        # Filtering or sorting by a hidden value would let it be guessed one character at a time.
        probe = alice.get("/api/v1/account", params={"filter": json.dumps({"phone": {"startswith": "03-5"}})})
        assert probe.status_code == 400 and probe.json()["errors"][0]["field"] == "filter"
        probe = alice.get(
            "/api/v1/account", params={"filter": json.dumps({"secret_code": {"startswith": "T"}})}
        )
        assert probe.status_code == 400
        assert alice.get("/api/v1/account", params={"sort": "phone"}).status_code == 400
        # account's search text includes the phone: a substring search would be the same oracle.
        search = alice.get("/api/v1/account", params={"q": "5555"})
        assert search.status_code == 400 and search.json()["errors"][0]["field"] == "q"
        assert [a["id"] for a in admin.get("/api/v1/account", params={"q": "5555"}).json()["items"]] == [
            acc["id"]
        ]
        assert admin.get("/api/v1/account", params={"sort": "phone"}).status_code == 200
    finally:
        admin.close()
        alice.close()


# ------------------------------------------------------------------------------------------------
# Record actions and plugin errors
# ------------------------------------------------------------------------------------------------


class QualifyPlugin:
    """Registers ``lead/{id}/qualify`` and ``lead/{id}/explode``."""

    @hookimpl
    def register_record_actions(self, crm):
        def qualify(crm, record, payload, actor):
            lead = crm.records.update(
                "lead",
                record["id"],
                {"status": "qualified", "rating": payload.get("rating")},
                actor=actor,
                version=record["version"],
            )
            return {"lead": lead}

        def explode(record):
            raise RuntimeError("kaboom")

        return [
            RecordAction(
                "lead",
                "qualify",
                qualify,
                "Mark a lead qualified",
                {"type": "object", "properties": {"rating": {"enum": ["hot", "warm", "cold"]}}},
            ),
            {"entity": "lead", "name": "explode", "handler": explode},
        ]

    @hookimpl
    def before_save(self, entity, record):
        if entity.name == "account" and record.get("name") == "Fail Inc":
            raise ValueError("no Fail Inc allowed")


def test_record_actions_and_plugin_failures(tmp_path, db_url):
    crm = make_crm(tmp_path, db_url, plugins=[QualifyPlugin()])
    try:
        org = setup_org(crm)
        app = asgi_app(crm)
        alice, bob = Client(app, org["alice"]["token"]), Client(app, org["bob"]["token"])
        lead = alice.post("/api/v1/lead", json={"last_name": "Act"}).json()
        r = alice.post(f"/api/v1/lead/{lead['id']}/qualify", json={"rating": "hot"})
        assert r.status_code == 200, r.text
        assert r.json()["lead"]["status"] == "qualified" and r.json()["lead"]["rating"] == "hot"
        assert bob.post(f"/api/v1/lead/{lead['id']}/qualify", json={}).status_code == 404
        assert (
            alice.post(f"/api/v1/lead/{lead['id']}/qualify", json={"rating": "lukewarm"}).status_code == 422
        )
        boom = alice.post(f"/api/v1/lead/{lead['id']}/explode")
        assert boom.status_code == 422 and "kaboom" in boom.json()["errors"][0]["message"]
        assert alice.get(f"/api/v1/lead/{lead['id']}/qualify").status_code == 405

        fail = alice.post("/api/v1/account", json={"name": "Fail Inc"})
        assert fail.status_code == 422
        assert (
            "failed" in fail.json()["errors"][0]["message"]
            and "Fail Inc" in fail.json()["errors"][0]["message"]
        )
        assert alice.get("/api/v1/account").json()["count"] == 0  # rolled back

        doc = alice.get("/api/v1/openapi.json").json()
        assert "/api/v1/lead/{id}/qualify" in doc["paths"]
        alice.close()
        bob.close()
    finally:
        crm.close()


# ------------------------------------------------------------------------------------------------
# The token command line
# ------------------------------------------------------------------------------------------------


def test_token_command_creates_lists_and_revokes(tmp_path, db_url, project):
    crm = make_crm(project, db_url)
    try:
        crm.records.create(
            "user", {"username": "carol", "display_name": "Carol", "role": "admin"}, actor=SYSTEM
        )
        env = {"CRMKIT_DATABASE_URL": db_url}
        created = run_cli("token", "create", "carol", "--name", "ci", cwd=project, env=env)
        assert created.returncode == 0, created.stderr
        token = created.stdout.strip()
        assert token.startswith("crm_") and "cannot be shown again" in created.stderr

        api = Client(asgi_app(crm), token)
        assert api.get("/api/v1/lead").status_code == 200
        listed = run_cli("token", "list", "carol", cwd=project, env=env)
        assert listed.returncode == 0 and "\tci\t" in listed.stdout and "active" in listed.stdout
        assert token not in listed.stdout
        token_id = listed.stdout.split("\t", 1)[0]
        revoked = run_cli("token", "revoke", token_id, cwd=project, env=env)
        assert revoked.returncode == 0, revoked.stderr
        assert api.get("/api/v1/lead").status_code == 401
        api.close()
        unknown = run_cli("token", "create", "nobody", cwd=project, env=env)
        assert unknown.returncode != 0 and "no user 'nobody'" in unknown.stderr
    finally:
        crm.close()
