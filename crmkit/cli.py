"""The ``crmkit`` command line (click). Plugins add commands through ``register_commands``."""

from __future__ import annotations

import os
import secrets
import sys
from pathlib import Path

import click

from crmkit.core.loader import SchemaError, SchemaProblem

project_option = click.option(
    "--project",
    "-p",
    type=click.Path(file_okay=False, path_type=Path),
    default=".",
    envvar="CRMKIT_PROJECT",
    show_default="current directory or $CRMKIT_PROJECT",
    help="The project directory (holding crmkit.yaml and schemas/).",
)
"""The ``--project`` option every command (plugin commands too) uses to find the project."""


def open_crm(project: Path, **kwargs):
    """Build the CRM for a command, printing schema problems and exiting 1 when there are any."""
    from crmkit.app import CRM

    try:
        return CRM(project, **kwargs)
    except SchemaError as exc:
        for problem in exc.problems:
            click.echo(str(problem), err=True)
        click.echo(f"{len(exc.problems)} problem(s) found.", err=True)
        sys.exit(1)


class _Cli(click.Group):
    """Adds plugin commands lazily so ``crmkit --help`` lists them too."""

    _plugins_loaded = False

    def _load_plugin_commands(self) -> None:
        if self._plugins_loaded:
            return
        self._plugins_loaded = True
        from crmkit.plugins import load_plugins, make_plugin_manager

        pm = make_plugin_manager()
        try:
            from crmkit.config import load_config

            cfg = load_config(os.environ.get("CRMKIT_PROJECT", "."))
            load_plugins(pm, config_plugins=cfg.plugins, disabled=cfg.disable_plugins, project_dir=cfg.project_dir)
        except Exception:  # a broken project must not break `crmkit --help`; `check` reports it
            load_plugins(pm)
        pm.hook.register_commands(cli=self)

    def list_commands(self, ctx):
        self._load_plugin_commands()
        return super().list_commands(ctx)

    def get_command(self, ctx, name):
        cmd = super().get_command(ctx, name)
        if cmd is None:
            self._load_plugin_commands()
            cmd = super().get_command(ctx, name)
        return cmd


@click.group(cls=_Cli)
@click.version_option(package_name="crmkit")
def cli() -> None:
    """crmkit: YAML entity schemas -> tables, migrations, REST API and admin screens."""


@cli.command()
@project_option
def check(project: Path) -> None:
    """Validate every schema file and plugin; print all problems as file:line: path: message."""
    from crmkit.plugins import PluginError, call_each

    crm = open_crm(project)
    problems: list[str] = []
    try:  # the project's other files (rule files ...) that plugins check through `check_project`
        for plugin, found in call_each(crm.pm, "check_project", crm=crm):
            problems += [str(p) if isinstance(p, SchemaProblem) else f"plugin {plugin}: {p}" for p in found]
    except PluginError as exc:
        problems.append(str(exc))
    finally:
        crm.close()
    if problems:
        for problem in problems:
            click.echo(problem, err=True)
        click.echo(f"{len(problems)} problem(s) found.", err=True)
        sys.exit(1)
    n_fields = sum(len(e.user_fields) for e in crm.catalog)
    click.echo(
        f"OK: {len(crm.catalog.entities)} entities, {n_fields} fields, "
        f"{len(crm.schema_files())} schema files, {len(crm.plugin_sources)} plugins."
    )


@cli.command()
@click.argument("directory", type=click.Path(file_okay=False, path_type=Path))
def init(directory: Path) -> None:
    """Create a project in DIRECTORY: crmkit.yaml and example schema overlays."""
    from crmkit.core.scaffold import write_project

    try:
        written = write_project(directory, secret_key=secrets.token_urlsafe(32))
    except FileExistsError as exc:
        raise click.ClickException(str(exc)) from None
    for path in written:
        click.echo(f"created {path}")
    click.echo(f"Next: cd {directory} && crmkit check && crmkit migrate")


@cli.command()
@project_option
@click.option("--plan", "plan_only", is_flag=True, help="Print the steps and their SQL; change nothing.")
@click.option("--prune", is_flag=True, help="Drop the columns of fields removed from the YAML (deprecated).")
@click.option("--allow-destructive", is_flag=True, help="Allow steps that can lose data (type changes).")
def migrate(project: Path, plan_only: bool, prune: bool, allow_destructive: bool) -> None:
    """Bring the database in line with the schemas, keeping every value by default."""
    from crmkit.core.migrations import MigrationError, apply_migration, plan_migration

    crm = open_crm(project)
    try:
        if plan_only:
            plan = plan_migration(crm, prune=prune, allow_destructive=allow_destructive)
            click.echo(plan.render())
            return
        plan = apply_migration(crm, prune=prune, allow_destructive=allow_destructive)
    except MigrationError as exc:
        click.echo(f"Migration refused, nothing changed:\n{exc}", err=True)
        sys.exit(1)
    finally:
        crm.close()
    click.echo(plan.render())
    click.echo("Nothing to do: the database matches the schemas." if plan.is_empty else "Migration applied.")


@cli.command("plugins")
@project_option
def plugins_cmd(project: Path) -> None:
    """List loaded plugins, where each came from and the hooks it implements."""
    crm = open_crm(project)
    for info in crm.plugin_infos():
        version = f" {info.version}" if info.version else ""
        click.echo(f"{info.name}{version}  [{info.source}]")
        click.echo(f"    hooks: {', '.join(info.hooks) or '-'}")


def main() -> None:
    """Console-script entry point."""
    cli(prog_name="crmkit")


if __name__ == "__main__":  # pragma: no cover
    main()
