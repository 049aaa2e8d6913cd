"""Built-in plugin: who is logged in to the admin (the signed session cookie), and login throttling.

The session is read by :func:`crmkit.web.auth.session_actor`; API tokens are another built-in
plugin (``api_tokens``) that answers first when a Bearer header is present.

Failed logins are counted in the ``crmkit_login_throttle`` table this plugin registers
(:mod:`crmkit.web.throttle`), so every app process shares one lock-out; crmkit.yaml tunes it::

    login_throttle:
      max_failures: 5            # per username, within the window
      address_max_failures: 30   # per client address
      window: 900                # seconds
      lockout: 900               # seconds

``crmkit user unlock USERNAME`` lifts a lock-out early.
"""

from __future__ import annotations

from pathlib import Path

import click

from crmkit.cli import open_crm, project_option
from crmkit.hookspecs import hookimpl


@hookimpl
def actor_from_request(crm, request):
    """The session's user as an Actor, or None without a (valid, unexpired) login session."""
    if "session" not in request.scope:
        return None
    from crmkit.web.auth import session_actor

    return session_actor(crm, request)


@hookimpl
def register_tables(crm, metadata):
    """The login throttle's counters (one row per hashed username or client address)."""
    from crmkit.web.throttle import define_throttle_table

    return [define_throttle_table(metadata)]


@hookimpl
def register_config_schemas(crm):
    """The ``login_throttle:`` section of crmkit.yaml."""
    from crmkit.web.throttle import CONFIG_SCHEMA, CONFIG_SECTION

    return {CONFIG_SECTION: CONFIG_SCHEMA}


@click.command("unlock")
@project_option
@click.argument("username")
@click.option("--address", help="Also unlock this client address (as the app sees it, e.g. 203.0.113.7).")
def unlock(project: Path, username: str, address: str | None) -> None:
    """Lift the lock-out of USERNAME after too many failed logins (all app processes at once)."""
    from crmkit.web.throttle import login_throttle

    crm = open_crm(project)
    try:
        keys = [f"user:{username.strip().lower()}"] + ([f"ip:{address.strip()}"] if address else [])
        login_throttle(crm).success(*keys)
    finally:
        crm.close()
    click.echo(f"unlocked {username}" + (f" and {address}" if address else ""))


@hookimpl
def register_commands(cli):
    """``crmkit user unlock USERNAME`` (added to the ``user`` group of the admin commands)."""
    group = cli.commands.get("user") if isinstance(cli, click.Group) else None
    if group is None:
        from crmkit.plugins.admin_commands import user as group
    group.add_command(unlock)
