"""Regenerate docs/plugin_hooks.md from crmkit/hookspecs.py: `python docs/gen_plugin_hooks.py`."""

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

# tests/test_docs.py runs or skips every code block of docs/; a signature is not an example to run.
SIGNATURE_MARKER = ("<!-- test: skip (a signature generated from crmkit/hookspecs.py, "
                    "checked by tests/test_hook_docs.py) -->")

src = open(ROOT / 'crmkit/hookspecs.py').read()
tree = ast.parse(src)
out = ["# Plugin hooks", "",
"crmkit plugins are modules or objects with functions marked `@crmkit.hookimpl`, registered through the",
"`crmkit` entry-point group, the `plugins:` list of `crmkit.yaml`, or `CRM(plugins=[...])`.",
"Every hook receives `crm` and is called with keyword arguments, so an implementation may accept only the",
"arguments it needs. Hooks return data; the core decides what to do with it.",
"",
"<!-- test: plugin -->",
"```python",
"from crmkit import hookimpl",
"",
"@hookimpl",
"def extend_entity(crm, name, definition):",
"    if name == \"lead\":",
"        return {\"fields\": {\"myplugin_score\": {",
"            \"type\": \"integer\", \"label\": {\"en\": \"Score\", \"ja\": \"スコア\"}}}}",
"```",
"",
"A hook marked **firstresult** stops at the first implementation that returns something other than `None`;",
"the others collect every implementation's result in a list.",
""]
section = None
lines = src.splitlines()
for node in tree.body:
    if isinstance(node, ast.FunctionDef):
        # find banner before
        start = node.lineno - 1
        for i in range(start-1, max(0,start-8), -1):
            m = re.match(r"# (\w[\w ,()]+)$", lines[i])
            if m and lines[i-1].startswith("# ----"):
                if section != m.group(1):
                    section = m.group(1)
                    out += [f"## {section}", ""]
                break
        dec = node.decorator_list[0]
        first = "firstresult=True" in ast.unparse(dec)
        args = ast.unparse(node.args)
        ret = ast.unparse(node.returns) if node.returns else "None"
        doc = ast.get_docstring(node)
        out += [f"### `{node.name}`", "", SIGNATURE_MARKER, "```python", f"def {node.name}({args}) -> {ret}", "```", ""]
        body = doc.replace(".. versionadded:: 0.1", "").strip()
        out += [body, "", f"*{'firstresult' if first else 'all results collected'} · added in 0.1*", ""]
open(ROOT / 'docs/plugin_hooks.md', 'w').write("\n".join(out))
