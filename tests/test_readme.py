"""The README's and docs/' Python examples run as written; docs/hooks.md matches hookspecs.py.

README blocks are independent examples, each run on its own. A page of ``docs/`` builds one
thing step by step: its blocks run in order in one namespace, a module named after the page
(``docs/writing-a-plugin.md`` runs as module ``writing_a_plugin``, so an entry point can name it).
"""

from __future__ import annotations

import inspect
import re
import subprocess
import sys
import types
from pathlib import Path

import pytest

from ood_zoo import hookspecs

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
DOCS = ROOT / "docs"
HOOKS_REFERENCE = DOCS / "hooks.md"


def python_blocks(path: Path) -> list[str]:
    """The fenced ```` ```python ```` blocks of a Markdown file, in order."""
    return re.findall(r"```python\n(.*?)```", path.read_text(encoding="utf-8"), flags=re.S)


BLOCKS = python_blocks(README)
PAGES = sorted(page for page in DOCS.glob("*.md") if python_blocks(page))


def test_readme_has_python_examples():
    assert BLOCKS


@pytest.mark.parametrize("source", BLOCKS, ids=[f"block{i}" for i in range(len(BLOCKS))])
def test_readme_python_block_runs(source, tmp_path, monkeypatch):
    if "from ood_zoo import hookimpl" in source and "KMeansCosineDetector" in source:
        pytest.importorskip("ood_zoo_example")
        source = "from ood_zoo_example import KMeansCosineDetector\n" + source
    monkeypatch.chdir(tmp_path)
    if "import ray" in source:  # a Ray driver in its own interpreter: no cluster state leaks
        subprocess.run([sys.executable, "-c", source], check=True, cwd=tmp_path, timeout=600)
        return
    exec(compile(source, str(README), "exec"), {"__name__": "readme"})


def test_docs_have_pages_with_python_examples():
    assert DOCS / "writing-a-plugin.md" in PAGES


@pytest.mark.parametrize("page", PAGES, ids=[page.stem for page in PAGES])
def test_docs_page_runs_top_to_bottom(page, tmp_path, monkeypatch):
    module = types.ModuleType(page.stem.replace("-", "_"))
    module.__file__ = str(page)
    monkeypatch.setitem(sys.modules, module.__name__, module)
    monkeypatch.chdir(tmp_path)
    for source in python_blocks(page):
        exec(compile(source, str(page), "exec"), module.__dict__)


def _hookspecs() -> dict[str, str]:
    """Each hook of ood_zoo/hookspecs.py and its signature, as the reference writes it."""
    signatures = {}
    for name, function in inspect.getmembers(hookspecs, inspect.isfunction):
        if not hasattr(function, f"{hookspecs.PROJECT}_spec"):
            continue
        signature = inspect.signature(function)
        parameters = ", ".join(
            p.name if p.annotation is p.empty else f"{p.name}: {p.annotation}"
            for p in signature.parameters.values()
        )
        signatures[name] = f"{name}({parameters}) -> {signature.return_annotation}"
    return signatures


def test_hooks_reference_documents_every_hookspec_with_its_signature():
    text = HOOKS_REFERENCE.read_text(encoding="utf-8")
    documented = re.findall(r"^### `(ood_zoo_\w+)\((.*?)\) -> (.+)`$", text, flags=re.M)
    assert {name for name, _, _ in documented} == set(_hookspecs()), (
        "docs/hooks.md must have one '### `signature`' heading per hook in ood_zoo/hookspecs.py"
    )
    for name, parameters, returns in documented:
        assert f"{name}({parameters}) -> {returns}" == _hookspecs()[name]


def test_hooks_reference_check_sees_the_hookspecs():
    assert _hookspecs()["ood_zoo_detectors"] == "ood_zoo_detectors() -> list[type[Detector]]"
