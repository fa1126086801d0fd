"""`bpforge optimize-many`: the fleet of a directory or a manifest, every program of a multi-program object
optimized into one output object that both verifiers accept, failed rows for bad files, the JSON shape,
and resuming: after a SIGKILL (a subprocess, killed once its state records a program done), after a stop,
after an input changed. Every run uses a rule store of its own (never ~/.cache)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import bpforge
from bpforge.cli import main
from bpforge.formats import assemble_file, load_program
from bpforge.kernel import kernel_available
from bpforge.opt.fleet import discover
from bpforge.opt.fleet_state import STATE_FILE

from conftest import EXAMPLES, ROOT, compile_cases

NO_KERNEL = kernel_available()
OBJ = EXAMPLES / "obj"
K2 = Path("/work/shared/bench/k2")

# Three programs in three sections, each with something the rule passes remove.
MULTI_S = """
	.section xdp, "ax"
xdp_one:
	r2 = *(u32 *)(r1 + 0)
	r3 = *(u32 *)(r1 + 4)
	r0 = 1
	r4 = r2
	r4 += 14
	if r4 > r3 goto +3
	r5 = *(u8 *)(r2 + 12)
	r5 += 0
	r0 = 2
	r0 += 0
	exit

	.section tc, "ax"
tc_one:
	r0 = 0
	r1 = 7
	r1 *= 1
	r0 = r1
	r0 &= 0
	exit

	.section socket, "ax"
sock_one:
	r2 = 3
	r2 += 1
	r0 = *(u32 *)(r1 + 0)
	exit
