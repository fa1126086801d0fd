"""`bpforge optimize`, run in-process, and the objects it writes: really shorter ELF objects that load back
with their relocations, the kernel accepts and that compute what the originals computed; raw, asm and K2
output; JSON in DESIGN.md's shape; bad input as one line with exit 2."""

from __future__ import annotations

import json

import pytest

import bpforge
from bpforge.cli import main
from bpforge.formats import load_program
from bpforge.kernel import kernel_available

from conftest import EXAMPLES

NO_KERNEL = kernel_available()
XDP_COUNTER = EXAMPLES / "obj" / "xdp_counter.o"
PACKET = bytes.fromhex("000000000000020000000001080045000032000100004006000000000a0000020a000001303900500000000100000000"
                       "500220000000000000000000000000000000")


def optimize(capsys, *args) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as exited:
        main(["optimize", *map(str, args)])
    out, err = capsys.readouterr()
    return exited.value.code, out, err


def test_json_has_the_documented_shape(capsys, tmp_path):
    code, out, err = optimize(capsys, XDP_COUNTER, "-o", tmp_path / "out.o", "--no-search", "--json")
    assert code == 0, err
    report = json.loads(out)
    for key in ("before", "after", "equivalent", "kernel_accepted", "windows"):
        assert key in report
    assert report["after"] < report["before"]
    assert report["equivalent"] == "proved"
    assert report["windows"] and all(w["proof"] == "proved" for w in report["windows"])
    if NO_KERNEL is None:
        assert report["kernel_accepted"] is True


def test_the_written_object_is_shorter_and_loads_back(capsys, tmp_path):
    out = tmp_path / "out.o"
    code, _, err = optimize(capsys, XDP_COUNTER, "-o", out, "--no-search")
    assert code == 0, err
    before, after = bpforge.load(XDP_COUNTER), bpforge.load(out)
    assert len(after.insns) < len(before.insns)
    assert [m.name for m in after.loaded.maps] == [m.name for m in before.loaded.maps]
    assert after.verify().verdict == "accept"


@pytest.mark.skipif(NO_KERNEL is not None, reason=f"needs bpf(): {NO_KERNEL}")
def test_the_written_object_runs_as_the_original_in_the_kernel(capsys, tmp_path):
    out = tmp_path / "out.o"
    optimize(capsys, XDP_COUNTER, "-o", out, "--no-search")
    for frame in (PACKET, PACKET[:20], bytes(64)):
        a = bpforge.load(XDP_COUNTER).run(frame, engine="kernel")
        b = bpforge.load(out).run(frame, engine="kernel")
        assert (a.retval, a.data_out) == (b.retval, b.data_out)


@pytest.mark.parametrize("fmt", ["raw", "asm", "k2"])
def test_other_formats_round_trip(capsys, tmp_path, fmt):
    out = tmp_path / f"out.{ {'raw': 'bin', 'asm': 's', 'k2': 'bin'}[fmt] }"
    code, _, err = optimize(capsys, EXAMPLES / "obj" / "asm_xdp_pass.o", "-o", out, "--format", fmt, "--no-search",
                            "--json")
    assert code == 0, err
    again = load_program(out, prog_type="xdp")
    report = bpforge.load(EXAMPLES / "obj" / "asm_xdp_pass.o").optimize(search=False, kernel=False, budget=None)
    assert again.insns == report.outcome.insns


def test_a_program_that_cannot_improve_comes_back_unchanged(capsys, tmp_path):
    src = tmp_path / "tiny.s"
    src.write_text("r0 = 2\nexit\n")
    code, out, err = optimize(capsys, src, "-t", "xdp", "--budget", "2", "-o", tmp_path / "o.bin", "--json")
    assert code == 0, err
    report = json.loads(out)
    assert report["before"] == report["after"] == 2 and report["windows"] == []


@pytest.mark.parametrize("args, words", [
    (["--cost", "speed"], "--cost"), (["--budget", "-1"], "--budget"), (["--jobs", "0"], "--jobs"),
    (["--format", "pdf"], "--format"),
])
def test_bad_options_are_one_line(capsys, args, words):
    code, out, err = optimize(capsys, XDP_COUNTER, *args)
    assert code == 2 and words in err and len(err.strip().splitlines()) == 1


def test_a_non_bpf_file_is_one_line(capsys, tmp_path):
    bad = tmp_path / "bad.o"
    bad.write_bytes(b"\x7fELF" + b"\x00" * 20)
    code, _, err = optimize(capsys, bad)
    assert code == 2 and "bad.o" in err and len(err.strip().splitlines()) == 1


def test_an_html_report(capsys, tmp_path):
    pytest.importorskip("matplotlib", reason="--report needs the report extra (matplotlib)")
    report = tmp_path / "r.html"
    code, _, err = optimize(capsys, XDP_COUNTER, "--no-search", "--report", report)
    assert code == 0, err
    page = report.read_text()
    assert "<img" in page and "atomic add" in page


def test_latency_cost_keeps_plain_read_modify_writes():
    # an atomic add saves two slots but costs a locked instruction: --cost latency does not take it
    size = bpforge.load(XDP_COUNTER).optimize(budget=None, kernel=False)
    latency = bpforge.load(XDP_COUNTER).optimize(budget=None, kernel=False, cost="latency")
    assert any("atomic" in c.why for c in size.outcome.changes)
    assert not any("atomic" in c.why for c in latency.outcome.changes)
    assert latency.after <= latency.before
