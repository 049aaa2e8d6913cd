"""docs/ stays true: every code block of every page is run by a test, or explicitly skipped with a reason.

Each block carries a ``<!-- test: KIND ... -->`` marker (see tests/docblocks.py for the kinds). Pages
with ``file``/``patch``/``console``/``server`` blocks run as a session, in order, on SQLite and on
PostgreSQL; entity and config examples go through ``crmkit check``; plugin examples are loaded into a
real, migrated CRM; lists of commands are parsed by the real command line. Blocks that other tests
run (``tested-by``) are not run twice. The generated references must match their generators.
"""

from __future__ import annotations

import ast
import importlib.util
import json
import re
import secrets
import shlex
import subprocess
import sys
import types
from pathlib import Path

import click
import pytest
import yaml
from click.testing import CliRunner

from tests.docblocks import DOCS, KINDS, ROOT, SESSION_KINDS, Block, all_blocks, page_blocks
from tests.docsession import Session

BLOCKS = all_blocks()
SESSION_PAGES = sorted({b.page for b in BLOCKS if b.directive and b.directive.kind in SESSION_KINDS})


def of_kind(kind: str) -> list[Block]:
    return [b for b in BLOCKS if b.directive and b.directive.kind == kind]


def ids(blocks: list[Block]) -> list[str]:
    return [b.where for b in blocks]


# ---------------------------------------------------------------------------------------------
# Every block is accounted for
# ---------------------------------------------------------------------------------------------
def test_every_block_is_run_or_explicitly_skipped():
    assert len(BLOCKS) > 40 and {"docs/tutorial.md", "docs/deployment.md"} <= {b.page for b in BLOCKS}
    problems = []
    for b in BLOCKS:
        d = b.directive
        if d is None:
            problems.append(f"{b.where}: ```{b.lang} block without a <!-- test: KIND --> marker (see docs/index.md)")
        elif d.kind not in KINDS:
            problems.append(f"{b.where}: unknown test kind {d.kind!r} (one of {', '.join(KINDS)})")
        elif d.kind == "skip" and len(d.reason) < 10:
            problems.append(f"{b.where}: `skip` needs a reason in parentheses")
        elif d.kind in ("file", "patch") and "path" not in d.args:
            problems.append(f"{b.where}: `{d.kind}` needs path=")
        elif d.kind == "tested-by":
            problems += problems_of_tested_by(b)
    assert not problems, "\n".join(problems)


def problems_of_tested_by(b: Block) -> list[str]:
    """A ``tested-by tests/x.py::name`` test exists, and its module reads this page."""
    if len(b.directive.positional) != 1 or "::" not in b.directive.positional[0]:
        return [f"{b.where}: write `tested-by tests/test_x.py::test_name`"]
    path, _, name = b.directive.positional[0].partition("::")
    file = ROOT / path
    if not file.is_file():
        return [f"{b.where}: {path} does not exist"]
    source = file.read_text(encoding="utf-8")
    names = {n.name for n in ast.walk(ast.parse(source)) if isinstance(n, ast.FunctionDef)}
    if name not in names:
        return [f"{b.where}: {path} has no test {name}"]
    if Path(b.page).name not in source:
        return [f"{b.where}: {path} never reads {Path(b.page).name}"]
    return []


def test_the_markers_are_found_where_the_docs_put_them(tmp_path):
    page = tmp_path / "docs" / "x.md"
    page.parent.mkdir()
    page.write_text("Intro\n\n<!-- test: console exit=1 (it fails) -->\n\n```console\n$ crmkit check\n```\n\n"
                    "```yaml\na: 1\n```\n", encoding="utf-8")
    import tests.docblocks as db

    root = db.ROOT
    try:
        db.ROOT = tmp_path
        first, second = db.page_blocks(page)
    finally:
        db.ROOT = root
    assert (first.line, first.lang, first.directive.kind, first.directive.args, first.directive.reason) == (
        5, "console", "console", {"exit": "1"}, "it fails")
    assert second.directive is None and second.text == "a: 1\n"


