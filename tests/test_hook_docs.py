"""Every hookspec is documented in docs/plugin_hooks.md (regenerate: python docs/gen_plugin_hooks.py)."""

from __future__ import annotations

import inspect
from pathlib import Path

from crmkit import hookspecs
from crmkit.plugins import make_plugin_manager

DOC = Path(__file__).resolve().parent.parent / "docs" / "plugin_hooks.md"


def all_hookspecs():
    pm = make_plugin_manager()
    return {name: getattr(hookspecs, name) for name in dir(pm.hook)
            if not name.startswith("_") and hasattr(getattr(hookspecs, name, None), "crmkit_spec")}


def test_every_hookspec_is_documented_with_signature_and_firstresult():
    text = DOC.read_text(encoding="utf-8")
    specs = all_hookspecs()
    assert len(specs) >= 30
    for name, func in specs.items():
        assert f"### `{name}`" in text, f"{name} missing from docs/plugin_hooks.md"
        section = text.split(f"### `{name}`", 1)[1].split("\n### ", 1)[0]
        params = ", ".join(inspect.signature(func).parameters)
        for p in inspect.signature(func).parameters:
            assert p in section, f"{name}: parameter {p} undocumented ({params})"
        firstresult = func.crmkit_spec.get("firstresult", False)
        assert ("*firstresult" in section) == firstresult, f"{name}: firstresult not stated correctly"


def test_every_hookspec_has_a_docstring_with_version():
    for name, func in all_hookspecs().items():
        doc = inspect.getdoc(func) or ""
        assert len(doc) > 40, name
        assert "versionadded" in doc, name
