"""Web-to-lead forms (plugins_contrib/web_forms): public pages from YAML, signed form token, honeypot,
rate limit in the database, validation with input kept, lead through RecordStore, auto-reply by SMTP."""

from __future__ import annotations

import re
import textwrap

import pytest
import sqlalchemy as sa

from crmkit import CRM
from crmkit.core import jobs
from crmkit.core.actors import SYSTEM
from crmkit.core.loader import SchemaError
from crmkit.hookspecs import hookimpl
from plugins_contrib.web_forms.submit import SUBMISSIONS
from tests.mailserver import SmtpSink
from tests.support import TestClient, login, make_crm, make_org

BASE = "https://crm.example.com"

CONTACT_FORM = """\
title: {en: Contact us, ja: お問い合わせ}
intro: {en: We reply within one business day., ja: 1営業日以内にご返信します。}
entity: lead
fields:
  - {name: last_name, required: true}
  - {name: first_name}
  - {name: company, required: true}
  - {name: email, required: true}
  - {name: phone}
  - {name: industry}
  - {name: description, label: {en: Your message, ja: お問い合わせ内容}}
values: {status: new}
consent: {label: {en: I agree to the privacy policy, ja: 個人情報の取り扱いに同意します}, url: /privacy}
auto_reply:
  subject:
    en: "Thank you, {{ recipient.last_name }}"
    ja: "{{ recipient.last_name }}様 お問い合わせありがとうございます"
  text:
    en: "Dear {{ recipient.first_name }} {{ recipient.last_name }},\\nwe received your message ({{ form.title }})."
    ja: "{{ recipient.last_name }}様\\n{{ form.title }}を受け付けました。"
  reply_to: sales@example.com
thank_you:
  title: {en: Thanks!, ja: 送信完了}
  message: {en: We will be in touch., ja: 担当者よりご連絡いたします。}
rate_limit: {per_ip: 3, window_seconds: 600}
"""


class Seen:
    """Records the leads other plugins (scoring, assignment) would see being saved."""

    def __init__(self):
        self.saved = []

    @hookimpl
    def before_save(self, crm, entity, record, old, conn, actor):
        if entity.name == "lead" and old is None and record.get("company") == "Assign KK":
            record["rating"] = "hot"  # as an assignment/scoring rule would

    @hookimpl
    def track_event(self, crm, event):
        if event.name == "record.created" and event.entity == "lead":
            self.saved.append(event)


def write_form(project, name, text):
    (project / "forms").mkdir(exist_ok=True)
    (project / "forms" / f"{name}.yaml").write_text(textwrap.dedent(text))


@pytest.fixture
def sink():
    with SmtpSink() as s:
        yield s


@pytest.fixture
def site(tmp_path, db_url, sink):
    project = tmp_path / "proj"
    project.mkdir()
    write_form(project, "contact", CONTACT_FORM)
    write_form(project, "event", """\
        form: event-2026
        title: Seminar
        fields: [{name: last_name, required: true}, {name: email, required: true}]
        values: {source: event}
        thank_you: {redirect: /seminar/thanks.html}
    """)
    seen = Seen()
    crm = make_crm(project, db_url, enable=["web_forms"], plugins=[seen])
    crm.config.smtp, crm.config.base_url = sink.settings, BASE
    crm.config.secret_key = "web-forms-tests-secret-key-0123456789"
    make_org(crm)
    client = TestClient(crm.asgi(), base_url=BASE, follow_redirects=False)
    yield crm, client, seen
    crm.close()


def form_token(html: str) -> str:
    return re.search(r'name="_token" value="([^"]+)"', html).group(1)


def good_data(page_html: str, **extra) -> dict:
    data = {"_token": form_token(page_html), "_lang": re.search(r'name="_lang" value="(\w+)"', page_html).group(1),
            "last_name": "山田", "first_name": "花子", "company": "山田商事株式会社", "email": "hanako@example.jp",
            "phone": "03-1234-5678", "industry": "retail", "description": "<script>alert(1)</script> 見積希望",
            "_consent": "1"}
    data.update(extra)
    return data


def leads(crm):
    return crm.records.list("lead", actor=SYSTEM, sort="id").items


