"""Project configuration: ``crmkit.yaml`` in the project directory, overridden by environment.

``CRMKIT_DATABASE_URL`` and ``CRMKIT_SECRET_KEY`` override the file, so the same project runs in
development and production without edits.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jsonschema

from crmkit.core.loader import SchemaError, SourceDoc, load_yaml

CONFIG_FILE = "crmkit.yaml"

CONFIG_SCHEMA: dict[str, Any] = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "type": "object",
    "additionalProperties": True,  # plugin sections are validated by register_config_schemas
    "properties": {
        "name": {"type": "string"},
        "database_url": {"type": "string"},
        "secret_key": {"type": "string", "minLength": 16},
        "schema_paths": {"type": "array", "items": {"type": "string"}},
        "plugins": {"type": "array", "items": {"type": "string"}},
        "disable_plugins": {"type": "array", "items": {"type": "string"}},
        "locale": {"enum": ["en", "ja"]},
        "time_zone": {"type": "string"},
        "upload_dir": {"type": "string"},
        "base_url": {"type": "string"},
        "session_max_age": {"type": "integer", "minimum": 60},
        "smtp": {
            "type": "object",
            "additionalProperties": False,
            "properties": {
                "host": {"type": "string"},
                "port": {"type": "integer"},
                "username": {"type": "string"},
                "password": {"type": "string"},
                "starttls": {"type": "boolean"},
                "ssl": {"type": "boolean"},
                "sender": {"type": "string"},
                "timeout": {"type": "number"},
            },
        },
    },
}


@dataclass
class Config:
    """Settings of one CRM project. ``raw`` keeps the whole file for plugin sections."""

    project_dir: Path | None = None
    database_url: str = "sqlite:///crmkit.db"
    secret_key: str | None = None
    schema_paths: list[Path] = field(default_factory=list)
    plugins: list[str] = field(default_factory=list)
    disable_plugins: list[str] = field(default_factory=list)
    locale: str = "en"
    time_zone: str = "Asia/Tokyo"
    upload_dir: Path | None = None
    base_url: str = "http://127.0.0.1:8000"
    session_max_age: int = 14 * 24 * 3600
    smtp: dict[str, Any] = field(default_factory=dict)
    raw: dict[str, Any] = field(default_factory=dict)
    source: SourceDoc | None = None

    def section(self, name: str) -> dict[str, Any]:
        """A plugin's section of crmkit.yaml (empty when absent)."""
        value = self.raw.get(name)
        return value if isinstance(value, dict) else {}


def load_config(project_dir: str | Path | None = None, **overrides: Any) -> Config:
    """Read ``crmkit.yaml`` from ``project_dir`` (if any), then apply environment and overrides.

    Raises :class:`SchemaError` with file:line for a malformed file.
    """
    cfg = Config()
    if project_dir is not None:
        pdir = Path(project_dir).resolve()
        cfg.project_dir = pdir
        cfg.database_url = f"sqlite:///{pdir / 'crmkit.db'}"
        cfg.upload_dir = pdir / "uploads"
        path = pdir / CONFIG_FILE
        default_schemas = pdir / "schemas"
        if path.exists():
            doc = load_yaml(path)
            data = doc.data or {}
            if not isinstance(data, dict):
                raise SchemaError([doc.problem((), "crmkit.yaml must be a mapping")])
            problems = [
                doc.problem(tuple(e.absolute_path), e.message)
                for e in jsonschema.Draft202012Validator(CONFIG_SCHEMA).iter_errors(data)
            ]
            if problems:
                raise SchemaError(problems)
            cfg.raw, cfg.source = data, doc
            if "database_url" in data:
                cfg.database_url = _relative_sqlite(data["database_url"], pdir)
            cfg.secret_key = data.get("secret_key")
            cfg.schema_paths = [pdir / p for p in data.get("schema_paths", ["schemas"])]
            cfg.plugins = list(data.get("plugins", []))
            cfg.disable_plugins = list(data.get("disable_plugins", []))
            cfg.locale = data.get("locale", cfg.locale)
            cfg.time_zone = data.get("time_zone", cfg.time_zone)
            if "upload_dir" in data:
                cfg.upload_dir = pdir / data["upload_dir"]
            cfg.base_url = data.get("base_url", cfg.base_url)
            cfg.session_max_age = data.get("session_max_age", cfg.session_max_age)
            cfg.smtp = dict(data.get("smtp", {}))
        elif default_schemas.is_dir():
            cfg.schema_paths = [default_schemas]
    env = os.environ
    if env.get("CRMKIT_DATABASE_URL"):
        cfg.database_url = env["CRMKIT_DATABASE_URL"]
    if env.get("CRMKIT_SECRET_KEY"):
        cfg.secret_key = env["CRMKIT_SECRET_KEY"]
    for key in ("host", "port", "username", "password", "sender"):
        value = env.get(f"CRMKIT_SMTP_{key.upper()}")
        if value:
            cfg.smtp[key] = int(value) if key == "port" else value
    for key, value in overrides.items():
        if value is not None:
            setattr(cfg, key, value)
    return cfg


def _relative_sqlite(url: str, base: Path) -> str:
    """``sqlite:///crm.db`` in a project file means relative to the project, not the shell's cwd."""
    prefix = "sqlite:///"
    if url.startswith(prefix) and not url.startswith(prefix + "/") and url != "sqlite:///:memory:":
        return prefix + str(base / url[len(prefix):])
    return url
