"""The rule cache as one store that many runs read and extend at once: an SQLite file in WAL mode (readers
never wait for a writer, writers wait for each other up to `BUSY_MS`), one row per canonical pattern with
the rule's proof status, where it came from and how often it fired.

A pattern is the key because `RuleBook.propose` only ever uses the first rule of a pattern: a second rule
for it would never fire. Adding is INSERT OR IGNORE in its own write transaction, so two runs that learn
the same rule at the same moment both succeed and it is stored once; hits are added in place
(`hits = hits + n`), so counts from concurrent runs add up.

The proof status is `rules.prove_rule`'s answer out of any program (`bpforge rules verify` asks it again for
every row): proved, failed (a counterexample), or unproved (not asked yet, or the solver could not say).
A rule that is not proved still cannot make a program wrong: the gate proves every rewrite where it lands.

On first open the store is seeded with the rules bpforge ships (`RuleBook.shipped`).
"""

from __future__ import annotations

import json
import os
import sqlite3
import time
import urllib.parse
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

from ..errors import BpforgeError
from .rules import FORMAT, Rule, RuleBook, prove_rule
from .smt.equiv import DEFAULT_TIMEOUT_MS, PROVED, REFUTED, Proof

PROVEN, FAILED, UNPROVED = "proved", "failed", "unproved"
BUSY_MS = 30_000  # how long a writer waits for another's transaction before giving up
SCHEMA = 1
_SCHEMA = f"""
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS rules (
    pattern TEXT PRIMARY KEY,        -- canonical asm lines joined by newlines
    replacement TEXT NOT NULL,
    why TEXT NOT NULL,
    assumes TEXT NOT NULL,           -- JSON: [[canonical register, mask, value], ...]
    status TEXT NOT NULL CHECK (status IN ('{PROVEN}', '{FAILED}', '{UNPROVED}')),
    origin TEXT NOT NULL,            -- shipped, learned:<program>, imported:<file>
    hits INTEGER NOT NULL DEFAULT 0,
    created REAL NOT NULL            -- seconds since the epoch
);
"""


class StoreError(BpforgeError):
    """The rule store cannot be opened, read or written."""


def default_path() -> Path:
    """`$BPFORGE_RULES`, else ~/.cache/bpforge/rules.sqlite."""
    env = os.environ.get("BPFORGE_RULES")
    return Path(env) if env else Path.home() / ".cache" / "bpforge" / "rules.sqlite"


def store_path(where: str | Path) -> Path:
    """The file a store option names: a path, or a URL as SQLAlchemy writes them (`sqlite:///relative/path`,
    `sqlite:////absolute/path`) or `file:PATH` (what a cluster's configuration tends to hold). Another
    scheme is an error: the store is SQLite, whose WAL mode wants every writer on one machine's file system."""
    text = str(where)
    parsed = urllib.parse.urlsplit(text)
    if parsed.scheme in ("", "sqlite", "file") and (parsed.scheme or not text.startswith("//")):
        if parsed.scheme == "sqlite":
            if parsed.netloc or not parsed.path.startswith("/"):
                raise StoreError(f"{text}: a sqlite URL names a local file: sqlite:///relative or sqlite:////absolute")
            return Path(urllib.parse.unquote(parsed.path[1:]))
        if parsed.scheme == "file":
            return Path(urllib.parse.unquote(parsed.path))
        return Path(text)
    if len(parsed.scheme) == 1:  # a Windows drive letter, not a scheme
        return Path(text)
    raise StoreError(f"{text}: a rule store is a SQLite file (a path, sqlite:///PATH or file:PATH), not {parsed.scheme}")


def status_of(proof: Proof) -> str:
    return PROVEN if proof.status == PROVED else FAILED if proof.status == REFUTED else UNPROVED


@dataclass(frozen=True)
class StoredRule:
    rule: Rule
    status: str
    origin: str
    hits: int
    created: float

    def as_json(self) -> dict:
        return {**self.rule.as_json(), "status": self.status, "origin": self.origin, "hits": self.hits,
                "created": self.created}


