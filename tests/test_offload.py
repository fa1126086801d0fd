"""Offload: the shipped device profiles, `offload check`'s verdicts and reasons on every example for every
profile, map placement, and runs on the emulated devices (results equal to the interpreter's, cycles by
the profile's costs)."""

from __future__ import annotations

import functools
import json
import re
import subprocess
import sys
from importlib import resources

import pytest

from bpforge import load
from bpforge.errors import BpforgeError
from bpforge.formats.loader import load_program
from bpforge.isa.ops import Call, decode_ops
from bpforge.jit.device import unicorn_available
from bpforge.offload.check import HOST_ONLY, OFFLOADABLE, PARTLY, check
from bpforge.offload.profile import ProfileError, all_profiles, parse_profile, profile, shipped
from bpforge.verifier.report import program_inputs

from conftest import EXAMPLES
from test_jit_x86_64 import IPV4_TCP

BPFORGE = [sys.executable, "-m", "bpforge.cli"]
OBJ = EXAMPLES / "obj"
needs_unicorn = pytest.mark.skipif(unicorn_available() is not None, reason=str(unicorn_available()))


def nfp_text() -> str:
    return (resources.files("bpforge.offload") / "profiles" / "nfp.toml").read_text()


def custom(tmp_path, **changes) -> str:
    """A profile file: the NFP-like one with `key = value` lines replaced (the first line of each key)."""
    text = nfp_text()
    for key, value in changes.items():
        text, n = re.subn(rf"^{key} = .*$", f"{key} = {value}", text, count=1, flags=re.M)
        assert n == 1, key
    path = tmp_path / "device.toml"
    path.write_text(text)
    return str(path)


# ---- profiles ----------------------------------------------------------------------------------------------

def test_the_shipped_profiles():
    assert {"host", "nfp", "arm64-smartnic", "riscv64-smartnic"} <= set(shipped())
    by_name = {p.name: p for p in all_profiles()}
    nfp = by_name["nfp"]
    assert nfp.map_types == {"hash", "array"} and not nfp.features.tail_calls and nfp.features.atomics == {"add"}
    assert nfp.features.division == "constants" and nfp.costs["alu64"] > nfp.costs["alu32"]
    assert not nfp.holds_map_type("percpu_array") and nfp.prog_types == {"xdp"}
    assert by_name["arm64-smartnic"].isa == "arm64" and by_name["riscv64-smartnic"].isa == "riscv64"
    assert by_name["host"].takes_prog_type("socket_filter") and by_name["host"].serves_helper("ktime_get_ns")


@pytest.mark.parametrize("edit, message", [
    (lambda t: t.replace('isa = "riscv64"', 'isa = "mips"'), "nfp.toml: isa must be one of x86_64, arm64, riscv64"),
    (lambda t: t.replace("stack = 512\n", ""), "nfp.toml: missing key limits.stack"),
    (lambda t: t.replace("stack = 512", "stack = 512\nstak = 1"), "nfp.toml: unknown key limits.stak"),
    (lambda t: t.replace('"get_prandom_u32",', '"get_random",'), "nfp.toml: helpers.supported: no helper named get_random"),
    (lambda t: t.replace('division = "constants"', 'division = "some"'), "features.division must be one of"),
    (lambda t: t.replace("clock_mhz = 800", "clock_mhz = 0"), "clock_mhz must be positive"),
    (lambda t: t.replace('atomics = ["add"]', 'atomics = ["sub"]'), "features.atomics: unknown sub"),
    (lambda t: t + "\n[extra]\n", "unknown key extra"),
    (lambda t: "name = ", "not a TOML profile"),
])
def test_a_bad_profile_is_one_error_naming_the_key(edit, message):
    with pytest.raises(ProfileError, match=re.escape(message)):
        parse_profile(edit(nfp_text()), "nfp.toml")


def test_a_device_by_name_or_file(tmp_path):
    assert profile(custom(tmp_path, insns=100)).limits.insns == 100
    with pytest.raises(ProfileError, match="no device 'nope' .*nfp"):
        profile("nope")
    with pytest.raises(ProfileError, match="missing.toml"):
        profile(str(tmp_path / "missing.toml"))


# ---- verdicts on every example -----------------------------------------------------------------------------

