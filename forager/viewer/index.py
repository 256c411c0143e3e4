"""The viewer's index: a SQLite file of the few columns the pages need, kept in step with the store.

Why an index: a page over 100k trajectories cannot read 100k files per request. `refresh()` lists the
store's files and compares each one's (mtime_ns, size) with what it recorded last time; only new or
changed files are read, vanished ones are dropped. A refresh that finds nothing changed reads no
record. It runs once before the server starts and then in a background thread, never in a request.

The index is a cache: a schema change or a different store just rebuilds it. Files that do not parse
are recorded with their error (the pages say how many were skipped and why), never fatal.
"""

from __future__ import annotations

import hashlib
import multiprocessing
import os
import sqlite3
import threading
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from functools import partial
from pathlib import Path

from forager.config import Settings
from forager.models import ImageRecord, Task
from forager.trace.models import Trace
from forager.viewer import rows, scan
from forager.viewer.sources import last_wins, parse_jsonl

SCHEMA_VERSION = "3"
BATCH = 1000  # files per transaction: readers see progress, a crash loses little
PARALLEL_FROM = 2000  # changed trajectory files from which parsing is spread over processes
FULL_SWEEP_SECONDS = 300.0  # how often a refresh stats every file, not only those of changed directories

SCHEMA = f"""
CREATE TABLE IF NOT EXISTS meta(key TEXT PRIMARY KEY, value TEXT);
CREATE TABLE IF NOT EXISTS files(
    path TEXT PRIMARY KEY, kind TEXT NOT NULL, mtime_ns INTEGER, size INTEGER,
    records INTEGER NOT NULL DEFAULT 0, bad INTEGER NOT NULL DEFAULT 0, error TEXT);
CREATE TABLE IF NOT EXISTS dirs(path TEXT PRIMARY KEY, mtime_ns INTEGER);
CREATE TABLE IF NOT EXISTS images(
    repo TEXT, source TEXT, commit_sha TEXT, status TEXT, reason TEXT, tag TEXT, python TEXT,
    tests_collected INTEGER, tests_passed INTEGER, tests_failed INTEGER, tests_skipped INTEGER, flaky INTEGER,
    test_seconds REAL, build_seconds REAL, validate_seconds REAL, size_bytes INTEGER, test_runner TEXT,
    created_at REAL, PRIMARY KEY (repo, source, commit_sha));
CREATE TABLE IF NOT EXISTS tasks(
    id TEXT PRIMARY KEY, path TEXT, offset INTEGER, length INTEGER, repo TEXT, kind TEXT, origin TEXT,
    commit_sha TEXT, created_at REAL, fail_to_pass INTEGER, pass_to_pass INTEGER, cert_passed INTEGER,
    certificate TEXT);
CREATE INDEX IF NOT EXISTS tasks_by_set ON tasks(repo, kind);
CREATE INDEX IF NOT EXISTS tasks_by_path ON tasks(path);
CREATE TABLE IF NOT EXISTS trajectories(
    rowid INTEGER PRIMARY KEY, {", ".join(c + (" TEXT UNIQUE" if c == "path" else "") for c in rows.TRAJECTORY_COLUMNS)});
CREATE INDEX IF NOT EXISTS traj_by_id ON trajectories(id);
CREATE INDEX IF NOT EXISTS traj_by_start ON trajectories(started_at);
CREATE INDEX IF NOT EXISTS traj_by_repo ON trajectories(repo, started_at);
CREATE INDEX IF NOT EXISTS traj_by_collection ON trajectories(policy, model, started_at);
CREATE INDEX IF NOT EXISTS traj_by_exit ON trajectories(exit_reason, started_at);
CREATE INDEX IF NOT EXISTS traj_by_kind ON trajectories(task_kind, started_at);
CREATE INDEX IF NOT EXISTS traj_by_parent ON trajectories(parent_id);
CREATE INDEX IF NOT EXISTS traj_by_task ON trajectories(task_id);
CREATE VIRTUAL TABLE IF NOT EXISTS trajectory_search USING fts5(text);
CREATE TABLE IF NOT EXISTS traces(
    id TEXT PRIMARY KEY, path TEXT, offset INTEGER, length INTEGER, repo TEXT, target TEXT, function TEXT,
    test TEXT, frames INTEGER, truncated INTEGER, exception TEXT);
CREATE INDEX IF NOT EXISTS traces_by_path ON traces(path);
CREATE INDEX IF NOT EXISTS traces_by_function ON traces(repo, function);
"""
TABLES = ("meta", "files", "dirs", "images", "tasks", "trajectories", "trajectory_search", "traces")
Progress = Callable[[int, int], None]  # (files done, files to read)


