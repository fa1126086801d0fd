"""analysis/dominators.py and analysis/loops.py: dominator trees against the naive definition, natural
loops with nesting, irreducible flow reported, and the weak topological order's defining properties."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from bpforge.analysis import build_cfg, dominators, find_loops, function_wto, post_dominators
from bpforge.analysis.dominators import VIRTUAL_EXIT
from bpforge.analysis.loops import Component
from bpforge.isa import assemble


@st.composite
def cfg_programs(draw, acyclic: bool = False, max_len: int = 14):
    """Assembly of one function with random jumps that stay inside it, ending with exit."""
    n = draw(st.integers(3, max_len))
    lines = []
    for i in range(n - 1):
        kind = draw(st.sampled_from(["alu", "alu", "cond", "goto", "exit"]))
        if kind in ("cond", "goto"):
            low = i + 1 if acyclic else 0
            target = draw(st.integers(low, n - 1))
            jump = f"goto {target - i - 1:+d}" if kind == "goto" else f"if r{draw(st.integers(0, 3))} > 1 goto {target - i - 1:+d}"
            lines.append(jump)
        elif kind == "exit":
            lines.append("exit")
        else:
            a, b = draw(st.integers(0, 3)), draw(st.integers(0, 3))
            lines.append(draw(st.sampled_from([f"r{a} = r{b}", f"r{a} += r{b}", f"r{a} = 7"])))
    lines.append("exit")
    return "\n".join(lines)


def _reachable(cfg, start, removed=None):
    seen, stack = set(), [start]
    while stack:
        b = stack.pop()
        if b in seen or b == removed:
            continue
        seen.add(b)
        stack.extend(cfg.blocks[b].successors)
    return seen


@given(cfg_programs())
@settings(max_examples=150, deadline=None)
def test_dominators_equal_the_naive_definition(text):
    cfg = build_cfg(assemble(text))
    dom = dominators(cfg)
    entry = cfg.functions[0].entry_block
    reachable = _reachable(cfg, entry)
    for a in range(len(cfg.blocks)):
        for b in range(len(cfg.blocks)):
            if a not in reachable or b not in reachable:
                expected = False
            else:
                expected = a == b or b not in _reachable(cfg, entry, removed=a)
            assert dom.dominates(a, b) == expected, (a, b)


@given(cfg_programs())
@settings(max_examples=100, deadline=None)
def test_post_dominators_equal_the_naive_definition(text):
    cfg = build_cfg(assemble(text))
    pdom = post_dominators(cfg)
    blocks = range(len(cfg.blocks))
    sinks = {b for b in blocks if not cfg.blocks[b].succs}

    def reaches_exit(b, removed):
        return bool(_reachable(cfg, b, removed) & sinks) if b != removed else False

    for b in blocks:
        if not reaches_exit(b, None):
            assert not pdom.reachable(b)
            continue
        assert pdom.dominates(VIRTUAL_EXIT, b)
        for a in blocks:
            expected = a == b or (reaches_exit(a, None) and not reaches_exit(b, a))
            assert pdom.dominates(a, b) == expected, (a, b)


@given(cfg_programs())
@settings(max_examples=150, deadline=None)
def test_wto_visits_every_reachable_block_once_and_heads_come_first(text):
    cfg = build_cfg(assemble(text))
    wto = function_wto(cfg)
    order = list(wto)
    assert sorted(order) == sorted(_reachable(cfg, cfg.functions[0].entry_block))
    position = wto.position()

    def members(component):
        for e in component.body:
            if isinstance(e, Component):
                yield e.head
                yield from members(e)
            else:
                yield e

    def components(elements):
        for e in elements:
            if isinstance(e, Component):
                yield e
                yield from components(e.body)

    holders = {}
    for c in components(wto.elements):
        body = set(members(c))
        assert all(position[c.head] < position[m] for m in body)
        holders[c.head] = body | {c.head}
    # Every edge goes forward in the order, except into the head of a component holding its source.
    for u in order:
        for v in cfg.blocks[u].successors:
            assert position[u] < position[v] or (v in holders and u in holders[v]), (u, v)
    # Every natural loop's header is a head of the order.
    loops = find_loops(cfg)
    assert {loop.header for loop in loops.loops} <= set(wto.heads)
    for loop in loops.loops:
        dom = dominators(cfg)
        assert all(dom.dominates(loop.header, b) for b in loop.body)


def test_hand_written_nest_of_loops():
    text = """
    r1 = 0
    outer:
    r2 = 0
    inner:
    r2 += 1
    if r2 < 4 goto inner
    r1 += 1
    if r1 < 3 goto outer
    r0 = r1
    exit
    """
    cfg = build_cfg(assemble(text))
    assert [(b.start, b.end) for b in cfg.blocks] == [(0, 1), (1, 2), (2, 4), (4, 6), (6, 8)]
    dom = dominators(cfg)
    assert dom.idom == {0: 0, 1: 0, 2: 1, 3: 2, 4: 3}
    assert dom.dominates(1, 4) and not dom.dominates(2, 1)
    info = find_loops(cfg)
    outer, inner = info.loops
    assert (outer.header, set(outer.body), outer.exits) == (1, {1, 2, 3}, ((3, 4),))
    assert (inner.header, set(inner.body), inner.back_edges) == (2, {2}, ((2, 2),))
    assert inner.parent is outer and outer.children == [inner] and inner.depth == 2
    assert info.innermost(2) is inner and info.innermost(3) is outer and info.innermost(4) is None
    assert info.reducible
    wto = function_wto(cfg)
    assert wto.elements == (0, Component(1, (Component(2, ()), 3)), 4)
    pdom = post_dominators(cfg)
    assert pdom.idom[4] == VIRTUAL_EXIT and pdom.idom[3] == 4 and pdom.idom[0] == 1


def test_irreducible_flow_is_reported_not_fatal():
    # Two entries into the cycle {b, c}: from the entry straight into either.
    text = """
    if r1 > 1 goto c
    b:
    r0 = 1
    if r0 > 2 goto out
    c:
    r0 = 2
    if r0 > 3 goto b
    out:
    exit
    """
    cfg = build_cfg(assemble(text))
    info = find_loops(cfg)
    assert not info.reducible and info.loops == []
    assert len(info.irreducible) == 1
    wto = function_wto(cfg)
    assert sorted(wto) == [0, 1, 2, 3] and len(wto.heads) == 1


def test_deep_graphs_do_not_exhaust_the_recursion_limit():
    lines = [f"if r1 > {i} goto +1" for i in range(3000)] + ["goto -3001", "exit"]
    lines[-2] = "if r1 > 0 goto -3001"
    cfg = build_cfg(assemble("\n".join(lines)))
    wto = function_wto(cfg)
    assert len(list(wto)) == len(cfg.blocks)
    assert find_loops(cfg).loops[0].header == 0
