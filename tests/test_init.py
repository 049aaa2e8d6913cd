"""`crmkit init` scaffolds a project that passes `crmkit check`."""

from __future__ import annotations

from tests.conftest import run_cli


def test_init_then_check(tmp_path):
    target = tmp_path / "acme"
    result = run_cli("init", str(target))
    assert result.returncode == 0, result.stderr
    assert (target / "crmkit.yaml").exists()
    overlay = (target / "schemas" / "lead_extra.yaml").read_text(encoding="utf-8")
    assert "extends: lead" in overlay and "ja:" in overlay
    assert (target / "schemas" / "contract.yaml").exists()
    check = run_cli("check", cwd=target)
    assert check.returncode == 0, check.stderr
    again = run_cli("init", str(target))
    assert again.returncode != 0 and "already exists" in again.stderr