# Why each: host takes everything; nfp takes XDP only, no per-CPU or LRU or LPM maps, no division by a
# register, no cmpxchg, a helper subset; the arm64 SmartNIC takes XDP and tc with most maps and reaches host
# maps; the riscv64 SmartNIC has no v4 forms, no LPM tries and 32 MiB of map memory. "partly" means a
# multi-stage split exists (bpf2bpf_loop has none: a stack address escapes into a callee, so no stack slot
# can be reserved for the hand-off).
VERDICTS = {
    #                     host         nfp        arm64-smartnic riscv64-smartnic
    "asm_mem_sum":       (OFFLOADABLE, OFFLOADABLE, OFFLOADABLE, OFFLOADABLE),
    "asm_xdp_pass":      (OFFLOADABLE, OFFLOADABLE, OFFLOADABLE, OFFLOADABLE),
    "bpf2bpf_loop":      (OFFLOADABLE, HOST_ONLY, OFFLOADABLE, OFFLOADABLE),
    "bpf2bpf_loop.v4":   (OFFLOADABLE, HOST_ONLY, OFFLOADABLE, HOST_ONLY),
    "global_data":       (OFFLOADABLE, PARTLY, OFFLOADABLE, OFFLOADABLE),
    "legacy_maps":       (OFFLOADABLE, PARTLY, OFFLOADABLE, OFFLOADABLE),
    "socket_filter":     (OFFLOADABLE, HOST_ONLY, HOST_ONLY, HOST_ONLY),
    "tc_classifier":     (OFFLOADABLE, HOST_ONLY, OFFLOADABLE, HOST_ONLY),
    "xdp_counter":       (OFFLOADABLE, PARTLY, OFFLOADABLE, OFFLOADABLE),
    "xdp_counter.v4":    (OFFLOADABLE, PARTLY, OFFLOADABLE, PARTLY),
    "xdp_firewall":      (OFFLOADABLE, PARTLY, OFFLOADABLE, PARTLY),
    "xdp_lb":            (OFFLOADABLE, PARTLY, OFFLOADABLE, PARTLY),
    "xdp_ratelimit":     (OFFLOADABLE, PARTLY, OFFLOADABLE, OFFLOADABLE),
}
DEVICES = ("host", "nfp", "arm64-smartnic", "riscv64-smartnic")


@functools.cache
def checked(name: str, device: str, stage: bool = True):
    """The check of an example on a device, once per test session (a multi-stage search takes seconds)."""
    return check(load_program(OBJ / f"{name}.o"), profile(device), stage=stage)


@pytest.mark.parametrize("name", sorted(VERDICTS))
def test_verdict_of_every_example_on_every_device(name):
    found = tuple(checked(name, d).verdict for d in DEVICES)
    assert found == VERDICTS[name]


def reasons(name: str, device: str) -> list:
    return checked(name, device, stage=False).reasons


def test_xdp_lb_on_the_nfp_names_each_helper_and_map_it_cannot_take():
    found = reasons("xdp_lb", "nfp")
    kinds = {(r.kind, r.map) for r in found}
    assert kinds == {("helper", None), ("map", "lb_stats"), ("map", "conn_table"), ("map", "rev_nat")}
    helpers = {re.match(r"(bpf_\w+)", r.message).group(1) for r in found if r.kind == "helper"}
    assert helpers == {"bpf_ktime_get_ns", "bpf_csum_diff"}
    assert all(r.insn is not None and r.line.startswith("xdp_lb.c:") for r in found)
    stats = next(r for r in found if r.map == "lb_stats")
    assert "no per-CPU maps" in stats.message and stats.suggestion.startswith("declare lb_stats as array")
    lru = next(r for r in found if r.map == "conn_table")
    assert "lru_hash" in lru.message and lru.suggestion.startswith("declare conn_table as hash (no eviction")
    # every call of bpf_ktime_get_ns is named, at the instruction that calls it
    insns, _, _ = program_inputs(load_program(OBJ / "xdp_lb.o"))
    calls = {slot for slot, op in enumerate(decode_ops(insns))
             if isinstance(op, Call) and op.kind == "helper" and op.target == 5}
    assert calls and {r.insn for r in found if "ktime_get_ns" in r.message} == calls


