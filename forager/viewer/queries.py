"""What the pages ask the index: filtered lists, per-collection aggregates, catalog and task sets.

Every function takes a read-only connection and returns plain dicts, so templates stay logic-free and
a page costs a few indexed SQL queries whatever the store's size.
"""

from __future__ import annotations

import re
import sqlite3
from dataclasses import asdict, dataclass

from forager.viewer.rows import SOLVED

PAGE_SIZE = 50
NO_MODEL = "(none)"  # the model filter's value for trajectories whose policy has no model (the oracle)
REWARD_FILTERS = {
    "solved": f"reward >= {SOLVED}",
    "partial": f"reward > 0 AND reward < {SOLVED}",
    "zero": "reward <= 0",
}
SORTS = {
    "newest": "started_at DESC",
    "oldest": "started_at ASC",
    "reward": "reward DESC, started_at DESC",
    "steps": "steps DESC, started_at DESC",
    "tokens": "(prompt_tokens + completion_tokens) DESC, started_at DESC",
}


@dataclass(frozen=True)  # hashable: a memo key
class TrajectoryFilter:
    """The list page's query string; empty means "any"."""

    repo: str = ""
    kind: str = ""
    policy: str = ""
    model: str = ""
    reward: str = ""
    exit: str = ""
    task: str = ""
    q: str = ""
    sort: str = "newest"

    def where(self) -> tuple[str, list]:
        clauses, params = [], []
        for column, value in (("repo", self.repo), ("task_kind", self.kind), ("policy", self.policy),
                              ("exit_reason", self.exit), ("task_id", self.task)):
            if value:
                clauses.append(f"{column} = ?")
                params.append(value)
        if self.model:
            clauses.append("model = ?")
            params.append("" if self.model == NO_MODEL else self.model)
        if self.reward in REWARD_FILTERS:
            clauses.append(REWARD_FILTERS[self.reward])
        match = fts_query(self.q)
        if match:
            clauses.append("rowid IN (SELECT rowid FROM trajectory_search WHERE trajectory_search MATCH ?)")
            params.append(match)
        return (" WHERE " + " AND ".join(clauses)) if clauses else "", params

    def query_string(self, **override) -> dict:
        """The non-empty parameters, for links that keep the current filters."""
        values = {**asdict(self), **override}
        return {k: v for k, v in values.items() if v not in ("", None) and not (k == "sort" and v == "newest")}


def fts_query(text: str) -> str:
    """Each word of the box becomes a prefix phrase of its alphanumeric parts: `calc__mf_1` finds the ids
    that contain calc, mf, 1 in a row (the index tokenizes on punctuation, so the query does too)."""
    phrases = []
    for word in text.split():
        parts = re.findall(r"[^\W_]+", word)
        if parts:
            phrases.append('"' + " ".join(parts) + '"*')
    return " ".join(phrases)


def list_trajectories(conn: sqlite3.Connection, flt: TrajectoryFilter, page: int = 1) -> tuple[list[dict], int]:
    return page_of_trajectories(conn, flt, page), count_trajectories(conn, flt)


def count_trajectories(conn: sqlite3.Connection, flt: TrajectoryFilter) -> int:
    where, params = flt.where()
    return conn.execute(f"SELECT COUNT(*) FROM trajectories{where}", params).fetchone()[0]


def page_of_trajectories(conn: sqlite3.Connection, flt: TrajectoryFilter, page: int = 1) -> list[dict]:
    where, params = flt.where()
    order = SORTS.get(flt.sort, SORTS["newest"])
    found = conn.execute(
        f"SELECT * FROM trajectories{where} ORDER BY {order} LIMIT ? OFFSET ?",
        [*params, PAGE_SIZE, (max(page, 1) - 1) * PAGE_SIZE],
    ).fetchall()
    return [dict(r) for r in found]


def filter_options(conn: sqlite3.Connection) -> dict[str, list[str]]:
    def distinct(column: str) -> list[str]:
        return [r[0] for r in conn.execute(f"SELECT DISTINCT {column} FROM trajectories ORDER BY 1")]

    models = [m or NO_MODEL for m in distinct("model")]
    return {"repo": distinct("repo"), "kind": distinct("task_kind"), "policy": distinct("policy"),
            "model": models, "exit": distinct("exit_reason")}


def trajectory_location(conn: sqlite3.Connection, traj_id: str) -> str | None:
    row = conn.execute("SELECT path FROM trajectories WHERE id=? ORDER BY finished_at DESC LIMIT 1", (traj_id,)).fetchone()
    return row[0] if row else None


