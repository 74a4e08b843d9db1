"""The layer contract (.importlinter) as a test: lower layers never import upper ones."""

import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def _lint_imports(cwd: Path) -> subprocess.CompletedProcess[str]:
    exe = shutil.which("lint-imports") or str(Path(sys.executable).parent / "lint-imports")
    return subprocess.run([exe], cwd=cwd, capture_output=True, text=True, check=False)


def test_import_contracts_are_kept() -> None:
    result = _lint_imports(REPO)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 broken" in result.stdout


def test_the_product_may_not_import_the_dev_tools(tmp_path: Path) -> None:
    """The image carries no `devtools`: one import of it from `controller` would break the operator
    there, and only there."""
    for package in ("controller", "devtools"):
        shutil.copytree(REPO / package, tmp_path / package, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(REPO / ".importlinter", tmp_path)
    settings = tmp_path / "controller" / "settings.py"
    settings.write_text(settings.read_text() + "\nimport devtools.files\n")
    result = _lint_imports(tmp_path)
    assert result.returncode != 0, result.stdout
    assert "controller.settings -> devtools.files" in result.stdout, result.stdout
