"""``crmkit screenshots``: drive Chromium over a throw-away demo CRM and save the main pages as PNG.

Needs Playwright for Python and a Chromium binary (Debian: ``apt-get install chromium
fonts-noto-cjk``; never ``playwright install``).
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
PASSWORD = "screenshots-demo"


def login(page: Any, base: str, username: str, password: str) -> None:
    """Sign in through the login form."""
    page.goto(base + "/admin/login")
    page.fill("#username", username)
    page.fill("#password", password)
    page.click("button[type=submit]")
    page.wait_for_url(base + "/admin/")


def _sample_ids(crm: Any) -> dict[str, int]:
    """A well-connected account and an open deal to show."""
    import sqlalchemy as sa

    deal = crm.table("deal")
    with crm.engine.connect() as conn:
        account = conn.execute(
            sa.select(deal.c.account)
            .group_by(deal.c.account)
            .order_by(sa.func.count().desc(), deal.c.account)
            .limit(1)
        ).scalar()
        open_deal = conn.execute(
            sa.select(deal.c.id).where(deal.c.status == "open").order_by(deal.c.id).limit(1)
        ).scalar()
    return {"account": int(account), "deal": int(open_deal)}


def take_screenshots(out: Path, chromium: str = "/usr/bin/chromium") -> list[Path]:
    """Write dashboard, list, detail, form, kanban and profile screenshots (and Japanese/mobile ones) to ``out``."""
    from playwright.sync_api import sync_playwright

    from crmkit.plugins.admin_commands import prepare_demo
    from crmkit.web.liveserver import live_server

    out.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    with tempfile.TemporaryDirectory() as tmp:
        crm = prepare_demo(Path(tmp) / "demo.db", PASSWORD, echo=lambda *a, **k: None)
        ids = _sample_ids(crm)
        with live_server(crm.asgi()) as base, sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS)
            page = browser.new_page(viewport={"width": 1440, "height": 900}, locale="en-US")
            login(page, base, "admin", PASSWORD)

            def shot(name: str, path: str, full: bool = False, target: Any = page) -> None:
                target.goto(base + path)
                target.wait_for_load_state("networkidle")
                file = out / f"{name}.png"
                target.screenshot(path=str(file), full_page=full)
                written.append(file)

            shot("dashboard", "/admin/")
            shot("list", "/admin/account/")
            shot("detail", f"/admin/account/{ids['account']}", full=True)
            shot("form", f"/admin/deal/{ids['deal']}/edit", full=True)
            shot("kanban", "/admin/deal/kanban")
            shot("profile", "/admin/profile")
            page.goto(base + "/admin/")
            page.get_by_role("button", name="日本語").click()
            shot("detail_ja", f"/admin/account/{ids['account']}", full=True)
            mobile = browser.new_page(
                viewport={"width": 375, "height": 812}, device_scale_factor=2, locale="ja-JP"
            )
            login(mobile, base, "sato", PASSWORD)
            shot("mobile_list", "/admin/deal/", target=mobile)
            shot("mobile_detail", f"/admin/deal/{ids['deal']}", full=True, target=mobile)
            browser.close()
        crm.close()
    return written
