"""Map sizes the kernel refuses at BPF_MAP_CREATE (E2BIG, EINVAL, ENOMEM), refused by the interpreter with
the same errno before it allocates anything; and maps the interpreter refuses (ENOMEM) because the kernel
would allocate more than the VM's limit for them at creation.

Only definitions the kernel refuses before allocating (or that are small) go to the kernel here: a map
the kernel accepts is really allocated, and a big one would take the machine's memory."""

from __future__ import annotations

import errno

import pytest
from vmdiff import outcome, md

from bpforge.isa.maptypes import MapError
from bpforge.vm.maps import create_map
from bpforge.vm.maps.limits import VM_MAP_MEMORY_LIMIT

kernel_maps = pytest.importorskip("bpforge.kernel.maps")
KernelMap = kernel_maps.KernelMap



REFUSED = [
    md("array", 4, 0xFFFFFFFF, 1), md("array", 4, 0x80000000, 1), md("array", 4, 0x7FFFFFFF, 0x7FFF),
    md("percpu_array", 4, 32769, 1), md("percpu_array", 4, 8, 4, 0x4, numa_node=0),
    md("hash", 0xFFFFFFFF, 4, 1), md("hash", 4, 0xFFFFFFFF, 1), md("hash", 4, 0x3FFFCC, 1),
    md("hash", 512, 0x3FFFCC - 508, 1), md("hash", 4, 4, 0x8000001, 1), md("hash", 4, 4, 0x80000000, 1),
    md("lru_hash", 4, 4, 0x8000001), md("percpu_hash", 4, 32769, 1),
    md("lpm_trie", 8, 0x3FFEE9, 1, 1), md("lpm_trie", 261, 4, 1, 1), md("lpm_trie", 8, 0xFFFFFFFF, 1, 1),
    md("queue", 0, 0x400001, 1), md("stack", 0, 0xFFFFFFFF, 1), md("bloom_filter", 0, 0x400001, 1),
    md("prog_array", 4, 4, 0, 0), md("ringbuf", 0, 0, 4097),
]
ACCEPTED = [md("hash", 4, 0x3FFFCB, 1, 1), md("lpm_trie", 8, 0x3FFEE8, 1, 1), md("queue", 0, 0x400000, 1),
            md("array", 4, 0x100000, 2)]


@pytest.mark.parametrize("mapdef", REFUSED + ACCEPTED, ids=lambda d: f"{d.type_name}-k{d.key_size:#x}-"
                                                                     f"v{d.value_size:#x}-n{d.max_entries:#x}")
def test_size_limits_match_kernel(mapdef, kernel):
    mine = outcome(create_map, mapdef)
    theirs = outcome(KernelMap.create, mapdef)
    assert mine[0] == theirs[0]
    if theirs[0] == "errno":
        assert mine == theirs
    else:
        theirs[1].close()


@pytest.mark.parametrize("mapdef", [md("array", 4, 1 << 20, 2048), md("hash", 4, 4, 1 << 27, 1),
                                    md("percpu_array", 4, 32768, 1 << 14), md("lru_hash", 64, 4096, 1 << 18),
                                    md("queue", 0, 1 << 22, 1 << 9), md("prog_array", 4, 4, 1 << 30)],
                         ids=lambda d: d.type_name)
def test_the_interpreter_refuses_maps_above_its_memory_limit(mapdef):
    with pytest.raises(MapError) as info:
        create_map(mapdef, num_cpus=4)
    assert info.value.errno == errno.ENOMEM and str(VM_MAP_MEMORY_LIMIT) in str(info.value)


def test_big_maps_below_the_limit_cost_nothing_until_used():
    m = create_map(md("array", 4, 1 << 16, 1 << 13))  # 512 MiB in the kernel
    assert m.lookup((5).to_bytes(4, "little")) == bytes(1 << 16)
    assert len(m._slots) == 0
