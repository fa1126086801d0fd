"""Stack stores as the kernel keeps them, and the stack comparison of state pruning.

A store of a constant, or of a narrow scalar register, at the start of a stack slot is a spill of a known
(imprecise) scalar, as check_stack_write_fixed_off keeps it for a privileged loader: two paths that store
different constants there still meet (the optimizer's passes turn `rX = 0; *(u64 *)(r10 - 8) = rX` into
`*(u64 *)(r10 - 8) = 0`, which once kept such paths apart and made a rewritten Katran 2.6 times the
kernel's work). The verdicts are the kernel's; the work stays within a bound of its own.

`_stack_covers` compares only the slots that can differ; a byte-by-byte transcription of stacksafe kept
here is the reference it must agree with on random frames.
"""

from __future__ import annotations

import pytest
from hypothesis import given, strategies as st

from bpforge.isa import assemble
from bpforge.verifier.check import _IdMap, _reg_covers, _stack_covers, verify_program
from bpforge.verifier.regs import NOT_INIT, Reg, known, unknown
from bpforge.verifier.state import INVALID, MISC, SLOT, SPILL, STACK_SIZE, ZERO, Frame

from test_verifier_precision import ARRAY, USES
from verifier_corpus.corpus import kernel_verdict

def _diamonds(count: int, zero_first: bool) -> str:
    """`count` undecided branches in a row, each side storing a different constant into its own slot that
    nothing reads: every join may prune, so the work grows linearly, not as 2**count."""
    sides = ("0", "1") if zero_first else ("1", "0")
    parts = ["r6 = r1"]
    for k in range(count):
        off = 8 * (k + 1)
        parts += ["call bpf_get_prandom_u32", f"if r0 > 100 goto other{k}",
                  f"*(u64 *)(r10 - {off}) = {sides[0]}", f"*(u32 *)(r10 - {off + 64}) = {sides[0]}",
                  f"goto join{k}", f"other{k}:", f"*(u64 *)(r10 - {off}) = {sides[1]}",
                  f"*(u32 *)(r10 - {off + 64}) = {sides[1]}", f"join{k}:"]
    parts += ["r0 = 2", "exit"]
    return "\n".join(parts)


@pytest.mark.parametrize("zero_first", [True, False])
def test_paths_storing_different_constants_meet_as_in_the_kernel(kernel, zero_first):
    insns = assemble(_diamonds(12, zero_first))
    ours = verify_program(insns, "xdp")
    theirs = kernel.verify_insns(insns, "xdp", log_level=1)
    assert ours.accepted and theirs.accepted
    assert theirs.processed_insns is not None
    assert ours.processed <= 1.5 * theirs.processed_insns + 20, (ours.processed, theirs.processed_insns)


# Each reads back what a store left, then lets the value decide a map-value access (test_verifier_precision's): the verdict (and so
# what the fill gives, and what precision the store wants) must be the kernel's.
_USE = USES["map_offset"] + "\nout:\nr0 = 2\nexit\n"
_PATHS = """
    call bpf_get_prandom_u32
    r7 = {a}
    if r0 > 100 goto join
    r7 = {b}
join:
"""
FILLS = {
    "narrow_spill": "*(u32 *)(r10 - 16) = r7\nr8 = *(u32 *)(r10 - 16)",
    "narrow_spill_wider_fill": "*(u16 *)(r10 - 16) = r7\nr8 = *(u32 *)(r10 - 16)",
    "byte_of_spill": "*(u64 *)(r10 - 16) = r7\nr8 = *(u8 *)(r10 - 16)",
    "unaligned_zero": "*(u32 *)(r10 - 12) = r7\nr8 = *(u32 *)(r10 - 12)",
    "imm_then_reg_half": "*(u64 *)(r10 - 16) = 0\n*(u32 *)(r10 - 16) = r7\nr8 = *(u64 *)(r10 - 16)",
    "imm_zero_fill": "*(u64 *)(r10 - 16) = 0\nr8 = *(u64 *)(r10 - 16)\nr8 += r7",
    "narrow_imm_fill": "*(u32 *)(r10 - 16) = 0\nr8 = *(u32 *)(r10 - 16)\nr8 += r7",
}


