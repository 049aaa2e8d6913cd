"""Business cards: upload images to a lead or contact, choose who enters the data (a task for them),
thumbnails, storage in the configured directory, access only for users who may read the record,
bad uploads refused without leftovers; on SQLite and PostgreSQL."""

from __future__ import annotations

import io
import re
from pathlib import Path

import pytest
import sqlalchemy as sa
from PIL import Image

from crmkit import hookimpl
from crmkit.core.actors import SYSTEM
from crmkit.plugins.business_cards import TABLE, add_cards, images_of, prepare_image, storage_dir
from crmkit.plugins.lead_conversion import convert_lead
from tests.support import XSS, actor_of, csrf_of, login, make_crm, make_org, owned


@pytest.fixture
def crm(tmp_path, db_url):
    (tmp_path / "crmkit.yaml").write_text(
        "business_cards:\n  storage_dir: card-images\n  max_size_mb: 1\n  thumbnail_px: 100\n", encoding="utf-8")
    crm = make_crm(tmp_path, db_url)
    yield crm
    crm.close()


def jpeg(width=600, height=350, color=(200, 220, 240), exif_orientation=None) -> bytes:
    img = Image.new("RGB", (width, height), color)
    out = io.BytesIO()
    if exif_orientation:
        exif = Image.Exif()
        exif[0x0112] = exif_orientation  # Orientation
        exif[0x010F] = "PhoneMaker"  # Make: metadata that must not survive
        img.save(out, "JPEG", exif=exif)
    else:
        img.save(out, "JPEG")
    return out.getvalue()


def png(width=300, height=200) -> bytes:
    out = io.BytesIO()
    Image.new("RGBA", (width, height), (10, 20, 30, 128)).save(out, "PNG")
    return out.getvalue()


def lead_of(crm, org, owner="alice", **values):
    return crm.records.create("lead", {"last_name": "名刺", "first_name": "太郎", "company": "名刺交換株式会社",
                                       **values, **owned(org, owner)}, actor=SYSTEM)


def upload(client, entity, record_id, files, enter_by=None, csrf=True):
    data = {}
    if csrf:
        data["_csrf"] = csrf_of(client.get(f"/admin/{entity}/{record_id}").text)
    if enter_by is not None:
        data["enter_by"] = str(enter_by)
    return client.post(f"/admin/{entity}/{record_id}/business-cards", data=data,
                       files=[("image", (name, blob, "image/jpeg")) for name, blob in files])


def files_under(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file()) if root.exists() else []


def card_tasks(crm):
    return crm.records.list("activity", actor=SYSTEM, filter={"type": "task"}).items


# ---------------------------------------------------------------------------------------------
# Upload
# ---------------------------------------------------------------------------------------------
def test_upload_cards_and_give_the_data_entry_task_to_a_colleague(crm, org):
    lead = lead_of(crm, org)
    client = login(crm, "alice")
    page = client.get(f"/admin/lead/{lead['id']}")
    assert "Business cards" in page.text and 'name="enter_by"' in page.text
    assert re.search(rf'<option value="{org["users"]["alice"]["id"]}" selected>Alice \(Me\)', page.text)
    response = upload(client, "lead", lead["id"], [("front.jpg", jpeg(exif_orientation=6)), ("back.png", png())],
                      enter_by=org["users"]["mia"]["id"])
    assert response.status_code == 303 and response.headers["location"] == f"/admin/lead/{lead['id']}"
    assert "2 card image(s) uploaded; Mia has a data-entry task." in client.get(response.headers["location"]).text
    images = images_of(crm, "lead", lead["id"])
    assert [i["original_name"] for i in images] == ["front.jpg", "back.png"]
    assert images[0]["uploaded_by"] == org["users"]["alice"]["id"]
    # stored in the configured directory (relative to the project), with thumbnails
    root = storage_dir(crm)
    assert root == crm.config.project_dir / "card-images"
    assert len(files_under(root)) == 4
    with Image.open(root / images[0]["path"]) as stored:
        assert stored.size == (350, 600)  # turned upright by its EXIF orientation
        assert not stored.getexif()  # and the phone's metadata is gone
    with Image.open(root / images[0]["thumb_path"]) as thumb:
        assert max(thumb.size) <= 100
    assert images[1]["content_type"] == "image/png"
    # mia's task: in her language, linked to the lead
    [task] = card_tasks(crm)
    assert task["assignee"] == org["users"]["mia"]["id"] and task["lead"] == lead["id"]
    assert task["subject"] == "名刺の情報を入力: 名刺 太郎" and task["status"] == "planned"
    assert all(i["task"] == task["id"] for i in images)
    assert "名刺の情報を入力" in login(crm, "mia").get("/admin/agenda").text


