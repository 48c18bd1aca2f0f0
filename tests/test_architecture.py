"""The map and the contract: docs/architecture.md names every module, and the layer contract of
pyproject.toml holds (and would catch a backwards import)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PACKAGE = REPO / "cbir"
MAP = REPO / "docs" / "architecture.md"


def lint_imports(root: Path) -> subprocess.CompletedProcess[str]:
    """``lint-imports`` over the package found in ``root``, with the repository's contract."""
    code = "import sys; from importlinter.cli import lint_imports_command; sys.exit(lint_imports_command())"
    return subprocess.run(
        [sys.executable, "-c", code, "--config", str(REPO / "pyproject.toml")],
        cwd=root,
        env={"PYTHONPATH": str(root), "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_the_map_names_every_module():
    text = MAP.read_text(encoding="utf-8")
    modules = [
        p.relative_to(PACKAGE).as_posix()
        for p in sorted(PACKAGE.rglob("*.py"))
        if p.name != "__init__.py" or p.parent == PACKAGE
    ]
    missing = [m for m in modules if f"`{m}`" not in text and f"`cbir/{m}`" not in text]
    assert missing == [], f"docs/architecture.md does not name these modules of cbir/: {missing}"


def test_the_layers_hold_and_a_backwards_import_breaks_them(tmp_path):
    kept = lint_imports(REPO)
    assert kept.returncode == 0, kept.stdout + kept.stderr
    shutil.copytree(PACKAGE, tmp_path / "cbir", ignore=shutil.ignore_patterns("__pycache__", "static"))
    errors = tmp_path / "cbir" / "core" / "errors.py"
    errors.write_text(
        errors.read_text() + "\nimport cbir.service.settings  # planted: core must not see service\n"
    )
    broken = lint_imports(tmp_path)
    assert broken.returncode != 0
    assert "cbir.core is not allowed to import cbir.service" in broken.stdout, broken.stdout