def test_form_page_is_public_bilingual_and_accessible(site):
    crm, client, _seen = site
    page = client.get("/forms/contact", headers={"accept-language": "ja,en;q=0.5"})
    assert page.status_code == 200
    assert "set-cookie" not in page.headers  # no session for anonymous visitors
    assert "<h1>お問い合わせ</h1>" in page.text and "お問い合わせ内容" in page.text and 'lang="ja"' in page.text
    for name in ("last_name", "company", "email", "description", "industry"):
        assert f'<label for="f-{name}">' in page.text
    assert 'name="website_url_2"' in page.text and 'aria-hidden="true"' in page.text  # the honeypot
    assert 'href="/forms/static/web_forms.css"' in page.text and "<style" not in page.text
    assert client.get("/forms/static/web_forms.css").status_code == 200
    en = client.get("/forms/contact?lang=en")
    assert "<h1>Contact us</h1>" in en.text and "Your message" in en.text
    assert client.get("/forms/nope").status_code == 404


def test_submission_creates_a_web_lead_and_sends_the_auto_reply_in_its_language(site, sink):
    crm, client, seen = site
    page = client.get("/forms/contact?lang=ja")
    r = client.post("/forms/contact", data=good_data(page.text, company="Assign KK"))
    assert r.status_code == 303 and r.headers["location"] == "/forms/contact/thanks?lang=ja"
    thanks = client.get(r.headers["location"])
    assert "送信完了" in thanks.text and "担当者よりご連絡いたします。" in thanks.text
    (lead,) = leads(crm)
    assert (lead["last_name"], lead["email"], lead["source"], lead["language"], lead["status"]) == (
        "山田", "hanako@example.jp", "web", "ja", "new")
    assert lead["rating"] == "hot"  # before_save hooks (assignment, scoring) ran
    assert lead["description"] == "<script>alert(1)</script> 見積希望"
    assert lead["owner"] is None
    assert [e.source for e in seen.saved] == ["web"]
    jobs.run_once(crm)
    (m,) = sink.wait_for(1)
    assert m["To"] == "hanako@example.jp" and m["Subject"] == "山田様 お問い合わせありがとうございます"
    assert m["Reply-To"] == "sales@example.com" and m["Auto-Submitted"] == "auto-replied"
    assert "お問い合わせを受け付けました。" in m.get_content() and m.get_content().startswith("山田様")
    # English page, English reply.
    page = client.get("/forms/contact?lang=en")
    client.post("/forms/contact", data=good_data(page.text, email="ann@example.com", last_name="Smith",
                                                 first_name="Ann"))
    jobs.run_once(crm)
    msgs = sink.wait_for(2)
    assert msgs[1]["Subject"] == "Thank you, Smith" and "Dear Ann Smith," in msgs[1].get_content()
    assert leads(crm)[1]["language"] == "en"


def test_invalid_input_keeps_the_values_and_names_each_field(site):
    crm, client, _seen = site
    page = client.get("/forms/contact?lang=en")
    data = good_data(page.text, last_name="", email="not-an-address", company='"Quote" & <Co>')
    data.pop("_consent")
    r = client.post("/forms/contact", data=data)
    assert r.status_code == 422
    errors = dict(re.findall(r'<p class="error" id="[^"]+" data-field="(\w+)">([^<]+)</p>', r.text))
    assert errors["last_name"] == "This field is required." and "_consent" in errors
    assert 'value="&#34;Quote&#34; &amp; &lt;Co&gt;"' in r.text  # kept, escaped
    assert 'aria-invalid="true"' in r.text and "alert(1)" in r.text and "<script>alert" not in r.text
    data = good_data(page.text, email="not-an-address")
    r = client.post("/forms/contact", data=data)
    assert r.status_code == 422
    assert re.search(r'data-field="email">[^<]*(valid|email)', r.text)
    assert leads(crm) == []
    ja = client.post("/forms/contact", data={**good_data(client.get("/forms/contact?lang=ja").text), "company": ""})
    assert ja.status_code == 422 and "入力してください。" in ja.text


def test_forged_or_missing_token_and_honeypot_create_nothing(site):
    crm, client, _seen = site
    page = client.get("/forms/contact?lang=en")
    data = good_data(page.text)
    r = client.post("/forms/contact", data={**data, "_token": data["_token"][:-2] + "xx"})
    assert r.status_code == 400 and "expired" in r.text and 'value="山田商事株式会社"' in r.text
    r = client.post("/forms/contact", data={k: v for k, v in data.items() if k != "_token"})
    assert r.status_code == 400
    event_token = form_token(client.get("/forms/event-2026").text)
    assert client.post("/forms/contact", data={**data, "_token": event_token}).status_code == 400
    r = client.post("/forms/contact", data=data, files={"upload": ("x.txt", b"hello", "text/plain")})
    assert r.status_code == 400
    form_type = {"content-type": "application/x-www-form-urlencoded"}
    r = client.post("/forms/contact", content=b"x" * 70000, headers=form_type)
    assert r.status_code == 413
    r = client.post("/forms/contact", data={**data, "website_url_2": "http://spam.example/"})
    assert r.status_code == 303  # the bot sees success ...
    assert leads(crm) == []  # ... and nothing was created
    t = crm.system_tables[SUBMISSIONS]
    with crm.engine.connect() as conn:
        assert conn.execute(sa.select(t.c.outcome)).scalars().all() == ["spam"]


