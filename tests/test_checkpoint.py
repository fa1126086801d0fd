"""Checkpoints of long optimizer runs (opt.checkpoint): saved at the end and every few seconds when asked,
replayed into the same program on resume (with the clock and the search's time per window carried on),
ignored for another program, refused in one line when not a checkpoint; and a run killed mid-way resumes."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time

import pytest

import bpforge
from bpforge.cli import main
from bpforge.kernel import kernel_available
from bpforge.opt import checkpoint
from bpforge.opt.rewrite import KnownBits, Rewrite
from bpforge.opt.track import Transformation

from conftest import EXAMPLES

NO_KERNEL = kernel_available()
XDP_COUNTER = EXAMPLES / "obj" / "xdp_counter.o"
XDP_LB = EXAMPLES / "obj" / "xdp_lb.o"

pytest.importorskip("z3")


def replayed(path, program) -> list:
    """The program a checkpoint rebuilds, by replaying its batches on `program`'s instructions."""
    document = json.loads(path.read_text())
    t = Transformation.start(program.loaded.insns if program.loaded.object is None else _linked(program))
    for batch in document["batches"]:
        t = t.apply([checkpoint._rewrite_of(r) for r in batch["rewrites"]])
    return t.insns


def _linked(program):
    from bpforge.opt.gate import Subject
    return Subject.of(program.loaded, kernel=False).insns


def test_rewrites_survive_the_round_trip_through_json(tmp_path):
    from bpforge.isa.asm import assemble

    rewrite = Rewrite(4, 6, tuple(assemble("r0 = 1\nr1 = 0x100000000 ll")), "search (chain 1): cost 3 -> 2",
                      {2: KnownBits(0xFFFFFFFF00000000, 0)})
    path = tmp_path / "ck.json"
    checkpoint.save(path, "k", 12.5, [checkpoint.Batch(3, 1.25, (rewrite,))], {"w": 2.0})
    saved = checkpoint.load(path, "k")
    assert saved.elapsed == 12.5 and saved.spent == {"w": 2.0}
    assert saved.batches == (checkpoint.Batch(3, 1.25, (rewrite,)),)
    assert checkpoint.load(path, "another program") is None
    assert checkpoint.load(tmp_path / "missing.json", "k") is None


def test_a_run_saves_at_its_end_and_the_saved_state_is_its_result(tmp_path):
    path = tmp_path / "ck.json"
    report = bpforge.optimize(XDP_COUNTER, budget=3, checkpoint=path, kernel=False)
    assert report.after < report.before
    assert [str(i) for i in replayed(path, bpforge.load(XDP_COUNTER))] == [str(i) for i in report.outcome.insns]
    assert json.loads(path.read_text())["elapsed"] >= 0


def test_a_resumed_run_continues_where_the_saved_one_was(tmp_path):
    path = tmp_path / "ck.json"
    first = bpforge.optimize(XDP_COUNTER, budget=3, checkpoint=path, kernel=False)
    again = bpforge.optimize(XDP_COUNTER, budget=3, checkpoint=path, kernel=False)  # no time left: replay only
    assert any(n.startswith(f"resumed from checkpoint {path}: {len(first.outcome.changes)} change(s)")
               for n in again.notes)
    assert [str(i) for i in again.outcome.insns] == [str(i) for i in first.outcome.insns]
    assert [(c.start, c.before, c.after) for c in again.outcome.changes] == \
        [(c.start, c.before, c.after) for c in first.outcome.changes]
    assert again.outcome.seconds >= json.loads(path.read_text())["elapsed"] - 0.01
    assert again.equivalent == "proved"


def test_a_checkpoint_of_another_program_is_ignored_and_replaced(tmp_path):
    path = tmp_path / "ck.json"
    bpforge.optimize(XDP_COUNTER, budget=None, checkpoint=path, kernel=False)
    report = bpforge.optimize(XDP_LB, budget=None, checkpoint=path, kernel=False)
    assert not any("checkpoint" in n for n in report.notes)
    assert [str(i) for i in replayed(path, bpforge.load(XDP_LB))] == [str(i) for i in report.outcome.insns]


def test_a_file_that_is_not_a_checkpoint_is_one_line_exit_2(tmp_path, capsys):
    path = tmp_path / "notes.txt"
    path.write_text("my notes, not a checkpoint\n")
    with pytest.raises(SystemExit) as exited:
        main(["optimize", str(XDP_COUNTER), "--budget", "1", "--checkpoint", str(path)])
    err = capsys.readouterr().err
    assert exited.value.code == 2 and len(err.strip().splitlines()) == 1
    assert str(path) in err and "not a usable checkpoint" in err
    assert path.read_text() == "my notes, not a checkpoint\n"  # left alone


def test_a_bad_checkpoint_interval_is_one_line_exit_2(capsys):
    with pytest.raises(SystemExit) as exited:
        main(["optimize", str(XDP_COUNTER), "--checkpoint-every", "0"])
    assert exited.value.code == 2 and "--checkpoint-every" in capsys.readouterr().err


def test_a_killed_run_resumes_from_its_last_checkpoint(tmp_path):
    path = tmp_path / "ck.json"
    out = tmp_path / "out.o"
    command = [sys.executable, "-m", "bpforge", "optimize", str(XDP_LB), "-o", str(out), "--checkpoint", str(path),
               "--checkpoint-every", "0.5", "--json"]
    run = subprocess.Popen(command + ["--budget", "120"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                           stdin=subprocess.DEVNULL)
    try:
        for _ in range(1200):  # until a periodic save holds a change
            if path.exists() and json.loads(path.read_text())["batches"]:
                break
            assert run.poll() is None, "the run ended before it saved"
            time.sleep(0.1)
        else:
            pytest.fail("no checkpoint with a change within two minutes")
    finally:
        run.send_signal(signal.SIGKILL)
        run.wait()
    saved = json.loads(path.read_text())
    done = subprocess.run(command + ["--budget", str(saved["elapsed"] + 2)], capture_output=True, text=True,
                          timeout=300, stdin=subprocess.DEVNULL)
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    resumed = [n for n in report["notes"] if n.startswith("resumed from checkpoint")]
    assert resumed and report["equivalent"] == "proved"
    assert len(report["windows"]) >= sum(len(b["rewrites"]) for b in saved["batches"])
    assert bpforge.load(out).verify().verdict == "accept"
    if NO_KERNEL is None:
        assert report["kernel_accepted"] is True