def children(conn: sqlite3.Connection, traj_id: str) -> list[dict]:
    return [dict(r) for r in conn.execute(
        "SELECT id, branch_step, reward, exit_reason FROM trajectories WHERE parent_id=? ORDER BY branch_step, id",
        (traj_id,))]


def exists(conn: sqlite3.Connection, table: str, key: str) -> bool:
    return conn.execute(f"SELECT 1 FROM {table} WHERE id=?", (key,)).fetchone() is not None


# ---------------------------------------------------------------- collections

COLLECTION_COLUMNS = f"""
    policy, model, COUNT(*) AS n, SUM(reward >= {SOLVED}) AS solved, AVG(reward) AS mean_reward,
    AVG(steps) AS mean_steps, MAX(steps) AS max_steps, SUM(prompt_tokens) AS prompt_tokens,
    SUM(completion_tokens) AS completion_tokens, SUM(model_seconds) AS model_seconds,
    SUM(env_seconds) AS env_seconds, SUM(wall_seconds) AS wall_seconds, COUNT(DISTINCT repo) AS repos,
    COUNT(DISTINCT task_id) AS tasks, SUM(parent_id IS NOT NULL) AS branches
"""


def collections(conn: sqlite3.Connection) -> list[dict]:
    found = [dict(r) for r in conn.execute(
        f"SELECT {COLLECTION_COLUMNS} FROM trajectories GROUP BY policy, model ORDER BY policy, model")]
    exits: dict[tuple, dict[str, int]] = {}
    for r in conn.execute("SELECT policy, model, exit_reason, COUNT(*) FROM trajectories GROUP BY 1, 2, 3 ORDER BY 4 DESC"):
        exits.setdefault((r[0], r[1]), {})[r[2]] = r[3]
    for c in found:
        _derive(c)
        c["exit_reasons"] = exits.get((c["policy"], c["model"]), {})
    return found


def collection(conn: sqlite3.Connection, policy: str, model: str) -> dict | None:
    key = (policy, model)
    row = conn.execute(f"SELECT {COLLECTION_COLUMNS} FROM trajectories WHERE policy=? AND model=?", key).fetchone()
    if row is None or row["n"] == 0:
        return None
    c = _derive(dict(row))
    c["exit_reasons"] = dict(conn.execute(
        "SELECT exit_reason, COUNT(*) FROM trajectories WHERE policy=? AND model=? GROUP BY 1 ORDER BY 2 DESC", key).fetchall())
    c["steps_histogram"] = conn.execute(
        "SELECT steps, COUNT(*) FROM trajectories WHERE policy=? AND model=? GROUP BY steps ORDER BY steps", key).fetchall()
    c["by_repo"] = [dict(r) for r in conn.execute(
        f"SELECT repo, COUNT(*) AS n, AVG(reward) AS mean_reward, SUM(reward >= {SOLVED}) AS solved "
        "FROM trajectories WHERE policy=? AND model=? GROUP BY repo ORDER BY repo", key)]
    c["by_kind"] = [dict(r) for r in conn.execute(
        f"SELECT task_kind, COUNT(*) AS n, SUM(reward >= {SOLVED}) AS solved "
        "FROM trajectories WHERE policy=? AND model=? GROUP BY 1 ORDER BY 1", key)]
    return c


def _derive(c: dict) -> dict:
    n = c["n"] or 1
    c["solve_rate"] = (c["solved"] or 0) / n
    c["tokens"] = (c["prompt_tokens"] or 0) + (c["completion_tokens"] or 0)
    c["mean_tokens"] = c["tokens"] / n
    overhead = (c["wall_seconds"] or 0) - (c["model_seconds"] or 0) - (c["env_seconds"] or 0)
    c["other_seconds"] = max(0.0, overhead)  # the loop's own time: grading, state recording, queueing
    return c


# ---------------------------------------------------------------- catalog, tasks, traces

def catalog(conn: sqlite3.Connection) -> dict:
    images = [dict(r) for r in conn.execute("SELECT * FROM images ORDER BY repo, created_at DESC")]
    statuses = dict(conn.execute("SELECT status, COUNT(*) FROM images GROUP BY 1 ORDER BY 2 DESC").fetchall())
    failures = [dict(r) for r in conn.execute(
        "SELECT status, reason, COUNT(*) AS n FROM images WHERE status != 'ok' GROUP BY 1, 2 ORDER BY 3 DESC, 1")]
    return {"images": images, "statuses": statuses, "failures": failures}


