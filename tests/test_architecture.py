"""The layer contracts of docs/architecture.md hold: `lint-imports` over the package."""

import pathlib
import shutil
import subprocess
import sys

REPO = pathlib.Path(__file__).resolve().parent.parent


def test_import_contracts_are_kept():
    lint_imports = shutil.which("lint-imports") or str(pathlib.Path(sys.executable).parent / "lint-imports")
    result = subprocess.run([lint_imports, "--no-cache"], cwd=REPO, capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    assert "BROKEN" not in result.stdout


def test_contracts_forbid_shortcuts():
    """No `ignore_imports` escape hatches: a broken layer is fixed, not waived."""
    text = (REPO / "pyproject.toml").read_text()
    assert "ignore_imports" not in text
