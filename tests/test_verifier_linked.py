"""Scalars linked by a constant (the kernel's BPF_ADD_CONST, sync_linked_regs): after `rX = rY; rX += c`
(or `-= c`, 64- or 32-bit), a check of either register refines the other by the constant; a second
constant, or any other operation, breaks the link. Every verdict is the kernel's (it tracks these since
6.11; the sub and 32-bit forms since 6.14)."""

from __future__ import annotations

import pytest

from bpforge.isa import assemble
from bpforge.isa.maptypes import MapSpec
from bpforge.verifier.check import verify_program

from verifier_corpus.corpus import kernel_verdict

ARRAY = MapSpec("values", 2, 4, 64, 1)  # BPF_MAP_TYPE_ARRAY, u32 key, 64-byte value

LOOKUP = """
    *(u32 *)(r10 - 4) = 0
    r2 = r10
    r2 += -4
    r1 = map_fd(0) ll
    call bpf_map_lookup_elem
    if r0 == 0 goto out
"""


def program(link: str, check: str, use: str) -> str:
    """r6 a random value below 0x10000; `link` derives r7 from it; `check` bounds one of them; `use` reads
    the map value at an offset of the other."""
    return f"""
        call bpf_get_prandom_u32
        r6 = r0
        r6 &= 0xffff
        {link}
        {check}
        {LOOKUP}
        {use}
        r0 = *(u8 *)(r0 + 0)
    out:
        r0 = 2
        exit
    """


CASES = {
    # the kvcache example's shape: the length checked through a copy minus a constant, used directly
    "add_negative": ("r7 = r6\nr7 += -16", "if r7 > 40 goto out\nif r6 < 16 goto out", "r0 += r6", True),
    "sub": ("r7 = r6\nr7 -= 16", "if r7 > 40 goto out\nif r6 < 16 goto out", "r0 += r6", True),
    "base_checked": ("r7 = r6\nr7 += 10", "if r6 > 50 goto out", "r0 += r7", True),
    "too_far": ("r7 = r6\nr7 += 10", "if r6 > 60 goto out", "r0 += r7", False),
    "two_constants": ("r7 = r6\nr7 += 8\nr7 += 8", "if r7 > 40 goto out\nif r6 < 16 goto out", "r0 += r6",
                      False),
    "other_operation": ("r7 = r6\nr7 <<= 1", "if r7 > 40 goto out", "r0 += r6", False),
    # a copy (or a spill) of a register linked by a constant breaks that link: the two share a fresh id
    "copied_after": ("r7 = r6\nr7 += -16\nr8 = r7", "if r8 > 40 goto out\nif r6 < 16 goto out", "r0 += r6", False),
    "alu32": ("r7 = r6\nw7 += -16", "if w7 > 40 goto out\nif w6 < 16 goto out", "r0 += r6", True),
    "spilled": ("r7 = r6\nr7 += 4\n*(u64 *)(r10 - 16) = r7", "if r6 > 50 goto out\nr7 = *(u64 *)(r10 - 16)",
                "r0 += r7", False),
    "mov32": ("w7 = w6\nw7 += -16", "if w7 > 40 goto out\nif w6 < 16 goto out", "r0 += r6", True),
    "spilled_copy": ("r7 = r6\n*(u64 *)(r10 - 16) = r7", "if r7 > 50 goto out\nr7 = *(u64 *)(r10 - 16)",
                     "r0 += r7", True),
}


@pytest.mark.parametrize("name", CASES)
def test_linked_scalars_as_the_kernel(kernel, name):
    link, check, use, accepted = CASES[name]
    text = program(link, check, use)
    insns = assemble("\n".join(line.strip() for line in text.splitlines() if line.strip()))
    theirs = kernel_verdict(insns, "xdp", [ARRAY])
    ours = verify_program(insns, "xdp", [ARRAY])
    assert ours.accepted == theirs.accepted == accepted, (ours.message, theirs.message)


def test_the_log_shows_the_link():
    text = program("r7 = r6\nr7 += -16", "", "")
    insns = assemble("\n".join(line.strip() for line in text.splitlines() if line.strip()))
    verdict = verify_program(insns, "xdp", [ARRAY], collect=frozenset({5}))
    state = verdict.collected[5][0]
    assert "id=" in str(state.regs[7]) and "-16" in str(state.regs[7]).split(",")[0]


# Width rules, after the kernel's selftests (verifier_linked_scalars): a link made by a 32-bit addition
# zero-extends what it gives; a 32-bit and a 64-bit addition to the same register link nothing.
WIDTHS = {
    "zext": ("""call bpf_get_prandom_u32
        w6 = w0
        r7 = r6
        w7 += 1
        r8 = 0xFFFFffff ll
        if r6 < r8 goto l0
        r7 >>= 32
        if r7 == 0 goto l0
        r0 /= 0
    l0:
        r0 = 0
        exit""", True),
    "cross": ("""call bpf_get_prandom_u32
        w6 = w0
        r7 = r6
        w7 += 1
        r8 = r6
        r8 += 2
        r9 = 0xFFFFffff ll
        if r7 < r9 goto l0
        if r8 > 0 goto l1
        goto l0
    l1:
        r0 /= 0
    l0:
        r0 = 0
        exit""", False),
}


@pytest.mark.parametrize("name", WIDTHS)
def test_link_widths_as_the_kernel(kernel, name):
    text, accepted = WIDTHS[name]
    insns = assemble("\n".join(line.strip() for line in text.splitlines() if line.strip()))
    theirs = kernel_verdict(insns, "socket_filter", [])
    ours = verify_program(insns, "socket_filter", [])
    assert ours.accepted == theirs.accepted == accepted, (ours.message, theirs.message)
