"""The house rules, checked: imports point one way (import-linter's contracts in pyproject.toml,
imports inside functions counted), no import cycle among vlchat's modules, and no module imports
another's private (underscore) names."""

from __future__ import annotations

import ast
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

pytestmark = pytest.mark.timeout(120)

REPO = Path(__file__).resolve().parents[2]
OWN = ("vlchat", "tests")


def lint_imports(cwd: Path, config: Path) -> subprocess.CompletedProcess:
    command = shutil.which("lint-imports") or str(Path(sys.executable).parent / "lint-imports")
    return subprocess.run(
        [command, "--config", str(config), "--no-cache"],
        cwd=cwd, capture_output=True, text=True, timeout=100,
    )


def test_the_layers_and_the_domain_contracts_hold():
    result = lint_imports(REPO, REPO / "pyproject.toml")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 broken" in result.stdout


def test_a_function_level_import_against_the_layers_is_caught(tmp_path):
    """The same contracts on a copy of the package with one import, inside a function, pointing up:
    core asking the UI for something."""
    shutil.copytree(REPO / "vlchat", tmp_path / "vlchat", ignore=shutil.ignore_patterns("__pycache__", "*.safetensors"))
    shutil.copy(REPO / "pyproject.toml", tmp_path / "pyproject.toml")
    target = tmp_path / "vlchat" / "core" / "conversation.py"
    target.write_text(target.read_text() + textwrap.dedent("""

        def _upwards():
            from vlchat.ui import status  # noqa: F401
        """))
    result = subprocess.run(
        [sys.executable, "-c", "import sys; from importlinter.cli import lint_imports_command; sys.exit(lint_imports_command())",
         "--config", "pyproject.toml", "--no-cache"],
        cwd=tmp_path, capture_output=True, text=True, timeout=100,
        env={"PYTHONPATH": str(tmp_path), "PATH": "/usr/bin:/bin"},
    )
    assert result.returncode != 0
    assert "vlchat.core.conversation -> vlchat.ui.status" in result.stdout


def private_imports(path: Path, root: Path = REPO) -> list[str]:
    """'file:line: from X import _name' for every underscore name imported from vlchat or tests."""
    found = []
    tree = ast.parse(path.read_text(), filename=str(path))
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0 and node.module.split(".")[0] in OWN:
            for alias in node.names:
                if alias.name.startswith("_") and not alias.name.startswith("__"):
                    found.append(f"{path.relative_to(root)}:{node.lineno}: from {node.module} import {alias.name}")
        elif isinstance(node, ast.ImportFrom) and node.level > 0:
            for alias in node.names:
                if alias.name.startswith("_") and not alias.name.startswith("__"):
                    found.append(f"{path.relative_to(root)}:{node.lineno}: from {'.' * node.level}{node.module or ''} import {alias.name}")
    return found


def test_no_private_name_is_imported_from_another_module():
    files = [p for folder in OWN for p in (REPO / folder).rglob("*.py")]
    assert len(files) > 40
    found = [line for path in files for line in private_imports(path)]
    assert found == []


def test_the_private_import_check_sees_one_inside_a_function(tmp_path):
    probe = tmp_path / "probe.py"
    probe.write_text("def f():\n    from vlchat.core.sessions import _dumps  # noqa\n")
    assert private_imports(probe, tmp_path) == ["probe.py:2: from vlchat.core.sessions import _dumps"]


# Every cycle among the package's modules as "a -> b -> a", from grimp's graph (import-linter's),
# which holds every import statement, those inside functions included. A package importing its
# submodule is an edge, and so is a submodule importing its package (``from vlchat.engines import
# x``); the package that Python runs implicitly before any of its submodules is not.
CYCLES = """
import sys
import grimp

graph = grimp.build_graph(sys.argv[1], cache_dir=None)
found = {}
for importer in sorted(graph.modules):
    for imported in sorted(graph.find_modules_directly_imported_by(importer) & graph.modules):
        chain = graph.find_shortest_chain(importer=imported, imported=importer)
        if chain:
            cycle = (importer, *chain)
            found.setdefault(frozenset(cycle), " -> ".join(cycle))
print("\\n".join(sorted(found.values())))
"""


def import_cycles(root: Path) -> list[str]:
    """The import cycles among the modules of the vlchat package found under ``root``."""
    result = subprocess.run(
        [sys.executable, "-c", CYCLES, "vlchat"], cwd=root, capture_output=True, text=True, timeout=100,
        env={"PYTHONPATH": str(root), "PATH": "/usr/bin:/bin"},
    )
    assert result.returncode == 0, result.stderr
    return [line for line in result.stdout.splitlines() if line]


def test_no_import_cycle_among_the_modules():
    assert import_cycles(REPO) == []


def test_a_cycle_through_an_import_inside_a_function_is_caught(tmp_path):
    """A copy of the package where the conversation module asks, inside a function, for the images
    module, which imports the conversation at its top: one cycle, named."""
    shutil.copytree(REPO / "vlchat", tmp_path / "vlchat", ignore=shutil.ignore_patterns("__pycache__", "*.safetensors"))
    target = tmp_path / "vlchat" / "core" / "conversation.py"
    target.write_text(target.read_text() + textwrap.dedent("""

        def _back():
            from vlchat.core import images  # noqa: F401
        """))
    assert import_cycles(tmp_path) == ["vlchat.core.conversation -> vlchat.core.images -> vlchat.core.conversation"]
