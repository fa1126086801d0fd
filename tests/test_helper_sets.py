"""isa/helper_sets.py against the running kernel: every helper id, for every program type it states."""

from __future__ import annotations

import gzip

import pytest

from bpforge.isa import Insn
from bpforge.isa.helper_sets import SLEEPABLE_ONLY, helper_allowed, known_types
from bpforge.isa.helpers import HELPER_NAMES
from bpforge.kernel.program import verify_insns

_REFUSALS = ("unknown func", "program of this type cannot use helper", "helper call might sleep")
# Helpers the kernel builds only with an option (net/core/filter.c): helper_sets states the kernel with it,
# and where this kernel's configuration leaves it out they are not compared.
CONFIG_GATED = {"bpf_lwt_seg6_store_bytes": "CONFIG_IPV6_SEG6_BPF", "bpf_lwt_seg6_adjust_srh": "CONFIG_IPV6_SEG6_BPF",
                "bpf_lwt_seg6_action": "CONFIG_IPV6_SEG6_BPF"}


def _compiled_out() -> frozenset[str]:
    """The gated helpers this kernel's /proc/config.gz says it was built without (none when it cannot say)."""
    try:
        with gzip.open("/proc/config.gz", "rt") as config:
            enabled = {line.split("=")[0] for line in config if line.rstrip().endswith(("=y", "=m"))}
    except OSError:
        return frozenset()
    return frozenset(name for name, option in CONFIG_GATED.items() if option not in enabled)


def _kernel_allows(prog_type: str, helper: int) -> bool:
    """Whether the verifier got past "may this type call it" (its argument checks come after)."""
    insns = [Insn.make("call", imm=helper), Insn.make("mov64_imm", dst=0, imm=0), Insn.make("exit")]
    message = verify_insns(insns, prog_type).message
    return not message.startswith(_REFUSALS)


@pytest.mark.parametrize("prog_type", sorted(known_types()))
def test_every_helper_is_allowed_where_the_kernel_allows_it(kernel, prog_type):
    absent = _compiled_out()
    wrong = [HELPER_NAMES[h] for h in HELPER_NAMES
             if HELPER_NAMES[h] not in absent and helper_allowed(prog_type, h) != _kernel_allows(prog_type, h)]
    assert not wrong, f"{prog_type}: {wrong}"


def test_names_ids_and_sleepable_helpers():
    assert helper_allowed("xdp", "bpf_xdp_adjust_head") and helper_allowed("xdp", 44)
    assert not helper_allowed("socket_filter", "xdp_adjust_head")
    assert all(not helper_allowed("xdp", name) and helper_allowed("xdp", name, sleepable=True)
               for name in SLEEPABLE_ONLY)
    assert helper_allowed("syscall", "copy_from_user")
    with pytest.raises(KeyError):
        helper_allowed("lsm", "map_lookup_elem")