# ---------------------------------------------------------------------------------------------
# Sessions: the tutorial, the deployment guide ... step by step
# ---------------------------------------------------------------------------------------------
@pytest.fixture
def fresh_pg(request):
    """A factory of fresh PostgreSQL schemas (dropped after the test), or None on SQLite."""
    from tests.conftest import _pg_schema_url

    made: list[str] = []

    def make() -> str:
        admin = request.getfixturevalue("pg_admin")
        schema = "d_" + secrets.token_hex(6)
        with admin.connect() as conn:
            conn.exec_driver_sql(f"CREATE SCHEMA {schema}")
        made.append(schema)
        return _pg_schema_url(schema)

    yield make
    if made:
        admin = request.getfixturevalue("pg_admin")
        with admin.connect() as conn:
            for schema in made:
                conn.exec_driver_sql(f"DROP SCHEMA {schema} CASCADE")


@pytest.mark.parametrize("page", SESSION_PAGES)
def test_page_session(page, tmp_path, db_url, backend, fresh_pg):
    """Every file, patch, console and server block of the page, in order, does what the page says."""
    home = tmp_path / "home"
    home.mkdir()
    session = Session(home, backend, db_url, fresh_pg if backend == "postgresql" else None)
    ran = 0
    for block in page_blocks(ROOT / page):
        if block.directive and block.directive.kind in SESSION_KINDS:
            session.run(block)
            ran += 1
    assert ran >= 3


# ---------------------------------------------------------------------------------------------
# Entity files, crmkit.yaml examples and plugins
# ---------------------------------------------------------------------------------------------
def run_check(project: Path) -> tuple[int, str]:
    """``crmkit check --project DIR`` in-process (the real click command)."""
    from crmkit.cli import cli

    result = CliRunner().invoke(cli, ["check", "--project", str(project)], catch_exceptions=False)
    return result.exit_code, result.output


def project_with(tmp_path: Path, config: dict | None = None) -> Path:
    project = tmp_path / "project"
    (project / "schemas").mkdir(parents=True)
    (project / "crmkit.yaml").write_text(yaml.safe_dump(config or {}, allow_unicode=True), encoding="utf-8")
    return project


@pytest.mark.parametrize("block", of_kind("schema"), ids=ids(of_kind("schema")))
def test_schema_examples_pass_crmkit_check(block, tmp_path):
    d = block.directive
    project = project_with(tmp_path, {"plugins": d.names("plugins")})
    text = f"extends: {d.args['extends']}\n{block.text}" if "extends" in d.args else block.text
    (project / "schemas" / "example.yaml").write_text(text, encoding="utf-8")
    code, output = run_check(project)
    assert code == 0, f"{block.where}:\n{output}"


@pytest.mark.parametrize("block", of_kind("config"), ids=ids(of_kind("config")))
def test_config_examples_pass_crmkit_check(block, tmp_path):
    data = yaml.safe_load(block.text)
    assert isinstance(data, dict), f"{block.where}: not a mapping"
    plugins = list(dict.fromkeys([*data.get("plugins", []), *block.directive.names("plugins")]))
    project = project_with(tmp_path)
    if "copy" in block.directive.args:  # a file the block names (a rule file), copied from the repository
        source, _, dest = block.directive.args["copy"].partition(":")
        (project / dest).parent.mkdir(parents=True, exist_ok=True)
        (project / dest).write_bytes((ROOT / source).read_bytes())
    text = block.text if not plugins or "plugins" in data else block.text + f"plugins: {plugins}\n"
    (project / "crmkit.yaml").write_text(text, encoding="utf-8")
    code, output = run_check(project)
    assert code == 0, f"{block.where}:\n{output}"
    # and a misspelt key in the same section is refused, so the check above means something
    section = next((k for k, v in data.items() if isinstance(v, dict)), None)
    if section is not None:
        broken = {**data, "plugins": plugins, section: {**data[section], "no_such_setting_x": 1}}
        (project / "crmkit.yaml").write_text(yaml.safe_dump(broken, allow_unicode=True), encoding="utf-8")
        code, output = run_check(project)
        assert code == 1 and "no_such_setting_x" in output, f"{block.where}: section {section} is not validated"


