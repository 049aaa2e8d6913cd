"""Built-in plugin: ``crmkit serve``, ``crmkit demo``, ``crmkit user create`` and ``crmkit screenshots``."""

from __future__ import annotations

import os
import secrets
import sys
from pathlib import Path

import click

from crmkit.cli import project_option
from crmkit.hookspecs import hookimpl

DEMO_DIR = Path("crmkit-demo")


@hookimpl
def register_commands(cli):
    """Add the admin's commands to the ``crmkit`` command line."""
    cli.add_command(serve)
    cli.add_command(demo)
    cli.add_command(user)
    cli.add_command(screenshots)


_project = project_option


def migrate(crm) -> None:
    """Create or update the tables (the migration engine when present, else create_all)."""
    try:
        from crmkit.core.migrations import apply_migration
    except ImportError:  # pragma: no cover - only while the migration engine is being written
        crm.metadata.create_all(crm.engine)
        return
    apply_migration(crm)


def run_server(crm, host: str, port: int) -> None:
    """Serve the CRM's ASGI app with uvicorn until interrupted."""
    import uvicorn

    crm.startup()
    try:
        uvicorn.run(crm.asgi(), host=host, port=port, log_level="info", proxy_headers=True)
    finally:
        crm.close()


# ---------------------------------------------------------------------------------------------
# serve
# ---------------------------------------------------------------------------------------------
@click.command()
@_project
@click.option("--host", default="127.0.0.1", show_default=True, help="Interface to listen on.")
@click.option("--port", default=8000, show_default=True, type=int, help="Port to listen on.")
def serve(project: Path, host: str, port: int) -> None:
    """Serve the admin and the REST API (uvicorn)."""
    from crmkit.cli import open_crm

    crm = open_crm(project)
    click.echo(f"crmkit: http://{host}:{port}/admin/")
    run_server(crm, host, port)


# ---------------------------------------------------------------------------------------------
# demo
# ---------------------------------------------------------------------------------------------
def demo_project(db: Path) -> Path:
    """The demo's project directory (the database's folder) with a crmkit.yaml keeping a secret key."""
    project = db.parent.resolve()
    project.mkdir(parents=True, exist_ok=True)
    config = project / "crmkit.yaml"
    if not config.exists():
        config.write_text(
            "# Created by `crmkit demo`. Every plugin shipped with crmkit is turned on by the demo itself.\n"
            "name: crmkit demo\n"
            f"database_url: sqlite:///{db.name}\n"
            f"secret_key: {secrets.token_urlsafe(32)}\n"
            "locale: en\n"
            "time_zone: Asia/Tokyo\n",
            encoding="utf-8",
        )
    return project


def prepare_demo(db: Path, password: str, *, echo=click.echo) -> object:
    """Create (or reuse) the demo database, migrate it, fill it once, set admin's password."""
    from crmkit.app import CRM
    from crmkit.core.actors import SYSTEM
    from crmkit.demo import fill_demo, is_filled
    from crmkit.plugins import CONTRIB_PLUGINS

    project = demo_project(db)
    crm = CRM(project, database_url=f"sqlite:///{db.resolve()}", enable=list(CONTRIB_PLUGINS))
    migrate(crm)
    if not is_filled(crm):
        echo("Filling the demo database with sample data (en + ja)…")
        summary = fill_demo(crm, password=password)
        echo("  " + ", ".join(f"{n} {e}" for e, n in summary.counts.items()))
    else:
        import sqlalchemy as sa

        from crmkit.core.passwords import hash_password
        from crmkit.demo import DEMO_USERNAMES

        users = crm.table("user")
        with crm.engine.connect() as conn:
            ids = (
                conn.execute(sa.select(users.c.id).where(users.c.username.in_(DEMO_USERNAMES)))
                .scalars()
                .all()
            )
        hashed = hash_password(password)  # the printed password works for every demo user again
        with crm.records.transaction(actor=SYSTEM, source="demo") as tx:
            for user_id in ids:
                tx.update("user", user_id, {"password": hashed, "active": True})
    return crm


