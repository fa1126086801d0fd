"""The shared rule store (`opt.store`): seeded from the shipped rules, a round trip through rule files,
many processes adding and counting at once without losing or doubling a rule, `bpforge rules` and
`bpforge optimize --rules`, bad input as one line with exit 2."""

from __future__ import annotations

import json
import multiprocessing
import sqlite3
from pathlib import Path

import pytest

from bpforge.cli import main
from bpforge.errors import BpforgeError
from bpforge.opt.rules import Rule, RuleBook
from bpforge.opt.store import FAILED, PROVEN, UNPROVED, RuleStore, store_path

from conftest import EXAMPLES

XDP_COUNTER = EXAMPLES / "obj" / "xdp_counter.o"
SHARED = [Rule((f"r1 = {n}", "r1 += 1"), (f"r1 = {n + 1}",), f"shared {n}") for n in range(10)]
WORKERS, EACH = 4, 50


def cli(capsys, *args) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as exited:
        main([*map(str, args)])
    out, err = capsys.readouterr()
    return exited.value.code, out, err


def shipped() -> list[Rule]:
    return [rule for rules in RuleBook.shipped().rules.values() for rule in rules]


def test_a_new_store_is_seeded_with_the_shipped_rules_once(tmp_path):
    path = tmp_path / "rules.sqlite"
    with RuleStore(path) as store:
        stored = list(store.rules())
        assert [s.rule for s in stored] == shipped()
        assert all(s.origin == "shipped" and s.status == UNPROVED and s.hits == 0 for s in stored)
        assert store.add(SHARED[0], "learned:test") and not store.add(SHARED[0], "learned:other")
    with RuleStore(path) as store:  # a second open does not seed again
        assert len(store) == len(shipped()) + 1
        assert sqlite3.connect(path).execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_export_and_import_round_trip(tmp_path):
    with RuleStore(tmp_path / "a.sqlite") as store:
        store.add_many(SHARED, "learned:test")
        assert store.export(tmp_path / "rules.json") == len(shipped()) + len(SHARED)
        before = store.book()
    assert RuleBook.load(tmp_path / "rules.json").as_json() == before.as_json()
    with RuleStore(tmp_path / "b.sqlite") as other:
        assert other.import_file(tmp_path / "rules.json") == (len(SHARED), len(shipped()))
        assert other.book().as_json() == before.as_json()
        origins = {s.rule: s.origin for s in other.rules()}
    assert all(origins[rule] == f"imported:{tmp_path / 'rules.json'}" for rule in SHARED)


