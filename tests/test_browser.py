"""The admin in a real browser: Playwright for Python driving Debian's Chromium against uvicorn.

Every scenario runs on each backend under test: a module-scoped site per backend (a SQLite file,
and a PostgreSQL schema when CRMKIT_TEST_DATABASE_URL is set), one browser for the module; each
test opens its own page and logs in through the form. Never ``playwright install``: the system
Chromium is used.
"""

from __future__ import annotations

import datetime as dt
import re

import pytest

from crmkit import CRM
from crmkit.core.actors import SYSTEM
from crmkit.core.passwords import hash_password
from crmkit.plugins.admin_commands import migrate
from crmkit.web.liveserver import live_server
from tests.browser_support import BACKENDS, backend_database, chromium, watch_errors

pytestmark = pytest.mark.browser

PASSWORD = "browser-secret"


@pytest.fixture(scope="module", params=BACKENDS)
def site_db(request, tmp_path_factory):
    """The site's database on each backend (the tests are parametrized by it)."""
    yield from backend_database(request, tmp_path_factory)


@pytest.fixture(scope="module")
def site(site_db, tmp_path_factory):
    """A seeded CRM served by uvicorn: yields (base_url, crm, ids)."""
    tmp = tmp_path_factory.mktemp("browser")
    crm = CRM(tmp, database_url=site_db, entry_points=False)
    migrate(crm)
    hashed = hash_password(PASSWORD)
    ids = {}
    with crm.records.transaction(actor=SYSTEM) as tx:
        team = tx.create("team", {"name": "Tokyo"})
        admin = tx.create(
            "user",
            {
                "username": "admin",
                "display_name": "Admin",
                "role": "admin",
                "password": hashed,
                "primary_team": team["id"],
                "locale": "en",
            },
        )
        stages = [
            tx.create("deal_stage", {"name": n, "sort_order": i, "probability": p, "color": c})
            for i, (n, p, c) in enumerate(
                [("Prospecting", 10, "#2563eb"), ("Proposal", 40, "#7c3aed"), ("Negotiation", 80, "#ea580c")]
            )
        ]
        acc = tx.create("account", {"name": "株式会社ボード", "owner": admin["id"], "team": team["id"]})
        deal = tx.create(
            "deal",
            {
                "name": "Drag me",
                "account": acc["id"],
                "stage": stages[0]["id"],
                "amount": 500000,
                "probability": 10,
                "owner": admin["id"],
                "team": team["id"],
            },
        )
        tx.create(
            "deal",
            {
                "name": "Arrow keys",
                "account": acc["id"],
                "stage": stages[0]["id"],
                "amount": 1,
                "probability": 10,
                "owner": admin["id"],
                "team": team["id"],
            },
        )
        lead = tx.create(
            "lead",
            {
                "last_name": "山田",
                "first_name": "太郎",
                "last_name_kana": "ヤマダ",
                "first_name_kana": "タロウ",
                "company": "株式会社カタカナ",
                "owner": admin["id"],
            },
        )
        for i in range(55):  # enough leads that reference fields use the autocomplete widget
            tx.create("lead", {"last_name": f"Lead{i:02d}", "first_name": "", "company": f"Filler {i}"})
        rep = tx.create(  # the profile scenario changes this user's language and password
            "user",
            {
                "username": "rep",
                "display_name": "Rep",
                "role": "sales_rep",
                "password": hashed,
                "primary_team": team["id"],
                "locale": "en",
            },
        )
        ids.update(
            stages=[s["id"] for s in stages], deal=deal["id"], lead=lead["id"], account=acc["id"], rep=rep["id"]
        )
    with live_server(crm.asgi()) as base:
        yield base, crm, ids
    crm.close()


@pytest.fixture(scope="module")
def browser():
    with chromium() as b:
        yield b


@pytest.fixture
def page(site, browser):
    """A fresh logged-in page (1440 px wide, English)."""
    base, _crm, _ids = site
    context = browser.new_context(viewport={"width": 1440, "height": 900}, locale="en-US", base_url=base)
    page = context.new_page()
    page.set_default_timeout(8000)
    errors = watch_errors(page)
    page.goto("/admin/")
    assert "/admin/login" in page.url
    page.get_by_label("Username").fill("admin")
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Sign in").click()
    page.wait_for_url(f"{base}/admin/")
    yield page
    context.close()
    assert not errors, errors  # no JS errors, no CSP violations