@pytest.mark.parametrize("name, device, expected", [
    ("bpf2bpf_loop", "nfp", "unsigned division by a register: the device divides by constants only"),
    ("xdp_ratelimit", "nfp", "atomic cmpxchg of 64 bits: the device's atomics are add"),
    ("socket_filter", "nfp", "socket_filter programs do not attach to the device (it takes xdp)"),
    ("tc_classifier", "riscv64-smartnic", "sched_cls programs do not attach to the device"),
    ("tc_classifier", "nfp", "bpf_l3_csum_replace (#10) is not a helper the device serves"),
    ("xdp_counter.v4", "riscv64-smartnic", "unconditional byte swap bswap16 (cpu v4): not supported by the device"),
    ("bpf2bpf_loop.v4", "riscv64-smartnic", "signed sdiv (cpu v4): no signed division on the device"),
    ("xdp_firewall", "riscv64-smartnic", "map src4_deny (lpm_trie) cannot live on the device"),
    ("xdp_lb", "riscv64-smartnic", "exceeds the 2081424 left of the device's map memory"),
    ("global_data", "nfp", "unsigned modulo by a register: the device divides by constants only"),
])
def test_the_reason_a_device_refuses(name, device, expected):
    assert any(expected in r.message for r in reasons(name, device)), [r.message for r in reasons(name, device)]


def test_a_partly_offloadable_program_comes_with_its_split():
    report = checked("xdp_counter", "nfp")
    assert report.verdict == PARTLY and report.cut is not None and report.cut.point == 40
    assert "multi-stage split" in report.text() and report.as_json()["stage"]["device_insns"] > 40
    none = checked("bpf2bpf_loop", "nfp")
    assert none.verdict == HOST_ONLY and none.cut is None
    assert any(n.startswith("no multi-stage split: no eligible cut") and "a stack address escapes" in n
               for n in none.notes)
    tc = checked("tc_classifier", "arm64-smartnic")
    assert tc.verdict == OFFLOADABLE  # takes tc; the tc program cannot be staged where it is partly:
    tc_riscv = check(load_program(OBJ / "tc_classifier.o"), custom_tc())
    assert tc_riscv.verdict == HOST_ONLY and any("cannot be staged" in n for n in tc_riscv.notes)


def custom_tc():
    text = nfp_text().replace('prog_types = ["xdp"]', 'prog_types = ["xdp", "sched_cls"]')
    return parse_profile(text, "nfp-tc.toml")


def test_suggestions():
    found = {r.message: r.suggestion for r in reasons("xdp_counter.v4", "riscv64-smartnic")}
    assert set(found.values()) == {"compile with clang -mcpu=v3"}
    found = [r for r in reasons("xdp_lb", "riscv64-smartnic") if r.map == "ch_rings"]
    assert found and found[0].suggestion == "make ch_rings smaller"


def test_maps_the_device_cannot_hold_stay_on_the_host_when_it_reaches_them(tmp_path):
    device = custom(tmp_path, host_access="true", host_map_access=1500)
    report = check(load_program(OBJ / "xdp_counter.o"), profile(device))
    assert report.verdict == OFFLOADABLE
    placement = {p.map: p for p in report.placements}
    assert placement["class_stats"].where == "host" and placement["class_stats"].access_cycles == 1500
    assert placement["size_hist"].where == "device"
    assert any("class_stats stays on the host" in note for note in report.notes)


# ---- the needs of single instructions ---------------------------------------------------------------------

def asm_check(tmp_path, text: str, device: str = "nfp", prog_type: str = "xdp"):
    path = tmp_path / "prog.s"
    path.write_text(text)
    return check(load_program(path, prog_type=prog_type), profile(device))


@pytest.mark.parametrize("text, expected", [
    ("r0 = 7\nr0 /= 3\nexit", None),  # by a constant: the NFP's reciprocal
    ("r0 = 7\nr1 = 3\nr0 /= r1\nexit", "division by a register"),
    ("r1 = 1\n*(u64 *)(r10 - 8) = r1\nlock *(u64 *)(r10 - 8) += r1\nr0 = 0\nexit", None),
    ("r1 = 1\n*(u64 *)(r10 - 8) = r1\nr1 = atomic_fetch_add((u64 *)(r10 - 8), r1)\nr0 = 0\nexit",
     "atomic fetch-and-add"),
    ("r1 = 1\n*(u64 *)(r10 - 8) = r1\nlock *(u64 *)(r10 - 8) |= r1\nr0 = 0\nexit", "atomic or of 64 bits"),
    ("r6 = r1\nr0 = *(u8 *)skb[12]\nexit", "legacy packet load"),
    ("r0 = 0\nr1 = 1\nr0 = (s8)r1\nexit", "sign-extending move from 8 bits (cpu v4)"),
    ("r0 = 0\ngotol +0\nexit", "long jump gotol (cpu v4)"),
    ("r0 = 0\nl:\nmay_goto +1\ngoto l\nexit", "may_goto"),
    ("call 5\nr0 = 0\nexit", "bpf_ktime_get_ns (#5) is not a helper the device serves"),
    ("call f\nexit\nf:\nr0 = 0\nexit", None),
])
def test_what_one_instruction_needs(tmp_path, text, expected):
    report = asm_check(tmp_path, text)
    messages = [r.message for r in report.reasons]
    if expected is None:
        assert report.verdict == OFFLOADABLE, messages
    else:
        assert any(expected in m for m in messages), messages
        assert all(r.insn is not None for r in report.reasons)


