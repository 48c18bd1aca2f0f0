"""Rules of the code base that linters do not check: they keep the architecture as documented."""

from __future__ import annotations

import ast
import re
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "cbir"


def modules() -> list[Path]:
    return sorted(PACKAGE.rglob("*.py"))


def test_explicit_any_only_in_the_aliases_with_reasons():
    offenders = [
        f"{p.relative_to(PACKAGE.parent)}:{n}"
        for p in modules()
        if p.relative_to(PACKAGE.parent).as_posix() != "cbir/core/types.py"
        for n, line in enumerate(p.read_text().splitlines(), 1)
        if re.search(r"\bAny\b", line.split("#")[0]) and not line.lstrip().startswith(('"', "'"))
    ]
    assert offenders == [], "use (or add, with its reason) an alias in cbir/core/types.py"


def test_cbir_imports_are_at_the_top_of_each_module():
    """Function-local imports hide the dependency graph; only third-party heavy ones may be lazy."""
    late = []
    for p in modules():
        tree = ast.parse(p.read_text())
        top = set(map(id, tree.body))
        for node in tree.body:  # `if TYPE_CHECKING:` imports are module level too
            if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
                top.update(map(id, node.body))
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and id(node) not in top:
                if (node.module or "").startswith("cbir") or node.level:
                    late.append(f"{p.relative_to(PACKAGE.parent)}:{node.lineno}")
    # matplotlib, FastAPI: only when used; the entry point imports the commands inside its Ctrl-C guard
    allowed = {"cbir/cli/show.py", "cbir/cli/serve.py", "cbir/cli/main.py"}
    assert [x for x in late if x.split(":")[0] not in allowed] == []


def test_the_library_never_prints_or_exits():
    for p in modules():
        if p.parent.name == "cli" or p.name == "__main__.py":  # the command line is the face that prints
            continue
        text = p.read_text()
        assert not re.search(r"^\s*print\(", text, re.M), p
        assert "sys.exit" not in text, p
