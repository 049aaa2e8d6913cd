"""The plugin manager: built-in plugins, entry points and the project's ``plugins:`` list.

A fresh manager per CRM object (as pytest does per run), so tests and several CRMs in one
process never share hook state.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import logging
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pluggy

from crmkit import hookspecs

log = logging.getLogger(__name__)

ENTRY_POINT_GROUP = "crmkit"

# Core features are plugins too; each module implements one family of hooks.
BUILTIN_PLUGINS = (
    "crmkit.plugins.field_types",
    "crmkit.plugins.import_export",
    "crmkit.plugins.duplicates",
    "crmkit.plugins.role_permissions",
    "crmkit.plugins.api_tokens",
    "crmkit.plugins.session_auth",
    "crmkit.plugins.user_profile",
    "crmkit.plugins.admin_dashboard",
    "crmkit.plugins.admin_commands",
    "crmkit.plugins.deals",
    "crmkit.plugins.forecast",
    "crmkit.plugins.reports",
    "crmkit.plugins.teams",
    "crmkit.plugins.mail_delivery",
    "crmkit.plugins.worker_commands",
    "crmkit.plugins.admin_jobs",
    "crmkit.plugins.notifications_ui",
    "crmkit.plugins.lead_conversion",
    "crmkit.plugins.activities",
    "crmkit.plugins.tasks",
    "crmkit.plugins.agenda",
    "crmkit.plugins.business_cards",
    "crmkit.plugins.health",
)

# Optional plugins shipped with crmkit; a project turns them on in crmkit.yaml (`plugins:`).
CONTRIB_PLUGINS = {
    "email_campaigns": "plugins_contrib.email_campaigns",
    "web_forms": "plugins_contrib.web_forms",
    "lead_scoring": "plugins_contrib.lead_scoring",
    "assignment_rules": "plugins_contrib.assignment_rules",
    "reminders": "plugins_contrib.reminders",
}


class PluginError(Exception):
    """A plugin hook raised; ``plugin`` names it so users know whom to blame."""

    def __init__(self, plugin: str, hook: str, error: BaseException):
        self.plugin, self.hook, self.error = plugin, hook, error
        super().__init__(f"plugin {plugin!r} failed in {hook}: {error}")


@dataclass(frozen=True)
class PluginInfo:
    """What ``crmkit plugins`` prints about one loaded plugin."""

    name: str
    source: str  # "built-in", "entry point <dist>", "crmkit.yaml", "code"
    hooks: tuple[str, ...]
    version: str | None = None


def make_plugin_manager() -> pluggy.PluginManager:
    """A new manager with crmkit's hookspecs."""
    pm = pluggy.PluginManager("crmkit")
    pm.add_hookspecs(hookspecs)
    return pm


def load_plugins(
    pm: pluggy.PluginManager,
    *,
    extra: list[Any] = (),
    config_plugins: list[str] = (),
    disabled: list[str] = (),
    entry_points: bool = True,
    project_dir: Path | None = None,
) -> dict[str, str]:
    """Register built-ins, entry-point plugins, config plugins and objects in ``extra``.

    Returns ``{plugin_name: source}``. ``disabled`` names plugins to leave out (built-ins too,
    so a project can replace e.g. the SMTP transport). A ``config_plugins`` name that is a module
    or package in ``project_dir`` (``acme_rules.py`` or ``acme_rules/`` next to crmkit.yaml) is
    imported from there, so a project's own plugin needs no PYTHONPATH and no packaging.
    """
    sources: dict[str, str] = {}

    def register(obj: Any, name: str, source: str) -> None:
        if name in disabled or pm.get_plugin(name) is not None:
            return
        pm.register(obj, name=name)
        sources[name] = source

    for modname in BUILTIN_PLUGINS:
        register(importlib.import_module(modname), modname, "built-in")
    if entry_points:
        for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
            try:
                register(ep.load(), ep.name, f"entry point {ep.dist.name if ep.dist else ep.value}")
            except Exception as exc:  # a broken third-party package must not stop the CRM
                log.error("could not load plugin %s: %s", ep.name, exc)
    for modname in config_plugins:
        target = CONTRIB_PLUGINS.get(modname, modname)
        if target == modname and project_dir is not None:
            _add_project_to_path(Path(project_dir), modname)
        register(importlib.import_module(target), modname, "crmkit.yaml")
    for i, obj in enumerate(extra):
        name = getattr(obj, "__name__", None) or f"{type(obj).__name__}-{i}"
        register(obj, name, "code")
    pm.hook.register_hookspecs(pm=pm)
    pm.check_pending()
    return sources


def _add_project_to_path(project_dir: Path, modname: str) -> None:
    """Put the project directory on ``sys.path`` when it holds the module ``modname``.

    Kept there (like the script directory of ``python script.py``) so the plugin's own later
    imports of sibling modules keep working.
    """
    top = modname.split(".", 1)[0]
    if not ((project_dir / f"{top}.py").is_file() or (project_dir / top / "__init__.py").is_file()):
        return
    path = str(project_dir.resolve())
    if path not in sys.path:
        sys.path.insert(0, path)
        importlib.invalidate_caches()


def plugin_name(pm: pluggy.PluginManager, plugin: Any) -> str:
    """The name a plugin object was registered under."""
    return pm.get_name(plugin) or repr(plugin)


def call_each(pm: pluggy.PluginManager, hook_name: str, **kwargs: Any) -> Iterator[tuple[str, Any]]:
    """Call every implementation of a hook in pluggy's order, yielding ``(plugin_name, result)``.

    Unlike ``pm.hook.X(...)`` this names the plugin whose implementation raised (as
    :class:`PluginError`), which the record hooks need for "which plugin failed" messages.
    """
    hook = getattr(pm.hook, hook_name)
    for impl in reversed(hook.get_hookimpls()):
        if impl.hookwrapper or getattr(impl, "wrapper", False):
            continue
        args = {k: kwargs[k] for k in impl.argnames if k in kwargs}
        try:
            result = impl.function(**args)
        except PluginError:
            raise
        except Exception as exc:
            raise PluginError(impl.plugin_name, hook_name, exc) from exc
        if result is not None:
            yield impl.plugin_name, result



def per_record(row_hook: Callable[..., Any], *entities: str) -> Callable[..., None]:
    """A ``before_create_many``/``after_create_many`` implementation that runs ``row_hook`` (the
    plugin's ``before_save``/``after_save``, with ``old=None``) for each record of ``entities``.

    A plugin whose per-record hook concerns only some entities declares it for batches this way,
    so bulk creates of other entities (a lead import) skip it entirely::

        before_create_many = hookimpl(per_record(before_save, "activity"), specname="before_create_many")
    """

    def batch(crm: Any, entity: Any, records: list[dict[str, Any]], conn: Any, actor: Any) -> None:
        if entity.name in entities:
            for record in records:
                row_hook(crm, entity, record, None, conn, actor)

    batch.__doc__ = f"Bulk creates: ``{row_hook.__name__}`` for each record of {', '.join(entities)}."
    return batch
