"""The architecture is checkable: no import cycle inside ood_zoo, no private name crosses a
package boundary, and the import-linter contracts in pyproject.toml hold (``make lint``)."""

from __future__ import annotations

import ast
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

grimp = pytest.importorskip("grimp")

ROOT = Path(__file__).resolve().parents[1]
#: Trees whose code must not reach into another module's private names.
CHECKED_TREES = ("ood_zoo", "tests", "benchmarks", "plugins")
#: Jinja templates, Python only once rendered (tests/test_plugin_template.py checks the result).
TEMPLATES = ROOT / "plugins" / "template"


def _strongly_connected(graph: dict[str, set[str]]) -> list[list[str]]:
    """Tarjan's algorithm: the components of more than one module (or a self-import)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for succ in graph[node]:
            if succ not in index:
                visit(succ)
                low[node] = min(low[node], low[succ])
            elif succ in on_stack:
                low[node] = min(low[node], index[succ])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1 or node in graph[node]:
                found.append(sorted(component))

    sys.setrecursionlimit(max(sys.getrecursionlimit(), 10_000))
    for node in graph:
        if node not in index:
            visit(node)
    return found


def import_graph(exclude_type_checking: bool = True) -> dict[str, set[str]]:
    graph = grimp.build_graph("ood_zoo", exclude_type_checking_imports=exclude_type_checking)
    return {m: set(graph.find_modules_directly_imported_by(m)) for m in graph.modules}


def test_tarjan_finds_a_planted_cycle() -> None:
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}, "e": {"e"}}
    assert sorted(_strongly_connected(graph)) == [["a", "b", "c"], ["e"]]
    assert _strongly_connected({"a": {"b"}, "b": set()}) == []


def test_no_import_cycles_inside_ood_zoo() -> None:
    cycles = _strongly_connected(import_graph())
    assert cycles == [], "import cycles: " + "; ".join(" <-> ".join(c) for c in cycles)


def test_ops_imports_nothing_from_the_rest_but_errors() -> None:
    graph = import_graph()
    ops = {m for m in graph if m == "ood_zoo.ops" or m.startswith("ood_zoo.ops.")}
    outside = {i for m in ops for i in graph[m] if i not in ops}
    assert outside <= {"ood_zoo.errors"}, sorted(outside)


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _is_private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def _resolve(module: str, is_package: bool, node: ast.ImportFrom) -> str:
    if not node.level:
        return node.module or ""
    base = module.split(".")
    base = base if is_package else base[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join([*base, *([node.module] if node.module else [])])


def _owner(target: str) -> str | None:
    """The package a private dotted name belongs to: everything before its first private part."""
    parts = target.split(".")
    for i, part in enumerate(parts):
        if _is_private(part):
            return ".".join(parts[:i])
    return None


def private_imports(source: str, module: str, *, is_package: bool = False) -> list[str]:
    """``from X import _y`` / ``import X._y`` / ``alias._y`` in module ``module`` that reach
    outside its own package (a package's private parts are for its own modules only)."""
    package = module if is_package else module.rpartition(".")[0]
    tree = ast.parse(source)
    aliases: dict[str, str] = {}
    bad = []

    def check(target: str, line: int) -> None:
        owner = _owner(target)
        if owner is not None and owner.startswith("ood_zoo") and not (
            package == owner or package.startswith(owner + ".")
        ):
            bad.append(f"{module}:{line}: {target}")

    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            source = _resolve(module, is_package, node)
            for alias in node.names:
                check(f"{source}.{alias.name}", node.lineno)
                if source.startswith("ood_zoo"):
                    aliases[alias.asname or alias.name] = f"{source}.{alias.name}"
        elif isinstance(node, ast.Import):
            for alias in node.names:
                check(alias.name, node.lineno)
                if alias.name.startswith("ood_zoo"):
                    aliases[alias.asname or alias.name.split(".")[0]] = (
                        alias.name if alias.asname else alias.name.split(".")[0])
    for node in ast.walk(tree):
        if (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name)
                and node.value.id in aliases and _is_private(node.attr)):
            check(f"{aliases[node.value.id]}.{node.attr}", node.lineno)
    return bad


def test_private_import_check_catches_violations() -> None:
    source = ("from ood_zoo.bench.tables import _private\n"
              "from ..features.models import _helper\n"
              "import ood_zoo.ops as ops\nops._loader\n"
              "from ood_zoo import metrics\nfrom ._common import as_float\n")
    found = private_imports(source, "ood_zoo.detectors.gmm")
    assert [hit.split(": ")[1] for hit in found] == [
        "ood_zoo.bench.tables._private", "ood_zoo.features.models._helper",
        "ood_zoo.ops._loader"], found
    # a package's own modules may use its private parts
    assert private_imports("from ._common import as_float\n", "ood_zoo.detectors.gmm") == []
    assert private_imports("from . import _ext\n", "ood_zoo.ops", is_package=True) == []


def _source_files() -> list[Path]:
    return [path for tree in CHECKED_TREES for path in sorted((ROOT / tree).rglob("*.py"))
            if not {".venv", "build"} & set(path.parts) and TEMPLATES not in path.parents]


def test_no_module_imports_another_modules_private_names() -> None:
    bad = [hit for path in _source_files()
           for hit in private_imports(path.read_text(encoding="utf-8"), _module_name(path),
                                      is_package=path.name == "__init__.py")]
    assert bad == [], "private names used across modules:\n" + "\n".join(bad)


def test_import_linter_contracts_hold() -> None:
    lint_imports = shutil.which("lint-imports", path=str(Path(sys.executable).parent))
    if lint_imports is None:
        pytest.skip("import-linter is not installed (pip install -e '.[dev]')")
    done = subprocess.run([lint_imports, "--no-cache"], cwd=ROOT, capture_output=True,
                          text=True, timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr


def _top_level_parts() -> set[str]:
    """The modules and packages directly under ood_zoo (public ones; the extension aside)."""
    package = ROOT / "ood_zoo"
    names = {p.stem for p in package.glob("*.py")} | {
        p.name for p in package.iterdir() if (p / "__init__.py").exists()}
    return {n for n in names if not n.startswith("_")}


def _layers() -> list[str]:
    import tomllib

    config = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    (layers,) = [c["layers"] for c in config["tool"]["importlinter"]["contracts"]
                 if c["type"] == "layers"]
    return layers


def test_every_top_level_module_has_a_layer() -> None:
    listed = {name.strip().removeprefix("ood_zoo.") for layer in _layers()
              for name in layer.split("|")}
    assert listed == _top_level_parts()


def test_architecture_md_matches_the_tree() -> None:
    text = (ROOT / "ARCHITECTURE.md").read_text(encoding="utf-8")
    paths = set(re.findall(r"`(ood_zoo/[\w/.]+)`", text))
    assert paths, "ARCHITECTURE.md names no ood_zoo/ paths"
    missing = sorted(p for p in paths if not (ROOT / p.rstrip("/")).exists())
    assert missing == [], f"ARCHITECTURE.md names paths that do not exist: {missing}"
    layer_block = text[text.index("## Layers"):text.index("## Where new things go")]
    for layer in _layers():
        assert " | ".join(n.removeprefix("ood_zoo.") for n in layer.split(" | ")) in layer_block


def test_readme_layout_names_every_package() -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    block = readme[readme.index("## Layout"):]
    block = block[:block.index("\n## ") if "\n## " in block else len(block)]
    packages = {p.name for p in (ROOT / "ood_zoo").iterdir() if (p / "__init__.py").exists()}
    absent = sorted(p for p in packages if f"{p}/" not in block)
    assert absent == [], f"README's Layout misses {absent}"
