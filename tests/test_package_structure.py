"""The package's structure as a specification: no import cycle, readers and writers stand on the core and
never on each other, and the format's facts (T-MAC type ids, ``scales_size``) are defined once."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parent.parent / "tmac_convert"
ROOT = "tmac_convert"


def _modules() -> dict[str, Path]:
    out = {}
    for p in sorted(PKG.rglob("*.py")):
        parts = list(p.relative_to(PKG.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = p
    return out


MODULES = _modules()
#: Compiled extension modules (``from .. import _layout_native``): leaves, outside the graph.
NATIVE = {"tmac_convert._layout_native", "tmac_convert._lut_native", "tmac_convert._gptq_native"}


def _is_package(mod: str) -> bool:
    return MODULES[mod].name == "__init__.py"


def _resolve(mod: str, node: ast.ImportFrom) -> str:
    if not node.level:
        return node.module or ""
    base = mod.split(".") if _is_package(mod) else mod.split(".")[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def _type_checking(node: ast.AST) -> bool:
    return isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)


def imports(mod: str, *, module_level: bool) -> set[str]:
    """The package modules ``mod`` imports: only those run at import time (``module_level``: not inside
    functions or ``if TYPE_CHECKING``), or every import statement anywhere in the file."""
    tree = ast.parse(MODULES[mod].read_text(encoding="utf-8"))
    found: set[str] = set()

    def visit(node: ast.AST) -> None:
        for child in ast.iter_child_nodes(node):
            if module_level and (isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
                                 or _type_checking(child)):
                continue
            if isinstance(child, ast.Import):
                found.update(a.name for a in child.names)
            elif isinstance(child, ast.ImportFrom):
                target = _resolve(mod, child)
                for a in child.names:
                    sub = f"{target}.{a.name}"
                    if sub not in NATIVE:
                        found.add(sub if sub in MODULES else target)
            visit(child)

    visit(tree)
    return {m for m in found if m in MODULES and m != mod}


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of ``graph`` (as a path that returns to its start), or None."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def dfs(n: str) -> list[str] | None:
        state[n] = 1
        stack.append(n)
        for m in sorted(graph[n]):
            if state.get(m) == 1:
                return stack[stack.index(m):] + [m]
            if m not in state:
                found = dfs(m)
                if found:
                    return found
        stack.pop()
        state[n] = 2
        return None

    for n in sorted(graph):
        if n not in state:
            found = dfs(n)
            if found:
                return found
    return None


def test_the_module_graph_has_no_cycle() -> None:
    graph = {m: imports(m, module_level=True) for m in MODULES}
    cycle = _cycle(graph)
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_cycle_detection_finds_a_cycle() -> None:
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": set(), "c": {"a", "b"}}) is None


# Which layers may import which (any import statement, lazy ones included).  The core and the
# architecture registry stand alone; readers and writers stand on them and never on each other.
FORBIDDEN = {
    "tmac_convert.format": ("tmac_convert.readers", "tmac_convert.writers", "tmac_convert.archs",
                            "tmac_convert.convert", "tmac_convert.cli"),
    "tmac_convert.archs": ("tmac_convert.readers", "tmac_convert.writers", "tmac_convert.convert",
                           "tmac_convert.cli"),
    "tmac_convert.readers": ("tmac_convert.writers", "tmac_convert.convert", "tmac_convert.cli"),
    "tmac_convert.writers": ("tmac_convert.readers", "tmac_convert.convert", "tmac_convert.cli"),
    "tmac_convert.layouts": ("tmac_convert.readers", "tmac_convert.writers", "tmac_convert.convert"),
}


@pytest.mark.parametrize("layer", sorted(FORBIDDEN))
def test_layers_import_only_what_they_stand_on(layer: str) -> None:
    bad = []
    for mod in MODULES:
        if mod == layer or mod.startswith(layer + "."):
            for target in imports(mod, module_level=False):
                if any(target == f or target.startswith(f + ".") for f in FORBIDDEN[layer]):
                    bad.append(f"{mod} imports {target}")
    assert not bad, "; ".join(bad)


# ---------------------------------------------------------------------------------------------
# facts defined once

#: The T-MAC I-type ids of both numberings: three or more of them together are a type-id table.
_ID_SETS = ({36, 37, 38, 39}, {30, 31, 32, 33})
TYPE_ID_HOME = PKG / "format" / "runtime.py"
SCALES_SIZE_HOME = PKG / "format" / "rules.py"
#: ``(2 if zero_point else 1)``: the factor that makes a total ``scales_size``.
_SCALES_FACTOR = re.compile(r"\(\s*2\s+if\s+[\w.]*zero[\w.]*\s+else\s+1\s*\)")
#: Files allowed to restate a *per-tile* count (not the tensor's ``scales_size``): the kernels' reference
#: code walks tiles and counts each tile's scales.
_PER_TILE_OK = {PKG / "kernels" / "reference.py": "per_tile_scales"}


def _int_constants(node: ast.AST) -> set[int]:
    return {c.value for c in ast.walk(node) if isinstance(c, ast.Constant) and type(c.value) is int}


def type_id_tables(path: Path) -> list[int]:
    """Lines of ``path`` holding a literal dict, set, tuple or list with three or more T-MAC ids of one numbering."""
    lines = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, (ast.Dict, ast.Set, ast.Tuple, ast.List)):
            values = _int_constants(node)
            if any(len(values & ids) >= 3 for ids in _ID_SETS):
                lines.append(node.lineno)
    return lines


def scales_size_formulas(path: Path) -> list[int]:
    allowed = _PER_TILE_OK.get(path)
    return [i for i, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1)
            if _SCALES_FACTOR.search(line) and not (allowed and allowed in line)]


def test_type_ids_are_defined_only_in_the_runtime_table() -> None:
    where = {p: type_id_tables(p) for p in PKG.rglob("*.py")}
    assert where[TYPE_ID_HOME], "the runtime table itself must be found (or this test cannot fail)"
    others = {str(p.relative_to(PKG)): lines for p, lines in where.items() if lines and p != TYPE_ID_HOME}
    assert not others, f"T-MAC type ids restated outside format/runtime.py: {others}"


def test_scales_size_is_defined_only_in_the_rules() -> None:
    where = {p: scales_size_formulas(p) for p in PKG.rglob("*.py")}
    assert where[SCALES_SIZE_HOME], "the formula itself must be found (or this test cannot fail)"
    others = {str(p.relative_to(PKG)): lines for p, lines in where.items() if lines and p != SCALES_SIZE_HOME}
    assert not others, f"scales_size computed outside format/rules.py: {others}"


def test_the_fact_detectors_see_a_restatement(tmp_path: Path) -> None:
    p = tmp_path / "bad.py"
    p.write_text("IDS = {1: 31, 2: 30, 3: 32}\n"
                 "def n(m0, k, gs, zero_point):\n    return m0 * (k // gs) * (2 if zero_point else 1)\n")
    assert type_id_tables(p) == [1]
    assert scales_size_formulas(p) == [3]


def test_every_subpackage_is_installed() -> None:
    """pyproject lists packages explicitly: a new subpackage missing there would vanish from a wheel."""
    import tomllib

    listed = set(tomllib.loads((PKG.parent / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    present = {m for m in MODULES if _is_package(m)}
    assert present <= listed, f"not in pyproject.toml: {sorted(present - listed)}"
    assert "py.typed" in (PKG.parent / "pyproject.toml").read_text() and (PKG / "py.typed").is_file()
