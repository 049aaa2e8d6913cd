"""Accessibility basics of the workflow pages, in Chromium at 375 px (phone) and 1440 px (desktop).

For each page added by the workflow plugins (agenda, reports, forecast, the deal close form,
import pages, notifications, campaign results, web forms, duplicates, jobs, lead conversion,
visit report, profile), on SQLite and PostgreSQL:

- it answers 200 without JS errors or CSP violations;
- nothing scrolls sideways (``document.documentElement.scrollWidth <= innerWidth``);
- every visible form control has an accessible name (a ``<label>``, ``aria-label`` or
  ``aria-labelledby`` naming something, or a ``title``; a placeholder is not a label);
- every visible control can be reached with the keyboard (no ``tabindex="-1"`` on something a
  mouse user can click; click targets are links, buttons or form controls), ids are unique (a
  duplicate breaks ``<label for>``), images have ``alt``;
- the first Tab lands on the "skip to content" link of admin pages.
"""

from __future__ import annotations

import datetime as dt
import io
import textwrap
import warnings

import pytest

from crmkit.core import jobs
from crmkit.core.actors import SYSTEM
from crmkit.core.notifications import notify
from crmkit.web.liveserver import live_server
from tests.browser_support import BACKENDS, backend_database, chromium, watch_errors
from tests.mailserver import SmtpSink
from tests.support import PASSWORD, actor_of, csrf_of, make_crm, make_org

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    from starlette.testclient import TestClient

pytestmark = pytest.mark.browser

WIDTHS = (375, 1440)
LONG_EMAIL = "procurement.department.tokyo.headquarters@very-long-company-domain-example.co.jp"

CONTACT_FORM = """\
title: {en: Contact us, ja: お問い合わせ}
intro: {en: We reply within one business day., ja: 1営業日以内にご返信します。}
entity: lead
fields:
  - {name: last_name, required: true}
  - {name: first_name}
  - {name: company, required: true}
  - {name: email, required: true}
  - {name: industry}
  - {name: description, label: {en: Your message, ja: お問い合わせ内容}}
consent: {label: {en: I agree to the privacy policy, ja: 個人情報の取り扱いに同意します}, url: /privacy}
"""

# name -> path ({placeholders} filled from the seeded ids)
PAGES = {
    "agenda": "/admin/agenda",
    "reports-pipeline": "/admin/reports/",
    "reports-rfm": "/admin/reports/rfm",
    "reports-sources": "/admin/reports/sources",
    "reports-campaigns": "/admin/reports/campaigns",
    "forecast": "/admin/forecast",
    "deal-close-won": "/admin/deal/{deal}/close?outcome=won",
    "deal-close-lost": "/admin/deal/{deal}/close?outcome=lost",
    "import-upload": "/admin/data/import",
    "import-history": "/admin/data/imports/",
    "import-detail": "/admin/data/imports/{import_id}",
    "notifications": "/admin/notifications",
    "campaign-results": "/admin/email_campaign/{campaign}/results",
    "email-suppression": "/admin/email-suppression",
    "web-forms-admin": "/admin/web-forms",
    "web-form-public": "/forms/contact",
    "duplicates": "/admin/data/duplicates/",
    "jobs": "/admin/jobs",
    "outbox": "/admin/outbox",
    "my-team": "/admin/my-team",
    "lead-convert": "/admin/lead/{lead}/convert",
    "visit-report": "/admin/activity/{visit}/report",
    "profile": "/admin/profile",
}