def load_plugin_block(block: Block) -> list[object]:
    """The block as a module, plus an instance of each class in it that implements hooks."""
    module = types.ModuleType("docs_example_" + re.sub(r"\W", "_", block.where))
    exec(compile(block.text, block.where, "exec"), module.__dict__)  # noqa: S102 - our own docs
    classes = [v for v in vars(module).values() if isinstance(v, type) and v.__module__ == module.__name__
               and any(hasattr(getattr(v, a), "crmkit_impl") for a in dir(v) if not a.startswith("_"))]
    return [module, *(cls() for cls in classes)]


@pytest.mark.parametrize("block", of_kind("plugin"), ids=ids(of_kind("plugin")))
def test_plugin_examples_load_into_a_migrated_crm(block, tmp_path, db_url):
    from tests.support import make_crm

    plugins = load_plugin_block(block)
    crm = make_crm(tmp_path, db_url, plugins=plugins, enable=block.directive.names("enable"))
    try:
        implemented = {h.name for p in plugins for h in (crm.pm.get_hookcallers(p) or ())}
        assert implemented, f"{block.where}: the example implements no hook"
        for plugin in plugins:  # fields an example adds are really there, with their columns
            extend = getattr(plugin, "extend_entity", None)
            for ent in crm.catalog if extend else ():
                for name in ((extend(crm=crm, name=ent.name, definition={}) or {}).get("fields") or {}):
                    assert name in crm.table(ent.name).c, f"{block.where}: {ent.name}.{name} missing"
        crm.asgi()  # routes, middleware and record actions of the example are accepted too
    finally:
        crm.close()


# ---------------------------------------------------------------------------------------------
# Lists of commands: each parses against the real command line
# ---------------------------------------------------------------------------------------------
def full_cli(plugins: list[str]) -> click.Group:
    """``crmkit`` with the commands of the built-in plugins and of ``plugins`` (contrib names)."""
    from crmkit.cli import cli
    from crmkit.plugins import load_plugins, make_plugin_manager

    group = click.Group("crmkit", commands={n: c for n, c in cli.commands.items()})
    pm = make_plugin_manager()
    load_plugins(pm, config_plugins=plugins, entry_points=False)
    pm.hook.register_commands(cli=group)
    return group


def parse_command(group: click.Group, args: list[str]) -> None:
    """Resolve subcommands and parse options and arguments like click does, without running anything."""
    ctx = group.make_context("crmkit", list(args))
    cmd: click.Command = group
    rest = [*ctx._protected_args, *ctx.args]
    while isinstance(cmd, click.Group):
        name, cmd, rest = cmd.resolve_command(ctx, rest)
        try:
            ctx = cmd.make_context(name, list(rest), parent=ctx)
        except click.BadParameter as exc:
            if "does not exist" not in str(exc):  # example files need not exist
                raise
            return
        rest = [*getattr(ctx, "_protected_args", []), *ctx.args]


def command_lines(block: Block) -> list[list[str]]:
    """The ``crmkit`` command lines of a block (comments, prompts and ``[optional]`` brackets removed)."""
    out = []
    lines = block.text.splitlines()
    prompted = any(line.startswith("$ ") for line in lines)  # then the other lines are output
    for raw in lines:
        if prompted and not raw.startswith("$ "):
            continue
        line = raw[2:] if prompted else raw
        words = shlex.split(line, comments=True)
        if not words:
            continue
        assert words[0] == "crmkit", f"{block.where}: `syntax` blocks list crmkit commands only: {raw!r}"
        out.append([w.strip("[]") for w in words[1:] if w.strip("[]")])
    return out


@pytest.mark.parametrize("block", of_kind("syntax"), ids=ids(of_kind("syntax")))
def test_listed_commands_parse(block):
    group = full_cli(block.directive.names("plugins"))
    lines = command_lines(block)
    assert lines
    for args in lines:
        try:
            parse_command(group, args)
        except click.ClickException as exc:
            pytest.fail(f"{block.where}: `crmkit {' '.join(args)}`: {exc.format_message()}")


def test_a_wrong_option_in_a_command_list_is_caught():
    group = full_cli([])
    parse_command(group, ["worker", "--once", "-c", "2"])
    with pytest.raises(click.UsageError):
        parse_command(group, ["worker", "--onse"])
    with pytest.raises(click.UsageError):
        parse_command(group, ["no-such-command"])


