"""The package's import structure, read from the source (no import is executed): no import cycles, not even
through imports inside functions (TYPE_CHECKING blocks excepted: they never run), and data flowing one way
between the layers of DESIGN.md (isa <- elf/formats <- vm/kernel <- opt <- the API and the CLI)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from conftest import EXAMPLES

PACKAGE = Path(__file__).resolve().parent.parent / "src" / "bpforge"

# Layers of DESIGN.md, lowest first: a module imports only from its own layer or below. Top-level modules or
# packages not listed are left to the cycle check.
LAYERS = {
    "errors": 0, "files": 0,
    "isa": 1,
    "elf": 2, "formats": 2, "analysis": 2,
    "vm": 3, "kernel": 3, "verifier": 3,
    "opt": 4, "jit": 4,
    "offload": 5, "partition": 5,
    "api": 6, "runner": 6, "views": 6, "cli": 6, "__init__": 6,
}
# Same layer, but neither may use the other: the VM emulates the kernel without calling it, and the kernel
# backend knows nothing of the VM (both read the kernel's BTF through elf.vmlinux).
APART = {frozenset({"vm", "kernel"})}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or \
        (isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def imports_of(path: Path, modules: set[str], name: str | None = None) -> list[tuple[str, int]]:
    """(imported module of the package, line) for every import statement that can run: at module level, in
    functions and classes, but not under `if TYPE_CHECKING:`. `name`: the module's (default: from its path)."""
    name = name or module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: list[tuple[str, int]] = []

    def visit(node: ast.AST) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and _is_type_checking(child):
                for other in child.orelse:
                    visit_statement(other)
                continue
            visit_statement(child)

    def visit_statement(node: ast.AST) -> None:
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[:len(package.split(".")) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            for alias in node.names:
                full = f"{target}.{alias.name}"  # `from . import x` may name a submodule
                module = full if full in modules else target
                if module in modules:
                    found.append((module, node.lineno))
        elif isinstance(node, ast.Import):
            found.extend((alias.name, node.lineno) for alias in node.names if alias.name in modules)
        visit(node)

    visit(ast.parse(path.read_text(), str(path)))
    return [(module, line) for module, line in found if module != name]


def import_graph() -> dict[str, list[tuple[str, int]]]:
    paths = {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}
    return {name: imports_of(path, set(paths)) for name, path in paths.items()}


def cycles(graph: dict[str, list[tuple[str, int]]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan's algorithm, iteratively)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    for root in graph:
        if root in index:
            continue
        work = [(root, iter(graph[root]))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, edges = work[-1]
            for target, _ in edges:
                if target not in index:
                    index[target] = low[target] = len(index)
                    stack.append(target)
                    on_stack.add(target)
                    work.append((target, iter(graph[target])))
                    break
                if target in on_stack:
                    low[node] = min(low[node], index[target])
            else:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[node])
                if low[node] == index[node]:
                    component = []
                    while True:
                        member = stack.pop()
                        on_stack.discard(member)
                        component.append(member)
                        if member == node:
                            break
                    if len(component) > 1:
                        found.append(sorted(component))
    return found


def _top(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def test_the_graph_sees_imports_inside_functions_and_skips_type_checking(tmp_path):
    # The checker itself: a hidden import in a function counts, one under TYPE_CHECKING does not.
    graph = import_graph()
    assert any(module == "bpforge.elf.link" for module, _ in graph["bpforge.elf.bpfobject"])
    assert all(module != "bpforge.elf.bpfobject" for module, _ in graph["bpforge.elf.link"])  # TYPE_CHECKING only
    probe = tmp_path / "probe.py"
    probe.write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from a import b\n"
                     "def f():\n    from c import d\n")
    assert imports_of(probe, {"a", "c"}, "probe") == [("c", 5)]
    assert cycles({"a": [("b", 1)], "b": [("c", 1)], "c": [("a", 1)], "d": [("a", 1)]}) == [["a", "b", "c"]]


def test_no_import_cycles():
    graph = import_graph()
    found = cycles(graph)
    detail = "; ".join(
        " <-> ".join(component) + " (" + ", ".join(
            f"{m}:{line} imports {t}" for m in component for t, line in graph[m] if t in component) + ")"
        for component in found)
    assert not found, f"import cycles: {detail}"


def test_data_flows_one_way_between_layers():
    wrong = []
    for module, imports in import_graph().items():
        mine = _top(module)
        for target, line in imports:
            theirs = _top(target)
            if mine in LAYERS and theirs in LAYERS and LAYERS[theirs] > LAYERS[mine]:
                wrong.append(f"{module}:{line} imports {target} (layer {LAYERS[theirs]} > {LAYERS[mine]})")
            if mine != theirs and frozenset({mine, theirs}) in APART:
                wrong.append(f"{module}:{line} imports {target} ({mine} and {theirs} stay apart)")
    assert not wrong, "\n".join(wrong)


# ---- one model per concept: what the engines share ----------------------------------------------------------

def test_one_map_resolver_for_both_engines(kernel):
    """The VM and the kernel resolve an object's map and global-data references through one function
    (elf.maprefs): the same instructions come out, each with its engine's number for the map (a VM index,
    a kernel fd)."""
    from bpforge.elf import read_object
    from bpforge.vm import from_object

    for name in ("global_data.o", "xdp_counter.o"):
        obj = read_object(EXAMPLES / "obj" / name)
        vm_program = from_object(obj)
        with kernel.load_linked(obj.linked(), obj) as loaded:
            fds = {kmap.fd: kmap_name for kmap_name, kmap in loaded.maps.items()}
            assert len(loaded.insns) == len(vm_program.insns)
            for mine, theirs in zip(vm_program.insns, loaded.insns):
                if theirs.form.name in ("lddw_map_fd", "lddw_map_value"):
                    assert mine.form is theirs.form and (mine.dst, mine.imm_hi) == (theirs.dst, theirs.imm_hi)
                    assert vm_program.map_names[mine.imm] == fds[theirs.imm]
                else:
                    assert mine == theirs


def test_map_spec_is_one_frozen_value():
    """One MapSpec for every reader and both engines: frozen (slots included), comparable, picklable."""
    import dataclasses
    import pickle

    from bpforge.formats import parse_k2_maps
    from bpforge.isa.maptypes import MapSpec
    from bpforge.vm.maps import create_map

    outer = MapSpec.of("array_of_maps", 4, 4, 2, name="outer", inner=MapSpec.of("array", 4, 8, 1),
                       values={1: "inner"})
    assert outer.type_name == "array_of_maps" and outer.values == {1: "inner"}
    with pytest.raises(dataclasses.FrozenInstanceError):
        outer.max_entries = 3  # type: ignore[misc]
    with pytest.raises(TypeError):
        outer.values[0] = "other"  # type: ignore[index]
    assert pickle.loads(pickle.dumps(outer)) == outer
    assert dataclasses.replace(outer, values={}).values == {} and outer.values == {1: "inner"}
    (k2,) = parse_k2_maps("counts { type = 1, key_size = 4, value_size = 8, max_entries = 16, fd = 3 }\n")
    assert (k2.type_name, k2.source, k2.ref) == ("hash", "k2", 3)
    assert create_map(k2).max_entries == 16 and create_map(outer).template.value_size == 8