@pytest.mark.parametrize("values", [(0, 5), (5, 0), (0, 15), (3, 300)], ids=str)
@pytest.mark.parametrize("fill", sorted(FILLS))
def test_stack_fills_agree_with_the_kernel(kernel, fill, values):
    text = _PATHS.format(a=values[0], b=values[1]) + FILLS[fill] + _USE
    insns = assemble(text)
    theirs = kernel_verdict(insns, "xdp", [ARRAY])
    ours = verify_program(insns, "xdp", [ARRAY])
    assert ours.accepted == theirs.accepted, (ours.message, theirs.message)


# ---- the stack comparison --------------------------------------------------------------------------------

def _reference(fo: Frame, fc: Frame, pruning: bool, exact: bool) -> bool:
    """stacksafe byte by byte over the whole frame, as the kernel's loop reads."""
    ids = _IdMap()
    for s in range(STACK_SIZE // SLOT):
        old_bytes, cur_bytes = fo.types[s * SLOT:(s + 1) * SLOT], fc.types[s * SLOT:(s + 1) * SLOT]
        whole_scalar = old_bytes == bytes([SPILL]) * SLOT and fo.spilled.get(s, NOT_INIT).is_scalar
        for i in range(SLOT):
            ko, kc = old_bytes[i], cur_bytes[i]
            if ko == INVALID and (kc == INVALID or not exact) or ko == MISC and pruning:
                continue
            if whole_scalar and pruning and all(k in (MISC, INVALID) for k in cur_bytes):
                if not _reg_covers(fo.spilled[s], unknown(), ids, pruning):
                    return False
                break
            if ko == kc and ko != SPILL or ko == MISC and kc == ZERO:
                continue
            if ko == SPILL and kc == SPILL:
                if i == 0 and not _reg_covers(fo.spilled.get(s, NOT_INIT), fc.spilled.get(s, NOT_INIT), ids,
                                              pruning):
                    return False
                continue
            return False
    return True


_REGS = [known(0), known(1), unknown(), known(0).with_(precise=True), unknown().with_(precise=True),
         known(7).with_(id=3), known(7).with_(id=4), Reg("map_value", map=ARRAY), Reg("ctx")]
_KINDS = st.sampled_from([INVALID, MISC, ZERO, SPILL])


@st.composite
def _frames(draw):
    """Two frames over a few slots: mostly alike, some bytes or spills different."""
    fo, fc = Frame([NOT_INIT] * 11), Frame([NOT_INIT] * 11)
    for s in draw(st.lists(st.integers(0, STACK_SIZE // SLOT - 1), max_size=6, unique=True)):
        for frame in (fo, fc):
            if frame is fc and draw(st.booleans()):  # the same slot in both
                fc.types[s * SLOT:(s + 1) * SLOT] = fo.types[s * SLOT:(s + 1) * SLOT]
                if s in fo.spilled:
                    fc.spilled[s] = fo.spilled[s]
                continue
            spill = draw(st.integers(0, SLOT)) if draw(st.booleans()) else 0  # a spill of its first bytes
            rest = draw(st.lists(_KINDS.filter(lambda k: k != SPILL), min_size=SLOT - spill, max_size=SLOT - spill))
            frame.types[s * SLOT:(s + 1) * SLOT] = bytes([SPILL] * spill + rest)
            if spill:
                frame.spilled[s] = draw(st.sampled_from(_REGS))
    return fo, fc


@given(_frames(), st.booleans(), st.booleans())
def test_stack_covers_agrees_with_the_byte_by_byte_reference(frames, pruning, exact):
    fo, fc = frames
    assert _stack_covers(fo, fc, _IdMap(), pruning, exact) == _reference(fo, fc, pruning, exact)