class RuleStore:
    """One store file (`path`, default `default_path()`); a context manager that closes it."""

    def __init__(self, path: str | Path | None = None) -> None:
        self.path = store_path(path) if path is not None else default_path()
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            # Autocommit (isolation_level None): every write below opens its own BEGIN IMMEDIATE, which takes
            # the write lock up front, so a busy writer waits in busy_timeout instead of failing mid-way.
            self._db = sqlite3.connect(self.path, timeout=BUSY_MS / 1000, isolation_level=None)
        except (OSError, sqlite3.Error) as err:
            raise StoreError(f"{self.path}: cannot open the rule store ({err})") from None
        try:
            self._db.execute(f"PRAGMA busy_timeout = {BUSY_MS}")
            self._wal()
            with self._writing() as db:
                for statement in _statements(_SCHEMA):
                    db.execute(statement)
                seeded = db.execute("SELECT value FROM meta WHERE key = 'schema'").fetchone()
                if seeded is None:
                    db.execute("INSERT INTO meta VALUES ('schema', ?)", (str(SCHEMA),))
                    for rule in RuleBook.shipped().all():
                        self._insert(db, rule, "shipped", UNPROVED)
                elif seeded[0] != str(SCHEMA):
                    raise StoreError(f"{self.path}: rule store schema {seeded[0]}, this bpforge reads {SCHEMA}")
        except sqlite3.Error as err:
            self._db.close()
            raise StoreError(f"{self.path}: not a usable rule store ({err})") from None
        except BaseException:
            self._db.close()
            raise

    def _wal(self) -> None:
        # Switching to WAL needs the file to itself for a moment; another process opening the same new store
        # may hold it, and this pragma does not always wait in the busy handler, so try again a while.
        deadline = time.monotonic() + BUSY_MS / 1000
        while True:
            try:
                mode = self._db.execute("PRAGMA journal_mode = WAL").fetchone()[0]
                break
            except sqlite3.OperationalError as err:
                if "locked" not in str(err) or time.monotonic() > deadline:
                    raise
                time.sleep(0.01)
        if mode.lower() != "wal":
            raise StoreError(f"{self.path}: the file system does not allow WAL mode (journal mode {mode})")

    def close(self) -> None:
        self._db.close()

    def __enter__(self) -> "RuleStore":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # ---- writing ---------------------------------------------------------------------------------------------

    def _writing(self):
        return _Transaction(self._db)

    def _insert(self, db: sqlite3.Connection, rule: Rule, origin: str, status: str) -> bool:
        cursor = db.execute(
            "INSERT OR IGNORE INTO rules (pattern, replacement, why, assumes, status, origin, hits, created) "
            "VALUES (?, ?, ?, ?, ?, ?, 0, ?)",
            ("\n".join(rule.pattern), "\n".join(rule.replacement), rule.why,
             json.dumps([list(a) for a in rule.assumes]), status, origin, time.time()))
        return cursor.rowcount == 1

    def add(self, rule: Rule, origin: str, status: str = UNPROVED) -> bool:
        """Store `rule` unless its pattern is stored already; whether it was new."""
        return self.add_many([rule], origin, status) == 1

    def add_many(self, rules: Iterable[Rule], origin: str, status: str | Mapping[Rule, str] = UNPROVED) -> int:
        """Store every rule of `rules` whose pattern is new, in one transaction; how many were new.
        `status`: one for all, or by rule (UNPROVED for any missing)."""
        def of(rule: Rule) -> str:
            return status if isinstance(status, str) else status.get(rule, UNPROVED)

        with self._errors(), self._writing() as db:
            return sum(self._insert(db, rule, origin, of(rule)) for rule in rules)

    def record_hits(self, counts: Mapping[tuple[str, ...], int]) -> None:
        """Add `counts` (by canonical pattern) to the rules' hit counts; unknown patterns are ignored."""
        with self._errors(), self._writing() as db:
            db.executemany("UPDATE rules SET hits = hits + ? WHERE pattern = ?",
                           [(n, "\n".join(pattern)) for pattern, n in counts.items() if n])

    def set_status(self, pattern: tuple[str, ...], status: str) -> None:
        with self._errors(), self._writing() as db:
            db.execute("UPDATE rules SET status = ? WHERE pattern = ?", (status, "\n".join(pattern)))

    # ---- reading ---------------------------------------------------------------------------------------------

    def rules(self) -> Iterator[StoredRule]:
        """Every stored rule, oldest first."""
        with self._errors():
            rows = self._db.execute("SELECT pattern, replacement, why, assumes, status, origin, hits, created "
                                    "FROM rules ORDER BY created, rowid").fetchall()
        for pattern, replacement, why, assumes, status, origin, hits, created in rows:
            try:
                facts = tuple(tuple(int(x) for x in a) for a in json.loads(assumes))
            except (TypeError, ValueError):
                raise StoreError(f"{self.path}: the rule for {pattern.splitlines()[0]!r} has malformed "
                                 "assumptions") from None
            rule = Rule(tuple(pattern.split("\n")), tuple(replacement.split("\n")) if replacement else (), why,
                        facts)
            yield StoredRule(rule, status, origin, hits, created)

    def __len__(self) -> int:
        with self._errors():
            return self._db.execute("SELECT count(*) FROM rules").fetchone()[0]

    def book(self) -> RuleBook:
        """The stored rules as a book for an optimize run (the rows checked as `RuleBook.from_json` checks
        a file's)."""
        return RuleBook.from_json({"format": FORMAT, "rules": [s.rule.as_json() for s in self.rules()]},
                                  source=str(self.path))

    def integrity(self) -> str:
        with self._errors():
            return self._db.execute("PRAGMA integrity_check").fetchone()[0]

    # ---- files and proofs ------------------------------------------------------------------------------------

    def export(self, path: str | Path) -> int:
        """Write every stored rule to `path` as a rule file (`RuleBook.load` reads it); how many."""
        book = self.book()
        try:
            book.save(path)
        except OSError as err:
            raise StoreError(f"{path}: cannot write the rules ({err.strerror or err})") from None
        return len(book)

    def import_file(self, path: str | Path) -> tuple[int, int]:
        """Add the rules of a rule file, their origin `imported:<path>`; (new, already stored)."""
        rules = RuleBook.load(path).all()
        added = self.add_many(rules, f"imported:{path}")
        return added, len(rules) - added

    def verify(self, *, timeout_ms: int = DEFAULT_TIMEOUT_MS) -> list[tuple[StoredRule, Proof]]:
        """Prove every stored rule again (`rules.prove_rule`) and store the new status of each."""
        results = [(stored, prove_rule(stored.rule, timeout_ms=timeout_ms)) for stored in self.rules()]
        with self._errors(), self._writing() as db:
            db.executemany("UPDATE rules SET status = ? WHERE pattern = ?",
                           [(status_of(proof), "\n".join(stored.rule.pattern)) for stored, proof in results])
        return results

    def _errors(self):
        return _Translate(self.path)


def _statements(script: str) -> list[str]:
    # executescript would COMMIT the transaction the seeding runs in, so the schema goes statement by statement
    return [s for s in (part.strip() for part in script.split(";")) if s]


class _Transaction:
    """BEGIN IMMEDIATE ... COMMIT (ROLLBACK on an error) on an autocommit connection."""

    def __init__(self, db: sqlite3.Connection) -> None:
        self.db = db

    def __enter__(self) -> sqlite3.Connection:
        self.db.execute("BEGIN IMMEDIATE")
        return self.db

    def __exit__(self, kind, value, tb) -> None:
        self.db.execute("COMMIT" if kind is None else "ROLLBACK")


class _Translate:
    """sqlite3's errors as StoreError, naming the file."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind, value, tb) -> None:
        if kind is not None and issubclass(kind, sqlite3.Error):
            raise StoreError(f"{self.path}: rule store error ({value})") from None


__all__ = ["FAILED", "PROVEN", "UNPROVED", "RuleStore", "StoreError", "StoredRule", "default_path", "status_of"]