def test_enter_by_defaults_to_me_on_a_contact(crm, org):
    account = crm.records.create("account", {"name": "取引先", **owned(org, "alice")}, actor=SYSTEM)
    contact = crm.records.create("contact", {"account": account["id"], "last_name": "佐藤", **owned(org, "alice")},
                                 actor=SYSTEM)
    out = add_cards(crm, "contact", contact["id"], [("card.jpg", jpeg())], actor_of(org["users"]["alice"]), None)
    task = out["task"]
    assert task["assignee"] == org["users"]["alice"]["id"] and task["subject"] == "Enter business card data: 佐藤"
    assert task["contact"] == contact["id"] and task["account"] == account["id"]


def test_the_chosen_person_must_be_able_to_edit_the_record(crm, org):
    lead = lead_of(crm, org)
    client = login(crm, "alice")
    response = upload(client, "lead", lead["id"], [("card.jpg", jpeg())], enter_by=org["users"]["bob"]["id"])
    assert "Bob may not edit this lead" in client.get(response.headers["location"]).text
    response = upload(client, "lead", lead["id"], [("card.jpg", jpeg())], enter_by="bob")
    assert "Choose a user from the list." in client.get(response.headers["location"]).text
    assert images_of(crm, "lead", lead["id"]) == [] and card_tasks(crm) == []
    assert files_under(storage_dir(crm)) == []


@pytest.mark.parametrize("name, blob, message", [
    ("notes.jpg", b"this is not an image at all", "is not an image"),
    ("evil.svg", b'<svg xmlns="http://www.w3.org/2000/svg"><script>alert(1)</script></svg>', "is not an image"),
    ("doc.bmp", None, "BMP images are not supported"),
    ("huge.jpg", None, "is larger than 1 MB"),
])
def test_bad_files_are_refused_and_leave_nothing(crm, org, name, blob, message):
    if name == "doc.bmp":
        out = io.BytesIO()
        Image.new("RGB", (10, 10)).save(out, "BMP")
        blob = out.getvalue()
    if name == "huge.jpg":
        blob = jpeg() + b"\0" * (1024 * 1024 + 1)
    lead = lead_of(crm, org)
    client = login(crm, "alice")
    response = upload(client, "lead", lead["id"], [("good.jpg", jpeg()), (name, blob)])
    assert response.status_code == 303
    assert message in client.get(response.headers["location"]).text
    assert images_of(crm, "lead", lead["id"]) == [] and card_tasks(crm) == []
    assert files_under(storage_dir(crm)) == []


def test_no_file_and_no_csrf_are_refused(crm, org):
    lead = lead_of(crm, org)
    client = login(crm, "alice")
    response = upload(client, "lead", lead["id"], [])
    assert "choose at least one image" in client.get(response.headers["location"]).text
    assert upload(client, "lead", lead["id"], [("a.jpg", jpeg())], csrf=False).status_code == 403
    assert images_of(crm, "lead", lead["id"]) == []


def test_a_failing_task_leaves_no_image_row_or_file(tmp_path, db_url):
    class NoTasks:
        __name__ = "no-tasks"

        @hookimpl
        def validate_record(self, crm, entity, record, old, conn, actor):
            if entity.name == "activity":
                return {"subject": "tasks are frozen this week"}

    crm = make_crm(tmp_path, db_url, plugins=[NoTasks()])
    org = make_org(crm)
    lead = lead_of(crm, org)
    client = login(crm, "alice")
    response = upload(client, "lead", lead["id"], [("card.jpg", jpeg())])
    assert "tasks are frozen this week" in client.get(response.headers["location"]).text
    with crm.engine.connect() as conn:
        assert conn.execute(sa.select(sa.func.count()).select_from(crm.system_tables[TABLE])).scalar_one() == 0
    assert files_under(storage_dir(crm)) == []
    crm.close()