def test_create_account_then_contact_with_a_form_error_fixed(page, site):
    _base, crm, _ids = site
    page.get_by_role("link", name="Accounts").click()
    page.get_by_role("link", name="New").click()
    page.get_by_label("Account name", exact=True).fill("株式会社ブラウザテスト")
    page.get_by_label("Website").fill("example.co.jp")
    page.get_by_role("radio", name="Customer").check()
    page.get_by_role("button", name="Save").first.click()
    page.wait_for_url(re.compile(r"/admin/account/\d+$"))
    assert page.get_by_role("heading", level=1).inner_text() == "株式会社ブラウザテスト"
    assert (
        page.get_by_role("link", name="example.co.jp").first.get_attribute("href") == "https://example.co.jp"
    )
    # a contact under it, from the related list's "+"
    page.get_by_role("link", name="New: Contacts").click()
    assert page.get_by_label("Account").locator("option:checked").inner_text() == "株式会社ブラウザテスト"
    page.get_by_label("First name", exact=True).fill("花子")
    page.get_by_label("Email", exact=True).fill("hanako@@example")
    page.get_by_role("button", name="Save").first.click()
    # the form comes back with messages and what was typed
    page.locator("#form-errors").wait_for()
    assert "email address" in page.locator("[data-field=email] .error").inner_text()
    assert page.get_by_label("Email", exact=True).input_value() == "hanako@@example"
    assert page.get_by_label("First name", exact=True).input_value() == "花子"
    assert page.get_by_label("Email", exact=True).get_attribute("aria-invalid") == "true"
    page.get_by_label("Email", exact=True).fill("hanako@example.com")
    page.get_by_role("button", name="Save").first.click()
    page.locator("#form-errors").wait_for()
    assert page.locator("[data-field=last_name] .error").inner_text().endswith("is required")
    assert page.get_by_label("Email", exact=True).input_value() == "hanako@example.com"
    page.get_by_label("Last name", exact=True).fill("佐藤")
    page.get_by_role("button", name="Save").first.click()
    page.wait_for_url(re.compile(r"/admin/contact/\d+$"))
    assert "佐藤 花子" in page.get_by_role("heading", level=1).inner_text()
    assert (
        page.get_by_role("link", name="hanako@example.com").first.get_attribute("href")
        == "mailto:hanako@example.com"
    )
    contact = crm.records.list("contact", actor=SYSTEM, q="hanako").items[0]
    account = crm.records.list("account", actor=SYSTEM, q="ブラウザテスト").items[0]
    assert contact["account"] == account["id"]


def test_search_in_half_width_katakana_finds_full_width(page):
    page.goto("/admin/lead/")
    search = page.get_by_role("searchbox", name="Search")
    search.fill("ﾔﾏﾀﾞ")
    search.press("Enter")
    page.wait_for_url(re.compile(r"q="))
    rows = page.locator("table.list tbody tr")
    assert rows.count() == 1
    assert "山田" in rows.first.inner_text()


def test_reference_autocomplete_and_live_conditions(page, site):
    _base, crm, ids = site
    page.goto("/admin/activity/new")
    page.get_by_label("Subject").fill("Follow-up call")
    page.get_by_role("radio", name="Call").check()
    # visible_if: the result fields appear only once the status is "Done"
    assert page.locator("[data-field=result]").is_hidden()
    page.get_by_role("radio", name="Done").check()
    assert page.locator("[data-field=result]").is_visible()
    page.get_by_role("radio", name="Planned").check()
    assert page.locator("[data-field=result]").is_hidden()
    # the lead field is a combobox: type half-width kana, pick with the keyboard
    lead = page.get_by_role("combobox", name="Lead")
    lead.fill("ﾔﾏﾀﾞ")
    page.get_by_role("option", name=re.compile("山田")).wait_for()
    lead.press("ArrowDown")
    lead.press("Enter")
    assert "山田" in lead.input_value()
    page.get_by_role("button", name="Save").first.click()
    page.wait_for_url(re.compile(r"/admin/activity/\d+$"))
    activity = crm.records.list("activity", actor=SYSTEM, q="Follow-up", columns=["lead", "type"]).items[0]
    assert activity["lead"] == ids["lead"] and activity["type"] == "call"


def test_drag_a_deal_on_the_kanban(page, site):
    _base, crm, ids = site
    page.goto("/admin/deal/kanban")
    card = page.locator(".kcard", has_text="Drag me")
    target = page.locator(f'.col[data-value="{ids["stages"][1]}"] [data-drop]')
    with page.expect_response(re.compile(r"/move$")) as response:
        card.drag_to(target)
    assert response.value.status == 200
    assert target.locator(".kcard", has_text="Drag me").count() == 1
    assert crm.records.get("deal", ids["deal"], actor=SYSTEM)["stage"] == ids["stages"][1]
    # keyboard: focus a card and press the right arrow
    keyboard_card = page.locator(".kcard", has_text="Arrow keys")
    keyboard_card.focus()
    with page.expect_response(re.compile(r"/move$")):
        page.keyboard.press("ArrowRight")
    assert page.locator(f'.col[data-value="{ids["stages"][1]}"] .kcard', has_text="Arrow keys").count() == 1
    page.reload()  # the move was stored
    assert page.locator(f'.col[data-value="{ids["stages"][1]}"] .kcard', has_text="Drag me").count() == 1


