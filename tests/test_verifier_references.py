"""Reference tracking against the kernel: a ring buffer record reserved or a socket looked up must be given
back (submitted, discarded, released) on every path before the program exits, through any copy, and
only once; NULL means nothing was acquired; a cast (bpf_sk_fullsock) shares its argument's reference."""

from __future__ import annotations

import pytest

from bpforge.isa import assemble
from bpforge.isa.maptypes import MapSpec
from bpforge.verifier.check import verify_program

from verifier_corpus.corpus import kernel_verdict

RINGBUF = MapSpec("events", 27, 0, 0, 4096)
ARRAY = MapSpec("values", 2, 4, 8, 1)
RESERVE = "r1 = map_fd(0) ll\nr2 = 8\nr3 = 0\ncall bpf_ringbuf_reserve\n"
SUBMIT = "r2 = 0\ncall bpf_ringbuf_submit\n"
END = "out:\nr0 = 0\nexit"
RINGBUF_CASES = {
    "reserve and submit": RESERVE + "if r0 == 0 goto out\n*(u64 *)(r0 + 0) = 1\nr1 = r0\n" + SUBMIT + END,
    "never submitted": RESERVE + END,
    "submitted on one path only": RESERVE + "if r0 == 0 goto out\nr6 = r0\ncall bpf_get_prandom_u32\n"
                                            "if r0 > 5 goto out\nr1 = r6\n" + SUBMIT + END,
    "written past its size": RESERVE + "if r0 == 0 goto out\n*(u64 *)(r0 + 4) = 1\nr1 = r0\n" + SUBMIT + END,
    "used before the NULL check": RESERVE + "*(u64 *)(r0 + 0) = 1\nr1 = r0\n" + SUBMIT + END,
    "submitted without the NULL check": RESERVE + "r1 = r0\n" + SUBMIT + END,
    "a size the verifier cannot know": "call bpf_get_prandom_u32\nr2 = r0\nr2 &= 7\nr1 = map_fd(0) ll\nr3 = 0\n"
                                       "call bpf_ringbuf_reserve\n" + END,
    "submitted at an offset": RESERVE + "if r0 == 0 goto out\nr1 = r0\nr1 += 4\n" + SUBMIT + END,
    "used after submit": RESERVE + "if r0 == 0 goto out\nr6 = r0\nr1 = r0\n" + SUBMIT + "*(u64 *)(r6 + 0) = 1\n" + END,
    "submitted twice": RESERVE + "if r0 == 0 goto out\nr6 = r0\nr1 = r0\n" + SUBMIT + "r1 = r6\n" + SUBMIT + END,
    "a map value submitted": "*(u32 *)(r10 - 4) = 0\nr2 = r10\nr2 += -4\nr1 = map_fd(1) ll\n"
                             "call bpf_map_lookup_elem\nif r0 == 0 goto out\nr1 = r0\n" + SUBMIT + END,
    "reserved from an array": "r1 = map_fd(1) ll\nr2 = 8\nr3 = 0\ncall bpf_ringbuf_reserve\n" + END,
    "kept on the stack, then discarded": RESERVE + "if r0 == 0 goto out\n*(u64 *)(r10 - 8) = r0\n"
                                         "r1 = *(u64 *)(r10 - 8)\nr2 = 0\ncall bpf_ringbuf_discard\n" + END,
}
LOOKUP = ("*(u64 *)(r10 - 8) = 0\n*(u64 *)(r10 - 16) = 0\nr1 = r6\nr2 = r10\nr2 += -16\nr3 = 12\nr4 = -1\nr5 = 0\n"
          "call bpf_sk_lookup_tcp\n")
RELEASE = "call bpf_sk_release\n"
SOCKET_CASES = {
    "looked up and released": LOOKUP + "if r0 == 0 goto out\nr1 = r0\n" + RELEASE + END,
    "never released": LOOKUP + END,
    "released without the NULL check": LOOKUP + "r1 = r0\n" + RELEASE + END,
    "released through its full-socket cast": LOOKUP + "if r0 == 0 goto out\nr7 = r0\nr1 = r0\n"
                                             "call bpf_sk_fullsock\nif r0 == 0 goto drop\nr1 = r0\n" + RELEASE +
                                             "goto out\ndrop:\nr1 = r7\n" + RELEASE + END,
    "a cast released, then the original": LOOKUP + "if r0 == 0 goto out\nr7 = r0\nr1 = r0\ncall bpf_sk_fullsock\n"
                                          "if r0 == 0 goto drop\nr1 = r0\n" + RELEASE + "drop:\nr1 = r7\n" + RELEASE
                                          + END,
    "a context socket released": "r1 = *(u64 *)(r6 + 168)\nif r1 == 0 goto out\n" + RELEASE + END,
}
CASES = [pytest.param("kprobe", text, id=name) for name, text in RINGBUF_CASES.items()] + \
        [pytest.param("sched_cls", "r6 = r1\n" + text, id=name) for name, text in SOCKET_CASES.items()]


@pytest.mark.parametrize("prog_type, text", CASES)
def test_references_get_the_kernels_verdict(kernel, prog_type, text):
    insns = assemble(text)
    maps = [RINGBUF, ARRAY]
    theirs = kernel_verdict(insns, prog_type, maps)
    ours = verify_program(insns, prog_type, maps)
    assert ours.accepted == theirs.accepted, (ours.message, theirs.message)
    if not theirs.accepted:
        assert ours.insn == _slot(insns, theirs.insn), (ours.message, theirs.message)


def _slot(insns, index):
    from bpforge.isa import slot_starts

    return slot_starts(insns)[index] if index is not None else None


def test_a_leak_names_the_instruction_that_acquired_it():
    insns = assemble(RINGBUF_CASES["submitted on one path only"])
    verdict = verify_program(insns, "kprobe", [RINGBUF, ARRAY])
    assert not verdict.accepted and verdict.message.startswith("Unreleased reference")
    assert verdict.message.endswith("alloc_insn=4")  # the call of bpf_ringbuf_reserve (after a 2-slot lddw)