# ---------------------------------------------------------------------------------------------
# Generated references
# ---------------------------------------------------------------------------------------------
def run_generator(script: str) -> str:
    """Import a docs generator and return the page it would write."""
    spec = importlib.util.spec_from_file_location("gen_" + Path(script).stem, ROOT / script)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.render()


def test_schema_reference_is_generated_from_the_meta_schema():
    text = run_generator("docs/gen_schema_reference.py")
    assert (DOCS / "schema_reference.md").read_text(encoding="utf-8") == text, (
        "docs/schema_reference.md is stale: run python docs/gen_schema_reference.py")
    meta = json.loads((ROOT / "schemas" / "entity.schema.json").read_text(encoding="utf-8"))
    for key in [*meta["properties"], *meta["$defs"]["field"]["properties"]]:
        assert f"| `{key}`" in text, key
    for name in ("string", "enum", "reference", "references", "money"):
        assert f"### `{name}`" in text
    check = subprocess.run([sys.executable, "docs/gen_schema_reference.py", "--check"], cwd=ROOT,
                           capture_output=True, text=True)
    assert check.returncode == 0, check.stderr


def test_plugin_hook_reference_is_generated_from_the_hookspecs(tmp_path):
    """docs/gen_plugin_hooks.py writes docs/plugin_hooks.md; run it on a copy and compare."""
    copy = tmp_path / "tree"
    (copy / "docs").mkdir(parents=True)
    (copy / "crmkit").mkdir()
    (copy / "crmkit" / "hookspecs.py").write_bytes((ROOT / "crmkit" / "hookspecs.py").read_bytes())
    (copy / "docs" / "gen_plugin_hooks.py").write_bytes((DOCS / "gen_plugin_hooks.py").read_bytes())
    subprocess.run([sys.executable, str(copy / "docs" / "gen_plugin_hooks.py")], check=True, cwd=copy)
    assert (copy / "docs" / "plugin_hooks.md").read_text(encoding="utf-8") == (
        DOCS / "plugin_hooks.md").read_text(encoding="utf-8"), (
        "docs/plugin_hooks.md is stale: run python docs/gen_plugin_hooks.py")


# ---------------------------------------------------------------------------------------------
# docs/configuration.md shows every setting there is
# ---------------------------------------------------------------------------------------------
def test_configuration_page_shows_every_setting():
    from crmkit.config import CONFIG_SCHEMA
    from crmkit.plugins import CONTRIB_PLUGINS, call_each, load_plugins, make_plugin_manager

    pm = make_plugin_manager()
    load_plugins(pm, config_plugins=list(CONTRIB_PLUGINS), entry_points=False)
    sections = {"": CONFIG_SCHEMA}
    for _plugin, schemas in call_each(pm, "register_config_schemas", crm=None):
        sections.update(schemas)
    shown: dict[str, dict] = {}
    for block in page_blocks(DOCS / "configuration.md"):
        if block.directive and block.directive.kind == "config":
            shown.update(yaml.safe_load(block.text))
    missing = [key for key in CONFIG_SCHEMA["properties"] if key not in shown]
    for section, schema in sections.items():
        if not section:
            continue
        if section not in shown:
            missing.append(section)
            continue
        missing += [f"{section}.{key}" for key in schema.get("properties", {}) if key not in shown[section]]
    assert not missing, f"docs/configuration.md does not show: {', '.join(missing)}"


def test_the_tutorial_form_keeps_every_field_of_the_built_in_lead_form(tmp_path):
    """An overlay's `form:` replaces the lead's form: the tutorial's copy must not drop a built-in field."""
    from crmkit import CRM

    overlay = next(b for b in page_blocks(DOCS / "tutorial.md")
                   if b.directive and b.directive.args.get("path") == "schemas/lead_extra.yaml")
    (tmp_path / "schemas").mkdir()
    (tmp_path / "schemas" / "lead_extra.yaml").write_text(overlay.text, encoding="utf-8")
    builtin = CRM(tmp_path / "none", entry_points=False).catalog["lead"]
    tutorial = CRM(tmp_path, entry_points=False).catalog["lead"]
    before = {f for section in builtin.form for f in section.fields}
    after = {f for section in tutorial.form for f in section.fields}
    assert before - after == set(), "update the form: of docs/tutorial.md step 3 (the built-in lead form changed)"
    assert {"budget", "competitor"} <= after
