"""Viewer speed on a large store: index build and refresh, page load times, against reading every file.

    .venv/bin/python benchmarks/viewer_bench.py [--store DIR] [--trajectories 100000] [--sample 2000] [--repeat 5]
                                                [--screenshots docs/images]

1. A generated store (kept in --store and reused by the next run): N trajectories over 60 repositories
   and 4 collections (1 to 30 steps each, some with state diffs), a catalog, task files and traces.
2. Index: the first build (cold); a refresh that finds nothing changed, as the periodic full sweep (a stat
   per file) and as the usual one (directory mtimes); a refresh after 100 records were rewritten.
3. `forager view` started on loopback over the indexed store: time to serving, then every page's time
   over HTTP (first request, then the median of --repeat), and in headless Chromium the first page's
   load (navigation start to the load event) for a fresh browser context.
4. Baseline, in the same run: the naive page that reads and parses every trajectory file per request
   (TrajectoryStore.iter + the collections aggregate), timed on --sample files and scaled to N; compared
   with the collections page as served (cached per index change) and its SQL aggregate from scratch.
Ends with one JSON line holding every figure printed.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from forager.config import Settings  # noqa: E402
from forager.models import (  # noqa: E402
    Action, Certificate, ImageRecord, Observation, PolicyInfo, StateChange, Step, Task, Trajectory,
)
from forager.trace.models import Trace, TraceFrame  # noqa: E402
from forager.trajectories import TrajectoryStore, trajectory_id  # noqa: E402
from forager.viewer import queries  # noqa: E402
from forager.viewer.index import StoreIndex  # noqa: E402

REPOS = [f"repo-{i:02d}" for i in range(60)]
COLLECTIONS = [("oracle", None), ("openai", "qwen2.5-coder-7b"), ("openai", "qwen2.5-coder-32b"), ("openai", "smollm2-135m")]
EXITS = ["submitted"] * 6 + ["max_turns"] * 2 + ["format_error_limit", "model_error"]
DIFF = "diff --git a/pkg/core.py b/pkg/core.py\n--- a/pkg/core.py\n+++ b/pkg/core.py\n@@ -10,3 +10,3 @@\n def f(x):\n-    return x - 1\n+    return x + 1\n"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def say(text: str) -> None:
    print(text, flush=True)


# ---------------------------------------------------------------- the generated store

def template_steps() -> list[dict]:
    steps = []
    for i in range(30):
        edit = i % 5 == 3
        step = Step(
            index=i, action=Action(tool="edit" if edit else "shell",
                                   arguments={"path": "pkg/core.py", "old": "x - 1", "new": "x + 1"} if edit
                                   else {"command": f"grep -rn 'def f' pkg/ | head -{i + 1}"}, text=f"Step {i}: look closer."),
            observation=Observation(output=f"pkg/core.py:{10 + i}:def f(x):\n" * 2, exit_code=0),
            state=StateChange(files_modified=["pkg/core.py"] if edit else [], diff=DIFF if edit else "",
                              diff_bytes=len(DIFF) if edit else 0, cwd="/repo", tree_digest=f"{i:012x}"),
            model_seconds=1.2, env_seconds=0.3, prompt_tokens=800 + 50 * i, completion_tokens=40,
        )
        steps.append(step.model_dump(mode="json"))
    return steps


def generate_store(home: Path, n: int) -> float:
    """Write the store straight to files (the store's fsync per record would make this minutes longer)."""
    started = time.perf_counter()
    rng = random.Random(7)
    steps = template_steps()
    base = Trajectory(id="x", task_id="x", task_kind="mutate-fix", repo="x", image="img", commit="c" * 40,
                      policy=PolicyInfo(name="oracle"), problem_statement="", exit_reason="submitted",
                      started_at=0, finished_at=0).model_dump(mode="json")
    root = home / "trajectories"
    for repo in REPOS:
        (root / repo).mkdir(parents=True, exist_ok=True)
    t0 = 1_750_000_000.0
    for i in range(n):
        # i -> (repo, collection, task, attempt) is one to one, so every i is its own file
        repo = REPOS[i % len(REPOS)]
        policy, model = COLLECTIONS[i // len(REPOS) % len(COLLECTIONS)]
        task = f"{repo}__mf_{i // (len(REPOS) * len(COLLECTIONS)) % 400}"
        attempt = i // (len(REPOS) * len(COLLECTIONS) * 400)
        count = rng.randint(1, 30)
        exit_reason = rng.choice(EXITS)
        reward = 1.0 if exit_reason == "submitted" and rng.random() < 0.6 else 0.0
        record = dict(base, id=trajectory_id(task, attempt, policy, model), task_id=task, repo=repo,
                      image=f"forager/{repo}:abc", attempt=attempt, policy={"name": policy, "model": model, "parameters": {}},
                      problem_statement=f"{repo}: f() is off by two in pkg/core.py (task {i}); the suite fails.",
                      steps=steps[:count], exit_reason=exit_reason, started_at=t0 + i * 7, finished_at=t0 + i * 7 + 3 * count,
                      prompt_tokens=sum(s["prompt_tokens"] for s in steps[:count]), completion_tokens=40 * count,
                      result={**base["result"], "reward": reward, "patch": DIFF if reward else "",
                              "fail_to_pass": {"tests/test_core.py::test_f": "passed" if reward else "failed"}})
        (root / repo / f"{record['id']}.jsonl").write_text(json.dumps(record) + "\n")
    Trajectory.model_validate(record)  # the generator writes what the store writes
    catalog = [ImageRecord(repo=r, source=f"pypi:{r}==1.0", commit="c" * 40, status="ok" if j % 7 else "install",
                           tag=f"forager/{r}:abc", tests_collected=200 + j, tests_passed=190 + j, build_seconds=60.0 + j)
               for j, r in enumerate(REPOS)]
    (home / "catalog.jsonl").write_text("".join(r.model_dump_json() + "\n" for r in catalog))
    (home / "tasks").mkdir(exist_ok=True)
    cert = Certificate(k=3, gold_rewards=[1.0] * 3, empty_rewards=[0.0] * 3, passed=True)
    for r in REPOS:
        tasks = [Task(id=f"{r}__mf_{k}", kind="mutate-fix", repo=r, image=f"forager/{r}:abc", commit="c" * 40,
                      problem_statement="f() is off by two.", test_command="pytest", fail_to_pass=["tests/test_core.py::test_f"],
                      gold_patch=DIFF, origin="synthesized", certificate=cert if k % 3 else None) for k in range(400)]
        (home / "tasks" / f"{r}.jsonl").write_text("".join(t.model_dump_json() + "\n" for t in tasks))
    (home / "traces").mkdir(exist_ok=True)
    frames = [TraceFrame(event="line", line=10 + k % 5, source="    x = x + 1\n", locals={"x": str(k)}) for k in range(200)]
    with open(home / "traces" / "forager_repo.jsonl", "w") as fh:
        for k in range(500):
            fh.write(Trace(id=f"trace-{k}", target="test", repo=REPOS[k % 60], function=f"pkg.core:f{k}", source="def f(x):\n",
                           frames=frames).model_dump_json() + "\n")
    written = sum(1 for _ in root.glob("*/*.jsonl"))
    assert written == n, f"{written} files for {n} trajectories: the generator reused ids"
    (home / ".bench-store").write_text(str(n))
    return time.perf_counter() - started


# ---------------------------------------------------------------- measurements

def timed(fn) -> float:
    started = time.perf_counter()
    fn()
    return time.perf_counter() - started


def naive_collections(paths: list[Path]) -> dict:
    """The page without an index: parse every record and aggregate per (policy, model)."""
    found: dict = {}
    for path in paths:
        try:
            t = Trajectory.model_validate_json(path.read_bytes().strip())
        except ValueError:
            continue
        c = found.setdefault((t.policy.name, t.policy.model), [0, 0, 0])
        c[0] += 1
        c[1] += t.result.reward >= 1
        c[2] += len(t.steps)
    return found


def page_times(url: str, paths: dict[str, str], repeat: int) -> dict[str, dict]:
    out = {}
    with httpx.Client(base_url=url, timeout=60) as client:
        for name, path in paths.items():
            times = []
            for _ in range(repeat + 1):
                started = time.perf_counter()
                r = client.get(path)
                times.append(time.perf_counter() - started)
                r.raise_for_status()
            out[name] = {"first_s": round(times[0], 4), "median_s": round(statistics.median(times[1:]), 4),
                         "bytes": len(r.content)}
    return out


def browser_load(url: str, paths: dict[str, str], screenshots: Path | None) -> dict[str, float] | None:
    """Navigation start to the load event in a fresh headless Chromium context, per page."""
    if not Path("/usr/bin/chromium").exists():
        return None
    from playwright.sync_api import sync_playwright

    out = {}
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path="/usr/bin/chromium", args=CHROMIUM_ARGS)
        for name, path in paths.items():
            context = browser.new_context()
            page = context.new_page()
            page.goto(url + path, wait_until="load")
            out[name] = round(page.evaluate("performance.getEntriesByType('navigation')[0].loadEventEnd") / 1000, 4)
            if screenshots:
                page.set_viewport_size({"width": 1400, "height": 900})
                page.screenshot(path=str(screenshots / f"viewer-100k-{name}.png"))
            context.close()
        browser.close()
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--store", type=Path, default=Path("/tmp/forager-viewer-bench"))
    ap.add_argument("--trajectories", type=int, default=100_000)
    ap.add_argument("--sample", type=int, default=2000, help="files the naive baseline reads")
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--screenshots", type=Path, help="save a screenshot of each page Chromium loads here")
    args = ap.parse_args()
    home, n = args.store, args.trajectories
    figures: dict = {"trajectories": n, "cpus": os.cpu_count()}

    marker = home / ".bench-store"
    if marker.exists() and marker.read_text() == str(n):
        say(f"store: reusing {home} ({n:,} trajectories)")
    else:
        say(f"store: generating {n:,} trajectories in {home} ...")
        figures["generate_s"] = round(generate_store(home, n), 1)
        say(f"store: generated in {figures['generate_s']} s")
    figures["store_bytes"] = sum(p.stat().st_size for p in (home / "trajectories").glob("*/*.jsonl"))

    settings = Settings(home=home)
    db = home / "viewer" / "index.sqlite3"
    for leftover in db.parent.glob("index.sqlite3*"):
        leftover.unlink()
    index = StoreIndex(settings)
    cold = index.refresh()
    figures["index_cold_s"] = round(cold.seconds, 2)
    figures["index_files_per_s"] = round(cold.read / cold.seconds)
    full = index.refresh(full=True)
    figures["refresh_full_unchanged_s"] = round(full.seconds, 3)
    figures["refresh_full_unchanged_read"] = full.read
    noop = index.refresh(full=False)
    figures["refresh_unchanged_s"] = round(noop.seconds, 3)
    figures["refresh_unchanged_read"] = noop.read
    store = TrajectoryStore(home / "trajectories")
    some = store.files()[:100]
    for path in some:  # as a fleet does: the store's atomic write, so the directory's mtime moves
        record = Trajectory.model_validate_json(path.read_bytes())
        record.result.reward = 1.0 - record.result.reward
        store.write(record)
    changed = index.refresh(full=False)
    figures["refresh_100_changed_s"] = round(changed.seconds, 3)
    figures["refresh_100_changed_read"] = changed.read
    figures["index_bytes"] = sum(p.stat().st_size for p in db.parent.glob("index.sqlite3*"))
    say(f"index: cold {cold.seconds:.1f} s ({figures['index_files_per_s']:,} files/s), {figures['index_bytes'] / 1e6:.0f} MB; "
        f"refresh with nothing changed: {full.seconds:.2f} s stat'ing every file, {noop.seconds:.3f} s by directory "
        f"mtimes ({noop.read} read); 100 rewritten: {changed.seconds:.2f} s ({changed.read} read)")
    # the aggregates the server caches per index change, computed from scratch (what a refresh costs them)
    conn = index.reader()
    figures["overview_sql_s"] = round(timed(lambda: queries.overview(conn)), 3)
    figures["collections_sql_s"] = round(timed(lambda: queries.collections(conn)), 3)
    figures["collection_sql_s"] = round(timed(lambda: queries.collection(conn, "openai", "qwen2.5-coder-7b")), 3)
    say(f"aggregates from scratch: overview {figures['overview_sql_s'] * 1000:.0f} ms, collections "
        f"{figures['collections_sql_s'] * 1000:.0f} ms, one collection {figures['collection_sql_s'] * 1000:.0f} ms")
    index.close()

    started = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", "forager.cli", "view", "--home", str(home), "--port", "0", "--json",
                             "--refresh", "0"], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
                            env={**os.environ, "PYTHONPATH": str(ROOT)})
    try:
        ready = json.loads(proc.stdout.readline())
        figures["server_start_s"] = round(time.perf_counter() - started, 2)
        url = ready["url"]
        some_id = some[0].stem
        pages = {
            "overview": "/", "collections": "/collections", "trajectories": "/trajectories",
            "trajectories_filtered": "/trajectories?repo=repo-07&exit=max_turns&model=qwen2.5-coder-7b",
            "trajectories_search": "/trajectories?q=off+by+two+task+4242",
            "trajectories_page_1000": "/trajectories?page=1000",
            "collection": "/collections/view?policy=openai&model=qwen2.5-coder-7b",
            "trajectory": f"/trajectories/{some_id}", "catalog": "/catalog", "tasks": "/tasks",
            "trace": "/traces/trace-1",
        }
        figures["pages"] = page_times(url, pages, args.repeat)
        say(f"server: serving after {figures['server_start_s']} s")
        for name, t in figures["pages"].items():
            say(f"  {name:24s} first {t['first_s'] * 1000:7.1f} ms   median {t['median_s'] * 1000:7.1f} ms   {t['bytes']:>8,} B")
        loads = browser_load(url, {"overview": "/", "trajectories": "/trajectories", "collections": "/collections",
                                   "collection": pages["collection"], "trajectory": f"/trajectories/{some_id}"},
                             args.screenshots)
        if loads:
            figures["chromium_load_s"] = loads
            say("chromium (fresh context, navigation to load event): "
                + ", ".join(f"{k} {v * 1000:.0f} ms" for k, v in loads.items()))
    finally:
        proc.terminate()
        proc.wait(15)

    sample = store.files()[: args.sample]
    naive = timed(lambda: naive_collections(sample))
    figures["naive_sample_files"] = len(sample)
    figures["naive_sample_s"] = round(naive, 3)
    figures["naive_estimate_s"] = round(naive / len(sample) * n, 1)
    indexed = figures["pages"]["collections"]["median_s"]
    figures["speedup_collections_vs_naive"] = round(figures["naive_estimate_s"] / indexed)
    figures["speedup_collections_sql_vs_naive"] = round(figures["naive_estimate_s"] / figures["collections_sql_s"])
    figures["first_page_s"] = figures["pages"]["overview"]["first_s"]
    figures["first_page_under_1s"] = figures["first_page_s"] < 1.0
    say(f"baseline: reading every file: {naive:.2f} s for {len(sample):,} files -> {figures['naive_estimate_s']} s "
        f"for {n:,}; the indexed collections page: {indexed * 1000:.0f} ms served ({figures['speedup_collections_vs_naive']:,}x), "
        f"{figures['collections_sql_s'] * 1000:.0f} ms computed from scratch ({figures['speedup_collections_sql_vs_naive']:,}x)")
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