"""
MULTI_PROGRAMS = ["xdp_one", "tc_one", "sock_one"]


def multi_object(path: Path) -> Path:
    source = path.with_suffix(".s")
    source.write_text(MULTI_S)
    path.write_bytes(assemble_file(source, "elf"))
    source.unlink()
    return path


def fleet(capsys, *args) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as exited:
        main(["optimize-many", *map(str, args)])
    out, err = capsys.readouterr()
    return exited.value.code, out, err


def rows_by_program(report: dict) -> dict[tuple[str, str | None], dict]:
    return {(row["object"], row["program"]): row for row in report["programs"]}


def assert_accepted(path: Path, program: str) -> None:
    """Our verifier (and the kernel where bpf() is there) accepts `program` of the output `path`."""
    report = bpforge.load(path, section=program).verify(kernel=NO_KERNEL is None)
    assert report.verdict == "accept", report.text()
    if NO_KERNEL is None:
        assert report.kernel.verdict == "accept", report.text()


@pytest.fixture
def rules(tmp_path) -> Path:
    return tmp_path / "rules.sqlite"


# ---- discovery ---------------------------------------------------------------------------------------------

def test_a_directory_fleet_is_its_objects_and_k2_programs(tmp_path):
    for name in ("a.o", "sub/deeper/b.o", "c.insns", "c.maps", "c.desc", "notes.txt", "d.s", "out/old.o"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(b"x")
    found = discover(tmp_path, outdir=tmp_path / "out")
    assert [e.relative for e in found.entries] == ["a.o", "c.insns", "sub/deeper/b.o"]
    assert found.root == tmp_path and all(e.wanted == () for e in found.entries)


def test_a_manifest_names_files_relative_to_it_with_sections(tmp_path):
    (tmp_path / "objs").mkdir()
    multi_object(tmp_path / "objs" / "multi.o")
    shutil.copy(OBJ / "xdp_counter.o", tmp_path / "counter.o")
    manifest = tmp_path / "fleet.txt"
    manifest.write_text("# the fleet\n\nobjs/multi.o tc_one socket   # two of its three programs\n"
                        f"{tmp_path / 'counter.o'}\n")
    found = discover(manifest)
    assert [(e.relative, e.wanted, e.line) for e in found.entries] == [
        ("objs/multi.o", ("tc_one", "socket"), 3), ("counter.o", (), 4)]


def test_a_manifest_restricts_an_object_to_the_programs_it_names(capsys, tmp_path, rules):
    multi_object(tmp_path / "multi.o")
    (tmp_path / "m.txt").write_text("multi.o tc_one socket\n")
    code, out, err = fleet(capsys, tmp_path / "m.txt", "-o", tmp_path / "out", "--no-search", "--rules", rules,
                           "--json")
    assert code == 0, err
    assert [row["program"] for row in json.loads(out)["programs"]] == ["tc_one", "sock_one"]


@pytest.mark.parametrize("lines, words", [
    ("missing.o\n", ["m.txt:1", "missing.o", "no such file"]),
    ("# first\n\nmulti.o\nmulti.o\n", ["m.txt:4", "listed already, on line 3"]),
    ("../elsewhere.o\n", ["m.txt:1", "outside the manifest's directory"]),
    ("'multi.o\n", ["m.txt:1", "cannot read the line"]),
    ("multi.o nosuch\n", ["m.txt:1", "no program or section named 'nosuch'", "xdp_one (xdp)"]),
    ("# nothing here\n\n", ["m.txt", "the fleet is empty"]),
])
def test_a_bad_manifest_line_is_one_line_and_exit_2(capsys, tmp_path, rules, lines, words):
    multi_object(tmp_path / "multi.o")
    (tmp_path.parent / "elsewhere.o").write_bytes(b"x")
    (tmp_path / "m.txt").write_text(lines)
    code, out, err = fleet(capsys, tmp_path / "m.txt", "-o", tmp_path / "out", "--no-search", "--rules", rules)
    assert code == 2 and out == "" and len(err.strip().splitlines()) == 1, err
    assert all(w in err for w in words), err
    assert not (tmp_path / "out").exists()  # nothing done before the fleet is known


@pytest.mark.parametrize("args, words", [
    (["nosuch", "-o", "out"], ["nosuch", "no such directory or manifest"]),
    (["empty", "-o", "out"], ["empty", "the fleet is empty"]),
    (["objs", "-o", "objs"], ["the outputs would replace the inputs"]),
    (["objs", "-o", "out", "--budget", "-1"], ["--budget"]),
    (["objs", "-o", "out", "--cost", "speed"], ["--cost"]),
    (["objs", "-o", "out", "--jobs", "0"], ["--jobs"]),
    (["objs"], ["--output"]),
])
def test_bad_usage_is_one_line_and_exit_2(capsys, tmp_path, monkeypatch, rules, args, words):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "empty").mkdir()
    (tmp_path / "objs").mkdir()
    multi_object(tmp_path / "objs" / "multi.o")
    code, out, err = fleet(capsys, *args, "--rules", rules)
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert all(w in err for w in words), err
    assert "Traceback" not in err


def test_a_state_file_that_is_not_ours_is_one_line_and_exit_2(capsys, tmp_path, rules):
    (tmp_path / "in").mkdir()
    multi_object(tmp_path / "in" / "multi.o")
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / STATE_FILE).write_text('{"format": "something else"}')
    code, out, err = fleet(capsys, tmp_path / "in", "-o", tmp_path / "out", "--no-search", "--rules", rules)
    assert code == 2 and len(err.strip().splitlines()) == 1 and STATE_FILE in err and "delete it" in err, err


# ---- optimizing --------------------------------------------------------------------------------------------

def test_every_program_of_a_multi_program_object_is_optimized_into_one_object(capsys, tmp_path, rules):
    (tmp_path / "in" / "sub").mkdir(parents=True)
    multi_object(tmp_path / "in" / "sub" / "multi.o")
    code, out, err = fleet(capsys, tmp_path / "in", "-o", tmp_path / "out", "--no-search", "--rules", rules, "--json")
    assert code == 0, err
    rows = rows_by_program(json.loads(out))
    assert list(rows) == [("sub/multi.o", name) for name in MULTI_PROGRAMS]
    output = tmp_path / "out" / "sub" / "multi.o"
    for name in MULTI_PROGRAMS:
        row = rows["sub/multi.o", name]
        assert row["status"] == "done" and not row["earlier"] and row["after"] < row["before"], row
        assert row["equivalent"] == "proved"
        # the output holds this program optimized, not only the last one: the chain kept each program's work
        assert len(load_program(output, section=name).insns) == row["after"]
        assert_accepted(output, name)
    assert [row["type"] for row in rows.values()] == ["xdp", "sched_cls", "socket_filter"]


def test_a_bad_file_is_a_failed_row_and_exit_1(capsys, tmp_path, rules):
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "bad.o").write_bytes(b"\x7fELF" + bytes(20))
    shutil.copy(OBJ / "asm_xdp_pass.o", tmp_path / "in" / "good.o")
    code, out, err = fleet(capsys, tmp_path / "in", "-o", tmp_path / "out", "--no-search", "--rules", rules)
    assert code == 1, err
    bad = next(line for line in out.splitlines() if line.startswith("bad.o"))
    good = next(line for line in out.splitlines() if line.startswith("good.o"))
    assert "FAILED" in bad and good.split()[-1] == "now"
    assert any(line.startswith("failed: bad.o: ") and "bad.o" in line[len("failed: bad.o: "):]
               for line in out.splitlines()), out
    assert (tmp_path / "out" / "good.o").exists() and not (tmp_path / "out" / "bad.o").exists()
    assert_accepted(tmp_path / "out" / "good.o", "xdp_pass")


def test_programs_sharing_a_section_are_failed_rows_and_the_rest_is_optimized(capsys, tmp_path, rules):
    source = r"""
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>
struct { __uint(type, BPF_MAP_TYPE_ARRAY); __uint(max_entries, 4); __type(key, __u32); __type(value, __u64); }
	counts SEC(".maps");
