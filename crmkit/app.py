"""The CRM object: configuration, plugins, catalog, database and generated tables in one place."""

from __future__ import annotations

import logging
import secrets
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any

import jsonschema
import sqlalchemy as sa

from crmkit.config import Config, load_config
from crmkit.core.assemble import build_catalog, builtin_schema_dir, yaml_files
from crmkit.core.catalog import Catalog
from crmkit.core.db import create_engine
from crmkit.core.fieldtypes import FieldTypeRegistry
from crmkit.core.loader import SchemaError, SchemaProblem
from crmkit.core.system_tables import define_system_tables
from crmkit.core.tables import NAMING_CONVENTION, Schema, build_schema
from crmkit.plugins import PluginError, PluginInfo, call_each, load_plugins, make_plugin_manager

if TYPE_CHECKING:
    from crmkit.core.records import RecordStore

log = logging.getLogger(__name__)


class CRM:
    """One CRM: a project's config, its plugins, its catalog and its database.

    ``CRM(project_dir)`` reads ``crmkit.yaml``; keyword arguments override the file (tests pass
    ``database_url`` and ``plugins``). Building it validates every schema and raises
    :class:`crmkit.SchemaError` listing all problems; it never touches the database.
    """

    def __init__(
        self,
        project_dir: str | Path | None = None,
        *,
        config: Config | None = None,
        database_url: str | None = None,
        plugins: list[Any] = (),
        entry_points: bool = True,
        schema_paths: list[str | Path] | None = None,
        enable: list[str] = (),
    ):
        self.config = config or load_config(project_dir, database_url=database_url)
        if config is not None and database_url:
            self.config.database_url = database_url
        if schema_paths is not None:
            self.config.schema_paths = [Path(p) for p in schema_paths]
        self.pm = make_plugin_manager()
        self.plugin_sources = load_plugins(
            self.pm,
            extra=list(plugins),
            config_plugins=list(self.config.plugins) + [p for p in enable if p not in self.config.plugins],
            disabled=self.config.disable_plugins,
            entry_points=entry_points,
            project_dir=self.config.project_dir,
        )
        self._check_plugin_config()
        self.field_types = FieldTypeRegistry()
        for _plugin, types in call_each(self.pm, "register_field_types", crm=self):
            for t in types:
                self.field_types.add(t)
        self.catalog: Catalog = build_catalog(
            self.schema_files(), self.field_types, extend=self._extend_entity, after=self._schema_loaded
        )
        self.metadata = sa.MetaData(naming_convention=NAMING_CONVENTION)
        self.system_tables = define_system_tables(self.metadata)
        for plugin, tables in call_each(self.pm, "register_tables", crm=self, metadata=self.metadata):
            for table in tables:
                if table.metadata is not self.metadata:
                    raise PluginError(plugin, "register_tables", ValueError(f"{table.name}: not on crm.metadata"))
                self.system_tables[table.name] = table
        self.schema: Schema = build_schema(self.catalog, self.field_types, self.metadata)
        self._closed = False

    def _check_plugin_config(self) -> None:
        """Validate each plugin's section of crmkit.yaml against the schema it registered."""
        problems: list[SchemaProblem] = []
        source = self.config.source
        for plugin, schemas in call_each(self.pm, "register_config_schemas", crm=self):
            for section, schema in schemas.items():
                if section not in self.config.raw:
                    continue
                for err in jsonschema.Draft202012Validator(schema).iter_errors(self.config.raw[section]):
                    path = (section, *err.absolute_path)
                    if source is not None:
                        problems.append(source.problem(path, f"{err.message} (plugin {plugin})"))
                    else:
                        problems.append(SchemaProblem("crmkit.yaml", 1, ".".join(map(str, path)), err.message))
        if problems:
            raise SchemaError(problems)

    # -- schema --------------------------------------------------------------------------------
    def schema_files(self) -> list[Path]:
        """Entity files in load order: built-ins, plugin ``schema_paths``, then the project's."""
        paths: list[str | Path] = [builtin_schema_dir()]
        for _plugin, extra in call_each(self.pm, "schema_paths", crm=self):
            paths += list(extra)
        paths += self.config.schema_paths
        return yaml_files(paths)

    def _extend_entity(self, name: str, definition: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
        return list(call_each(self.pm, "extend_entity", crm=self, name=name, definition=definition))

    def _schema_loaded(self, catalog: Catalog) -> list[str]:
        problems = []
        for plugin, messages in call_each(self.pm, "schema_loaded", crm=self, catalog=catalog):
            problems += [f"plugin {plugin}: {m}" for m in messages]
        return problems

    # -- database ------------------------------------------------------------------------------
    @cached_property
    def engine(self) -> sa.Engine:
        """The SQLAlchemy engine (created on first use)."""
        return create_engine(self.config.database_url)

    def table(self, entity: str) -> sa.Table:
        """The generated table of ``entity``."""
        return self.schema.tables[entity]

    @cached_property
    def secret_key(self) -> str:
        """The signing key for sessions and links; a random one (with a warning) if unset."""
        if self.config.secret_key:
            return self.config.secret_key
        log.warning("no secret_key configured: using a random one (sessions end on restart)")
        return secrets.token_urlsafe(32)

    @cached_property
    def records(self) -> RecordStore:
        """The RecordStore: the one path every read and write of a record goes through."""
        from crmkit.core.records import RecordStore

        return RecordStore(self)

    def asgi(self) -> Any:
        """The Starlette application serving the admin, the REST API and plugin routes."""
        from crmkit.web.app import build_app

        return build_app(self)

    # -- plugins -------------------------------------------------------------------------------
    def plugin_infos(self) -> list[PluginInfo]:
        """Every registered plugin, where it came from and the hooks it implements."""
        infos = []
        for name, plugin in self.pm.list_name_plugin():
            hooks = tuple(sorted(h.name for h in self.pm.get_hookcallers(plugin) or ()))
            version = getattr(plugin, "__version__", None)
            infos.append(PluginInfo(name, self.plugin_sources.get(name, "code"), hooks, version))
        return sorted(infos, key=lambda i: (i.source != "built-in", i.name))

    def startup(self) -> None:
        """Build the indexes an interrupted import left for later (if any), then run the ``startup`` hooks."""
        from crmkit.core import deferred_indexes

        deferred_indexes.restore(self)
        self.pm.hook.startup(crm=self)

    def close(self) -> None:
        """Run ``shutdown`` hooks and release database connections."""
        if self._closed:
            return
        self._closed = True
        self.pm.hook.shutdown(crm=self)
        if "records" in self.__dict__:
            self.records.reads.close()
        if "engine" in self.__dict__:
            self.engine.dispose()

    def __enter__(self) -> CRM:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
