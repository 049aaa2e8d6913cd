"""Helpers shared by the tests: a migrated CRM, a small organisation, a logged-in admin client.

Plain functions (not fixtures) so any test module can build what it needs::

    crm = make_crm(tmp_path, db_url, plugins=[MyPlugin()])
    org = make_org(crm)
    client = login(crm, "alice")
    client.post("/admin/lead/new", data={..., "_csrf": token(client)})
"""

from __future__ import annotations

import re
import warnings
from typing import Any

from crmkit import CRM
from crmkit.core.actors import SYSTEM, Actor
from crmkit.core.passwords import hash_password
from crmkit.plugins.admin_commands import migrate

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    from starlette.testclient import TestClient

PASSWORD = "correct horse"
PASSWORD_HASH = hash_password(PASSWORD)  # argon2 is slow on purpose: hash once, store the hash directly
# An account overlay: a secret field sales reps may not see, and their phone numbers masked.
MASK_OVERLAY = """\
extends: account
fields:
  secret_code: {type: string, max_length: 50, label: {en: Secret code, ja: 秘密コード}}
permissions:
  admin:     {read: all, create: true, update: all, delete: all, export: all}
  manager:   {read: all, create: true, update: team, delete: team, export: all}
  sales_rep: {read: team, create: true, update: own, delete: none, export: none,
              fields: {phone: mask, secret_code: none}}
"""

XSS = '<script>alert("x")</script><img src=x onerror=alert(1)>'


def make_crm(tmp_path, db_url, *, plugins: list[Any] = (), enable: list[str] = (), **kwargs: Any) -> CRM:
    """A CRM on ``db_url`` with its tables migrated (entry points off, so tests see only what they load)."""
    crm = CRM(tmp_path, database_url=db_url, plugins=list(plugins), enable=list(enable), entry_points=False, **kwargs)
    migrate(crm)
    return crm


def make_org(crm: CRM) -> dict[str, Any]:
    """Teams East and West; admin, alice (rep, East), bob (rep, West), mia (manager, East); master data."""
    store = crm.records
    east = store.create("team", {"name": "East"}, actor=SYSTEM)
    west = store.create("team", {"name": "West"}, actor=SYSTEM)
    users = {}
    for username, role, team, locale in [
        ("admin", "admin", east, "en"),
        ("alice", "sales_rep", east, "en"),
        ("bob", "sales_rep", west, "en"),
        ("mia", "manager", east, "ja"),
    ]:
        users[username] = store.create(
            "user",
            {
                "username": username,
                "display_name": username.title(),
                "role": role,
                "primary_team": team["id"],
                "password": PASSWORD_HASH,
                "locale": locale,
            },
            actor=SYSTEM,
        )
    stages = [
        store.create("deal_stage", {"name": n, "sort_order": i, "probability": p, "color": c}, actor=SYSTEM)
        for i, (n, p, c) in enumerate(
            [("Prospecting", 10, "#2563eb"), ("Proposal", 40, "#7c3aed"), ("Negotiation", 80, "#ea580c")]
        )
    ]
    return {"teams": {"east": east, "west": west}, "users": users, "stages": stages}


def owned(org, username):
    user = org["users"][username]
    return {"owner": user["id"], "team": user["primary_team"]}


def login(crm, username="admin", password=PASSWORD, base_url="http://testserver"):
    client = TestClient(crm.asgi(), base_url=base_url, follow_redirects=False)
    page = client.get("/admin/login")
    response = client.post(
        "/admin/login",
        data={"username": username, "password": password, "_csrf": csrf_of(page.text), "next": "/admin/"},
    )
    assert response.status_code == 303, response.text[:500]
    return client


def csrf_of(html: str) -> str:
    m = re.search(r'name="csrf-token" content="([^"]*)"', html) or re.search(
        r'name="_csrf" value="([^"]+)"', html
    )
    assert m, "no CSRF token in page"
    return m.group(1)


def token(client) -> str:
    return csrf_of(client.get("/admin/").text)




def actor_of(user: dict[str, Any]) -> Actor:
    """The Actor for a user record made by :func:`make_org` (for RecordStore calls in tests)."""
    team = user.get("primary_team")
    return Actor(user["id"], user["username"], user["role"], frozenset({team} if team else ()), team)
