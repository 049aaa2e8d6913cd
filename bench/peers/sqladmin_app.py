"""SQLAdmin over crmkit's tables, for the admin benchmark (runs from bench/.venv-peers, never crmkit's venv).

The tables are reflected from the benchmark's SQLite file and mapped with SQLAlchemy's declarative
``__table__`` style; the lead view is configured as a competent SQLAdmin user would configure it
for the same screen crmkit shows: the same list columns and page size (50), the same default
order (newest first), the same searchable columns (SQLAdmin searches with ``ILIKE '%term%'``),
enum fields as selects with their labels, references as relationships, system columns filled
in on insert. Login goes through an ``AuthenticationBackend`` with a signed session cookie.

Environment: ``BENCH_CHOICES`` (JSON file of enum options written by bench_admin.py),
``BENCH_ADMIN_USER`` and ``BENCH_ADMIN_PASSWORD``.

Run::

    bench/.venv-peers/bin/python bench/peers/sqladmin_app.py --db FILE.sqlite3 --port 8002
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import secrets
from typing import Any

import sqlalchemy as sa
import uvicorn
from sqladmin import Admin, ModelView
from sqladmin.authentication import AuthenticationBackend
from sqladmin.filters import ForeignKeyFilter, StaticValuesFilter
from sqlalchemy.orm import DeclarativeBase, relationship
from starlette.applications import Starlette
from starlette.requests import Request

TABLES = ["user", "team", "deal_stage", "marketing_activity", "product", "account", "contact", "deal", "lead",
          "activity"]
SYSTEM = ["id", "created_at", "updated_at", "created_by", "version", "owner", "team", "search_text"]


def build_app(db_path: str) -> Starlette:
    """The Starlette app with SQLAdmin mounted at /admin over the SQLite file ``db_path``."""
    engine = sa.create_engine(f"sqlite:///{db_path}", connect_args={"check_same_thread": False, "timeout": 30})
    metadata = sa.MetaData()
    metadata.reflect(engine, only=TABLES)
    t = metadata.tables
    with open(os.environ["BENCH_CHOICES"], encoding="utf-8") as f:
        choices: dict[str, dict[str, list[list[str]]]] = json.load(f)

    class Base(DeclarativeBase):
        pass

    def titled(column: str) -> Any:
        def __str__(self: Any) -> str:  # noqa: N807 - the title SQLAdmin shows for a related record
            return str(getattr(self, column))
        return __str__

    class User(Base):
        __table__ = t["user"]
        __str__ = titled("display_name")

    class Team(Base):
        __table__ = t["team"]
        __str__ = titled("name")

    class DealStage(Base):
        __table__ = t["deal_stage"]
        __str__ = titled("name")

    class MarketingActivity(Base):
        __table__ = t["marketing_activity"]
        __str__ = titled("name")

    class Product(Base):
        __table__ = t["product"]
        __str__ = titled("name")

    class Account(Base):
        __table__ = t["account"]
        __str__ = titled("name")
        owner_user = relationship(User, foreign_keys=[t["account"].c.owner])

    class Contact(Base):
        __table__ = t["contact"]
        __str__ = titled("full_name")
        account_ref = relationship(Account, foreign_keys=[t["contact"].c.account])
        owner_user = relationship(User, foreign_keys=[t["contact"].c.owner])

    class Deal(Base):
        __table__ = t["deal"]
        __str__ = titled("name")
        account_ref = relationship(Account, foreign_keys=[t["deal"].c.account])
        stage_ref = relationship(DealStage, foreign_keys=[t["deal"].c.stage])
        owner_user = relationship(User, foreign_keys=[t["deal"].c.owner])

    class Activity(Base):
        __table__ = t["activity"]
        __str__ = titled("subject")
        assignee_user = relationship(User, foreign_keys=[t["activity"].c.assignee])
        account_ref = relationship(Account, foreign_keys=[t["activity"].c.account])

    class Lead(Base):
        __table__ = t["lead"]
        __str__ = titled("full_name")
        owner_user = relationship(User, foreign_keys=[t["lead"].c.owner])
        team_ref = relationship(Team, foreign_keys=[t["lead"].c.team])
        campaign = relationship(MarketingActivity, foreign_keys=[t["lead"].c.marketing_activity])
        product = relationship(Product, foreign_keys=[t["lead"].c.product_interest])
        activities = relationship(Activity, foreign_keys=[t["activity"].c.lead], viewonly=True)

    @sa.event.listens_for(Base, "before_insert", propagate=True)
    def _system_columns(mapper: Any, connection: Any, target: Any) -> None:
        # crmkit's NOT NULL system columns; full_name is computed in crmkit, so here too
        now = dt.datetime.now(dt.UTC).replace(tzinfo=None)
        cols = mapper.local_table.c
        target.created_at = target.created_at or now
        target.updated_at = now
        target.version = target.version or 1
        if "full_name" in cols and "last_name" in cols:
            target.full_name = target.last_name + (" " + target.first_name if target.first_name else "")

    def enum_choices(entity: str) -> dict[str, list[tuple[str, str]]]:
        return {f: [(v, label) for v, label in opts] for f, opts in choices.get(entity, {}).items()}

    def form_choices(entity: str) -> dict[str, list[tuple[str, str]]]:
        return {f: [("", "")] + opts for f, opts in enum_choices(entity).items()}

    lead_choices = enum_choices("lead")
    lead_form_choices = form_choices("lead")
    lead_filters = [StaticValuesFilter(getattr(Lead, f), lead_choices[f])
                    for f in ("status", "source", "industry", "rating") if f in lead_choices]
    lead_filters.append(ForeignKeyFilter(Lead.owner, User.display_name, title="Owner"))

    class LeadAdmin(ModelView, model=Lead):
        name, name_plural, icon = "Lead", "Leads", "fa-solid fa-user-plus"
        page_size, page_size_options = 50, [25, 50, 100]
        column_list = [Lead.last_name, Lead.first_name, Lead.company, Lead.status, Lead.source, "owner_user",
                       Lead.created_at]
        column_sortable_list = [Lead.last_name, Lead.first_name, Lead.company, Lead.status, Lead.source,
                                Lead.created_at]
        column_default_sort = [("created_at", True), ("id", True)]
        column_searchable_list = [Lead.last_name, Lead.first_name, Lead.last_name_kana, Lead.first_name_kana,
                                  Lead.company, Lead.email, Lead.phone]
        column_filters = lead_filters
        column_details_exclude_list = [Lead.search_text]
        column_labels = {"owner_user": "Owner", "campaign": "Marketing activity", "product": "Product of interest"}
        form_columns = [Lead.last_name, Lead.first_name, Lead.last_name_kana, Lead.first_name_kana, Lead.company,
                        Lead.department, Lead.title, Lead.industry, Lead.annual_revenue, Lead.employees, Lead.email,
                        Lead.phone, Lead.mobile, Lead.website, Lead.prefecture, Lead.status, Lead.rating,
                        Lead.source, "campaign", "product", Lead.unqualified_reason, Lead.description,
                        "owner_user", "team_ref"]
        form_choices = lead_form_choices

    class AccountAdmin(ModelView, model=Account):
        page_size = 50
        column_list = [Account.name, Account.industry, Account.rank, Account.prefecture, Account.phone, "owner_user"]
        column_sortable_list = [Account.name, Account.industry, Account.rank, Account.prefecture]
        column_default_sort = [("name", False), ("id", False)]
        column_searchable_list = [Account.name, Account.name_kana, Account.phone, Account.website, Account.prefecture]
        form_excluded_columns = [getattr(Account, c) for c in SYSTEM if hasattr(Account, c)]

    class ContactAdmin(ModelView, model=Contact):
        page_size = 50
        column_list = [Contact.last_name, Contact.first_name, "account_ref", Contact.title, Contact.department,
                       Contact.email, Contact.phone, "owner_user"]
        column_searchable_list = [Contact.last_name, Contact.first_name, Contact.title, Contact.email, Contact.phone]
        form_ajax_refs = {"account_ref": {"fields": ("name",), "order_by": "name"}}

    class DealAdmin(ModelView, model=Deal):
        page_size = 50
        column_list = [Deal.name, "account_ref", "stage_ref", Deal.amount, Deal.close_date, "owner_user"]
        column_default_sort = [("close_date", True), ("id", True)]
        column_searchable_list = [Deal.name]
        form_ajax_refs = {"account_ref": {"fields": ("name",), "order_by": "name"}}

    class ActivityAdmin(ModelView, model=Activity):
        page_size = 50
        column_list = [Activity.subject, Activity.type, Activity.status, Activity.due_at, "assignee_user",
                       "account_ref"]
        column_default_sort = [("due_at", True), ("id", True)]
        column_searchable_list = [Activity.subject]
        form_ajax_refs = {"account_ref": {"fields": ("name",), "order_by": "name"}}

    class Auth(AuthenticationBackend):
        async def login(self, request: Request) -> bool:
            form = await request.form()
            ok = secrets.compare_digest(str(form.get("username", "")), os.environ["BENCH_ADMIN_USER"]) and \
                secrets.compare_digest(str(form.get("password", "")), os.environ["BENCH_ADMIN_PASSWORD"])
            if ok:
                request.session["user"] = str(form["username"])
            return ok

        async def logout(self, request: Request) -> bool:
            request.session.clear()
            return True

        async def authenticate(self, request: Request) -> bool:
            return "user" in request.session

    app = Starlette()
    admin = Admin(app, engine, authentication_backend=Auth(secret_key=secrets.token_urlsafe(32)), title="Bench CRM")
    for view in (LeadAdmin, AccountAdmin, ContactAdmin, DealAdmin, ActivityAdmin):
        admin.add_view(view)
    return app


def main() -> None:
    parser = argparse.ArgumentParser(description="SQLAdmin over crmkit's tables (admin benchmark).")
    parser.add_argument("--db", required=True)
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    uvicorn.run(build_app(args.db), host="127.0.0.1", port=args.port, log_level="warning", access_log=False)


if __name__ == "__main__":
    main()
