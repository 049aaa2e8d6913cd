"""Rule files shared by the lead scoring and assignment plugins: loading, checking, hot reload, CLI.

A rule file is YAML in the company project (``rules/lead_scoring.yaml``, ``rules/assignment.yaml``;
the path is configurable in the plugin's section of ``crmkit.yaml``). It is validated in two
steps, each problem naming ``file:line: path``:

1. JSON Schema (the plugin's ``*.schema.json``), for shape and types;
2. the plugin's ``compile`` function, for meaning: conditions are checked against the catalog
   (a field that does not exist is an error, never a silent zero), names are unique, ...

:func:`active` returns the compiled rules of a CRM and reloads them when the file's mtime or
size changes. A file that fails to load keeps the previous rules active; the error is logged and
kept in :func:`status` (shown to admins and by ``crmkit check`` / ``crmkit rules reload``).

The ``crmkit rules`` command group (``test``, ``check``, ``reload``) is shared: each plugin
registers its rule kind on it, and ``crmkit rules test FILE`` picks the kind from the file's keys.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import sys
import threading
import weakref
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click
import jsonschema

from crmkit.cli import project_option
from crmkit.core.conditions import check as check_condition
from crmkit.core.loader import SchemaError, SchemaProblem, SourceDoc, load_yaml

if TYPE_CHECKING:
    from crmkit.app import CRM

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RuleKind:
    """One kind of rule file, described by the plugin that owns it."""

    name: str  # "scoring", "assignment"
    plugin: str  # name in crmkit.yaml `plugins:` ("lead_scoring")
    section: str  # its section of crmkit.yaml
    default_path: str  # relative to the project directory
    schema: dict[str, Any]
    compile: Callable[[Any, SourceDoc], Any]  # (crm, doc) -> rules; raises SchemaError
    detect_keys: tuple[str, ...]  # top-level keys only this kind of file has
    fallback: Path | None = None  # shipped rules used when the project has no file
    dry_run: Callable[..., None] | None = None  # (crm, rules, sample, now, echo) for `rules test`


@dataclass
class _State:
    rules: Any = None
    signature: tuple | None = None
    path: Path | None = None
    loaded_at: dt.datetime | None = None
    problems: list[SchemaProblem] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)


_STATES: weakref.WeakKeyDictionary[Any, dict[str, _State]] = weakref.WeakKeyDictionary()
_STATES_LOCK = threading.Lock()


# ---------------------------------------------------------------------------------------------
# Loading and checking
# ---------------------------------------------------------------------------------------------
def rule_path(crm: CRM, kind: RuleKind) -> Path | None:
    """The project's rule file for ``kind`` (``rules:`` in its crmkit.yaml section, or the default).

    Returns the shipped fallback when the project has no such file, and None when there is none.
    """
    configured = crm.config.section(kind.section).get("rules")
    base = crm.config.project_dir or Path.cwd()
    path = Path(configured) if configured else Path(kind.default_path)
    if not path.is_absolute():
        path = base / path
    if path.exists() or configured:
        return path  # a configured file that is missing is an error, reported by load()
    return kind.fallback


def schema_problems(doc: SourceDoc, schema: dict[str, Any]) -> list[SchemaProblem]:
    """JSON Schema errors of a parsed rule file, each at the line of the offending value."""
    out = []
    validator = jsonschema.Draft202012Validator(schema)
    for err in validator.iter_errors(doc.data):
        # For a oneOf/anyOf, the most specific sub-error says what is really wrong.
        best = jsonschema.exceptions.best_match([err]) if err.context else err
        out.append(doc.problem(tuple(best.absolute_path), best.message))
    return out


def condition_problems(doc: SourceDoc, path: tuple, condition: Any, entity: str, catalog: Any) -> list[SchemaProblem]:
    """Problems of a condition (unknown fields, bad operators, bad values) at their lines."""
    out = []
    for where, message in check_condition(condition, entity, catalog):
        out.append(doc.problem(path + tuple(where), f"{message} (condition on {entity})"))
    return out


def load(crm: CRM, kind: RuleKind, path: Path | None = None) -> Any:
    """Read, validate and compile a rule file; raises SchemaError listing every problem."""
    path = path or rule_path(crm, kind)
    if path is None:
        return None
    if not path.exists():
        raise SchemaError([SchemaProblem(str(path), 1, "", f"rule file not found ({kind.section}.rules)")])
    doc = load_yaml(path)
    doc.data = _plain(doc.data)
    if not isinstance(doc.data, dict):
        raise SchemaError([doc.problem((), "a rule file must be a mapping")])
    problems = list(doc.problems) + schema_problems(doc, kind.schema)
    if problems:
        raise SchemaError(problems)
    return kind.compile(crm, doc)


def _plain(value: Any) -> Any:
    """YAML data as JSON-like data: unquoted dates (``2026-05-01``) become ISO strings."""
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    if isinstance(value, dt.date):
        return value.isoformat()
    return value


def _signature(path: Path | None) -> tuple | None:
    if path is None:
        return None
    try:
        st = path.stat()
    except OSError:
        return ("missing", str(path))
    return (str(path), st.st_mtime_ns, st.st_size, st.st_ino)


def _state(crm: CRM, kind: RuleKind) -> _State:
    with _STATES_LOCK:
        per_crm = _STATES.setdefault(crm, {})
        return per_crm.setdefault(kind.name, _State())


def active(crm: CRM, kind: RuleKind) -> Any:
    """The rules in force for ``crm``: reloaded when the file changed; None when there are none.

    A file that fails to load leaves the previous rules active and records the problems
    (logged once per change of the file).
    """
    state = _state(crm, kind)
    path = rule_path(crm, kind)
    sig = _signature(path)
    if sig == state.signature:
        return state.rules
    with state.lock:
        if sig != state.signature:
            _reload(crm, kind, state, path, sig)
    return state.rules


def _reload(crm: CRM, kind: RuleKind, state: _State, path: Path | None, sig: tuple | None) -> list[SchemaProblem]:
    state.signature = sig  # even on failure: do not re-read a broken file on every call
    try:
        rules = load(crm, kind, path)
    except SchemaError as exc:
        state.problems = list(exc.problems)
        log.error(
            "%s rules in %s not loaded (%s previous rules stay active):\n%s",
            kind.name, path, "the" if state.rules is not None else "no",
            "\n".join(str(p) for p in exc.problems),
        )
        return state.problems
    state.rules, state.path, state.problems = rules, path, []
    state.loaded_at = dt.datetime.now(dt.UTC)
    log.info("%s rules loaded from %s", kind.name, path)
    return []


def reload(crm: CRM, kind: RuleKind) -> list[SchemaProblem]:
    """Reload the rule file now (even when unchanged); returns its problems (previous rules kept)."""
    state = _state(crm, kind)
    path = rule_path(crm, kind)
    with state.lock:
        return _reload(crm, kind, state, path, _signature(path))


def status(crm: CRM, kind: RuleKind) -> dict[str, Any]:
    """What is in force: ``{"path", "loaded_at", "problems", "active"}`` (after a reload check)."""
    active(crm, kind)
    state = _state(crm, kind)
    return {
        "path": state.path or rule_path(crm, kind),
        "loaded_at": state.loaded_at,
        "problems": list(state.problems),
        "active": state.rules is not None,
    }


def check(crm: CRM, kind: RuleKind) -> list[SchemaProblem]:
    """Problems of the rule file as it is on disk now (for ``crmkit check``)."""
    try:
        load(crm, kind)
    except SchemaError as exc:
        return list(exc.problems)
    return []


def set_rules(crm: CRM, kind: RuleKind, rules: Any) -> None:
    """Put compiled rules in force directly (tests and embedding code that build rules in Python)."""
    state = _state(crm, kind)
    with state.lock:
        state.rules, state.problems = rules, []
        state.path = rule_path(crm, kind)
        state.signature = _signature(state.path)
        state.loaded_at = dt.datetime.now(dt.UTC)


# ---------------------------------------------------------------------------------------------
# The `crmkit rules` command group
# ---------------------------------------------------------------------------------------------
class RulesGroup(click.Group):
    """``crmkit rules``; plugins add their rule kinds with :meth:`add_kind`."""

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.kinds: dict[str, RuleKind] = {}

    def add_kind(self, kind: RuleKind) -> None:
        self.kinds[kind.name] = kind

    def kind_of(self, data: Any, name: str | None) -> RuleKind:
        if name:
            if name not in self.kinds:
                raise click.BadParameter(f"unknown kind {name!r}; enabled: {', '.join(sorted(self.kinds))}")
            return self.kinds[name]
        keys = set(data) if isinstance(data, dict) else set()
        found = [k for k in self.kinds.values() if keys & set(k.detect_keys)]
        if len(found) != 1:
            raise click.UsageError(
                "cannot tell which rules this file holds; pass --kind " + "|".join(sorted(self.kinds))
            )
        return found[0]


def rules_group(cli: click.Group) -> RulesGroup:
    """The shared ``rules`` group on ``cli`` (created by the first plugin that asks)."""
    group = cli.commands.get("rules")
    if isinstance(group, RulesGroup):
        return group
    group = RulesGroup("rules", help="Check, reload and dry-run the lead scoring and assignment rule files.")
    group.add_command(_test_cmd)
    group.add_command(_check_cmd)
    group.add_command(_reload_cmd)
    cli.add_command(group)
    return group


def _echo_problems(problems: list[Any]) -> None:
    for p in problems:
        click.echo(str(p), err=True)
    click.echo(f"{len(problems)} problem(s) found.", err=True)


def _open(project: Path, kind: RuleKind):
    from crmkit.cli import open_crm

    crm = open_crm(project, enable=[kind.plugin])
    return crm


def _parse_now(value: str | None) -> dt.datetime | None:
    if not value:
        return None
    try:
        now = dt.datetime.fromisoformat(value)
    except ValueError:
        raise click.BadParameter("use ISO 8601, e.g. 2026-04-14T10:00:00+09:00", param_hint="--now") from None
    return now if now.tzinfo else now.replace(tzinfo=dt.UTC)


_now_option = click.option("--now", "now_text", help="Pretend it is this time (ISO 8601; default: now).")


@click.command("test")
@project_option
@click.argument("file", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--sample", default=10, show_default=True, type=click.IntRange(1, 10000),
              help="How many existing records (newest first) to run the rules on.")
@click.option("--kind", "kind_name", help="scoring or assignment (default: guessed from the file's keys).")
@_now_option
@click.pass_context
def _test_cmd(ctx: click.Context, project: Path, file: Path, sample: int, kind_name: str | None,
              now_text: str | None) -> None:
    """Dry-run the rules in FILE on existing records and print what each would get; writes nothing."""
    group: RulesGroup = ctx.parent.command  # type: ignore[assignment]
    if not file.exists():
        raise click.BadParameter(f"{file} does not exist", param_hint="FILE")
    try:
        doc = load_yaml(file)
    except SchemaError as exc:
        _echo_problems(exc.problems)
        sys.exit(1)
    kind = group.kind_of(doc.data, kind_name)
    crm = _open(project, kind)
    try:
        try:
            rules = load(crm, kind, file.resolve())
        except SchemaError as exc:
            _echo_problems(exc.problems)
            sys.exit(1)
        assert kind.dry_run is not None
        kind.dry_run(crm, rules, sample=sample, now=_parse_now(now_text), echo=click.echo)
    finally:
        crm.close()


@click.command("check")
@project_option
@click.pass_context
def _check_cmd(ctx: click.Context, project: Path) -> None:
    """Validate the project's rule files (file:line: path: message); exit 1 on problems."""
    group: RulesGroup = ctx.parent.command  # type: ignore[assignment]
    problems: list[Any] = []
    for kind in group.kinds.values():
        crm = _open(project, kind)
        try:
            path = rule_path(crm, kind)
            found = check(crm, kind)
            problems += found
            if path is not None and not found:
                click.echo(f"{kind.name}: {path} OK")
        finally:
            crm.close()
    if problems:
        _echo_problems(problems)
        sys.exit(1)


@click.command("reload")
@project_option
@click.pass_context
def _reload_cmd(ctx: click.Context, project: Path) -> None:
    """Validate the rule files and, when valid, make running servers and workers reload them.

    Running processes reload a rule file when its modification time changes; this command checks
    the file first and only then touches it, so a bad file never replaces good rules (the
    processes would refuse it too, keeping the previous rules, but this says why up front).
    """
    group: RulesGroup = ctx.parent.command  # type: ignore[assignment]
    failed = False
    for kind in group.kinds.values():
        crm = _open(project, kind)
        try:
            path = rule_path(crm, kind)
            if path is None or path == kind.fallback:
                click.echo(f"{kind.name}: no rule file in the project (built-in defaults in force)")
                continue
            problems = check(crm, kind)
            if problems:
                failed = True
                _echo_problems(problems)
                click.echo(f"{kind.name}: {path} NOT reloaded; the previous rules stay active.", err=True)
                continue
            os.utime(path)
            click.echo(f"{kind.name}: {path} reloaded.")
        finally:
            crm.close()
    if failed:
        sys.exit(1)
