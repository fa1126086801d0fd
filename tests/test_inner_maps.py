"""Maps of maps: the inner template inferred from the fallback idiom (K2's .maps name none), our verifier
typing an outer lookup as an inner map or NULL, and the kernel creating and accepting the program the
loader builds from a K2 trio."""

from __future__ import annotations

from dataclasses import replace

import pytest

from bpforge.analysis.inner_maps import inner_templates
from bpforge.formats import load_program
from bpforge.isa import assemble, helper_id
from bpforge.isa.codec import encode
from bpforge.isa.maptypes import MapSpec
from bpforge.kernel import kernel_available
from bpforge.opt.gate import Subject
from bpforge.opt.track import Transformation
from bpforge.verifier.check import Unsupported, verify_program

LOOKUP = helper_id("map_lookup_elem")
ARRAY_OF_MAPS = 12
# Katran's idiom: lru_map = lookup(&lru_mapping, &cpu); if (!lru_map) lru_map = &fallback_cache; then the
# program looks a key up in whichever it got.
FALLBACK = f"""
r1 = 0
*(u32 *)(r10 - 4) = r1
r2 = r10
r2 += -4
r1 = map_fd(1) ll
call {LOOKUP}
r1 = r0
if r1 != 0 goto +2
r1 = map_fd(0) ll
*(u64 *)(r10 - 16) = 0
r2 = r10
r2 += -16
call {LOOKUP}
if r0 == 0 goto +1
r0 = *(u64 *)(r0 + 0)
r0 = 2
exit
"""
CACHE = MapSpec.of("lru_hash", 8, 8, 16, name="fallback_cache", ref=0)
OUTER = MapSpec.of("array_of_maps", 4, 4, 4, name="lru_mapping", ref=1)
OTHER = MapSpec.of("array", 4, 8, 4, name="stats", ref=2)


def test_the_fallback_idiom_names_the_inner_template():
    assert inner_templates(assemble(FALLBACK), [CACHE, OUTER]) == {1: 0}


def test_no_template_without_the_idiom_or_when_two_maps_meet_it():
    lone = FALLBACK.replace("if r1 != 0 goto +2\nr1 = map_fd(0) ll\n", "if r1 == 0 goto +5\n")
    assert inner_templates(assemble(lone), [CACHE, OUTER]) == {}
    # two different ordinary maps stand in for the lookup result on different paths: no single shape
    two = FALLBACK.replace("if r1 != 0 goto +2\nr1 = map_fd(0) ll\n",
                           "if r1 != 0 goto +5\nr1 = map_fd(0) ll\nif r6 > 1 goto +2\nr1 = map_fd(2) ll\n")
    assert inner_templates(assemble("r6 = r1\n" + two), [CACHE, OUTER, OTHER]) == {}


def test_our_verifier_types_an_outer_lookup_as_an_inner_map_or_null():
    insns = assemble(FALLBACK)
    with_inner = replace(OUTER, inner=replace(CACHE, ref=None))
    assert verify_program(insns, "xdp", [CACHE, with_inner]).accepted
    with pytest.raises(Unsupported, match="inner map is not known"):
        verify_program(insns, "xdp", [CACHE, OUTER])
    # the result may be NULL: using it unchecked is what the kernel refuses too
    unchecked = FALLBACK.replace("if r1 != 0 goto +2\nr1 = map_fd(0) ll\n", "")
    verdict = verify_program(assemble(unchecked), "xdp", [CACHE, with_inner])
    assert not verdict.accepted and verdict.insn is not None


def _trio(tmp_path):
    (tmp_path / "p.insns").write_bytes(encode(assemble(FALLBACK)))
    (tmp_path / "p.maps").write_text(
        f"fallback_cache {{ type = 9, key_size = 8, value_size = 8, max_entries = 16, fd = 0 }}\n"
        f"lru_mapping {{ type = {ARRAY_OF_MAPS}, key_size = 4, value_size = 4, max_entries = 4, fd = 1 }}\n")
    (tmp_path / "p.desc").write_text("{ pgm_input_type = 2, }\n{ max_pkt_sz = 64, }\n")
    return load_program(tmp_path / "p.insns", prog_type="xdp")


def test_the_k2_loader_gives_the_outer_map_its_template(tmp_path):
    outer = next(spec for spec in _trio(tmp_path).maps if spec.type_name == "array_of_maps")
    assert outer.inner is not None and (outer.inner.type_name, outer.inner.key_size) == ("lru_hash", 8)


@pytest.mark.skipif(kernel_available() is not None, reason=f"needs bpf(): {kernel_available()}")
def test_the_kernel_creates_the_outer_map_and_accepts_the_program(tmp_path):
    with Subject.of(_trio(tmp_path)) as subject:
        start = Transformation.start(subject.insns)
        assert subject.kernel(start) == (True, "")
        assert subject.ours(start)[0] is True
