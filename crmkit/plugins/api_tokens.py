"""Built-in plugin: API tokens (``Authorization: Bearer <token>``) and the ``crmkit token`` commands."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from crmkit.cli import project_option
from crmkit.hookspecs import hookimpl

# request.state.auth_method is "token" when this plugin identified the caller; the API skips the
# CSRF check only then (a browser cannot attach an Authorization header to a cross-site request).
AUTH_METHOD = "token"


def bearer_token(request) -> str | None:
    """The token of an ``Authorization: Bearer …`` header, or None when there is no such header."""
    header = request.headers.get("authorization", "")
    scheme, _, value = header.partition(" ")
    if scheme.lower() != "bearer":
        return None
    return value.strip()


@hookimpl(tryfirst=True)
def actor_from_request(crm, request):
    """The token's (active) user for requests with a Bearer header; None otherwise or for a bad token."""
    token = bearer_token(request)
    if not token:
        return None
    from crmkit.core.tokens import token_user
    from crmkit.web.auth import actor_for, load_user

    user_id = token_user(crm, token)
    user = load_user(crm, user_id=user_id) if user_id is not None else None
    if user is None or not user.active:
        return None
    request.state.auth_method = AUTH_METHOD
    return actor_for(crm, user)  # the same Actor a session login gets


@hookimpl
def register_commands(cli):
    """Add ``crmkit token create|list|revoke``."""
    cli.add_command(token)


def _open(project: Path):
    from crmkit.cli import open_crm

    return open_crm(project)


_project = project_option


@click.group()
def token() -> None:
    """API tokens: `Authorization: Bearer <token>` for /api/v1/."""


@token.command("create")
@click.argument("username")
@click.option("--name", "-n", default="api", show_default=True, help="What the token is for.")
@_project
def create_cmd(username: str, name: str, project: Path) -> None:
    """Create a token for USERNAME and print it (it is shown only this once)."""
    from crmkit.core.tokens import TokenError, create_token

    crm = _open(project)
    try:
        secret, info = create_token(crm, username, name)
    except TokenError as exc:
        raise click.ClickException(str(exc)) from None
    finally:
        crm.close()
    click.echo(secret)
    click.echo(f"token {info.id} ({name}) for {username}: store it now, it cannot be shown again.", err=True)


@token.command("list")
@click.argument("username", required=False)
@_project
def list_cmd(username: str | None, project: Path) -> None:
    """List tokens (of USERNAME): id, user, name, first characters, last use, state."""
    from crmkit.core.tokens import list_tokens

    crm = _open(project)
    try:
        infos = list_tokens(crm, username)
    finally:
        crm.close()
    for i in infos:
        used = i.last_used_at.isoformat(timespec="seconds") if i.last_used_at else "never used"
        state = "active" if i.active else "revoked"
        click.echo(f"{i.id}\t{i.username}\t{i.name}\t{i.hint}…\t{used}\t{state}")
    if not infos:
        click.echo("no tokens", err=True)


@token.command("revoke")
@click.argument("token_id", type=int)
@_project
def revoke_cmd(token_id: int, project: Path) -> None:
    """Revoke token TOKEN_ID (see `crmkit token list`); it stops working at once."""
    from crmkit.core.tokens import TokenError, revoke_token

    crm = _open(project)
    try:
        info = revoke_token(crm, token_id)
    except TokenError as exc:
        click.echo(str(exc), err=True)
        sys.exit(1)
    finally:
        crm.close()
    click.echo(f"revoked token {info.id} ({info.name}) of {info.username}")
