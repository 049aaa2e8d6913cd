"""The wheel ships every package folder and the public API stays curated."""

from __future__ import annotations

import tomllib
from pathlib import Path

import crmkit

ROOT = Path(__file__).resolve().parent.parent


def test_every_package_folder_is_listed_in_pyproject():
    config = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["tool"]["setuptools"]
    listed = set(config["packages"])
    mapped = {pkg: path for pkg, path in config.get("package-dir", {}).items()}
    found = set()
    for init in ROOT.glob("**/__init__.py"):
        rel = init.parent.relative_to(ROOT)
        if rel.parts[0] in ("tests", ".venv", "build", "bench", "docs") or rel.parts[0].startswith("."):
            continue
        dotted = ".".join(rel.parts)
        for pkg, path in mapped.items():
            if dotted == path.replace("/", ".") or dotted.startswith(path.replace("/", ".") + "."):
                dotted = pkg + dotted[len(path):].replace("/", ".")
        found.add(dotted)
    assert found == listed, f"add to [tool.setuptools] packages: {sorted(found - listed)}"


def test_public_api():
    assert set(crmkit.__all__) >= {"CRM", "hookimpl", "FieldType", "SchemaError", "PluginError"}
    for name in crmkit.__all__:
        assert hasattr(crmkit, name), name