# Runs in the page: a list of problems (empty when the page passes).
AUDIT_JS = """
() => {
  const problems = [];
  const describe = (el) => el.outerHTML.slice(0, 160);
  const shown = (el) => {
    if (el.closest('[aria-hidden="true"], [inert]')) return false;  // not exposed to assistive technology
    const style = getComputedStyle(el);
    if (style.visibility === 'hidden' || style.display === 'none') return false;
    const box = el.getBoundingClientRect();
    return box.width > 0 && box.height > 0;
  };
  const text = (el) => (el ? (el.innerText || el.textContent || '').trim() : '');
  const named = (el) => {
    if ((el.getAttribute('aria-label') || '').trim()) return true;
    const ids = (el.getAttribute('aria-labelledby') || '').split(/\\s+/).filter(Boolean);
    if (ids.some((id) => text(document.getElementById(id)))) return true;
    if (el.labels && Array.from(el.labels).some((l) => text(l))) return true;
    return !!(el.getAttribute('title') || '').trim();
  };
  const fields = 'input:not([type=hidden]):not([type=submit]):not([type=button]):not([type=reset])'
    + ':not([type=image]), select, textarea';
  for (const el of document.querySelectorAll(fields)) {
    if (shown(el) && !named(el)) problems.push('no accessible name: ' + describe(el));
  }
  const native = 'a[href], button, input, select, textarea, summary';
  const roles = '[role=button], [role=link], [role=tab], [role=checkbox], [role=option], [role=menuitem]';
  for (const el of document.querySelectorAll(native + ', ' + roles + ', [onclick]')) {
    if (!shown(el) || el.disabled) continue;
    if (el.matches('[role=option]')) continue;  // listbox options are reached with the arrow keys
    if (el.tabIndex < 0) problems.push('not reachable by keyboard: ' + describe(el));
  }
  for (const el of document.querySelectorAll('button, a[href], [role=button]')) {
    if (shown(el) && !text(el) && !named(el) && !el.querySelector('img[alt]:not([alt=""])'))
      problems.push('button or link without a name: ' + describe(el));
  }
  const seen = new Set();
  for (const el of document.querySelectorAll('[id]')) {
    if (seen.has(el.id)) problems.push('duplicate id: ' + el.id);
    seen.add(el.id);
  }
  for (const table of document.querySelectorAll('table')) {  // phones: list tables become cards
    if (!shown(table) || !table.tHead || getComputedStyle(table.tHead).display !== 'none') continue;
    for (const td of table.querySelectorAll('td.num')) {
      if (shown(td) && !td.dataset.label) problems.push('number without its column header: ' + describe(td));
    }
  }
  for (const img of document.querySelectorAll('img')) {
    if (shown(img) && !img.hasAttribute('alt')) problems.push('image without alt: ' + describe(img));
  }
  return problems;
}
"""

# Runs in the page: the page's widths and the first elements sticking out on the right (to debug).
OVERFLOW_JS = """
() => {
  const width = window.innerWidth;
  const wide = [];
  const clipped = (el) => {
    for (let p = el.parentElement; p && p !== document.body; p = p.parentElement) {
      if (['auto', 'scroll', 'hidden', 'clip'].includes(getComputedStyle(p).overflowX)) return true;
    }
    return false;
  };
  for (const el of document.querySelectorAll('body *')) {
    const box = el.getBoundingClientRect();
    if (box.width > 0 && box.right > width + 1 && getComputedStyle(el).position !== 'fixed' && !clipped(el)) {
      wide.push(el.tagName.toLowerCase() + '.' + String(el.className).split(' ').join('.') + ' ' + box.right);
    }
  }
  return {scrollWidth: document.documentElement.scrollWidth, innerWidth: width, wide: wide.slice(0, 8)};
}
"""


def seed(crm, org, project) -> dict[str, int]:
    """Data that gives every audited page something to show (long values included)."""
    store = crm.records
    admin = actor_of(org["users"]["admin"])
    me = {"owner": org["users"]["admin"]["id"], "team": org["teams"]["east"]["id"]}
    today = dt.date.today()
    now = dt.datetime.now(dt.UTC)
    with store.transaction(actor=SYSTEM, source="seed") as tx:
        campaign_activity = tx.create(
            "marketing_activity",
            {"name": "Japan IT Week 2026 春 出展（東京ビッグサイト）", "type": "event", "cost": 2_380_000},
        )
        account = tx.create("account", {"name": "株式会社ロングネーム・インターナショナル・ホールディングス", **me})
        tx.create("account", {"name": "ロングネーム・インターナショナル・ホールディングス株式会社", **me})
        tx.create("contact", {"account": account["id"], "last_name": "佐藤", "first_name": "花子", "email": LONG_EMAIL,
                              **me})
        deals = []
        for i, stage in enumerate(org["stages"]):
            deals.append(tx.create("deal", {
                "name": f"基幹システム刷新プロジェクト 第{i + 1}期", "account": account["id"], "stage": stage["id"],
                "amount": 1_250_000 * (i + 1), "close_date": (today + dt.timedelta(days=20 * i)).isoformat(),
                "marketing_activity": campaign_activity["id"], **me}))
        tx.create("deal", {"name": "Won deal", "account": account["id"], "stage": org["stages"][2]["id"],
                           "amount": 3_000_000, "status": "won", "close_date": today.isoformat(),
                           "marketing_activity": campaign_activity["id"], **me})
        lead = tx.create("lead", {"last_name": "山田", "first_name": "太郎", "company": "株式会社カタカナ",
                                  "email": "yamada@example.jp", "marketing_activity": campaign_activity["id"],
                                  "source": "event", **me})
        visit = tx.create("activity", {"subject": "定例訪問（来期予算のヒアリング）", "type": "visit",
                                       "account": account["id"], "due_at": now + dt.timedelta(hours=1),
                                       "assignee": me["owner"], **me})
        tx.create("activity", {"subject": "見積書を送付", "type": "task", "due_at": now - dt.timedelta(days=1),
                               "assignee": me["owner"], **me})
    for i in range(3):
        notify(crm, me["owner"], subject=f"Reminder {i}: {LONG_EMAIL}", body="見積書の送付期限です。",
               link=f"/admin/deal/{deals[0]['id']}", channels=("in_app",))
    # an email campaign, sent through a real SMTP server to its one recipient
    seg = store.create("email_segment", {"name": "Event leads", "audience": "lead",
                                         "condition": {"email": "yamada@example.jp"}}, actor=SYSTEM)
    campaign = store.create("email_campaign", {
        "name": "Autumn launch", "segment": seg["id"], "default_language": "ja",
        "subject_ja": "{{ recipient.last_name }}様へのお知らせ", "html_ja": "<p>{{ recipient.last_name }}様</p>",
        "subject_en": "News", "html_en": "<p>Hello</p>", "from_name": "Acme Sales", "from_email": "sales@example.com",
        "marketing_activity": campaign_activity["id"]}, actor=admin)
    from plugins_contrib.email_campaigns import campaigns

    with SmtpSink() as sink:
        crm.config.smtp = sink.settings
        campaigns.run_action(crm, campaign["id"], "schedule", admin)
        while jobs.run_once(crm):
            pass
        sink.wait_for(1)
    # an uploaded import, waiting for its column mapping
    client = TestClient(crm.asgi(), follow_redirects=False)
    csrf = csrf_of(client.get("/admin/login").text)
    client.post("/admin/login", data={"username": "admin", "password": PASSWORD, "_csrf": csrf})
    csv = "会社名,Website,Phone\n株式会社インポート,example.co.jp,03-1234-5678\n".encode()
    upload = client.post(
        "/admin/data/import",
        data={"entity": "account", "_csrf": csrf_of(client.get("/admin/data/import").text)},
        files={"file": ("accounts.csv", io.BytesIO(csv), "text/csv")},
    )
    assert upload.status_code == 303, upload.text[:300]
    import_id = int(upload.headers["location"].rstrip("/").rsplit("/", 1)[1])
    return {"deal": deals[0]["id"], "lead": lead["id"], "visit": visit["id"], "campaign": campaign["id"],
            "import_id": import_id}