static __always_inline void bump(__u32 k) { __u64 *v = bpf_map_lookup_elem(&counts, &k); if (v) *v += 1; }
SEC("xdp") int a_one(struct xdp_md *ctx) { bump(0); return XDP_PASS; }
SEC("xdp") int a_two(struct xdp_md *ctx) { bump(1); return XDP_DROP; }
SEC("tc") int b_tc(struct __sk_buff *skb) { bump(2); return 0; }
char LICENSE[] SEC("license") = "GPL";
"""
    (tmp_path / "in").mkdir()
    compile_cases(tmp_path / "in", "shared", source, [0])  # in/shared0.o (skips without clang-19)
    code, out, err = fleet(capsys, tmp_path / "in", "-o", tmp_path / "out", "--no-search", "--rules", rules, "--json")
    assert code == 1, err
    rows = rows_by_program(json.loads(out))
    for name in ("a_one", "a_two"):
        assert rows["shared0.o", name]["status"] == "failed"
        assert "section xdp does not hold exactly this program" in rows["shared0.o", name]["reason"]
    assert rows["shared0.o", "b_tc"]["status"] == "done" and rows["shared0.o", "b_tc"]["after"] < \
        rows["shared0.o", "b_tc"]["before"]
    assert_accepted(tmp_path / "out" / "shared0.o", "b_tc")


def test_json_has_one_row_per_program_and_a_total(capsys, tmp_path, rules):
    (tmp_path / "in").mkdir()
    multi_object(tmp_path / "in" / "multi.o")
    shutil.copy(OBJ / "xdp_counter.o", tmp_path / "in" / "counter.o")
    code, out, err = fleet(capsys, tmp_path / "in", "-o", tmp_path / "out", "--no-search", "--rules", rules, "--json")
    assert code == 0, err
    report = json.loads(out)
    assert set(report) == {"source", "outdir", "state", "rules_store", "programs", "pending", "total", "interrupted"}
    assert report["rules_store"] == str(rules) and report["pending"] == [] and report["interrupted"] is False
    for row in report["programs"]:
        assert set(row) >= {"object", "program", "type", "before", "after", "saved", "reduction", "changes",
                            "rule_hits", "equivalent", "kernel_accepted", "seconds", "status", "reason", "earlier"}
        if NO_KERNEL is None:
            assert row["kernel_accepted"] is True
    total = report["total"]
    assert total["programs"] == 4 and total["done"] == 4 and total["failed"] == 0
    assert total["before"] == sum(r["before"] for r in report["programs"])
    assert total["after"] == sum(r["after"] for r in report["programs"]) < total["before"]


@pytest.mark.skipif(not K2.is_dir(), reason=f"K2's benchmark programs are not at {K2}")
def test_k2_programs_are_written_with_their_companions(capsys, tmp_path, rules):
    (tmp_path / "in").mkdir()
    for suffix in (".insns", ".maps", ".desc"):
        (tmp_path / "in" / f"xdp1{suffix}").symlink_to(K2 / f"xdp1{suffix}")  # read, never copied
    code, out, err = fleet(capsys, tmp_path / "in", "-o", tmp_path / "out", "--no-search", "--rules", rules, "--json")
    assert code == 0, err
    [row] = json.loads(out)["programs"]
    assert row["after"] < row["before"]
    assert (tmp_path / "out" / "xdp1.maps").read_bytes() == (K2 / "xdp1.maps").read_bytes()
    assert_accepted(tmp_path / "out" / "xdp1.insns", None)


@pytest.mark.skipif(not K2.is_dir(), reason=f"K2's benchmark programs are not at {K2}")
def test_a_manifest_gives_the_type_a_k2_memory_input_program_needs(capsys, tmp_path, rules):
    (tmp_path / "in").mkdir()
    for suffix in (".insns", ".maps", ".desc"):
        (tmp_path / "in" / f"xdp_pktcntr{suffix}").symlink_to(K2 / f"xdp_pktcntr{suffix}")
    manifest = tmp_path / "in" / "fleet.txt"
    manifest.write_text("xdp_pktcntr.insns\n")
    code, out, _ = fleet(capsys, manifest, "-o", tmp_path / "untyped", "--no-search", "--rules", rules, "--json")
    assert code == 1 and json.loads(out)["programs"][0]["status"] == "failed"  # K2 says memory input, not xdp
    manifest.write_text("xdp_pktcntr.insns type=xdp  # K2's input type 1: the kernel runs it as XDP\n")
    code, out, err = fleet(capsys, manifest, "-o", tmp_path / "out", "--no-search", "--rules", rules, "--json")
    assert code == 0, err
    [row] = json.loads(out)["programs"]
    assert row["type"] == "xdp" and row["after"] < row["before"]
    manifest.write_text("xdp_pktcntr.insns type=nonsense\n")
    code, _, err = fleet(capsys, manifest, "-o", tmp_path / "bad", "--rules", rules)
    assert code == 2 and "fleet.txt:1: unknown program type 'nonsense'" in err


# ---- resuming ----------------------------------------------------------------------------------------------

def read_state(outdir: Path) -> dict:
    try:
        return json.loads((outdir / STATE_FILE).read_text())["objects"]
    except FileNotFoundError:
        return {}


def done_in(state: dict) -> dict[tuple[str, str], dict]:
    return {(obj, name): row for obj, entry in state.items() for name, row in entry["programs"].items()
            if row["status"] == "done"}


def test_a_killed_run_resumes_without_redoing_finished_programs(tmp_path):
    """THE resume test: SIGKILL once the state records a program done, run again, nothing done is redone."""
    fleet_dir = tmp_path / "in"
    fleet_dir.mkdir()
    for name in ("socket_filter.o", "legacy_maps.o", "xdp_counter.o"):
        shutil.copy(OBJ / name, fleet_dir / name)
    multi_object(fleet_dir / "multi.o")
    outdir = tmp_path / "out"
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "BPFORGE_RULES": str(tmp_path / "rules.sqlite")}
    command = [sys.executable, "-m", "bpforge", "optimize-many", str(fleet_dir), "-o", str(outdir),
               "--budget", "1", "--json"]  # with search: each program takes its second
    first = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             start_new_session=True)
    try:
        while not done_in(read_state(outdir)):
            assert first.poll() is None, first.communicate()
            time.sleep(0.01)
    finally:
        os.killpg(first.pid, signal.SIGKILL)  # its own session: the search workers too, if any
        first.communicate()
    killed = read_state(outdir)
    finished = done_in(killed)
    assert 0 < len(finished) < 6, "the first run must be killed mid-fleet"
    untouched = {obj: (outdir / obj).read_bytes() for obj, entry in killed.items()
                 if all(row["status"] == "done" for row in entry["programs"].values())
                 and len(entry["programs"]) == len(load_program(fleet_dir / obj, link=False).programs)}

    again = subprocess.run(command, env=env, capture_output=True, text=True, timeout=120)
    assert again.returncode == 0, again.stderr
    report = json.loads(again.stdout)
    assert report["rules_store"] == env["BPFORGE_RULES"]  # no --rules: the store `bpforge rules` uses
    rows = rows_by_program(report)
    assert len(rows) == 6 and all(row["status"] == "done" for row in rows.values())
    for key, row in rows.items():
        if key in finished:  # taken from the state, as recorded before the kill
            assert row["earlier"] and {**row, "earlier": False} == finished[key]
        else:
            assert not row["earlier"]
    for obj, data in untouched.items():
        assert (outdir / obj).read_bytes() == data  # not written again
    assert done_in(read_state(outdir)).keys() == rows.keys()
    for obj, name in rows:
        assert_accepted(outdir / obj, name)


def test_a_stopped_program_keeps_its_place_and_a_changed_input_starts_over(tmp_path):
    (tmp_path / "in").mkdir()
    multi_object(tmp_path / "in" / "multi.o")
    out, rules = tmp_path / "out", tmp_path / "rules.sqlite"
    options = {"search": False, "rules_store": rules}
    phases = []  # as a Ctrl-C while the first program runs: stop() is true once that program has begun
    stopped = bpforge.optimize_many(tmp_path / "in", out, stop=lambda: bool(phases),
                                    progress=lambda i, n, name, phase, best: phases.append(phase), **options)
    assert stopped.interrupted and [r.status for r in stopped.rows] == ["interrupted"]
    assert stopped.pending == [("multi.o", "tc_one"), ("multi.o", "sock_one")]

    resumed = bpforge.optimize_many(tmp_path / "in", out, **options)
    assert not resumed.interrupted and [r.status for r in resumed.rows] == ["done"] * 3
    assert resumed.rows[0].before == stopped.rows[0].before  # the original's size, not the partial one's
    assert "total" in resumed.text() and "3 programs" in resumed.text()

    again = bpforge.optimize_many(tmp_path / "in", out, **options)
    assert all(r.earlier for r in again.rows)
    shutil.copy(OBJ / "asm_xdp_pass.o", tmp_path / "in" / "multi.o")  # a new input under the same name
    changed = bpforge.optimize_many(tmp_path / "in", out, **options)
    assert [(r.program, r.earlier) for r in changed.rows] == [("xdp_pass", False)]