def task_sets(conn: sqlite3.Connection) -> list[dict]:
    return [dict(r) for r in conn.execute(
        "SELECT repo, kind, COUNT(*) AS n, SUM(cert_passed = 1) AS certified, SUM(cert_passed = 0) AS failed_cert, "
        "SUM(cert_passed IS NULL) AS uncertified, GROUP_CONCAT(DISTINCT NULLIF(origin, '')) AS origins, "
        "SUM(fail_to_pass) AS fail_to_pass FROM tasks GROUP BY repo, kind ORDER BY repo, kind")]


def tasks_in_set(conn: sqlite3.Connection, repo: str, kind: str) -> list[dict]:
    return [dict(r) for r in conn.execute(
        "SELECT t.id, t.origin, t.commit_sha, t.fail_to_pass, t.pass_to_pass, t.cert_passed, t.certificate, "
        "t.created_at, (SELECT COUNT(*) FROM trajectories j WHERE j.task_id = t.id) AS trajectories "
        "FROM tasks t WHERE repo=? AND kind=? ORDER BY id", (repo, kind))]


def task_location(conn: sqlite3.Connection, task_id: str) -> tuple[str, int, int] | None:
    row = conn.execute("SELECT path, offset, length FROM tasks WHERE id=?", (task_id,)).fetchone()
    return tuple(row) if row else None


def list_traces(conn: sqlite3.Connection, repo: str = "", q: str = "", page: int = 1) -> tuple[list[dict], int]:
    clauses, params = [], []
    if repo:
        clauses.append("repo = ?")
        params.append(repo)
    if q:
        clauses.append("(function LIKE ? OR test LIKE ?)")
        params += [f"%{q}%"] * 2
    where = (" WHERE " + " AND ".join(clauses)) if clauses else ""
    total = conn.execute(f"SELECT COUNT(*) FROM traces{where}", params).fetchone()[0]
    found = conn.execute(f"SELECT * FROM traces{where} ORDER BY repo, function, id LIMIT ? OFFSET ?",
                         [*params, PAGE_SIZE, (max(page, 1) - 1) * PAGE_SIZE]).fetchall()
    return [dict(r) for r in found], total


def trace_location(conn: sqlite3.Connection, trace_id: str) -> tuple[str, int, int] | None:
    row = conn.execute("SELECT path, offset, length FROM traces WHERE id=?", (trace_id,)).fetchone()
    return tuple(row) if row else None


def trace_repos(conn: sqlite3.Connection) -> list[str]:
    return [r[0] for r in conn.execute("SELECT DISTINCT repo FROM traces ORDER BY 1")]


# ---------------------------------------------------------------- the store as a whole

def overview(conn: sqlite3.Connection) -> dict:
    one = lambda sql: conn.execute(sql).fetchone()[0]  # noqa: E731
    return {
        "images": one("SELECT COUNT(*) FROM images"),
        "images_ok": one("SELECT COUNT(*) FROM images WHERE status='ok'"),
        "repos": one("SELECT COUNT(DISTINCT repo) FROM images"),
        "tasks": one("SELECT COUNT(*) FROM tasks"),
        "certified": one("SELECT COUNT(*) FROM tasks WHERE cert_passed=1"),
        "trajectories": one("SELECT COUNT(*) FROM trajectories"),
        "solved": one(f"SELECT COUNT(*) FROM trajectories WHERE reward >= {SOLVED}"),
        "collections": one("SELECT COUNT(*) FROM (SELECT 1 FROM trajectories GROUP BY policy, model)"),
        "traces": one("SELECT COUNT(*) FROM traces"),
        "skipped_files": one("SELECT COUNT(*) FROM files WHERE bad > 0"),
        "skipped_records": one("SELECT COALESCE(SUM(bad), 0) FROM files"),
    }


def refreshed_at(conn: sqlite3.Connection) -> float:
    row = conn.execute("SELECT value FROM meta WHERE key='refreshed_at'").fetchone()
    return float(row[0]) if row else 0.0


def problems(conn: sqlite3.Connection) -> list[dict]:
    return [dict(r) for r in conn.execute(
        "SELECT path, kind, records, bad, error FROM files WHERE bad > 0 ORDER BY kind, path LIMIT 1000")]