def test_tail_calls_and_program_limits(tmp_path):
    report = asm_check(tmp_path, "r2 = 0\nr3 = 0\ncall 12\nr0 = 0\nexit")
    assert any(r.kind == "tail_call" and r.insn == 2 for r in report.reasons)
    small = custom(tmp_path, insns=3, stack=16)
    report = asm_check(tmp_path, "r1 = 0\n*(u64 *)(r10 - 24) = r1\nr0 = 0\nexit", device=small)
    assert report.verdict == HOST_ONLY
    assert {r.kind for r in report.reasons} == {"size", "stack"}
    assert "4 instructions, more than the device's 3" in report.text()
    assert "24 bytes of stack, more than the device's 16" in report.text()


def test_a_blocked_first_instruction_leaves_nothing_to_stage(tmp_path):
    assert asm_check(tmp_path, "call 5\nr0 = 0\nexit").verdict == HOST_ONLY
    assert asm_check(tmp_path, "r0 = 0\ncall 5\nr0 = 0\nexit").verdict == PARTLY


# ---- runs on the devices ----------------------------------------------------------------------------------

OFFLOADED = [(name, device) for name, verdicts in sorted(VERDICTS.items()) for device, verdict in
             zip(DEVICES, verdicts) if verdict == OFFLOADABLE and device != "host" and not name.startswith("asm_mem")]


@needs_unicorn
@pytest.mark.parametrize("name, device", OFFLOADED)
def test_a_device_run_equals_the_interpreter(name, device):
    program = load(OBJ / f"{name}.o")
    packet = bytes.fromhex(IPV4_TCP)
    on_device = program.offload_run(device, packet)
    reference = program.run(packet, engine="interp", dump_maps=True)
    assert on_device.ran_on == "device"
    assert (on_device.retval, on_device.data_out, on_device.maps) == (reference.retval, reference.data_out,
                                                                       reference.maps)
    assert on_device.device_cycles > 0 and on_device.device_insns > 0


@needs_unicorn
def test_cycles_are_the_profiles_costs_times_the_counts(tmp_path):
    # 2 + 100 x 3 + 1 instructions: r0 = 0 and r2 = 100 (ALU64), the loop (two ALU64 and a branch), exit
    text = "r0 = 0\nr2 = 100\nl:\nr0 += r2\nr2 -= 1\nif r2 != 0 goto l\nr0 = 0\nexit\n"
    path = tmp_path / "loop.s"
    path.write_text(text)
    device = custom(tmp_path, alu64=5, branch=7)
    report = load(path, prog_type="xdp").offload_run(device, bytes(64))
    assert report.counts == {0: 1, 1: 1, 2: 100, 3: 100, 4: 100, 5: 1, 6: 1}
    assert report.device_cycles == 5 * (2 + 200 + 1) + 7 * (100 + 1)
    assert report.device_ns == pytest.approx(report.device_cycles * 1000 / 800)


@needs_unicorn
def test_what_the_host_runs_instead(tmp_path):
    program = load(OBJ / "xdp_counter.o")
    packet = bytes.fromhex(IPV4_TCP)
    host = program.offload_run("host", packet)
    assert host.ran_on == "host" and host.device_cycles is None and host.host_ns > 0
    small = custom(tmp_path, packet=32, types='["hash", "array", "percpu_array"]')
    big = program.offload_run(small, packet)
    assert big.ran_on == "host" and "more than the device's 32" in big.why
    assert big.retval == host.retval


@needs_unicorn
@pytest.mark.parametrize("name", ["xdp_counter", "xdp_firewall", "xdp_ratelimit", "legacy_maps", "global_data"])
def test_a_partly_offloadable_program_runs_staged_as_the_original(name):
    program = load(OBJ / f"{name}.o")
    assert program.offload_check("nfp").verdict == PARTLY
    packet = bytes.fromhex(IPV4_TCP)
    staged = program.offload_run("nfp", packet)
    reference = program.run(packet, engine="interp", dump_maps=True)
    assert staged.ran_on in ("device", "device+host") and staged.why.startswith("staged at insn")
    assert (staged.retval, staged.data_out, staged.maps) == (reference.retval, reference.data_out, reference.maps)