@click.command()
@click.option("--password", help="Password of the demo users (default: a new random one).")
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=8000, show_default=True, type=int)
@click.option(
    "--db",
    "db",
    type=click.Path(dir_okay=False, path_type=Path),
    default=DEMO_DIR / "demo.db",
    show_default=True,
    help="The SQLite database file (created when missing).",
)
@click.option("--no-serve", is_flag=True, help="Prepare the database and print the login, but do not serve.")
def demo(password: str | None, host: str, port: int, db: Path, no_serve: bool) -> None:
    """Run a demo CRM on SQLite with realistic sample data in English and Japanese."""
    password = password or secrets.token_urlsafe(9)
    if len(password) < 8:
        raise click.BadParameter("must be at least 8 characters", param_hint="--password")
    crm = prepare_demo(db, password)
    click.echo(f"crmkit demo: http://{host}:{port}/admin/")
    click.echo(f"login: admin / {password}")
    click.echo("other users (same password): tanaka (manager), sato, suzuki, takahashi, emily (sales reps)")
    if no_serve:
        crm.close()
        return
    run_server(crm, host, port)


# ---------------------------------------------------------------------------------------------
# user create
# ---------------------------------------------------------------------------------------------
@click.group()
def user() -> None:
    """Manage users who sign in to the admin."""


@user.command("create")
@_project
@click.argument("username")
@click.option("--role", required=True, help="admin, manager, sales_rep (or a role defined in YAML).")
@click.option("--team", help="Primary team (name or id); the user also becomes a member.")
@click.option("--password", help="The password (visible in your shell history: prefer --password-stdin).")
@click.option("--password-stdin", is_flag=True, help="Read the password from standard input.")
@click.option("--display-name", help="Name shown in the admin (default: the username).")
@click.option("--email", help="E-mail address.")
@click.option("--locale", type=click.Choice(["en", "ja"]), help="UI language (default: the project's).")
def user_create(
    project: Path,
    username: str,
    role: str,
    team: str | None,
    password: str | None,
    password_stdin: bool,
    display_name: str | None,
    email: str | None,
    locale: str | None,
) -> None:
    """Create a user who can sign in to the admin."""
    from crmkit.cli import open_crm
    from crmkit.core.actors import SYSTEM
    from crmkit.core.errors import CRMError

    if password and password_stdin:
        raise click.UsageError("give either --password or --password-stdin, not both")
    if password_stdin:
        password = sys.stdin.readline().rstrip("\r\n")
    elif not password:
        if not sys.stdin.isatty():
            raise click.UsageError("no password: use --password-stdin (or --password)")
        password = click.prompt("Password", hide_input=True, confirmation_prompt=True)
    crm = open_crm(project)
    try:
        store = crm.records
        team_id = _find_team(crm, team) if team else None
        values = {
            "username": username,
            "display_name": display_name or username,
            "role": role,
            "password": password,
            "primary_team": team_id,
            "locale": locale or crm.config.locale,
            "active": True,
        }
        if email:
            values["email"] = email
        with store.transaction(actor=SYSTEM, source="cli") as tx:
            created = tx.create("user", values)
            if team_id is not None:
                current = tx.get("team", team_id)
                members = [m for m in current.get("members") or [] if m["id"] != created["id"]]
                tx.update("team", team_id, {"members": [*members, {"id": created["id"], "role": "member"}]})
    except CRMError as exc:
        errors = getattr(exc, "errors", None)
        for e in errors or [{"field": "", "message": str(exc)}]:
            click.echo(f"error: {e['field'] + ': ' if e['field'] else ''}{e['message']}", err=True)
        sys.exit(1)
    finally:
        crm.close()
    click.echo(f"created user {username} (id {created['id']}, role {role})")


def _find_team(crm, team: str) -> int:
    import sqlalchemy as sa

    table = crm.table("team")
    cond = table.c.id == int(team) if team.isdigit() else table.c.name == team
    with crm.engine.connect() as conn:
        found = conn.execute(sa.select(table.c.id).where(cond)).scalar()
    if found is None:
        raise click.BadParameter(f"no team {team!r}", param_hint="--team")
    return int(found)


# ---------------------------------------------------------------------------------------------
# screenshots
# ---------------------------------------------------------------------------------------------
@click.command()
@click.option(
    "--out",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path("docs/screenshots"),
    show_default=True,
    help="Where to write the PNG files.",
)
@click.option(
    "--chromium",
    default=os.environ.get("CRMKIT_CHROMIUM", "/usr/bin/chromium"),
    show_default=True,
    help="The Chromium executable Playwright drives.",
)
def screenshots(out: Path, chromium: str) -> None:
    """Save screenshots of the main admin pages (demo data) into docs/screenshots/."""
    from crmkit.web.screenshots import take_screenshots

    for path in take_screenshots(out, chromium=chromium):
        click.echo(f"wrote {path}")