def default_index_path(home: Path) -> Path:
    """$FORAGER_HOME/viewer/index.sqlite3, or a per-store file in ~/.cache when the store is read-only."""
    inside = home / "viewer"
    try:
        inside.mkdir(parents=True, exist_ok=True)
        if os.access(inside, os.W_OK):
            return inside / "index.sqlite3"
    except OSError:
        pass
    digest = hashlib.sha1(str(home.resolve()).encode()).hexdigest()[:12]
    cache = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "forager" / "viewer"
    cache.mkdir(parents=True, exist_ok=True)
    return cache / f"index-{digest}.sqlite3"


@dataclass
class RefreshReport:
    files: int = 0  # files of the store listed (those of skipped directories are not)
    read: int = 0  # files (re)read because they were new or changed
    removed: int = 0  # files gone since the last refresh
    bad: int = 0  # files read now that had at least one unparsable record
    skipped_dirs: int = 0  # trajectory directories unchanged since the last refresh, not listed
    full: bool = False  # every file was stat'ed
    seconds: float = 0.0


class StoreIndex:
    def __init__(self, settings: Settings, db_path: Path | None = None, workers: int | None = None):
        self.settings = settings
        self.home = settings.home
        self.db_path = Path(db_path) if db_path else default_index_path(self.home)
        self.workers = workers if workers is not None else (os.cpu_count() or 1)
        self.generation = 0  # bumped whenever a refresh commits a change: cached aggregates key on it
        self._last_full: float | None = None  # monotonic time of this process's last full sweep
        self._write_lock = threading.Lock()
        self._local = threading.local()
        self._writer = sqlite3.connect(self.db_path, check_same_thread=False, isolation_level=None)
        self._writer.execute("PRAGMA journal_mode=WAL")
        self._writer.execute("PRAGMA synchronous=NORMAL")
        self._prepare()

    # ---------------------------------------------------------------- connections

    def reader(self) -> sqlite3.Connection:
        """A read-only connection for the calling thread (each request thread reuses its own)."""
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = sqlite3.connect(self.db_path)
            conn.row_factory = sqlite3.Row
            conn.execute("PRAGMA query_only=ON")
            conn.execute("PRAGMA busy_timeout=5000")
            self._local.conn = conn
        return conn

    def close(self) -> None:
        self._writer.close()

    def _prepare(self) -> None:
        """Create the schema; rebuild it when it is from another version or another store."""
        conn = self._writer
        conn.executescript(SCHEMA)
        meta = dict(conn.execute("SELECT key, value FROM meta").fetchall())
        if meta.get("schema") != SCHEMA_VERSION or meta.get("home", str(self.home)) != str(self.home):
            for table in TABLES:
                conn.execute(f"DROP TABLE IF EXISTS {table}")
            conn.executescript(SCHEMA)
        conn.executemany("INSERT OR REPLACE INTO meta VALUES (?, ?)",
                         [("schema", SCHEMA_VERSION), ("home", str(self.home))])

    # ---------------------------------------------------------------- refresh

    def refresh(self, progress: Progress | None = None, full: bool | None = None) -> RefreshReport:
        """Bring the index in step with the store, reading only new or changed files.

        `full` stats every trajectory file; by default the first refresh of a process and then one every
        FULL_SWEEP_SECONDS are full, the others list only directories whose mtime moved (scan.py).
        """
        started = time.monotonic()
        if full is None:
            full = self._last_full is None or started - self._last_full >= FULL_SWEEP_SECONDS
        report = RefreshReport(full=full)
        home, s = str(self.home), self.settings
        with self._write_lock:
            conn = self._writer
            self._refresh_kind(conn, "catalog", scan.file_entry(home, str(s.catalog_path)), self._ingest_catalog, report)
            tasks = scan.jsonl_entries(home, str(s.tasks_dir), skip_suffix=".candidates.jsonl")
            self._refresh_kind(conn, "tasks", tasks, self._ingest_tasks, report)
            self._refresh_kind(conn, "traces", scan.jsonl_entries(home, str(s.traces_dir)), self._ingest_traces, report)
            self._refresh_trajectories(conn, report, progress, full)
            conn.execute("INSERT OR REPLACE INTO meta VALUES ('refreshed_at', ?)", (str(time.time()),))
        if full:
            self._last_full = started
        report.seconds = time.monotonic() - started
        return report

    def _changes(self, conn, kind: str, listed: list[scan.Entry], report: RefreshReport, within: list[str] | None = None):
        """(changed [(rel, mtime_ns, size)], removed [rel], known) against the stats of the last refresh;
        `within`: only these directories were listed, so only their files can have gone."""
        query = "SELECT path, mtime_ns, size FROM files WHERE kind=?"
        if within is None:
            known = {r[0]: (r[1], r[2]) for r in conn.execute(query, (kind,))}
        else:  # a prefix range per directory uses the primary key's index
            known = {r[0]: (r[1], r[2]) for d in within
                     for r in conn.execute(query + " AND path > ? AND path < ?", (kind, d + "/", d + "0"))}
        changed = [e for e in listed if known.get(e[0]) != (e[1], e[2])]
        seen = {e[0] for e in listed}
        removed = [rel for rel in known if rel not in seen]
        report.files += len(listed)
        report.read += len(changed)
        report.removed += len(removed)
        return changed, removed, known

    def _refresh_kind(self, conn, kind, listed, ingest, report) -> None:
        changed, removed, _known = self._changes(conn, kind, listed, report)
        if not changed and not removed:
            return
        conn.execute("BEGIN")
        for rel in removed:
            ingest(conn, rel, None)
            conn.execute("DELETE FROM files WHERE path=?", (rel,))
        for rel, mtime_ns, size in changed:
            parsed = ingest(conn, rel, self.home / rel)
            report.bad += bool(parsed.bad)
            conn.execute("INSERT OR REPLACE INTO files VALUES (?, ?, ?, ?, ?, ?, ?)",
                         (rel, kind, mtime_ns, size, len(parsed.records), parsed.bad, parsed.error))
        conn.execute("COMMIT")
        self.generation += 1

    @staticmethod
    def _ingest_catalog(conn, rel, path):
        conn.execute("DELETE FROM images")  # one file: re-read whole on change (it is small and append-only)
        if path is None:
            return None
        parsed = parse_jsonl(path, ImageRecord)
        latest = last_wins(parsed.records, key=lambda r: (r.repo, r.source, r.commit))
        conn.executemany(f"INSERT OR REPLACE INTO images VALUES ({', '.join('?' * 18)})",
                         [rows.image_row(rec) for _, _, rec in latest])
        return parsed

    @staticmethod
    def _ingest_tasks(conn, rel, path):
        conn.execute("DELETE FROM tasks WHERE path=?", (rel,))
        if path is None:
            return None
        parsed = parse_jsonl(path, Task)
        latest = last_wins(parsed.records, key=lambda t: t.id)
        conn.executemany(f"INSERT OR REPLACE INTO tasks VALUES ({', '.join('?' * 13)})",
                         [rows.task_row(rel, off, length, task) for off, length, task in latest])
        return parsed

    @staticmethod
    def _ingest_traces(conn, rel, path):
        conn.execute("DELETE FROM traces WHERE path=?", (rel,))
        if path is None:
            return None
        parsed = parse_jsonl(path, Trace)
        latest = last_wins(parsed.records, key=lambda t: t.id)
        conn.executemany(f"INSERT OR REPLACE INTO traces VALUES ({', '.join('?' * 11)})",
                         [rows.trace_row(rel, off, length, trace) for off, length, trace in latest])
        return parsed

    def _refresh_trajectories(self, conn, report: RefreshReport, progress: Progress | None, full: bool) -> None:
        known_dirs = dict(conn.execute("SELECT path, mtime_ns FROM dirs").fetchall())
        listing = scan.trajectory_listing(str(self.home), str(self.settings.trajectories_dir), known_dirs, full)
        report.skipped_dirs = len(listing.skipped)
        within = None if full else listing.listed + listing.vanished
        changed, removed, known = self._changes(conn, "trajectory", listing.files, report, within)
        if removed:
            conn.execute("BEGIN")
            for rel in removed:
                _forget_trajectory(conn, rel)
                conn.execute("DELETE FROM files WHERE path=?", (rel,))
            conn.execute("COMMIT")
            self.generation += 1
        self._ingest_trajectories(conn, changed, known, report, progress)
        # only now that their files are in: a crash before this lists the directories again next time
        conn.execute("BEGIN")
        conn.executemany("DELETE FROM dirs WHERE path=?", [(d,) for d in listing.vanished])
        conn.executemany("INSERT OR REPLACE INTO dirs VALUES (?, ?)", listing.marks.items())
        conn.execute("COMMIT")

    def _ingest_trajectories(self, conn, changed, known, report: RefreshReport, progress: Progress | None) -> None:
        if not changed:
            return
        load = partial(rows.load_trajectory_file, str(self.home))
        rels = [c[0] for c in changed]
        pool = None
        if len(changed) >= PARALLEL_FROM and self.workers > 1:
            # spawn, not fork: the server process has threads, and a forked child could inherit a held lock
            pool = ProcessPoolExecutor(self.workers, mp_context=multiprocessing.get_context("spawn"))
            loaded = pool.map(load, rels, chunksize=256)
        else:
            loaded = map(load, rels)
        insert = f"INSERT INTO trajectories({', '.join(rows.TRAJECTORY_COLUMNS)}) VALUES ({', '.join('?' * len(rows.TRAJECTORY_COLUMNS))})"
        try:
            conn.execute("BEGIN")
            for done, ((rel, mtime_ns, size), (row, text, error)) in enumerate(zip(changed, loaded), 1):
                if rel in known:
                    _forget_trajectory(conn, rel)
                if row is not None:
                    rowid = conn.execute(insert, row).lastrowid
                    conn.execute("INSERT INTO trajectory_search(rowid, text) VALUES (?, ?)", (rowid, text))
                report.bad += row is None
                conn.execute("INSERT OR REPLACE INTO files VALUES (?, 'trajectory', ?, ?, ?, ?, ?)",
                             (rel, mtime_ns, size, int(row is not None), int(row is None), error))
                if done % BATCH == 0:
                    conn.execute("COMMIT")
                    self.generation += 1
                    if progress:
                        progress(done, len(changed))
                    conn.execute("BEGIN")
            conn.execute("COMMIT")
            self.generation += 1
            if progress:
                progress(len(changed), len(changed))
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
        finally:
            if pool:
                pool.shutdown(cancel_futures=True)


def _forget_trajectory(conn, rel: str) -> None:
    conn.execute("DELETE FROM trajectory_search WHERE rowid IN (SELECT rowid FROM trajectories WHERE path=?)", (rel,))
    conn.execute("DELETE FROM trajectories WHERE path=?", (rel,))
