"""The kernel's one's-complement checksum arithmetic (include/net/checksum.h, lib/checksum.c), on the
native little-endian values the helpers see: a 32-bit partial sum (__wsum) and the folded 16-bit sum
(__sum16) as stored in a packet header. Each function is the kernel's, so edge cases (0 versus 0xffff)
come out the same."""

from __future__ import annotations

import struct

from ...isa.numbers import M16, M32


def csum_add(csum: int, addend: int) -> int:
    total = (csum & M32) + (addend & M32)
    return (total + (total >> 32)) & M32


def csum_sub(csum: int, addend: int) -> int:
    return csum_add(csum, ~addend & M32)


def csum_fold(csum: int) -> int:
    """The 32-bit partial sum folded to 16 bits and complemented (__sum16)."""
    total = (csum & M16) + ((csum >> 16) & M16)
    total = (total & M16) + (total >> 16)
    return ~total & M16


def csum_unfold(check: int) -> int:
    return check & M16


def csum16_add(csum: int, addend: int) -> int:
    total = (csum & M16) + (addend & M16)
    return (total + (total >> 16)) & M16


def csum16_sub(csum: int, addend: int) -> int:
    return csum16_add(csum, ~addend & M16)


def csum_replace2(check: int, old: int, new: int) -> int:
    return ~csum16_add(csum16_sub(~check & M16, old), new) & M16


def csum_replace4(check: int, old: int, new: int) -> int:
    tmp = csum_sub(~csum_unfold(check) & M32, old)
    return csum_fold(csum_add(tmp, new))


def csum_replace_by_diff(check: int, diff: int) -> int:
    return csum_fold(csum_add(diff, ~csum_unfold(check) & M32))


def csum_partial(data: bytes, seed: int) -> int:
    """csum_partial: `data` summed as little-endian 32-bit words (a short tail zero-padded, as x86-64's
    load_unaligned_zeropad reads it) onto `seed`, as a 32-bit partial sum. x86-64 adds 64-bit words and
    folds the total to 32 bits at the end, which is the same one's-complement sum."""
    total = seed & M32
    data = bytes(data) + bytes(-len(data) % 4)
    for (word,) in struct.iter_unpack("<I", data):
        total += word
    while total >> 32:
        total = (total & M32) + (total >> 32)
    return total


def csum_from32to16(csum: int) -> int:
    """A 32-bit partial sum folded to 16 bits, not complemented (what bpf_csum_diff returns)."""
    total = (csum + (((csum >> 16) | (csum << 16)) & M32)) & M32
    return total >> 16
