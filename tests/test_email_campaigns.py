"""Email campaigns (plugins_contrib/email_campaigns): segments, templates, sending through a real SMTP
server (aiosmtpd), signed tracking and unsubscribe links, throttling, bounces, results, conversion."""

from __future__ import annotations

import datetime as dt
import json
import re
import threading
from decimal import Decimal
from email.message import EmailMessage
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import sqlalchemy as sa

from crmkit.core import jobs, mail
from crmkit.core.actors import SYSTEM
from crmkit.core.errors import PermissionDenied, ValidationError
from crmkit.core.tokens import create_token
from crmkit.hookspecs import hookimpl
from plugins_contrib.email_campaigns import bounces, campaigns, links, render, tracking
from plugins_contrib.email_campaigns import tables as T
from tests.mailserver import SmtpSink, assert_each_arrived_once
from tests.support import actor_of, login, make_crm, make_org, token

BASE = "https://crm.example.com"
BROWSER_UA = "Mozilla/5.0 (Macintosh; Intel Mac OS X 14_5) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.5"


class EventLog:
    """A plugin recording the events other plugins (lead scoring) would receive."""

    def __init__(self):
        self.events = []

    @hookimpl
    def track_event(self, crm, event):
        if event.name.startswith("email."):
            self.events.append(event)


@pytest.fixture
def sink():
    with SmtpSink() as s:
        yield s


@pytest.fixture
def env(tmp_path, db_url, sink):
    log = EventLog()
    crm = make_crm(tmp_path, db_url, enable=["email_campaigns"], plugins=[log])
    crm.config.smtp = sink.settings
    crm.config.base_url = BASE
    crm.config.secret_key = "campaign-tests-secret-key-0123456789"
    crm.config.raw["email_campaigns"] = {"unsubscribe_mailto": "unsubscribe@example.com", "machine_seconds": 0}
    org = make_org(crm)
    yield crm, org, log
    crm.close()


def admin(org):
    return actor_of(org["users"]["admin"])


def lead(crm, **values):
    values.setdefault("last_name", "Test")
    return crm.records.create("lead", values, actor=SYSTEM)


def segment(crm, condition, audience="lead", name="Segment"):
    return crm.records.create("email_segment", {"name": name, "audience": audience, "condition": condition},
                              actor=SYSTEM)


HTML_EN = (
    "<html><body><h1>Hello {{ recipient.first_name }} {{ recipient.last_name }}</h1>"
    "<p>From {{ owner.display_name }} at {{ recipient.company }}.</p>"
    "<p><a href=\"https://shop.example.com/item?id=7&amp;ref=mail\">See the product</a> · "
    "<a href=\"mailto:sales@example.com\">Mail us</a></p></body></html>"
)
HTML_JA = "<p>{{ recipient.last_name }}様</p><p><a href=\"https://shop.example.jp/\">製品ページ</a></p>"


def campaign(crm, org, seg, **values):
    data = {
        "name": "Autumn launch", "segment": seg["id"], "default_language": "en",
        "subject_en": "News for {{ recipient.first_name }}", "html_en": HTML_EN,
        "subject_ja": "{{ recipient.last_name }}様へのお知らせ", "html_ja": HTML_JA,
        "from_name": "Acme Sales", "from_email": "sales@example.com", **values,
    }
    return crm.records.create("email_campaign", data, actor=admin(org))


def send_all(crm, now=None):
    """Run the worker until nothing is due (the campaign's batches, then the mail.send jobs)."""
    total = 0
    while True:
        n = jobs.run_once(crm, now=now)
        total += n
        if n == 0:
            return total


def by_recipient(messages: list[EmailMessage]) -> dict[str, EmailMessage]:
    out = {}
    for m in messages:
        assert m["To"] not in out, f"{m['To']} received the campaign twice"
        out[str(m["To"])] = m
    return out


def tracked_links(html: str) -> list[str]:
    return re.findall(r'href="(https://crm\.example\.com/t/c/[^"]+)"', html)


def path_of(url: str) -> str:
    return urlsplit(url).path


