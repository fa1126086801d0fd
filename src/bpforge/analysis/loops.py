"""Loops of a function: back edges, natural loops with their nesting, irreducible flow, and a weak
topological order.

A back edge is an edge u -> h whose target dominates its source; the natural loop of h is h plus every
block that reaches a back edge's source without passing h (back edges to one header make one loop, as in
LLVM's LoopInfo). A retreating edge of the depth-first search whose target does not dominate its source is
irreducible flow (a loop entered at two places): reported in `LoopInfo.irreducible`, never an error.

The weak topological order is Bourdoncle's ("Efficient chaotic iteration strategies with widenings",
1993): a nesting of components, each a head followed by its body, such that every edge goes forward in the
order except those into a component's head — the iteration order (and the widening points: the heads) for
the fixpoints of the verifier and the optimizer, irreducible graphs included. PREVAIL's `wto.cpp` and
Crab compute the same order.
"""

from __future__ import annotations

from collections.abc import Callable, Generator, Iterable, Iterator
from dataclasses import dataclass, field

from .cfg import ProgramCfg
from .dominators import DominatorTree, dominators


@dataclass(eq=False)
class Loop:
    header: int
    body: frozenset[int]  # block ids, header included
    back_edges: tuple[tuple[int, int], ...]  # (latch, header)
    exits: tuple[tuple[int, int], ...]  # edges (inside, outside)
    parent: "Loop | None" = None
    children: list["Loop"] = field(default_factory=list)

    @property
    def depth(self) -> int:
        depth, loop = 1, self.parent
        while loop is not None:
            depth, loop = depth + 1, loop.parent
        return depth


@dataclass(eq=False)
class LoopInfo:
    loops: list[Loop]  # outermost first, then by header
    irreducible: list[tuple[int, int]]  # retreating edges whose target does not dominate their source

    @property
    def top_level(self) -> list[Loop]:
        return [loop for loop in self.loops if loop.parent is None]

    def innermost(self, block: int) -> Loop | None:
        """The innermost loop holding `block`."""
        best = None
        for loop in self.loops:
            if block in loop.body and (best is None or len(loop.body) < len(best.body)):
                best = loop
        return best

    @property
    def reducible(self) -> bool:
        return not self.irreducible


def find_loops(cfg: ProgramCfg, function: int = 0, dom: DominatorTree | None = None) -> LoopInfo:
    """Natural loops of a function's reachable blocks."""
    dom = dom or dominators(cfg, function)
    blocks = cfg.blocks
    latches: dict[int, list[int]] = {}
    irreducible = []
    for u, v in _retreating_edges(dom.root, lambda b: blocks[b].successors):
        if dom.dominates(v, u):
            latches.setdefault(v, []).append(u)
        else:
            irreducible.append((u, v))
    loops = []
    for header, sources in latches.items():
        body = {header}
        stack = [s for s in sources if s != header]
        while stack:
            b = stack.pop()
            if b in body or not dom.reachable(b):
                continue
            body.add(b)
            stack.extend(blocks[b].predecessors)
        exits = tuple((b, s) for b in sorted(body) for s in blocks[b].successors if s not in body)
        loops.append(Loop(header, frozenset(body), tuple((s, header) for s in sources), exits))
    loops.sort(key=lambda loop: (-len(loop.body), loop.header))
    for i, loop in enumerate(loops):
        # The smallest enclosing loop is the last bigger one (by the sort) holding this header.
        for outer in reversed(loops[:i]):
            if loop.header in outer.body:
                loop.parent = outer
                outer.children.append(loop)
                break
    ordered = sorted(loops, key=lambda loop: (loop.depth, loop.header))
    return LoopInfo(ordered, irreducible)


def _retreating_edges(root: int, succs: Callable[[int], Iterable[int]]) -> list[tuple[int, int]]:
    """Edges to a node still on the DFS stack (back edges of the depth-first spanning tree)."""
    found = []
    on_stack, seen = {root}, {root}
    stack = [(root, iter(succs(root)))]
    while stack:
        node, children = stack[-1]
        for child in children:
            if child in on_stack:
                found.append((node, child))
            elif child not in seen:
                seen.add(child)
                on_stack.add(child)
                stack.append((child, iter(succs(child))))
                break
        else:
            stack.pop()
            on_stack.discard(node)
    return found


@dataclass(frozen=True)
class Component:
    """A strongly connected part of the weak topological order: its head, then its body in order."""

    head: int
    body: tuple["int | Component", ...]


WtoElement = int | Component


@dataclass(frozen=True)
class Wto:
    elements: tuple[WtoElement, ...]

    def __iter__(self) -> Iterator[int]:
        """Every node once, in order (a head before its body)."""
        yield from _flatten(self.elements)

    @property
    def heads(self) -> list[int]:
        return [c.head for c in _components(self.elements)]

    def position(self) -> dict[int, int]:
        return {node: i for i, node in enumerate(self)}


def _flatten(elements: Iterable[WtoElement]) -> Iterator[int]:
    for e in elements:
        if isinstance(e, Component):
            yield e.head
            yield from _flatten(e.body)
        else:
            yield e


def _components(elements: Iterable[WtoElement]) -> Iterator[Component]:
    for e in elements:
        if isinstance(e, Component):
            yield e
            yield from _components(e.body)


def weak_topological_order(root: int, succs: Callable[[int], Iterable[int]]) -> Wto:
    """Bourdoncle's recursive WTO of the nodes reachable from `root`, run on an explicit stack of
    generators so that deep graphs cannot exhaust Python's recursion limit."""
    dfn: dict[int, int] = {}
    stack: list[int] = []
    counter = [0]
    INFINITE = float("inf")

    def visit(v: int, partition: list) -> Generator:
        stack.append(v)
        counter[0] += 1
        dfn[v] = head = counter[0]
        loop = False
        for w in succs(v):
            low = (yield visit(w, partition)) if dfn.get(w, 0) == 0 else dfn[w]
            if low <= head:
                head, loop = low, True
        if head == dfn[v]:
            dfn[v] = INFINITE
            element = stack.pop()
            if loop:
                while element != v:
                    dfn[element] = 0
                    element = stack.pop()
                body: list = []
                yield component(v, body)
                partition.append(Component(v, tuple(reversed(body))))
            else:
                partition.append(v)
        return head

    def component(v: int, body: list) -> Generator:
        for w in succs(v):
            if dfn.get(w, 0) == 0:
                yield visit(w, body)
        return None

    top: list = []
    _trampoline(visit(root, top))
    return Wto(tuple(reversed(top)))


def _trampoline(start: Generator) -> None:
    """Run generator-coded recursion: a yielded generator is a call whose return value is sent back."""
    frames = [start]
    value = None
    while frames:
        try:
            callee = frames[-1].send(value)
        except StopIteration as done:
            frames.pop()
            value = done.value
        else:
            frames.append(callee)
            value = None


def function_wto(cfg: ProgramCfg, function: int = 0) -> Wto:
    """Weak topological order of a function's reachable blocks, from its entry block."""
    blocks = cfg.blocks
    return weak_topological_order(cfg.functions[function].entry_block, lambda b: blocks[b].successors)


__all__ = ["Component", "Loop", "LoopInfo", "Wto", "find_loops", "function_wto", "weak_topological_order"]