def test_prepare_image_limits():
    with pytest.raises(ValueError, match="too many pixels"):
        out = io.BytesIO()
        Image.new("1", (9000, 9000)).save(out, "PNG")
        prepare_image(out.getvalue(), 50 * 1024 * 1024, 100)
    assert prepare_image(jpeg(), 1024 * 1024, 100)["suffix"] == ".jpg"


# ---------------------------------------------------------------------------------------------
# Access, conversion, deletion
# ---------------------------------------------------------------------------------------------
def test_images_are_served_only_to_users_who_may_read_the_record(crm, org):
    lead = lead_of(crm, org, last_name=XSS)
    out = add_cards(crm, "lead", lead["id"], [(XSS + ".jpg", jpeg())], actor_of(org["users"]["alice"]), None)
    image_id = out["images"][0]["id"]
    alice = login(crm, "alice")
    full = alice.get(f"/admin/business-cards/{image_id}/image")
    assert full.status_code == 200 and full.headers["content-type"] == "image/jpeg"
    assert full.headers["x-content-type-options"] == "nosniff" and "private" in full.headers["cache-control"]
    thumb = alice.get(f"/admin/business-cards/{image_id}/thumb")
    assert thumb.status_code == 200 and len(thumb.content) < len(full.content)
    assert alice.get(f"/admin/business-cards/{image_id}/other").status_code == 404
    assert alice.get("/admin/business-cards/999999/image").status_code == 404
    page = alice.get(f"/admin/lead/{lead['id']}").text
    assert f'src="/admin/business-cards/{image_id}/thumb"' in page
    assert "<script>alert" not in page and "&lt;script&gt;" in page
    # bob is in another team: the record, and so its cards, do not exist for him
    assert login(crm, "bob").get(f"/admin/business-cards/{image_id}/image").status_code == 404
    # signed out: to the login page
    from starlette.testclient import TestClient

    anon = TestClient(crm.asgi(), follow_redirects=False).get(f"/admin/business-cards/{image_id}/image")
    assert anon.status_code == 303 and "/admin/login" in anon.headers["location"]
    # a teammate who may read but not edit sees the cards but no upload form
    mias = lead_of(crm, org, owner="mia")
    add_cards(crm, "lead", mias["id"], [("m.jpg", jpeg())], actor_of(org["users"]["mia"]), None)
    page = alice.get(f"/admin/lead/{mias['id']}").text
    assert "/business-cards/" in page and 'name="enter_by"' not in page
    assert upload(alice, "lead", mias["id"], [("x.jpg", jpeg())]).status_code == 403


def test_cards_follow_a_converted_lead_to_its_contact(crm, org):
    lead = lead_of(crm, org)
    out = add_cards(crm, "lead", lead["id"], [("card.jpg", jpeg())], actor_of(org["users"]["alice"]), None)
    converted = convert_lead(crm, lead["id"], actor_of(org["users"]["alice"]))
    contact_id = converted["contact"]["id"]
    assert images_of(crm, "lead", lead["id"]) == []
    assert [i["id"] for i in images_of(crm, "contact", contact_id)] == [out["images"][0]["id"]]
    # the data-entry task moved with the lead's other activities
    task = crm.records.get("activity", out["task"]["id"], actor=SYSTEM)
    assert task["contact"] == contact_id and task["lead"] is None
    assert "/business-cards/" in login(crm, "alice").get(f"/admin/contact/{contact_id}").text


def test_removing_a_card_and_deleting_the_record_remove_the_files(crm, org):
    admin = actor_of(org["users"]["admin"])
    lead = lead_of(crm, org)
    out = add_cards(crm, "lead", lead["id"], [("a.jpg", jpeg()), ("b.jpg", jpeg())], admin, None)
    client = login(crm, "admin")
    first = out["images"][0]["id"]
    csrf = csrf_of(client.get(f"/admin/lead/{lead['id']}").text)
    assert client.post(f"/admin/business-cards/{first}/delete", data={}).status_code == 403
    response = client.post(f"/admin/business-cards/{first}/delete", data={"_csrf": csrf})
    assert response.status_code == 303
    assert [i["id"] for i in images_of(crm, "lead", lead["id"])] == [out["images"][1]["id"]]
    assert len(files_under(storage_dir(crm))) == 2
    crm.records.delete("lead", lead["id"], actor=admin)
    assert images_of(crm, "lead", lead["id"]) == []
    assert files_under(storage_dir(crm)) == []