def _writer(path: str, worker: int, start) -> None:
    start.wait()  # all at once
    with RuleStore(path) as store:
        for n in range(EACH):
            store.add(Rule((f"r{1 + n % 9} = {worker * 1000 + n}",), ("r0 = 0",), f"worker {worker}"),
                      f"learned:worker{worker}")
            if n % 5 == 0:  # the shared ones, interleaved with the others
                store.add(SHARED[n // 5], f"learned:worker{worker}")
        store.record_hits({SHARED[0].pattern: 3, SHARED[1].pattern: 1})


def test_concurrent_writers_lose_and_double_nothing(tmp_path):
    path = tmp_path / "rules.sqlite"  # not created yet: the workers race to create and seed it too
    ctx = multiprocessing.get_context("spawn")
    start = ctx.Event()
    workers = [ctx.Process(target=_writer, args=(str(path), n, start)) for n in range(WORKERS)]
    for w in workers:
        w.start()
    start.set()
    for w in workers:
        w.join(60)
    assert [w.exitcode for w in workers] == [0] * WORKERS
    with RuleStore(path) as store:
        assert store.integrity() == "ok"
        stored = list(store.rules())
        assert len(stored) == WORKERS * EACH + len(SHARED) + len(shipped())
        hits = {s.rule.pattern: s.hits for s in stored}
    assert hits[SHARED[0].pattern] == 3 * WORKERS and hits[SHARED[1].pattern] == WORKERS
    assert sum(hits.values()) == 4 * WORKERS


def test_verify_proves_the_shipped_rules_and_fails_a_wrong_one(capsys, tmp_path):
    pytest.importorskip("z3", reason="rules verify needs z3")
    path = tmp_path / "rules.sqlite"
    code, out, err = cli(capsys, "rules", "verify", "--store", path, "--json")
    assert code == 0, err
    report = json.loads(out)
    assert report["failed"] == 0 and len(report["rules"]) == len(shipped())
    assert all(r["status"] == PROVEN for r in report["rules"])
    wrong = Rule(("*(u64 *)(r1 + 0) = r2",), ("*(u64 *)(r1 + 0) = r3",), "stores the wrong register")
    with RuleStore(path) as store:
        assert all(s.status == PROVEN for s in store.rules())
        store.add(wrong, "learned:test")
    code, out, _ = cli(capsys, "rules", "verify", "--store", path)
    assert code == 1 and "1 failed" in out
    with RuleStore(path) as store:
        assert {s.rule: s.status for s in store.rules()}[wrong] == FAILED


def test_list_export_import_on_the_command_line(capsys, tmp_path, monkeypatch):
    monkeypatch.setenv("BPFORGE_RULES", str(tmp_path / "default.sqlite"))
    code, out, _ = cli(capsys, "rules", "list", "--json")
    assert code == 0 and json.loads(out)["store"] == str(tmp_path / "default.sqlite")
    assert len(json.loads(out)["rules"]) == len(shipped())
    (tmp_path / "more.json").write_text(json.dumps({"format": "bpforge-rules/1",
                                                      "rules": [r.as_json() for r in SHARED]}))
    code, out, _ = cli(capsys, "rules", "import", tmp_path / "more.json")
    assert code == 0 and out.startswith(f"{len(SHARED)} rules added")
    code, out, _ = cli(capsys, "rules", "export", "-o", tmp_path / "all.json")
    assert code == 0 and len(RuleBook.load(tmp_path / "all.json")) == len(SHARED) + len(shipped())
    code, out, _ = cli(capsys, "rules", "list")
    assert code == 0 and f"imported:{tmp_path / 'more.json'}" in out


@pytest.mark.parametrize("verb", [["list"], ["verify"], ["export", "-o", "x.json"], ["import", "RULES"]])
def test_a_file_that_is_not_a_store_is_one_line(capsys, tmp_path, verb):
    bad = tmp_path / "notes.txt"
    bad.write_text("not a database\n" * 200)
    (tmp_path / "rules.json").write_text(json.dumps({"format": "bpforge-rules/1", "rules": []}))
    args = [str(tmp_path / "rules.json") if word == "RULES" else word for word in verb]
    code, out, err = cli(capsys, "rules", *args, "--store", bad)
    assert code == 2 and out == ""
    assert err.count("\n") == 1 and "not a usable rule store" in err


def test_a_malformed_rule_file_is_one_line(capsys, tmp_path):
    (tmp_path / "bad.json").write_text("{")
    code, _, err = cli(capsys, "rules", "import", tmp_path / "bad.json", "--store", tmp_path / "s.sqlite")
    assert code == 2 and err.count("\n") == 1


def test_optimize_reads_and_extends_the_store(capsys, tmp_path):
    # A rule the atomic-add pass would also find, stored beforehand: the rules go first, so it fires.
    fires = Rule(("r1 = *(u64 *)(r0 + 0)", "r1 += 1", "*(u64 *)(r0 + 0) = r1"),
                 ("r1 = 1", "lock *(u64 *)(r0 + 0) += r1"), "atomic add, stored")
    path = tmp_path / "rules.sqlite"
    with RuleStore(path) as store:
        store.add(fires, "learned:test")
    code, out, err = cli(capsys, "optimize", XDP_COUNTER, "--budget", 2, "--rules", path,
                         "-o", tmp_path / "out.o", "--json")
    assert code == 0, err
    report = json.loads(out)
    assert report["after"] < report["before"] and report["equivalent"] == "proved"
    assert all(w["proof"] == "proved" for w in report["windows"])
    with RuleStore(path) as store:
        stored = {s.rule: s for s in store.rules()}
        assert store.integrity() == "ok"
    assert stored[fires].hits == 1
    assert set(shipped()) <= set(stored)
    learned = [s for s in stored.values() if s.origin.startswith("learned:xdp_counter.o")]
    assert all(s.status in (PROVEN, FAILED, UNPROVED) for s in learned)


@pytest.mark.parametrize("option, path", [
    ("rules.sqlite", "rules.sqlite"), ("/var/lib/bpforge/rules.sqlite", "/var/lib/bpforge/rules.sqlite"),
    ("sqlite:///rules.sqlite", "rules.sqlite"), ("sqlite:////var/lib/rules.sqlite", "/var/lib/rules.sqlite"),
    ("file:/var/lib/rules%20x.sqlite", "/var/lib/rules x.sqlite"), ("file:rules.sqlite", "rules.sqlite"),
])
def test_a_store_is_named_by_a_path_or_a_url(option, path):
    assert store_path(option) == Path(path)


@pytest.mark.parametrize("option", ["postgresql://db.example/rules", "sqlite://host/rules.sqlite"])
def test_a_url_of_anything_but_a_local_sqlite_file_is_refused(option):
    with pytest.raises(BpforgeError, match="rule store|sqlite URL"):
        store_path(option)


def test_a_store_opened_by_url_is_the_file(tmp_path):
    with RuleStore(f"sqlite:///{tmp_path}/by-url.sqlite") as store:
        assert store.path == tmp_path / "by-url.sqlite" and store.path.exists()
