"""The floor of the admin benchmark: plain Starlette + stdlib sqlite3 + bare Jinja2 pages over crmkit's lead table.

No framework, no permissions, no session: the least work a server can do to answer the same
requests as crmkit's admin — a keyset query and a capped count for the list pages, the FTS5
trigram query for search (the query folded by crmkit's own text functions, loaded straight from
``crmkit/core/text.py`` so the rest of crmkit is not imported), a primary-key lookup for the detail
page and the edit form, one INSERT for the create POST. crmkit's admin should stay within a small
factor of it.

Run (by ``bench/bench_admin.py``)::

    python bench/peers/floor_app.py --db FILE.sqlite3 --port 8001
"""

from __future__ import annotations

import argparse
import datetime as dt
import importlib.util
import sqlite3
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import jinja2
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, PlainTextResponse, RedirectResponse
from starlette.routing import Route

PAGE = 50
COUNT_CAP = 10_000
LIST_COLUMNS = ["last_name", "first_name", "company", "status", "source", "owner", "created_at"]
SORTABLE = {"last_name", "first_name", "company", "status", "source", "created_at"}
FORM_FIELDS = ["last_name", "first_name", "last_name_kana", "first_name_kana", "company", "department", "title",
               "industry", "annual_revenue", "employees", "email", "phone", "mobile", "website", "prefecture",
               "status", "rating", "source", "marketing_activity", "product_interest", "description"]
SEARCH_FIELDS = ["last_name", "first_name", "last_name_kana", "first_name_kana", "company", "email", "phone"]
CHOICES = {
    "status": ["new", "working", "nurturing", "qualified", "unqualified", "converted"],
    "source": ["web", "referral", "event", "business_card", "sns", "cold_call", "advertisement", "other"],
    "rating": ["hot", "warm", "cold"],
    "industry": ["manufacturing", "it", "wholesale", "retail", "finance", "construction", "real_estate",
                 "transportation", "services", "healthcare", "education", "public", "other"],
}

TEMPLATES = {
    "base.html": """<!doctype html><html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1"><title>{{ title }}</title></head>
<body><h1>{{ title }}</h1>{% block body %}{% endblock %}</body></html>""",
    "list.html": """{% extends "base.html" %}{% block body %}
<form method="get"><label>Search <input name="q" value="{{ q }}"></label> <button>Search</button></form>
<p>{{ count }} leads</p>
<table><thead><tr>{% for c in columns %}<th><a href="?sort={{ c }}">{{ c }}</a></th>{% endfor %}</tr></thead>
<tbody>{% for r in rows %}<tr><td><a href="/lead/{{ r[0] }}">{{ r[1] }}</a></td>
{% for v in r[2:] %}<td>{{ v if v is not none else "" }}</td>{% endfor %}</tr>{% endfor %}</tbody></table>
{% if next %}<a href="?{{ next }}">Next</a>{% endif %}{% endblock %}""",
    "detail.html": """{% extends "base.html" %}{% block body %}
<p><a href="/lead/{{ row.id }}/edit">Edit</a></p>
<dl>{% for k, v in row.items() if v is not none %}<dt>{{ k }}</dt><dd>{{ v }}</dd>{% endfor %}</dl>
<h2>Activities</h2><ul>{% for a in activities %}<li>{{ a[1] }} · {{ a[2] }} · {{ a[3] }} · {{ a[4] }}</li>
{% endfor %}</ul>{% endblock %}""",
    "form.html": """{% extends "base.html" %}{% block body %}
<form method="post" action="{{ action }}">{% for f in fields %}<p><label for="f-{{ f }}">{{ f }}</label>
{% if f in choices %}<select id="f-{{ f }}" name="{{ f }}"><option value=""></option>
{% for o in choices[f] %}<option{% if row[f] == o %} selected{% endif %}>{{ o }}</option>{% endfor %}</select>
{% else %}<input id="f-{{ f }}" name="{{ f }}" value="{{ row[f] if row[f] is not none else '' }}">{% endif %}</p>
{% endfor %}<button>Save</button></form>{% endblock %}""",
}


