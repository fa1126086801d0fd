"""Dominator and post-dominator trees of a function's blocks.

Cooper, Harvey and Kennedy's iterative algorithm ("A Simple, Fast Dominance Algorithm", 2001) over the
reverse post-order — what LLVM's and most compilers' dominator trees compute (LLVM now uses Semi-NCA; the
result is the same tree). `dominates(a, b)` answers in O(1) from the tree's DFS numbering. Post-dominators
are the dominators of the reversed graph with one virtual exit joining every block without successors;
blocks that cannot reach an exit (an endless loop, which the kernel would reject anyway) have none.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

from .cfg import ProgramCfg

VIRTUAL_EXIT = -1  # the post-dominator tree's root: "the function has returned"


def reverse_postorder(entry: int, succs: Callable[[int], Iterable[int]]) -> list[int]:
    """Nodes reachable from `entry` in reverse post-order of a depth-first search (iterative)."""
    order: list[int] = []
    seen = {entry}
    stack = [(entry, iter(succs(entry)))]
    while stack:
        node, children = stack[-1]
        for child in children:
            if child not in seen:
                seen.add(child)
                stack.append((child, iter(succs(child))))
                break
        else:
            stack.pop()
            order.append(node)
    order.reverse()
    return order


@dataclass(frozen=True)
class DominatorTree:
    """Immediate dominators of the nodes reachable from `root` (idom[root] = root)."""

    root: int
    idom: dict[int, int]
    order: tuple[int, ...]  # reverse post-order of the reachable nodes
    _pre: dict[int, int]
    _post: dict[int, int]

    def dominates(self, a: int, b: int) -> bool:
        """Whether every path from the root to `b` passes through `a` (reflexive). False for unreachable
        nodes."""
        if a not in self._pre or b not in self._pre:
            return False
        return self._pre[a] <= self._pre[b] and self._post[b] <= self._post[a]

    def strictly_dominates(self, a: int, b: int) -> bool:
        return a != b and self.dominates(a, b)

    def children(self, node: int) -> list[int]:
        return [n for n in self.order if n != self.root and self.idom[n] == node]

    def reachable(self, node: int) -> bool:
        return node in self.idom


def dominator_tree(root: int, succs: Callable[[int], Iterable[int]],
                   preds: Callable[[int], Iterable[int]]) -> DominatorTree:
    """The dominator tree of any graph given by its successor and predecessor functions."""
    order = reverse_postorder(root, succs)
    rank = {node: i for i, node in enumerate(order)}
    idom: dict[int, int] = {root: root}
    changed = True
    while changed:
        changed = False
        for node in order[1:]:
            new = None
            for p in preds(node):
                if p not in idom:
                    continue  # not processed yet, or unreachable
                new = p if new is None else _intersect(p, new, idom, rank)
            if idom.get(node) != new:
                idom[node] = new
                changed = True
    pre, post = _number(root, idom, order)
    return DominatorTree(root, idom, tuple(order), pre, post)


def _intersect(a: int, b: int, idom: dict[int, int], rank: dict[int, int]) -> int:
    while a != b:
        while rank[a] > rank[b]:
            a = idom[a]
        while rank[b] > rank[a]:
            b = idom[b]
    return a


def _number(root: int, idom: dict[int, int], order: list[int]) -> tuple[dict[int, int], dict[int, int]]:
    children: dict[int, list[int]] = {n: [] for n in order}
    for node in order:
        if node != root:
            children[idom[node]].append(node)
    pre, post, clock = {}, {}, 0
    stack = [(root, iter(children[root]))]
    pre[root] = clock
    while stack:
        node, kids = stack[-1]
        kid = next(kids, None)
        clock += 1
        if kid is None:
            post[node] = clock
            stack.pop()
        else:
            pre[kid] = clock
            stack.append((kid, iter(children[kid])))
    return pre, post


def dominators(cfg: ProgramCfg, function: int = 0) -> DominatorTree:
    """Dominator tree of a function's blocks, rooted at its entry block."""
    blocks = cfg.blocks
    return dominator_tree(cfg.functions[function].entry_block, lambda b: blocks[b].successors,
                          lambda b: blocks[b].predecessors)


def post_dominators(cfg: ProgramCfg, function: int = 0) -> DominatorTree:
    """Post-dominator tree of a function's blocks, rooted at `VIRTUAL_EXIT`."""
    blocks = cfg.blocks
    own = cfg.functions[function].blocks
    sinks = [b for b in own if not blocks[b].succs]

    def reverse_succs(node: int) -> Iterable[int]:
        return sinks if node == VIRTUAL_EXIT else blocks[node].predecessors

    def reverse_preds(node: int) -> Iterable[int]:
        return (VIRTUAL_EXIT,) if not blocks[node].succs else blocks[node].successors

    return dominator_tree(VIRTUAL_EXIT, reverse_succs, reverse_preds)


__all__ = ["DominatorTree", "VIRTUAL_EXIT", "dominator_tree", "dominators", "post_dominators", "reverse_postorder"]