def test_rate_limit_per_client_is_kept_in_the_database(site, tmp_path, db_url):
    crm, client, _seen = site
    page = client.get("/forms/contact?lang=en")
    for i in range(3):
        r = client.post("/forms/contact", data=good_data(page.text, email=f"r{i}@example.com"))
        assert r.status_code == 303
    # A second process (another CRM object on the same database) sees the same count.
    other = CRM(crm.config.project_dir, database_url=db_url, enable=["web_forms"], entry_points=False)
    other.config.secret_key, other.config.base_url = crm.config.secret_key, BASE
    other_client = TestClient(other.asgi(), base_url=BASE, follow_redirects=False)
    r = other_client.post("/forms/contact", data=good_data(page.text, email="r4@example.com"))
    assert r.status_code == 429 and "Too many submissions" in r.text
    assert len(leads(crm)) == 3
    other.close()
    t = crm.system_tables[SUBMISSIONS]
    with crm.engine.connect() as conn:
        clients = set(conn.execute(sa.select(t.c.client)).scalars())
    assert len(clients) == 1 and "testclient" not in next(iter(clients))  # stored hashed


def test_redirect_goes_to_the_configured_same_site_url(site):
    crm, client, _seen = site
    page = client.get("/forms/event-2026")
    r = client.post("/forms/event-2026", data={"_token": form_token(page.text), "last_name": "Ito",
                                                "email": "ito@example.com"})
    assert r.status_code == 303 and r.headers["location"] == "/seminar/thanks.html"
    assert leads(crm)[0]["source"] == "event"


@pytest.mark.parametrize(
    ("text", "message", "line"),
    [
        ("fields: [{name: last_name}, {name: salary}]\n", "lead has no field 'salary'", 1),
        ("fields:\n  - {name: last_name}\n  - {name: converted_at}\n", "cannot be filled in on a web form", 3),
        ("fields: [{name: last_name}]\nthank_you:\n  redirect: https://evil.example/phish\n", "redirect only", 3),
        ("fields: [{name: last_name}]\nauto_reply:\n  subject: 'Hi {{ recipient.nmae }}'\n  text: x\n",
         "recipient.nmae", 3),
        ("fields: [{name: last_name}]\nentity: invoice\n", "unknown entity 'invoice'", 2),
    ],
)
def test_bad_form_files_are_reported_with_file_and_line(tmp_path, text, message, line):
    project = tmp_path / "p"
    project.mkdir()
    write_form(project, "broken", text)
    with pytest.raises(SchemaError) as err:
        CRM(project, database_url="sqlite://", enable=["web_forms"], entry_points=False)
    problems = [str(p) for p in err.value.problems]
    assert any("broken.yaml" in p and f":{line}:" in p and message in p for p in problems), problems


def test_admin_overview_lists_the_forms(site):
    crm, client, _seen = site
    page = client.get("/forms/contact?lang=en")
    client.post("/forms/contact", data=good_data(page.text))
    web = login(crm, "admin", base_url=BASE)
    overview = web.get("/admin/web-forms")
    assert overview.status_code == 200
    assert f"{BASE}/forms/contact" in overview.text and f"{BASE}/forms/event-2026" in overview.text
    assert login(crm, "alice", base_url=BASE).get("/admin/web-forms").status_code == 403


def test_the_docs_example_form_works_as_written(tmp_path, db_url, sink):
    from pathlib import Path

    doc = (Path(__file__).parent.parent / "docs" / "plugins" / "web_forms.md").read_text()
    example = re.findall(r"```yaml\n(.*?)```", doc, re.DOTALL)[1]
    project = tmp_path / "docs-project"
    project.mkdir()
    write_form(project, "contact", example)
    crm = make_crm(project, db_url, enable=["web_forms"])
    crm.config.smtp, crm.config.base_url = sink.settings, BASE
    client = TestClient(crm.asgi(), base_url=BASE, follow_redirects=False)
    page = client.get("/forms/contact?lang=ja")
    r = client.post("/forms/contact", data=good_data(page.text))
    assert r.status_code == 303
    jobs.run_once(crm)
    (m,) = sink.wait_for(1)
    assert m["Subject"] == "山田様 お問い合わせありがとうございます" and m["Reply-To"] == "sales@example.co.jp"
    crm.close()