# ---------------------------------------------------------------------------------------------
# Sending
# ---------------------------------------------------------------------------------------------
def test_campaign_reaches_the_segment_minus_every_exclusion(env, sink):
    crm, org, log = env
    alice = org["users"]["alice"]
    en = lead(crm, last_name="Smith", first_name="Ann", email="ann@example.com", prefecture="東京都", language="en",
              company="<b>Acme</b> & Co", owner=alice["id"])
    ja = lead(crm, last_name="山田", first_name="太郎", email="Taro@Example.JP", prefecture="東京都", language="ja")
    lead(crm, last_name="Twin", email="TARO@example.jp", prefecture="東京都")  # same address: one message
    lead(crm, last_name="Osaka", email="osaka@example.com", prefecture="大阪府")  # outside the segment
    lead(crm, last_name="Nomail", email="nomail@example.com", prefecture="東京都", do_not_email=True)
    lead(crm, last_name="Gone", email="gone@example.com", prefecture="東京都")
    lead(crm, last_name="Bounced", email="bounced@example.com", prefecture="東京都")
    lead(crm, last_name="Partner", email="partner@example.com", prefecture="東京都", rating="cold")
    lead(crm, last_name="Empty", prefecture="東京都")  # no address at all
    tracking.unsubscribe(crm, "GONE@example.com")
    bounces.record_bounces(crm, [bounces.Bounce("bounced@example.com", "5.1.1", "failed", True)])
    excluded = segment(crm, {"rating": "cold"}, name="Cold")
    c = campaign(crm, org, segment(crm, {"prefecture": "東京都"}), exclude_segments=[{"id": excluded["id"]}])

    campaigns.run_action(crm, c["id"], "schedule", admin(org))
    send_all(crm)

    got = by_recipient(sink.wait_for(2))
    assert set(got) == {"ann@example.com", "taro@example.jp"}
    stored = crm.records.get("email_campaign", c["id"], actor=SYSTEM)
    assert stored["status"] == "sent" and stored["recipient_count"] == 2 and stored["finished_at"]

    m = got["ann@example.com"]
    assert m["Subject"] == "News for Ann"
    assert m["From"] == "Acme Sales <sales@example.com>"
    unsubscribe = re.fullmatch(r"<(https://crm\.example\.com/t/u/[^>]+)>, <mailto:unsubscribe@example\.com\?subject="
                               r"unsubscribe%20[^>]+>", " ".join(str(m["List-Unsubscribe"]).split()))
    assert unsubscribe, m["List-Unsubscribe"]
    assert m["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    html = m.get_body(("html",)).get_content()
    text = m.get_body(("plain",)).get_content()
    assert "&lt;b&gt;Acme&lt;/b&gt; &amp; Co" in html and "<b>Acme</b>" not in html  # merge fields escaped in HTML
    assert "From Alice at <b>Acme</b> & Co." in text  # ... and verbatim in the text part
    assert "Hello Ann Smith" in text  # the text part was generated from the HTML
    links_html = tracked_links(html)
    assert len(links_html) == 1 and "shop.example.com" not in html
    assert 'href="mailto:sales@example.com"' in html  # only web links are wrapped
    assert f"See the product ({links_html[0]})" in text
    assert re.search(r'<img src="https://crm\.example\.com/t/o/[^"]+\.gif"', html)
    assert unsubscribe.group(1) in html and unsubscribe.group(1) in text  # footer: the template had no link

    m_ja = got["taro@example.jp"]
    assert m_ja["Subject"] == "山田様へのお知らせ"
    assert "製品ページ" in m_ja.get_body(("plain",)).get_content()
    assert "配信停止" in m_ja.get_body(("html",)).get_content()

    send = crm.system_tables[T.SEND]
    with crm.engine.connect() as conn:
        rows = {r.email: r for r in conn.execute(sa.select(send))}
    assert set(rows) == {"ann@example.com", "taro@example.jp"}
    assert rows["taro@example.jp"].record_id == ja["id"] and rows["ann@example.com"].record_id == en["id"]


def test_rerunning_the_worker_or_the_campaign_never_sends_twice(env, sink):
    crm, org, _log = env
    for i in range(7):
        lead(crm, last_name=f"L{i}", email=f"l{i}@example.com")
    c = campaign(crm, org, segment(crm, {}))
    campaigns.run_action(crm, c["id"], "schedule", admin(org))
    send_all(crm)
    assert len(sink.wait_for(7)) == 7
    # Another run of the campaign's job (a stale duplicate, a second worker, the periodic tick) and
    # a re-queue of its messages change nothing.
    jobs.enqueue(crm, "email_campaigns.send", {"campaign_id": c["id"]})
    jobs.enqueue(crm, "email_campaigns.tick", {})
    with crm.engine.begin() as conn:
        send = crm.system_tables[T.SEND]
        conn.execute(sa.update(send).where(send.c.campaign_id == c["id"]).values(status=T.PENDING))
    with crm.records.transaction(actor=SYSTEM) as tx:
        tx.update("email_campaign", c["id"], {"status": "sending"})
    send_all(crm)
    assert len(sink.messages) == 7
    assert len({m["To"] for m in sink.messages}) == 7


@pytest.mark.postgres_only
def test_concurrent_workers_on_postgresql_send_each_message_once(tmp_path, pg_url, sink):
    crm = make_crm(tmp_path, pg_url, enable=["email_campaigns"])
    crm.config.smtp, crm.config.base_url = sink.settings, BASE
    org = make_org(crm)
    with crm.records.transaction(actor=SYSTEM) as tx:
        for i in range(240):
            tx.create("lead", {"last_name": f"L{i}", "email": f"p{i}@example.com"})
    c = campaign(crm, org, segment(crm, {}))
    import plugins_contrib.email_campaigns.sending as sending  # small batches, so the four workers interleave

    old = sending.BATCH
    sending.BATCH = 20
    try:
        campaigns.run_action(crm, c["id"], "schedule", admin(org))
        errors = []

        def work(i):
            try:
                idle = 0
                while idle < 3:
                    n = jobs.run_once(crm, worker_id=f"w{i}", limit=25)
                    idle = idle + 1 if n == 0 else 0
            except Exception as exc:  # pragma: no cover - reported below
                errors.append(exc)

        threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
        send_all(crm)
    finally:
        sending.BATCH = old
        crm.close()
    assert not errors
    got = [str(m["To"]) for m in sink.wait_for(240)]
    assert len(got) == 240 and len(set(got)) == 240


def test_schedule_throttle_and_quiet_hours(env, sink):
    crm, org, _log = env
    for i in range(3):
        lead(crm, last_name=f"T{i}", email=f"t{i}@example.com")
    tokyo = dt.timezone(dt.timedelta(hours=9))
    # A Tokyo evening a few days from now: 22:30 is inside the quiet hours 21:00-08:00.
    day = (dt.datetime.now(tokyo) + dt.timedelta(days=3)).date()
    send_at = dt.datetime.combine(day, dt.time(22, 30), tokyo)
    c = campaign(crm, org, segment(crm, {}), send_at=send_at.isoformat(), throttle_per_hour=2,
                 quiet_start="21:00", quiet_end="08:00", time_zone="Asia/Tokyo")
    campaigns.run_action(crm, c["id"], "schedule", admin(org))
    send_all(crm)  # now: before send_at
    assert sink.messages == []
    send_all(crm, now=send_at + dt.timedelta(minutes=1))  # due, but quiet hours
    assert sink.messages == []
    morning = dt.datetime.combine(day + dt.timedelta(days=1), dt.time(8, 0), tokyo)
    send_all(crm, now=morning + dt.timedelta(seconds=30))
    assert len(sink.wait_for(1)) == 1  # 2 per hour, released one per minute
    send_all(crm, now=morning + dt.timedelta(minutes=1, seconds=30))
    assert len(sink.wait_for(2)) == 2
    send_all(crm, now=morning + dt.timedelta(minutes=30))
    assert len(sink.messages) == 2  # the hour's allowance is used up
    send_all(crm, now=morning + dt.timedelta(hours=1, minutes=1))
    assert len(sink.wait_for(3)) == 3
    assert crm.records.get("email_campaign", c["id"], actor=SYSTEM)["status"] == "sent"


# ---------------------------------------------------------------------------------------------
# Validation and actions
# ---------------------------------------------------------------------------------------------
def test_templates_and_segments_are_checked_when_saved(env):
    crm, org, _log = env
    seg = segment(crm, {})
    with pytest.raises(ValidationError) as err:
        campaign(crm, org, seg, html_en="<p>{{ recipient.frist_name }}</p>")
    assert err.value.errors[0]["field"] == "html_en" and "recipient.frist_name" in err.value.errors[0]["message"]
    with pytest.raises(ValidationError) as err:
        campaign(crm, org, seg, subject_ja="{{ coupon_code }}")
    assert err.value.errors[0]["field"] == "subject_ja" and "coupon_code" in err.value.errors[0]["message"]
    with pytest.raises(ValidationError) as err:
        campaign(crm, org, seg, text_en="{% if %}")
    assert err.value.errors[0]["field"] == "text_en"
    with pytest.raises(ValidationError) as err:
        campaign(crm, org, seg, html_en="{{ recipient.__class__ }}")
    assert err.value.errors[0]["field"] == "html_en"
    with pytest.raises(ValidationError) as err:
        segment(crm, {"prefecture": {"like": "東京"}})
    assert err.value.errors[0]["field"] == "condition"
    with pytest.raises(ValidationError) as err:
        segment(crm, {"account.industry": "it"}, audience="lead")
    assert err.value.errors[0]["field"] == "condition"
    contacts = segment(crm, {}, audience="contact", name="Contacts")
    with pytest.raises(ValidationError) as err:
        campaign(crm, org, seg, exclude_segments=[{"id": contacts["id"]}])
    assert err.value.errors[0]["field"] == "exclude_segments"
    with pytest.raises(ValidationError) as err:
        campaign(crm, org, seg, quiet_start="21:00")
    assert err.value.errors[0]["field"] == "quiet_end"
    # The sandbox refuses Python internals at render time too.
    with pytest.raises(render.TemplateProblem):
        render.render("{{ ''.__class__.__mro__[1].__subclasses__() }}", {}, html=False)


def test_actions_permissions_and_locked_content(env, sink):
    crm, org, _log = env
    lead(crm, email="x@example.com")
    c = campaign(crm, org, segment(crm, {}))
    bob = actor_of(org["users"]["bob"])
    with pytest.raises(PermissionDenied):
        campaigns.run_action(crm, c["id"], "schedule", bob)
    with pytest.raises(ValidationError):
        campaigns.run_action(crm, c["id"], "resume", admin(org))
    empty = campaign(crm, org, segment(crm, {}, name="E"), subject_en="", name="No subject")
    with pytest.raises(ValidationError) as err:
        campaigns.run_action(crm, empty["id"], "schedule", admin(org))
    assert err.value.errors[0]["field"] == "subject_en"
    with pytest.raises(ValidationError):  # users cannot set the status themselves
        crm.records.update("email_campaign", c["id"], {"status": "sent"}, actor=admin(org))
    campaigns.run_action(crm, c["id"], "schedule", admin(org))
    with pytest.raises(ValidationError) as err:
        crm.records.update("email_campaign", c["id"], {"subject_en": "Changed"}, actor=admin(org))
    assert "pause" in err.value.errors[0]["message"]
    campaigns.run_action(crm, c["id"], "pause", admin(org))
    send_all(crm)
    assert sink.messages == []
    crm.records.update("email_campaign", c["id"], {"subject_en": "Changed"}, actor=admin(org))
    campaigns.run_action(crm, c["id"], "resume", admin(org))
    send_all(crm)
    assert [m["Subject"] for m in sink.wait_for(1)] == ["Changed"]
    with pytest.raises(PermissionDenied):  # it sent mail: kept for its results and unsubscribe links
        crm.records.delete("email_campaign", c["id"], actor=admin(org))
    history = crm.records.history("email_campaign", c["id"], actor=admin(org))
    assert {h["actor_name"] for h in history if h["field"] == "status"} >= {"admin"}


def test_record_actions_over_the_api(env, sink):
    crm, org, _log = env
    lead(crm, email="api@example.com")
    c = campaign(crm, org, segment(crm, {}))
    secret, _info = create_token(crm, "admin", "tests")
    from starlette.testclient import TestClient

    api = TestClient(crm.asgi(), headers={"authorization": f"Bearer {secret}"})
    r = api.post(f"/api/v1/email_campaign/{c['id']}/schedule", json={})
    assert r.status_code == 200, r.text
    assert r.json()["email_campaign"]["status"] == "scheduled"
    r = api.post(f"/api/v1/email_campaign/{c['id']}/cancel", json={})
    assert r.json()["email_campaign"]["status"] == "cancelled"
    r = api.post(f"/api/v1/email_campaign/{c['id']}/resume", json={})
    assert r.status_code == 422 and r.json()["errors"][0]["field"] == "status"
    send_all(crm)
    assert sink.messages == []


# ---------------------------------------------------------------------------------------------
# Tracking and unsubscribing over HTTP
# ---------------------------------------------------------------------------------------------
def _sent_campaign(crm, org, sink, *emails):
    for i, e in enumerate(emails):
        lead(crm, last_name=f"R{i}", email=e)
    c = campaign(crm, org, segment(crm, {"email": {"in": list(emails)}}, name=f"S{emails[0]}"),
                 name=f"C {emails[0]}")
    campaigns.run_action(crm, c["id"], "schedule", admin(org))
    send_all(crm)
    return c, by_recipient(sink.wait_for(len(emails)))


def test_opens_and_clicks_are_recorded_and_machine_ones_flagged(env, sink):
    crm, org, log = env
    c, got = _sent_campaign(crm, org, sink, "reader@example.com")
    m = got["reader@example.com"]
    html = m.get_body(("html",)).get_content()
    pixel = re.search(r'<img src="(https://crm\.example\.com/t/o/[^"]+)"', html).group(1)
    click = tracked_links(html)[0]
    from starlette.testclient import TestClient

    web = TestClient(crm.asgi(), follow_redirects=False)
    r = web.get(path_of(pixel), headers={"user-agent": "Mozilla/5.0"})  # Apple Mail Privacy Protection
    assert r.status_code == 200 and r.headers["content-type"] == "image/gif"
    r = web.get(path_of(pixel), headers={"user-agent": "Mozilla/5.0 (Windows NT 10.0; Win64; x64) GoogleImageProxy"})
    assert r.status_code == 200
    assert log.events == []  # machine opens are kept but not reported as a person's
    r = web.get(path_of(pixel), headers={"user-agent": BROWSER_UA})
    assert r.status_code == 200
    r = web.get(path_of(pixel), headers={"user-agent": BROWSER_UA})
    r = web.get(path_of(click), headers={"user-agent": BROWSER_UA})
    assert r.status_code == 302 and r.headers["location"] == "https://shop.example.com/item?id=7&ref=mail"
    reader = crm.records.list("lead", actor=SYSTEM, filter={"email": "reader@example.com"}).items[0]
    assert [(e.name, e.entity, e.record_id) for e in log.events] == [
        ("email.opened", "lead", reader["id"]), ("email.clicked", "lead", reader["id"]),
    ]
    assert log.events[1].data["url"] == "https://shop.example.com/item?id=7&ref=mail"
    from plugins_contrib.email_campaigns.results import campaign_results

    r = campaign_results(crm, crm.records.get("email_campaign", c["id"], actor=SYSTEM))
    assert (r["sent"], r["opened"], r["machine_opens"], r["clicked"]) == (1, 1, 1, 1)
    assert r["links"] == [{"url": "https://shop.example.com/item?id=7&ref=mail", "people": 1, "total": 1}]
    # Opens seconds after sending are scanners (the window is configurable).
    crm.config.raw["email_campaigns"]["machine_seconds"] = 3600
    web.get(path_of(pixel), headers={"user-agent": BROWSER_UA})
    events = crm.system_tables[T.EVENT]
    with crm.engine.connect() as conn:
        reasons = conn.execute(sa.select(events.c.flag_reason).where(events.c.type == "open")
                               .order_by(events.c.id)).scalars().all()
    assert reasons == ["Apple Mail Privacy Protection", "Gmail image proxy", None, None,
                       "within 3600 seconds of sending"]


def test_tampered_or_foreign_tokens_are_refused_and_change_nothing(env, sink):
    crm, org, log = env
    c, got = _sent_campaign(crm, org, sink, "victim@example.com")
    other, _ = _sent_campaign(crm, org, sink, "other@example.com")
    html = got["victim@example.com"].get_body(("html",)).get_content()
    click = path_of(tracked_links(html)[0])
    pixel = path_of(re.search(r'<img src="([^"]+)"', html).group(1))
    unsub = path_of(re.search(r"<(https://[^>]+)>", got["victim@example.com"]["List-Unsubscribe"]).group(1))
    from starlette.testclient import TestClient

    web = TestClient(crm.asgi(), follow_redirects=False)

    def tamper(path):
        head, last = path[:-6], path[-6:]
        return head + ("A" if last[0] != "A" else "B") + last[1:]

    assert web.get(tamper(click)).status_code == 400
    assert web.get(tamper(pixel)).status_code == 400
    assert web.get(tamper(unsub)).status_code == 400
    assert web.post(tamper(unsub), data={"List-Unsubscribe": "One-Click"}).status_code == 400
    # A token made for another purpose, or a validly signed click on a link of another campaign:
    # no redirect anywhere but the campaign's own links.
    send_id = int(links.read_ids(crm, "click", click.rsplit("/", 1)[1], 2)[0])
    assert web.get("/t/c/" + links.make_token(crm, "open", [send_id])).status_code == 400
    other_link = crm.system_tables[T.LINK]
    with crm.engine.connect() as conn:
        foreign = conn.execute(sa.select(other_link.c.id).where(other_link.c.campaign_id == other["id"])).scalar()
    r = web.get("/t/c/" + links.make_token(crm, "click", [send_id, foreign]))
    assert r.status_code == 400 and "location" not in r.headers
    assert web.get(click + "?url=https://evil.example/").headers["location"].startswith("https://shop.example.com/")
    assert not tracking.is_opted_out(crm, "victim@example.com")
    events = crm.system_tables[T.EVENT]
    with crm.engine.connect() as conn:
        assert conn.execute(sa.select(sa.func.count()).select_from(events)).scalar_one() == 1  # the real click


def test_one_click_unsubscribe_and_later_campaigns_skip_the_address(env, sink):
    crm, org, log = env
    c, got = _sent_campaign(crm, org, sink, "leaving@example.com", "staying@example.com")
    m = got["leaving@example.com"]
    url = re.search(r"<(https://[^>]+)>", m["List-Unsubscribe"]).group(1)
    from starlette.testclient import TestClient

    web = TestClient(crm.asgi(), follow_redirects=False)
    page = web.get(path_of(url), headers={"accept-language": "ja"})
    assert page.status_code == 200 and "配信を停止する" in page.text and f'action="{path_of(url)}"' in page.text
    assert "l***@example.com" in page.text and "leaving@example.com" not in page.text
    assert "set-cookie" not in page.headers
    assert not tracking.is_opted_out(crm, "leaving@example.com")  # a GET (a link scanner) changes nothing
    en = web.get(path_of(url) + "?lang=en")
    assert "Unsubscribe" in en.text
    # RFC 8058: the mail client POSTs List-Unsubscribe=One-Click, without cookies or CSRF token.
    r = web.post(path_of(url), content=b"List-Unsubscribe=One-Click",
                 headers={"content-type": "application/x-www-form-urlencoded"})
    assert r.status_code == 200 and "leaving" not in r.text
    assert tracking.is_opted_out(crm, "leaving@example.com")
    again = web.post(path_of(url), content=b"List-Unsubscribe=One-Click",
                     headers={"content-type": "application/x-www-form-urlencoded"})
    assert again.status_code == 200
    leaving = crm.records.list("lead", actor=SYSTEM, filter={"email": "leaving@example.com"}).items[0]
    assert leaving["do_not_email"] is True and leaving["email_opt_out_at"] is not None
    assert [e.name for e in log.events] == ["email.unsubscribed"]
    # Even with do_not_email cleared by hand, the global opt-out list keeps the address out.
    crm.records.update("lead", leaving["id"], {"do_not_email": False}, actor=admin(org))
    sink.messages.clear()
    later = campaign(crm, org, segment(crm, {}, name="All"), name="Later")
    campaigns.run_action(crm, later["id"], "schedule", admin(org))
    send_all(crm)
    assert {str(m["To"]) for m in sink.wait_for(1)} == {"staying@example.com"}
    from plugins_contrib.email_campaigns.results import campaign_results

    assert campaign_results(crm, crm.records.get("email_campaign", c["id"], actor=SYSTEM))["unsubscribed"] == 1


# ---------------------------------------------------------------------------------------------
# Bounces
# ---------------------------------------------------------------------------------------------
def postfix_dsn(recipient: str, status: str, action: str, message_id: str, send_id: str, diagnostic: str) -> bytes:
    """A bounce as Postfix writes it: multipart/report with the original message's headers."""
    return f"""Return-Path: <>
Date: Tue, 24 Nov 2026 10:15:02 +0900 (JST)
From: MAILER-DAEMON@mx.example.net (Mail Delivery System)
Subject: Undelivered Mail Returned to Sender
To: crm@example.com
Auto-Submitted: auto-replied
MIME-Version: 1.0
Content-Type: multipart/report; report-type=delivery-status;
\tboundary="4A1B2C3D.1700000000/mx.example.net"
Message-Id: <20261124011502.4A1B2C3D@mx.example.net>

This is a MIME-encapsulated message.

--4A1B2C3D.1700000000/mx.example.net
Content-Description: Notification
Content-Type: text/plain; charset=us-ascii

This is the mail system at host mx.example.net.

I'm sorry to have to inform you that your message could not
be delivered to one or more recipients.

--4A1B2C3D.1700000000/mx.example.net
Content-Description: Delivery report
Content-Type: message/delivery-status

Reporting-MTA: dns; mx.example.net
X-Postfix-Queue-ID: 4A1B2C3D
X-Postfix-Sender: rfc822; crm@example.com
Arrival-Date: Tue, 24 Nov 2026 10:15:01 +0900 (JST)

Final-Recipient: rfc822; {recipient}
Original-Recipient: rfc822;{recipient}
Action: {action}
Status: {status}
Remote-MTA: dns; mail.example.org
Diagnostic-Code: smtp; {diagnostic}

--4A1B2C3D.1700000000/mx.example.net
Content-Description: Undelivered Message Headers
Content-Type: text/rfc822-headers

From: Acme Sales <sales@example.com>
To: {recipient}
Subject: News for you
Message-ID: {message_id}
X-Crmkit-Send: {send_id}

--4A1B2C3D.1700000000/mx.example.net--
""".replace("\n", "\r\n").encode()


EXCHANGE_DSN = b"""From: postmaster@corp.example.co.jp
To: crm@example.com
Subject: Delivery Status Notification (Failure)
MIME-Version: 1.0
Content-Type: multipart/report; report-type=delivery-status; boundary="b1"

--b1
Content-Type: text/plain; charset="utf-8"

Delivery has failed to these recipients or groups.

--b1
Content-Type: message/delivery-status

Reporting-MTA: dns;EX01.corp.example.co.jp
Received-From-MTA: dns;EX02.corp.example.co.jp
Arrival-Date: Tue, 24 Nov 2026 01:15:00 +0000

Final-Recipient: rfc822;nobody@corp.example.co.jp
Action: failed
Status: 5.1.10
Diagnostic-Code: smtp;550 5.1.10 RESOLVER.ADR.RecipientNotFound; Recipient not found by SMTP address lookup

Final-Recipient: rfc822;full@corp.example.co.jp
Action: delayed
Status: 4.2.2
Diagnostic-Code: smtp;452 4.2.2 Mailbox full
Will-Retry-Until: Wed, 25 Nov 2026 01:15:00 +0000

--b1
Content-Type: message/rfc822

From: crm@example.com
To: nobody@corp.example.co.jp
Subject: Hello
Message-ID: <orig@example.com>

Hello
--b1--
"""


def test_dsn_parsing_of_real_formats():
    hard = bounces.parse_dsn(postfix_dsn("User@Example.org", "5.1.1", "failed", "<m1@example.com>", "12",
                                         "550 5.1.1 <user@example.org>: Recipient address rejected: User unknown"))
    assert hard == [bounces.Bounce("user@example.org", "5.1.1", "failed", True,
                                   "550 5.1.1 <user@example.org>: Recipient address rejected: User unknown",
                                   "<m1@example.com>", 12)]
    found = bounces.parse_dsn(EXCHANGE_DSN)
    assert [(b.recipient, b.status, b.hard, b.message_id) for b in found] == [
        ("nobody@corp.example.co.jp", "5.1.10", True, "<orig@example.com>"),
        ("full@corp.example.co.jp", "4.2.2", False, "<orig@example.com>"),
    ]
    with pytest.raises(bounces.NotADSN):
        bounces.parse_dsn(b"From: a@example.com\r\nSubject: out of office\r\n\r\nI am away.\r\n")
    mbox = b"From MAILER-DAEMON Tue Nov 24 10:15:02 2026\n" + EXCHANGE_DSN + b"\nFrom x Tue Nov 24 10:15:03 2026\n" + (
        b"Subject: not a bounce\n\nhello\n")
    results = list(bounces.parse_many(mbox))
    assert len(results[0][1]) == 2 and isinstance(results[1][1], bounces.NotADSN)


def test_bounces_from_the_command_line_mark_addresses_invalid(tmp_path, db_url, sink, cli, project):
    (project / "crmkit.yaml").write_text("plugins: [email_campaigns]\nbase_url: https://crm.example.com\n"
                                         "secret_key: campaign-tests-secret-key-0123456789\n")
    crm = make_crm(project, db_url)
    crm.config.smtp = sink.settings
    org = make_org(crm)
    c, got = _sent_campaign(crm, org, sink, "hard@example.org", "soft@example.org", "ok@example.org")
    hard_msg = got["hard@example.org"]
    dsn_file = tmp_path / "bounce.eml"
    dsn_file.write_bytes(postfix_dsn("hard@example.org", "5.1.1", "failed", hard_msg["Message-ID"],
                                     hard_msg["X-Crmkit-Send"], "550 5.1.1 User unknown"))
    r = cli("campaigns", "bounces", str(dsn_file))
    assert r.returncode == 0, r.stderr
    assert "hard bounces: 1" in r.stdout and "matched to campaign sends: 1" in r.stdout
    soft = postfix_dsn("soft@example.org", "4.2.2", "delayed", got["soft@example.org"]["Message-ID"],
                       got["soft@example.org"]["X-Crmkit-Send"], "452 4.2.2 Mailbox full")
    r = cli("campaigns", "bounces", "-", input=soft.decode())
    assert r.returncode == 0 and "soft bounces: 1" in r.stdout
    r = cli("campaigns", "bounces", "-", input="Subject: hi\n\nnot a bounce\n")
    assert r.returncode == 1 and "not a DSN: 1" in r.stdout
    assert bounces.is_invalid(crm, "hard@example.org") and not bounces.is_invalid(crm, "soft@example.org")
    from crmkit.core.mail import get_message
    from plugins_contrib.email_campaigns.results import campaign_results

    res = campaign_results(crm, crm.records.get("email_campaign", c["id"], actor=SYSTEM))
    assert (res["bounced"], res["hard_bounced"], res["sent"]) == (2, 1, 3)
    send = crm.system_tables[T.SEND]
    with crm.engine.connect() as conn:
        outbox_id = conn.execute(sa.select(send.c.outbox_id).where(send.c.email == "hard@example.org")).scalar()
    assert get_message(crm, outbox_id)["status"] == "bounced"
    # A hard-bounced address receives nothing from later campaigns; a soft one still does.
    sink.messages.clear()
    later = campaign(crm, org, segment(crm, {}, name="Everyone"), name="Later")
    campaigns.run_action(crm, later["id"], "schedule", admin(org))
    send_all(crm)
    assert {str(m["To"]) for m in sink.wait_for(2)} == {"soft@example.org", "ok@example.org"}
    crm.close()


def test_bounce_api_needs_a_token_with_campaign_rights(env, sink):
    crm, org, log = env
    c, got = _sent_campaign(crm, org, sink, "api-bounce@example.org")
    m = got["api-bounce@example.org"]
    dsn = postfix_dsn("api-bounce@example.org", "5.7.1", "failed", m["Message-ID"], m["X-Crmkit-Send"],
                      "550 5.7.1 Message rejected as spam")
    from starlette.testclient import TestClient

    web = TestClient(crm.asgi())
    assert web.post("/api/v1/email_campaigns/bounces", content=dsn).status_code == 401
    bob_token, _ = create_token(crm, "bob", "tests")
    r = web.post("/api/v1/email_campaigns/bounces", content=dsn, headers={"authorization": f"Bearer {bob_token}"})
    assert r.status_code == 403 and not bounces.is_invalid(crm, "api-bounce@example.org")
    admin_token, _ = create_token(crm, "admin", "tests")
    r = web.post("/api/v1/email_campaigns/bounces", content=dsn, headers={"authorization": f"Bearer {admin_token}"})
    assert r.status_code == 200 and r.json() == {"hard": 1, "soft": 0, "matched": 1, "not_dsn": 0}
    assert bounces.is_invalid(crm, "api-bounce@example.org")
    assert [e.name for e in log.events] == ["email.bounced"] and log.events[0].data["hard"] is True


# ---------------------------------------------------------------------------------------------
# Results, admin pages, conversion
# ---------------------------------------------------------------------------------------------
def test_results_page_shows_revenue_and_roi_through_the_marketing_activity(env, sink):
    crm, org, _log = env
    activity = crm.records.create("marketing_activity", {"name": "Autumn mail", "type": "email", "cost": 100000},
                                  actor=SYSTEM)
    c, got = _sent_campaign(crm, org, sink, "buyer@example.com")
    crm.records.update("email_campaign", c["id"], {"marketing_activity": activity["id"]}, actor=admin(org))
    for i in range(2):
        lead(crm, last_name=f"Web{i}", marketing_activity=activity["id"])
    account = crm.records.create("account", {"name": "Buyer KK"}, actor=SYSTEM)
    stage = org["stages"][0]["id"]
    crm.records.create("deal", {"name": "Big", "account": account["id"], "stage": stage, "amount": 300000,
                                "status": "won", "close_date": "2026-11-30", "marketing_activity": activity["id"]},
                       actor=SYSTEM)
    crm.records.create("deal", {"name": "Open", "account": account["id"], "stage": stage, "amount": 999999,
                                "marketing_activity": activity["id"]}, actor=SYSTEM)
    web = login(crm, "admin", base_url=BASE)
    page = web.get(f"/admin/email_campaign/{c['id']}/results")
    assert page.status_code == 200
    metric = dict(re.findall(r'data-metric="(\w+)">([^<]*)<', page.text))
    assert metric["sent"] == "1" and metric["recipients"] == "1"
    assert metric["leads_created"] == "2" and metric["won_deals"] == "1"
    assert metric["won_revenue"] == "¥300,000" and metric["cost"] == "¥100,000" and metric["roi"] == "200.0%"
    detail = web.get(f"/admin/email_campaign/{c['id']}")
    assert f"/admin/email_campaign/{c['id']}/results" in detail.text
    ja = login(crm, "mia", base_url=BASE)
    assert "配信結果" in ja.get(f"/admin/email_campaign/{c['id']}/results").text
    # A sales rep may read results but not manage the suppression lists.
    rep = login(crm, "alice", base_url=BASE)
    assert rep.get(f"/admin/email_campaign/{c['id']}/results").status_code == 200
    assert rep.get("/admin/email-suppression").status_code == 403
    r = rep.post(f"/admin/email_campaign/{c['id']}/do/cancel", data={"_csrf": token(rep)})
    assert r.status_code == 403


def test_admin_buttons_and_suppression_page(env, sink):
    crm, org, _log = env
    lead(crm, email="button@example.com")
    c = campaign(crm, org, segment(crm, {}))
    web = login(crm, "admin", base_url=BASE)
    page = web.get(f"/admin/email_campaign/{c['id']}")
    assert f'action="/admin/email_campaign/{c["id"]}/do/schedule"' in page.text
    assert web.post(f"/admin/email_campaign/{c['id']}/do/schedule", data={}).status_code == 403  # no CSRF token
    r = web.post(f"/admin/email_campaign/{c['id']}/do/schedule", data={"_csrf": token(web)})
    assert r.status_code == 303
    assert crm.records.get("email_campaign", c["id"], actor=SYSTEM)["status"] == "scheduled"
    page = web.get("/admin/email-suppression")
    assert page.status_code == 200
    r = web.post("/admin/email-suppression", data={"_csrf": token(web), "op": "add", "email": "not-an-address"})
    assert r.status_code == 422
    r = web.post("/admin/email-suppression", data={"_csrf": token(web), "op": "add", "email": "Phone@Example.com"})
    assert r.status_code == 303 and tracking.is_opted_out(crm, "phone@example.com")
    assert "phone@example.com" in web.get("/admin/email-suppression?q=phone").text
    web.post("/admin/email-suppression", data={"_csrf": token(web), "op": "remove", "email": "phone@example.com"})
    assert not tracking.is_opted_out(crm, "phone@example.com")


def test_conversion_moves_the_campaign_history_to_the_contact(env, sink):
    crm, org, _log = env
    c, got = _sent_campaign(crm, org, sink, "convert@example.com")
    the_lead = crm.records.list("lead", actor=SYSTEM, filter={"email": "convert@example.com"}).items[0]
    crm.records.update("lead", the_lead["id"], {"company": "Convert KK"}, actor=SYSTEM)
    secret, _ = create_token(crm, "admin", "tests")
    from starlette.testclient import TestClient

    api = TestClient(crm.asgi(), headers={"authorization": f"Bearer {secret}"})
    r = api.post(f"/api/v1/lead/{the_lead['id']}/convert", json={})
    assert r.status_code == 200, r.text
    contact_id = r.json()["contact"]["id"]
    from plugins_contrib.email_campaigns.results import record_history

    assert record_history(crm, "lead", the_lead["id"]) == []
    history = record_history(crm, "contact", contact_id)
    assert [h["campaign_id"] for h in history] == [c["id"]]
    # Opens after the conversion are the contact's.
    html = got["convert@example.com"].get_body(("html",)).get_content()
    pixel = re.search(r'<img src="([^"]+)"', html).group(1)
    log = env[2]
    TestClient(crm.asgi()).get(path_of(pixel), headers={"user-agent": BROWSER_UA})
    assert (log.events[-1].name, log.events[-1].entity, log.events[-1].record_id) == (
        "email.opened", "contact", contact_id)
    page = login(crm, "admin", base_url=BASE).get(f"/admin/contact/{contact_id}")
    assert "Autumn launch" in page.text or c["name"] in page.text


def docs_blocks(kind: str) -> list[str]:
    text = (Path(__file__).parent.parent / "docs" / "plugins" / "email_campaigns.md").read_text()
    return re.findall(rf"```{kind}\n(.*?)```", text, re.DOTALL)


def test_docs_segment_example_is_a_valid_condition(env):
    crm, _org, _log = env
    (condition,) = docs_blocks("json")
    seg = segment(crm, json.loads(condition), name="From the docs")
    assert seg["condition"]["prefecture"] == "東京都"


def test_merge_field_hook_and_should_send_hook(tmp_path, db_url, sink):
    """The hook example of docs/plugins/email_campaigns.md, run as written."""
    (example,) = docs_blocks("python")
    namespace: dict = {}
    exec(example, namespace)
    Coupons = namespace["Coupons"]  # noqa: N806

    crm = make_crm(tmp_path, db_url, enable=["email_campaigns"], plugins=[Coupons()])
    crm.config.smtp, crm.config.base_url = sink.settings, BASE
    org = make_org(crm)
    warm = lead(crm, email="warm@example.com", rating="warm")
    lead(crm, email="cold@example.com", rating="cold")
    c = campaign(crm, org, segment(crm, {}), text_en="Your code: {{ coupon }}", html_en="")
    campaigns.run_action(crm, c["id"], "schedule", admin(org))
    send_all(crm)
    got = by_recipient(sink.wait_for(1))
    assert set(got) == {"warm@example.com"}
    assert f"Your code: CPN-{warm['id']:04d}" in got["warm@example.com"].get_body(("plain",)).get_content()
    assert not got["warm@example.com"].is_multipart()  # a text-only template sends a text-only message
    from plugins_contrib.email_campaigns.results import campaign_results

    res = campaign_results(crm, crm.records.get("email_campaign", c["id"], actor=SYSTEM))
    assert res["skipped"] == 1 and res["skip_reasons"][0]["reason"].startswith("refused by plugin Coupons")
    crm.close()


def test_decimal_results_without_activity(env, sink):
    crm, org, _log = env
    c, _got = _sent_campaign(crm, org, sink, "plain@example.com")
    from plugins_contrib.email_campaigns.results import campaign_results

    r = campaign_results(crm, crm.records.get("email_campaign", c["id"], actor=SYSTEM))
    assert r["won_revenue"] == Decimal(0) and r["roi"] is None and r["open_rate"] == Decimal("0.0")


@pytest.mark.postgres_only
def test_four_worker_processes_one_killed_mid_run_every_message_arrives_once(tmp_path, pg_url, sink):
    """The issue's "done means": on PostgreSQL, 4 `crmkit worker` processes send a 2,000-recipient
    campaign and 500 reminders while one of them is SIGKILLed mid-run; once the survivors (and the
    dead worker's expired leases) are through, every message has arrived exactly once."""
    import os
    import signal
    import subprocess
    import sys
    import time

    from crmkit.core.db import write_connection

    project = tmp_path / "proj"
    project.mkdir()
    (project / "crmkit.yaml").write_text(
        "plugins: [email_campaigns, reminders]\n"
        f"base_url: {BASE}\n"
        "secret_key: campaign-tests-secret-key-0123456789\n"
        f"smtp: {{host: 127.0.0.1, port: {sink.port}, sender: crm@example.com, timeout: 10}}\n"
        "reminders: {channels: [email]}\n"
        "jobs: {lease_seconds: 5, poll_seconds: 0.2}\n"
    )
    crm = make_crm(project, pg_url)
    org = make_org(crm)
    recipients, reminders = 2000, 500
    alice = org["users"]["alice"]
    crm.records.update("user", alice["id"], {"email": "alice@example.com"}, actor=SYSTEM)
    due = dt.datetime.now(dt.UTC).replace(microsecond=0) + dt.timedelta(days=10)
    with crm.records.transaction(actor=SYSTEM) as tx:
        tx.create_many("lead", [{"last_name": f"K{i}", "email": f"k{i}@example.com"} for i in range(recipients)])
        for i in range(reminders):
            tx.create("activity", {"subject": f"Task {i}", "type": "task", "due_at": due,
                                   "reminder_at": due - dt.timedelta(hours=1), "assignee": alice["id"]})
    jt = jobs.table(crm)
    with write_connection(crm.engine) as conn, conn.begin():  # the reminders fall due now, with the campaign
        assert conn.execute(sa.update(jt).where(jt.c.name == "reminders.fire", jt.c.key.like("%:at:%"))
                            .values(run_at=jobs.utcnow())).rowcount == reminders
    c = campaign(crm, org, segment(crm, {}))
    campaigns.run_action(crm, c["id"], "schedule", admin(org))
    total = recipients + reminders
    env = {**os.environ, "CRMKIT_DATABASE_URL": pg_url, "CRMKIT_PROJECT": str(project)}
    workers = [subprocess.Popen([sys.executable, "-m", "crmkit.cli", "worker", "--project", str(project)],
                                env=env, cwd=project, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
               for _ in range(4)]
    try:
        deadline = time.monotonic() + 300
        while len(sink.messages) < total // 4 and time.monotonic() < deadline:
            time.sleep(0.05)
        workers[0].send_signal(signal.SIGKILL)  # mid-run: it may hold claimed jobs and a message mid-send
        # The survivors reclaim whatever the killed worker held once its 5 s leases expire. (Every
        # message recorded sent also ends the wait: see assert_each_arrived_once for the one that
        # may never arrive.)
        outbox = mail.outbox_table(crm)
        while len(sink.messages) < total and time.monotonic() < deadline:
            with crm.engine.connect() as conn:
                if conn.execute(sa.select(sa.func.count()).where(outbox.c.status == "sent")).scalar_one() == total:
                    break
            time.sleep(0.1)
    finally:
        for w in workers[1:]:
            w.send_signal(signal.SIGTERM)
        for w in workers:
            w.wait(30)
    send_all(crm, now=dt.datetime.now(dt.UTC) + dt.timedelta(minutes=10))  # a safety net; normally a no-op
    got = sink.wait_for(total)
    assert_each_arrived_once(crm, got, workers[0].pid)
    lost = total - len(got)  # 0, or the killed worker's message between its "sent" commit and final dot
    campaign_to = [str(m["To"]) for m in got if m["X-Crmkit-Campaign"]]
    assert len(set(campaign_to)) == len(campaign_to) >= recipients - lost
    reminder_subjects = [str(m["Subject"]) for m in got if not m["X-Crmkit-Campaign"]]
    assert set(reminder_subjects) <= {f"Reminder: Task {i}" for i in range(reminders)}
    assert len(set(reminder_subjects)) == len(reminder_subjects) >= reminders - lost
    assert crm.records.get("email_campaign", c["id"], actor=SYSTEM)["status"] == "sent"
    crm.close()


def test_link_tokens_are_the_ones_itsdangerous_makes_and_reads():
    """``links.make_token`` signs with a cached key but makes exactly itsdangerous's tokens, so links
    in messages already sent keep working and altered tokens are refused."""
    from types import SimpleNamespace

    from itsdangerous import URLSafeSerializer

    crm = SimpleNamespace(secret_key="campaign-tests-secret-key-0123456789")
    for purpose, payload in [("open", [7]), ("click", [7, 123456]), ("unsubscribe", {"s": 42}),
                             ("unsubscribe", {"e": "yamada@example.jp"})]:
        token = links.make_token(crm, purpose, payload)
        assert token == URLSafeSerializer(crm.secret_key, salt=links.SALTS[purpose]).dumps(payload)
        assert links.read_token(crm, purpose, token) == payload
        with pytest.raises(links.BadToken):
            links.read_token(crm, "click" if purpose != "click" else "open", token)
        with pytest.raises(links.BadToken):
            links.read_token(SimpleNamespace(secret_key="another-secret-key-0123456789abcd"), purpose, token)