def test_switch_to_japanese(page):
    page.get_by_role("button", name="日本語").click()
    page.wait_for_load_state()
    assert page.locator("html").get_attribute("lang") == "ja"
    assert page.get_by_role("link", name="ダッシュボード").is_visible()
    page.get_by_role("link", name="取引先", exact=True).click()
    assert page.get_by_role("columnheader", name="取引先名").is_visible()
    assert page.get_by_role("link", name="新規作成").is_visible()
    page.get_by_role("button", name="English").click()  # back, so other tests see English
    page.wait_for_load_state()
    assert page.locator("html").get_attribute("lang") == "en"


def test_usable_on_a_phone(page, site):
    page.set_viewport_size({"width": 375, "height": 800})
    page.goto("/admin/deal/")
    width = page.evaluate("document.documentElement.scrollWidth")
    assert width <= 375, width
    menu = page.get_by_role("button", name="Menu")
    assert page.get_by_role("link", name="Accounts").is_hidden()
    menu.click()
    page.get_by_role("link", name="Accounts").click()
    page.wait_for_url(re.compile(r"/admin/account/$"))
    page.goto(f"/admin/account/{site[2]['account']}")
    assert page.evaluate("document.documentElement.scrollWidth") <= 375


def test_dashboard_today(page, site):
    _base, crm, _ids = site
    admin = crm.records.list("user", actor=SYSTEM, filter={"username": "admin"}).items[0]
    crm.records.create(
        "activity",
        {
            "subject": "Visit right now",
            "type": "visit",
            "assignee": admin["id"],
            "owner": admin["id"],
            "due_at": dt.datetime.now(dt.UTC),
        },
        actor=SYSTEM,
    )
    page.goto("/admin/")
    assert page.get_by_role("heading", name="Today's visits").is_visible()
    assert page.get_by_role("link", name="Visit right now").is_visible()
    assert page.get_by_role("heading", name="Pipeline summary").is_visible()


def test_a_sales_rep_edits_their_profile_and_password(site, browser):
    base, crm, ids = site
    from crmkit.core.passwords import verify_password
    from crmkit.web.auth import load_user

    context = browser.new_context(viewport={"width": 1440, "height": 900}, locale="en-US", base_url=base)
    page = context.new_page()
    page.set_default_timeout(8000)
    errors = watch_errors(page)
    page.goto("/admin/login")
    page.get_by_label("Username").fill("rep")
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Sign in").click()
    page.wait_for_url(f"{base}/admin/")
    page.get_by_role("link", name="My profile").click()
    page.wait_for_url(f"{base}/admin/profile")
    # a wrong current password: the message is tied to the field, nothing changes
    page.get_by_label("Current password").fill("not it")
    page.get_by_label("New password", exact=True).fill("a new browser secret")
    page.get_by_label("New password again").fill("a new browser secret")
    page.get_by_role("button", name="Change password").click()
    current = page.get_by_label("Current password")
    assert current.get_attribute("aria-invalid") == "true"
    assert page.locator("#current-password-err").inner_text() == "The current password is not correct."
    current.fill(PASSWORD)
    page.get_by_label("New password", exact=True).fill("a new browser secret")
    page.get_by_label("New password again").fill("a new browser secret")
    page.get_by_role("button", name="Change password").click()
    page.get_by_text("Your password was changed.").wait_for()
    assert verify_password(load_user(crm, user_id=ids["rep"]).password, "a new browser secret")
    # settings: name, language and time zone, then the page answers in Japanese
    page.get_by_label("Display name").fill("営業 太郎")
    page.get_by_label("Language").select_option("ja")
    page.get_by_label("Time zone").select_option("America/New_York")
    page.get_by_role("button", name="Save settings").click()
    page.get_by_role("heading", name="プロフィール", level=1).wait_for()
    assert page.locator("html").get_attribute("lang") == "ja"
    assert page.get_by_label("タイムゾーン").input_value() == "America/New_York"
    user = load_user(crm, user_id=ids["rep"])
    assert (user.display_name, user.locale, user.time_zone) == ("営業 太郎", "ja", "America/New_York")
    context.close()
    assert not errors, errors