@pytest.fixture(scope="module", params=BACKENDS)
def a11y_db(request, tmp_path_factory):
    """The audited site's database on each backend (the tests are parametrized by it)."""
    yield from backend_database(request, tmp_path_factory)


@pytest.fixture(scope="module")
def site(a11y_db, tmp_path_factory):
    """The seeded CRM (campaigns and web forms on) served by uvicorn: yields (base_url, ids)."""
    project = tmp_path_factory.mktemp("a11y")
    (project / "forms").mkdir()
    (project / "forms" / "contact.yaml").write_text(textwrap.dedent(CONTACT_FORM))
    crm = make_crm(project, a11y_db, enable=["email_campaigns", "web_forms"])
    crm.config.secret_key = "a11y-tests-secret-key-0123456789"
    org = make_org(crm)
    ids = seed(crm, org, project)
    with live_server(crm.asgi()) as base:
        yield base, ids
    crm.close()


@pytest.fixture(scope="module")
def session(site):
    """One signed-in admin tab for the module (pages are only read here)."""
    base, _ids = site
    with chromium() as browser:
        context = browser.new_context(viewport={"width": 1440, "height": 900}, locale="en-US", base_url=base)
        page = context.new_page()
        page.set_default_timeout(10000)
        errors = watch_errors(page)
        page.goto("/admin/login")
        page.get_by_label("Username").fill("admin")
        page.get_by_label("Password").fill(PASSWORD)
        page.get_by_role("button", name="Sign in").click()
        page.wait_for_url(f"{base}/admin/")
        yield page, errors
        context.close()


@pytest.mark.parametrize("width", WIDTHS)
@pytest.mark.parametrize("name", list(PAGES))
def test_page_fits_the_screen_and_is_labelled_and_keyboard_reachable(session, site, name, width):
    _base, ids = site
    page, errors = session
    errors.clear()
    page.set_viewport_size({"width": width, "height": 900})
    response = page.goto(PAGES[name].format(**ids))
    assert response is not None and response.status == 200, (name, response and response.status)
    page.wait_for_load_state("load")
    layout = page.evaluate(OVERFLOW_JS)
    assert layout["scrollWidth"] <= layout["innerWidth"], (name, width, layout)
    problems = page.evaluate(AUDIT_JS)
    assert not problems, (name, width, problems)
    if PAGES[name].startswith("/admin/"):
        page.keyboard.press("Tab")
        focused = page.evaluate("document.activeElement && document.activeElement.className")
        assert focused == "skip", (name, focused)
    assert not errors, (name, width, errors)