def _text_module() -> Any:
    """crmkit's pure text-folding module, loaded from its file (no crmkit package import)."""
    path = Path(__file__).resolve().parents[2] / "crmkit" / "core" / "text.py"
    spec = importlib.util.spec_from_file_location("crmkit_text_for_floor", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def build_app(db_path: str) -> Starlette:
    """The floor's four pages over the SQLite file ``db_path``."""
    text = _text_module()
    db = sqlite3.connect(db_path, check_same_thread=False, isolation_level=None)
    db.execute("PRAGMA busy_timeout=30000")
    env = jinja2.Environment(loader=jinja2.DictLoader(TEMPLATES), autoescape=True)
    select = "SELECT l.id, l.last_name, l.first_name, l.company, l.status, l.source, l.owner, l.created_at FROM lead l"

    def render(name: str, **ctx: Any) -> HTMLResponse:
        return HTMLResponse(env.get_template(name).render(**ctx))

    async def list_page(request: Request) -> HTMLResponse:
        params = request.query_params
        q, sort, after = params.get("q", "").strip(), params.get("sort", ""), params.get("after")
        where, args, cwhere, cargs = [], [], "", []
        if q:
            variants = text.query_variants(q)
            if min(len(v) for v in variants) >= 3:
                cwhere = "l.id IN (SELECT rowid FROM lead__fts WHERE lead__fts MATCH ?)"
                cargs = [" OR ".join('"' + v.replace('"', '""') + '"' for v in variants)]
            else:  # trigrams need three characters
                cwhere = "(" + " OR ".join("l.search_text LIKE ?" for _ in variants) + ")"
                cargs = [f"%{v}%" for v in variants]
            where.append(cwhere)
            args += cargs
        if sort and sort not in SORTABLE:
            return PlainTextResponse("bad sort", status_code=400)
        key = sort or "created_at"
        op, direction = (">", "ASC") if sort else ("<", "DESC")
        if after:
            value, _, last_id = after.rpartition("~")
            where.append(f"(l.{key}, l.id) {op} (?, ?)")
            args += [value, int(last_id)]
        sql = (select + (" WHERE " + " AND ".join(where) if where else "")
               + f" ORDER BY l.{key} {direction}, l.id {direction} LIMIT {PAGE + 1}")
        rows = db.execute(sql, args).fetchall()
        # owner names for the page only (a join before the LIMIT would carry them through the sort)
        owners = {r[6] for r in rows if r[6] is not None}
        names = dict(db.execute(f'SELECT id, display_name FROM "user" WHERE id IN ({",".join("?" * len(owners))})',
                                list(owners)).fetchall()) if owners else {}
        rows = [(*r[:6], names.get(r[6]), r[7]) for r in rows]
        count_sql = f"SELECT count(*) FROM (SELECT 1 FROM lead l {'WHERE ' + cwhere if cwhere else ''} LIMIT ?)"
        count = db.execute(count_sql, [*cargs, COUNT_CAP + 1]).fetchone()[0]
        label = f"{COUNT_CAP:,}+" if count > COUNT_CAP else f"{count:,}"
        nxt = None
        if len(rows) > PAGE:
            rows = rows[:PAGE]
            last = rows[-1]
            cursor_value = last[LIST_COLUMNS.index(key) + 1] if key != "created_at" else last[7]
            nxt = urlencode({"q": q, "sort": sort, "after": f"{cursor_value}~{last[0]}"})
        return render("list.html", title="Leads", rows=rows, columns=LIST_COLUMNS, q=q, count=label, next=nxt)

    async def detail_page(request: Request) -> HTMLResponse:
        cur = db.execute("SELECT * FROM lead WHERE id = ?", (request.path_params["id"],))
        found = cur.fetchone()
        if found is None:
            return HTMLResponse("not found", status_code=404)
        row = dict(zip([d[0] for d in cur.description], found, strict=True))
        row.pop("search_text", None)
        activities = db.execute(
            "SELECT id, subject, type, status, due_at FROM activity WHERE lead = ? ORDER BY due_at DESC LIMIT 20",
            (row["id"],)).fetchall()
        return render("detail.html", title=row["full_name"] or row["last_name"], row=row, activities=activities)

    async def edit_page(request: Request) -> HTMLResponse:
        cols = ", ".join(FORM_FIELDS)
        found = db.execute(f"SELECT id, {cols} FROM lead WHERE id = ?", (request.path_params["id"],)).fetchone()
        if found is None:
            return HTMLResponse("not found", status_code=404)
        row = dict(zip(["id", *FORM_FIELDS], found, strict=True))
        return render("form.html", title=f"Edit {row['last_name']}", row=row, fields=FORM_FIELDS,
                      choices=CHOICES, action=f"/lead/{row['id']}/edit")

    async def create_page(request: Request) -> Any:
        form = await request.form()
        values = {f: (str(form.get(f)).strip() or None) if form.get(f) is not None else None for f in FORM_FIELDS}
        if not values["last_name"]:
            return HTMLResponse("last_name is required", status_code=422)
        now = dt.datetime.now(dt.UTC).replace(tzinfo=None).isoformat(sep=" ")
        values["full_name"] = values["last_name"] + (" " + values["first_name"] if values["first_name"] else "")
        values["search_text"] = text.search_text([values.get(f) for f in SEARCH_FIELDS])
        cols = [*values, "created_at", "updated_at", "version"]
        db.execute("BEGIN IMMEDIATE")
        try:
            cur = db.execute(f"INSERT INTO lead ({', '.join(cols)}) VALUES ({', '.join('?' * len(cols))})",
                             [*values.values(), now, now, 1])
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise
        return RedirectResponse(f"/lead/{cur.lastrowid}", status_code=303)

    return Starlette(routes=[
        Route("/lead/", list_page),
        Route("/lead/new", create_page, methods=["POST"]),
        Route("/lead/{id:int}", detail_page),
        Route("/lead/{id:int}/edit", edit_page),
    ])


def main() -> None:
    parser = argparse.ArgumentParser(description="The floor app of the admin benchmark.")
    parser.add_argument("--db", required=True)
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    uvicorn.run(build_app(args.db), host="127.0.0.1", port=args.port, log_level="warning", access_log=False)


if __name__ == "__main__":
    main()