def test_a_program_the_device_cannot_take_does_not_run_there():
    with pytest.raises(BpforgeError, match=r"xdp_telemetry is not offloadable to nfp: insn \d+ .*division by a "
                                           r"register"):
        load(OBJ / "bpf2bpf_loop.o").offload_run("nfp", bytes.fromhex(IPV4_TCP))


# ---- the CLI ------------------------------------------------------------------------------------------------

def bpforge(*args):
    return subprocess.run([*BPFORGE, *map(str, args)], capture_output=True, text=True)


def test_cli_devices_check_and_run():
    listed = bpforge("offload", "devices", "--json")
    assert listed.returncode == 0
    assert {d["name"] for d in json.loads(listed.stdout)} >= set(DEVICES)
    text = bpforge("offload", "devices").stdout
    assert "nfp" in text and "riscv64" in text
    ok = bpforge("offload", "check", OBJ / "xdp_counter.o", "--device", "arm64-smartnic", "--json")
    assert ok.returncode == 0 and json.loads(ok.stdout)["verdict"] == OFFLOADABLE
    partly = bpforge("offload", "check", OBJ / "xdp_counter.o", "--device", "nfp", "--json")
    assert partly.returncode == 1
    shown = json.loads(partly.stdout)
    assert shown["verdict"] == PARTLY and shown["blocked_insns"] == [40, 42]
    assert {r["map"] for r in shown["reasons"]} == {"class_stats"}
    text = bpforge("offload", "check", OBJ / "xdp_counter.o", "--device", "nfp").stdout
    assert "insns 40 (xdp_counter.c:110), 42 (xdp_counter.c:111): map class_stats" in text


def test_cli_bad_device_and_refused_run_are_one_line():
    bad = bpforge("offload", "check", OBJ / "xdp_counter.o", "--device", "nope")
    assert bad.returncode == 2 and len(bad.stderr.strip().splitlines()) == 1 and "no device 'nope'" in bad.stderr
    refused = bpforge("offload", "run", OBJ / "socket_filter.o", "--device", "nfp", "--data", IPV4_TCP)
    assert refused.returncode == 2 and len(refused.stderr.strip().splitlines()) == 1
    assert "not offloadable to nfp" in refused.stderr


@needs_unicorn
def test_cli_run_on_a_device():
    out = bpforge("offload", "run", OBJ / "xdp_counter.o", "--device", "riscv64-smartnic", "--data", IPV4_TCP,
                  "--json")
    assert out.returncode == 0, out.stderr
    shown = json.loads(out.stdout)
    assert shown["ran_on"] == "device" and shown["device_cycles"] > 0 and shown["retval"] == 2


def test_the_split_search_obeys_its_budget():
    report = check(load_program(OBJ / "xdp_lb.o"), profile("nfp"), budget=0.001)
    assert report.verdict == HOST_ONLY and report.cut is None
    assert any("within the search's budget of 0.001 s" in n for n in report.notes), report.notes


def test_cli_explicit_and_implicit_modes():
    base = ("offload", "run", OBJ / "xdp_counter.o", "--device", "nfp", "--data", IPV4_TCP, "--json")
    implicit = bpforge(*base)
    assert implicit.returncode == 0 and json.loads(implicit.stdout)["ran_on"] == "device+host"
    refused = bpforge(*base, "--explicit")
    assert refused.returncode == 2 and len(refused.stderr.strip().splitlines()) == 1
    assert "explicit offload: xdp_count does not run whole on nfp: insn 40" in refused.stderr
    chosen = bpforge(*base, "--explicit", "--cut", "40")
    assert chosen.returncode == 0, chosen.stderr
    assert json.loads(chosen.stdout)["retval"] == json.loads(implicit.stdout)["retval"]
    bad = bpforge(*base, "--explicit", "--cut", "41")
    assert bad.returncode == 2 and len(bad.stderr.strip().splitlines()) == 1 and "insn 41" in bad.stderr
    typo = bpforge(*base, "--cut", "forty")
    assert typo.returncode == 2 and "--cut takes instruction indexes" in typo.stderr
    checked = bpforge("offload", "check", OBJ / "xdp_counter.o", "--device", "nfp", "--cut", "40", "--json")
    assert checked.returncode == 1 and json.loads(checked.stdout)["stage"]["device_insns"] > 0
