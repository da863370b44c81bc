"""The package's layout is the README's: modules in pipeline order, each importing only those above it.

The README's "Layout" section lists every module of src/einplan, one per line
(``- `name.py`: its concept``), in pipeline order.  Read from the source with
``ast`` (every import, including those inside functions):

- every module file is listed, and every listed module exists;
- each module imports only einplan modules listed before it, so there is no
  import cycle (``from . import name`` of a name that is not a module imports
  the package, ``__init__``);
- no module imports another einplan module's private names (``from .x import _y``,
  or ``x._y`` on a module it imported); dunder names such as ``__version__`` are public;
- no module is over 450 lines and no function over 60.
"""

from __future__ import annotations

import ast
import re
from dataclasses import dataclass, field
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "src" / "einplan"
README = ROOT / "README.md"
PACKAGE_NAME = "einplan"
INIT = "__init__"
MAX_MODULE_LINES = 450
MAX_FUNCTION_LINES = 60
LISTED = re.compile(r"^\s*[-*]\s+`(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?:\.py)?`")


def module_files() -> dict[str, Path]:
    return {path.stem: path for path in sorted(PACKAGE.glob("*.py"))}


def readme_layout() -> list[str]:
    """The module names of the README's Layout section, in the order listed."""
    lines = README.read_text(encoding="utf-8").splitlines()
    starts = [i for i, line in enumerate(lines) if re.match(r"^#{2,3}\s+Layout\b", line)]
    assert starts, "README.md has no '## Layout' section"
    names = []
    for line in lines[starts[0] + 1 :]:
        if re.match(r"^#{1,3}\s", line):
            break
        match = LISTED.match(line)
        if match:
            names.append(match["name"])
    return names


def is_private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


@dataclass
class Imports:
    """The einplan modules one module imports, with the line of each import."""

    modules: dict[str, list[int]] = field(default_factory=dict)
    private: list[str] = field(default_factory=list)  # "line N: what"

    def add(self, module: str, line: int) -> None:
        self.modules.setdefault(module, []).append(line)


class ImportReader(ast.NodeVisitor):
    def __init__(self, known: set[str]):
        self.known = known
        self.found = Imports()
        self.aliases: dict[str, str] = {}  # local name -> einplan module it is bound to

    def _target(self, dotted: str) -> str | None:
        """The einplan module an absolute dotted name refers to (``einplan`` itself: __init__)."""
        parts = dotted.split(".")
        if parts[0] != PACKAGE_NAME:
            return None
        return parts[1] if len(parts) > 1 and parts[1] in self.known else INIT

    def visit_Import(self, node: ast.Import) -> None:
        for alias in node.names:
            module = self._target(alias.name)
            if module is None:
                continue
            self.found.add(module, node.lineno)
            if alias.asname:
                self.aliases[alias.asname] = module

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        if node.level > 1:
            raise AssertionError(f"line {node.lineno}: einplan is one flat package, no '..' imports")
        if node.level == 1:
            base = node.module.split(".")[0] if node.module else None
        elif node.module and self._target(node.module) is not None:
            base = None if node.module == PACKAGE_NAME else self._target(node.module)
        else:
            return
        if base is not None:  # from .x import a, b
            self.found.add(base, node.lineno)
            for alias in node.names:
                if is_private(alias.name):
                    self.found.private.append(f"line {node.lineno}: from {base} import {alias.name}")
            return
        for alias in node.names:  # from . import x: a module, or a name of the package's __init__
            if alias.name in self.known:
                self.found.add(alias.name, node.lineno)
                self.aliases[alias.asname or alias.name] = alias.name
            else:
                self.found.add(INIT, node.lineno)
            if is_private(alias.name):
                self.found.private.append(f"line {node.lineno}: from . import {alias.name}")

    def visit_Attribute(self, node: ast.Attribute) -> None:
        if isinstance(node.value, ast.Name) and node.value.id in self.aliases and is_private(node.attr):
            self.found.private.append(f"line {node.lineno}: {node.value.id}.{node.attr} ({self.aliases[node.value.id]})")
        self.generic_visit(node)


def read_imports(path: Path, known: set[str]) -> Imports:
    reader = ImportReader(known)
    reader.visit(ast.parse(path.read_text(encoding="utf-8"), filename=str(path)))
    reader.found.modules.pop(path.stem, None)
    return reader.found


@pytest.fixture(scope="module")
def files() -> dict[str, Path]:
    found = module_files()
    assert found, f"no modules under {PACKAGE}"
    return found


@pytest.fixture(scope="module")
def layout() -> list[str]:
    names = readme_layout()
    assert names, "README's Layout section lists no modules"
    duplicates = sorted({n for n in names if names.count(n) > 1})
    assert not duplicates, f"listed more than once in README's Layout: {duplicates}"
    return names


def test_readme_layout_lists_exactly_the_modules(files, layout):
    unlisted = sorted(set(files) - set(layout))
    missing = [name for name in layout if name not in files]
    assert not unlisted and not missing, f"modules not in README's Layout: {unlisted}; listed there but not in src/einplan: {missing}"


def test_each_module_imports_only_modules_listed_before_it(files, layout):
    order = {name: i for i, name in enumerate(layout)}
    known = set(files)
    problems = []
    for name, path in files.items():
        if name not in order:
            continue  # reported by the test above
        for imported, lines in sorted(read_imports(path, known).modules.items()):
            if imported not in order:
                problems.append(f"{name}.py imports {imported}, which README's Layout does not list (line {lines[0]})")
            elif order[imported] > order[name]:
                where = ", ".join(map(str, lines))
                problems.append(f"{name}.py imports {imported}.py, listed after it (line {where})")
    assert not problems, "imports against the pipeline order:\n" + "\n".join(problems)


def test_no_private_names_cross_modules(files):
    known = set(files)
    problems = [f"{name}.py {what}" for name, path in files.items() for what in read_imports(path, known).private]
    assert not problems, "private names used across modules:\n" + "\n".join(problems)


def test_modules_and_functions_are_short(files):
    problems = []
    for name, path in files.items():
        text = path.read_text(encoding="utf-8")
        lines = len(text.splitlines())
        if lines > MAX_MODULE_LINES:
            problems.append(f"{name}.py has {lines} lines (at most {MAX_MODULE_LINES})")
        for node in ast.walk(ast.parse(text, filename=str(path))):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                length = node.end_lineno - node.lineno + 1
                if length > MAX_FUNCTION_LINES:
                    problems.append(f"{name}.py:{node.lineno} {node.name}() has {length} lines (at most {MAX_FUNCTION_LINES})")
    assert not problems, "too long:\n" + "\n".join(problems)


def test_the_reader_sees_every_kind_of_import():
    known = {"parse", "plan", "runtime", "cost"}
    source = (
        "from . import parse, plan as planner\n"
        "from .cost import rate, _hidden\n"
        "import einplan.runtime as rt\n"
        "from einplan import __version__\n"
        "def late():\n"
        "    from einplan.plan import choose\n"
        "    return planner._private, rt._cache, parse.public\n"
    )
    reader = ImportReader(known)
    reader.visit(ast.parse(source))
    assert set(reader.found.modules) == {"parse", "plan", "cost", "runtime", INIT}
    assert reader.found.modules["plan"] == [1, 6]
    private = "\n".join(reader.found.private)
    assert "_hidden" in private and "planner._private" in private and "rt._cache" in private
    assert "__version__" not in private and "parse.public" not in private
