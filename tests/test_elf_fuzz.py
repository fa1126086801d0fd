"""A seeded fuzz of `load_program` over mutated example objects: header fields, section headers (offsets,
sizes, links), symbols (indexes, values, sections), relocations (offsets, symbol indexes, types), the words
of .BTF, .BTF.ext, map sections and code, bit flips and truncations. Every outcome is a program or a
BpforgeError naming the file; never another exception, and never the reader's catch-all for the unforeseen."""

from __future__ import annotations

import random
import struct

import pytest

from bpforge.elf.layout import SHDR, SHF_EXECINSTR, SHT_REL, SHT_SYMTAB, read_image
from bpforge.errors import BpforgeError
from bpforge.formats import load_program
from conftest import EXAMPLE_OBJECTS

MUTATIONS = 400
INTERESTING = [0, 1, 2, 3, 4, 7, 8, 12, 16, 20, 24, 64, 100, 1000, 0x7F, 0x80, 0xFF, 0xFFFF, 0xFF00, 0xFFF1,
               0x7FFFFFFF, 0x80000000, 0xFFFFFFFF, 1 << 63, (1 << 64) - 1]


def fields(data: bytes) -> list[tuple[int, int]]:
    """(offset, size) of the fields worth mutating in this object."""
    out = [(16, 2), (18, 2), (40, 8), (58, 2), (60, 2), (62, 2)]  # e_type, e_machine, e_shoff, sizes, counts
    image = read_image(data)
    shoff = struct.unpack_from("<Q", data, 40)[0]
    for i, sec in enumerate(image.sections):
        base = shoff + i * SHDR.size
        out += [(base + off, size) for off, size in ((0, 4), (4, 4), (8, 8), (24, 8), (32, 8), (40, 4), (44, 4),
                                                     (56, 8))]
        h = sec.header
        if h.type == SHT_SYMTAB:
            for k in range(h.size // 24):
                b = h.offset + 24 * k
                out += [(b, 4), (b + 4, 1), (b + 6, 2), (b + 8, 8), (b + 16, 8)]
        elif h.type == SHT_REL:
            for k in range(h.size // 16):
                b = h.offset + 16 * k
                out += [(b, 8), (b + 8, 4), (b + 12, 4)]
        elif sec.name in (".BTF", ".BTF.ext", ".maps", "maps") or h.flags & SHF_EXECINSTR:
            out += [(h.offset + k, 4) for k in range(0, h.size - 3, 4)]
    return out


def mutate(rng: random.Random, data: bytes, places: list[tuple[int, int]]) -> bytes:
    raw = bytearray(data)
    for _ in range(rng.randint(1, 3)):
        if not raw:
            break
        choice = rng.random()
        if choice < 0.75:
            off, size = rng.choice(places)
            mask = (1 << size * 8) - 1
            old = int.from_bytes(raw[off:off + size], "little")
            value = rng.choice([rng.choice(INTERESTING), rng.getrandbits(size * 8),
                                old + rng.choice([-8, -1, 1, 8, 4096])]) & mask
            raw[off:off + size] = value.to_bytes(size, "little")
        elif choice < 0.92:
            pos = rng.randrange(len(raw))
            raw[pos] ^= 1 << rng.randrange(8)
        else:
            del raw[rng.randrange(len(raw)):]
    return bytes(raw)


def test_mutated_objects_load_or_fail_with_bpforge_errors(tmp_path):
    rng = random.Random(20261201)
    bases = {p: p.read_bytes() for p in EXAMPLE_OBJECTS}
    places = {p: fields(d) for p, d in bases.items()}
    path = tmp_path / "mutant.o"
    outcomes = {"loaded": 0, "refused": 0}
    for n in range(MUTATIONS):
        origin = rng.choice(sorted(bases))
        path.write_bytes(mutate(rng, bases[origin], places[origin]))
        for link in (True, False):
            try:
                loaded = load_program(path, link=link)
                for prog in loaded.object.programs + loaded.object.subprograms:
                    loaded.object.linked(prog)
                outcomes["loaded"] += 1
            except BpforgeError as err:
                assert err.where.file == str(path), (n, origin.name, str(err))
                assert "corrupt ELF file (" not in err.message, (n, origin.name, err.message)
                outcomes["refused"] += 1
            except Exception as err:  # noqa: BLE001
                pytest.fail(f"mutation {n} of {origin.name}: {type(err).__name__}: {err}")
    assert outcomes["loaded"] and outcomes["refused"]  # the fuzz reaches past the first checks
