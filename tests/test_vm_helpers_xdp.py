"""XDP helpers, interpreter = fast tier = kernel (retval and data_out): moving the head with metadata in
front of it, metadata sizes, growing and shrinking the tail of linear and fragmented frames, reading and
writing bytes across the linear part and the fragments, bpf_redirect's flags, and old packet pointers."""

from __future__ import annotations

import pytest
from test_kernel_packets import ETH_P_IP, eth, ipv4, udp
from vmdiff import run_asm, same

FRAME = eth(ETH_P_IP, ipv4("10.0.0.1", "10.0.0.2", 17, udp("10.0.0.1", "10.0.0.2", 53, 53, b"q" * 40)))
BIG = bytes(range(256)) * 24  # 6144 bytes: 3520 linear, then two fragments (4096 + 528)
ADJUST_HEAD, ADJUST_META, ADJUST_TAIL, BUFF_LEN, LOAD, STORE = 44, 54, 65, 188, 189, 190


def status(reg: str = "r7") -> str:
    """r0 = buff_len << 16 | (the helper result & 0xffff)."""
    return f"r1 = r6\ncall {BUFF_LEN}\nr0 <<= 16\n{reg} &= 0xffff\nr0 |= {reg}\nexit\n"


@pytest.mark.parametrize("meta", [0, 4, 32, 36, 64, 252, 256, 3])
@pytest.mark.parametrize("head", [0, -8, 14, -(256 - 40 - 36), -(256 - 40 - 36) - 4])
def test_adjust_meta_then_head_moves_the_metadata(meta, head, kernel):
    text = f"""
    r6 = r1
    r1 = r6
    r2 = {-meta}
    call {ADJUST_META}
    r8 = r0
    r2 = *(u32 *)(r6 + 8)
    r3 = *(u32 *)(r6 + 0)
    r4 = r2
    r4 += 4
    if r4 > r3 goto skip
    *(u32 *)(r2 + 0) = 0x11223344
  skip:
    r1 = r6
    r2 = {head}
    call {ADJUST_HEAD}
    r7 = r0
    r2 = *(u32 *)(r6 + 8)
    r3 = *(u32 *)(r6 + 0)
    r3 -= r2
    r0 = r8
    r0 <<= 8
    r0 |= r3
    r0 <<= 16
    r7 &= 0xffff
    r0 |= r7
    exit
    """
    same(run_asm(text, "xdp", FRAME))


@pytest.mark.parametrize("frame", [FRAME, BIG], ids=["linear", "fragments"])
@pytest.mark.parametrize("delta", [0, 10, -10, 600, -528, -529, -1000, -4624, -4625, 3000, 4096, -6130, -6131])
def test_adjust_tail_matches_kernel(frame, delta, kernel):
    text = f"r6 = r1\nr1 = r6\nr2 = {delta}\ncall {ADJUST_TAIL}\nr7 = r0\n" + status()
    same(run_asm(text, "xdp", frame))


def test_adjust_tail_twice_on_fragments(kernel):
    # grow the last fragment to a full page, then one byte more (refused), then shrink into the linear part
    text = f"""
    r6 = r1
    r1 = r6
    r2 = {4096 - 528}
    call {ADJUST_TAIL}
    r8 = r0
    r1 = r6
    r2 = 1
    call {ADJUST_TAIL}
    r8 <<= 8
    r8 |= r0
    r1 = r6
    r2 = -8300
    call {ADJUST_TAIL}
    r8 <<= 8
    r8 |= r0
    r7 = r8
    """ + status()
    same(run_asm(text, "xdp", BIG))


# (offset, length): inside the linear part, across into the first fragment, across fragments, at the end,
# past the end (-EINVAL), an offset past 0xffff (-EFAULT). Lengths fit the 64-byte stack buffer.
SPANS = [(0, 8), (3510, 16), (3520, 4), (7600, 16), (6140, 4), (6141, 4), (0x10000, 1), (100, 64)]


@pytest.mark.parametrize("offset,length", SPANS, ids=[f"{o}+{n}" for o, n in SPANS])
def test_load_and_store_bytes_across_fragments(offset, length, kernel):
    text = f"""
    r6 = r1
    r1 = r6
    r2 = {offset}
    r3 = r10
    r3 += -64
    r4 = {length}
    call {LOAD}
    r7 = r0
    r1 = *(u64 *)(r10 - 64)
    r2 = *(u64 *)(r10 - 8)
    r1 ^= r2
    r8 = 0xa5a5a5a5a5a5a5a5 ll
    *(u64 *)(r10 - 64) = r8
    *(u64 *)(r10 - 8) = r8
    r1 = r6
    r2 = {offset}
    r3 = r10
    r3 += -64
    r4 = {length}
    call {STORE}
    r7 <<= 8
    r7 |= r0
    """ + status()
    same(run_asm(text, "xdp", BIG))


@pytest.mark.parametrize("flags", [0, 1, 2, 8])
def test_redirect_flags(flags, kernel):
    same(run_asm(f"r1 = 1\nr2 = {flags}\ncall 23\nexit", "xdp", FRAME))


def test_old_packet_pointers_still_read_the_frame_in_the_vm():
    """The kernel's verifier refuses a program that keeps a packet pointer across bpf_xdp_adjust_head; the
    VM runs such a program on the same frame memory (it does not move an XDP frame)."""
    text = f"""
    r6 = r1
    r7 = *(u32 *)(r6 + 0)
    r1 = r6
    r2 = -8
    call {ADJUST_HEAD}
    r0 = *(u8 *)(r7 + 0)
    exit
    """
    assert same(run_asm(text, "xdp", FRAME, engines=("interp", "fast"))).retval == FRAME[0]
