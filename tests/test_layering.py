"""Layering: the statistics core (``sketches/``) never imports the runtime or the exporters,
and neither the statistics, the runtime nor the exporters import the demo (``demo/``)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
FORBIDDEN = ("agent", "exporters", "demo")
SKETCH_FILES = sorted((ROOT / "sketches").glob("*.py"))
RUNTIME_FILES = sorted((ROOT / "agent").glob("*.py")) + sorted((ROOT / "exporters").glob("*.py"))
# The one way into the demo: the ``demo`` command imports it lazily, inside ``main()``, so
# ``embmon run`` never loads it (tests/test_import_graph.py checks the running process).
LAZY_DEMO_IMPORTS = {"agent/cli.py": ["demo.story"]}


def forbidden_imports(
    source: str, package: str = "sketches", forbidden: tuple[str, ...] = FORBIDDEN
) -> list[str]:
    """Every import in ``source`` (a module of ``package``) that reaches a forbidden package.

    Absolute imports are checked by their first dotted component; relative imports are resolved
    against ``package`` (``from .. import agent`` from ``sketches`` reaches the top level).

    >>> forbidden_imports("import numpy\\nfrom .quantiles import QuantileSketch")
    []
    >>> forbidden_imports("import agent.cli\\nfrom exporters import report\\nfrom ..agent import x")
    ['agent.cli', 'exporters', '..agent']
    >>> forbidden_imports("from demo.corpus import x\\nfrom ..demo import y", "agent", ("demo",))
    ['demo.corpus', '..demo']
    """
    found: list[str] = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found.extend(a.name for a in node.names if a.name.split(".")[0] in forbidden)
        elif isinstance(node, ast.ImportFrom):
            module = node.module or ""
            if node.level == 0:
                if module.split(".")[0] in forbidden:
                    found.append(module)
                continue
            parts = package.split(".")
            if node.level > len(parts):  # above the top level: first name is a top package
                targets = [module] if module else [a.name for a in node.names]
                hits = [t for t in targets if t.split(".")[0] in forbidden]
                found.extend("." * node.level + t for t in hits)
    return found


def test_the_sketches_package_is_found() -> None:
    names = {path.name for path in SKETCH_FILES}
    # A check over no files would pass vacuously: pin the modules the contracts name.
    assert {"__init__.py", "quantiles.py", "profile.py", "drift.py", "reference.py"} <= names


@pytest.mark.parametrize("path", SKETCH_FILES, ids=lambda p: p.name)
def test_sketches_module_imports_no_agent_exporters_or_demo(path: Path) -> None:
    bad = forbidden_imports(path.read_text(encoding="utf-8"))
    assert bad == [], f"sketches/{path.name} imports {bad}; sketches/ must stay pure statistics"


def test_the_runtime_packages_are_found() -> None:
    names = {path.relative_to(ROOT).as_posix() for path in RUNTIME_FILES}
    assert {"agent/cli.py", "agent/run.py", "agent/pipeline.py", "exporters/prometheus.py"} <= names


@pytest.mark.parametrize("path", RUNTIME_FILES, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_runtime_module_imports_no_demo(path: Path) -> None:
    name = path.relative_to(ROOT).as_posix()
    package = path.parent.name
    bad = forbidden_imports(path.read_text(encoding="utf-8"), package, ("demo",))
    assert bad == LAZY_DEMO_IMPORTS.get(name, []), (
        f"{name} imports {bad}; the runtime must not need the demo (corpus, scikit-learn "
        "training, embedded broker): move the code, or import it lazily from the demo command"
    )


@pytest.mark.parametrize(
    "source",
    [
        "import agent",
        "import exporters.prometheus as p",
        "from agent.config import Config",
        "from exporters import windows",
        "from .. import agent",
        "from ..exporters.report import render",
        "def f():\n    import agent.cli\n",
        "try:\n    from agent import x\nexcept ImportError:\n    pass\n",
    ],
)
def test_the_checker_catches_every_import_form(source: str) -> None:
    assert forbidden_imports(source) != []


@pytest.mark.parametrize(
    "source",
    [
        "import numpy as np",
        "from .errors import FormatError",
        "from . import serial",
        "import agenthood",
        "from sketches.agent_like import x",
    ],
)
def test_the_checker_allows_other_imports(source: str) -> None:
    assert forbidden_imports(source) == []
