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

# Sums per group; groups are merged in Python. One pass over the table in its own order (NOT INDEXED),
# grouped finely and merged here, is 2-3x faster at 100k rows than letting SQLite walk the (policy, model)
# index, which visits a quarter of the table's rows in random order per collection.
SUMS = f"""COUNT(*) AS n, SUM(reward >= {SOLVED}) AS solved, SUM(reward) AS reward, SUM(steps) AS steps,
    MAX(steps) AS max_steps, SUM(prompt_tokens) AS prompt_tokens, SUM(completion_tokens) AS completion_tokens,
    SUM(model_seconds) AS model_seconds, SUM(env_seconds) AS env_seconds, SUM(wall_seconds) AS wall_seconds,
    SUM(parent_id IS NOT NULL) AS branches"""
SUMMED = ("n", "solved", "reward", "steps", "prompt_tokens", "completion_tokens", "model_seconds", "env_seconds",
          "wall_seconds", "branches")


def collections(conn: sqlite3.Connection) -> list[dict]:
    groups: dict[tuple[str, str], list[dict]] = {}
    for r in conn.execute(f"SELECT policy, model, exit_reason, {SUMS} FROM trajectories NOT INDEXED GROUP BY 1, 2, 3"):
        groups.setdefault((r["policy"], r["model"]), []).append(dict(r))
    return [_summary(policy, model, rows) for (policy, model), rows in sorted(groups.items())]


def collection(conn: sqlite3.Connection, policy: str, model: str) -> dict | None:
    rows = [dict(r) for r in conn.execute(
        f"SELECT repo, task_kind, exit_reason, steps AS length, {SUMS} FROM trajectories NOT INDEXED "
        "WHERE policy=? AND model=? GROUP BY 1, 2, 3, 4", (policy, model))]
    if not rows:
        return None
    c = _summary(policy, model, rows)
    c["tasks"] = conn.execute("SELECT COUNT(*) FROM (SELECT DISTINCT task_id FROM trajectories NOT INDEXED "
                              "WHERE policy=? AND model=?)", (policy, model)).fetchone()[0]
    lengths: dict[int, int] = {}
    for r in rows:
        lengths[r["length"]] = lengths.get(r["length"], 0) + r["n"]
    c["steps_histogram"] = sorted(lengths.items())
    c["by_repo"] = [dict(_merge(g), repo=k) for k, g in _group(rows, "repo")]
    c["by_kind"] = [dict(_merge(g), task_kind=k) for k, g in _group(rows, "task_kind")]
    c["repos"] = len(c["by_repo"])
    return c


def _group(rows: list[dict], column: str) -> list[tuple[str, list[dict]]]:
    out: dict[str, list[dict]] = {}
    for r in rows:
        out.setdefault(r[column], []).append(r)
    return sorted(out.items())


def _merge(rows: list[dict]) -> dict:
    total = {k: sum(r[k] or 0 for r in rows) for k in SUMMED}
    total["max_steps"] = max(r["max_steps"] or 0 for r in rows)
    total["mean_reward"] = total["reward"] / total["n"]
    return total


def _summary(policy: str, model: str, rows: list[dict]) -> dict:
    c = dict(_merge(rows), policy=policy, model=model)
    exits: dict[str, int] = {}
    for r in rows:
        exits[r["exit_reason"]] = exits.get(r["exit_reason"], 0) + r["n"]
    c["exit_reasons"] = dict(sorted(exits.items(), key=lambda kv: -kv[1]))
    c["mean_steps"] = c["steps"] / c["n"]
    c["solve_rate"] = c["solved"] / c["n"]
    c["tokens"] = c["prompt_tokens"] + c["completion_tokens"]
    c["mean_tokens"] = c["tokens"] / c["n"]
    # the loop's own time: grading, state recording, queueing
    c["other_seconds"] = max(0.0, c["wall_seconds"] - c["model_seconds"] - c["env_seconds"])
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
