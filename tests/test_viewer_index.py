"""The viewer's index, queries and rendering on a store the tests write (no server, no browser)."""

from __future__ import annotations

import os
import time

import pytest

from forager.config import Settings
from forager.models import EpisodeResult
from forager.trace.models import Trace, TraceFrame
from forager.trajectories import TrajectoryStore
from forager.viewer import plots, queries, render
from forager.viewer.index import StoreIndex
from tests.fixtures_viewer import showcase, write_viewer_store


@pytest.fixture
def store(tmp_path):
    return write_viewer_store(tmp_path / "home")


def open_index(home, **kw) -> StoreIndex:
    return StoreIndex(Settings(home=home), **kw)


def test_first_refresh_indexes_every_record_and_counts_the_unreadable(store):
    index = open_index(store.home)
    report = index.refresh()
    o = queries.overview(index.reader())
    assert o["trajectories"] == store.trajectories == 19
    assert o["collections"] == len(store.collections) == 3
    assert o["solved"] == sum(c["solved"] for c in store.collections.values())
    # calc: the install record is superseded by the later ok one; candidates files are not tasks
    assert (o["images"], o["images_ok"], o["repos"]) == (4, 2, 4)
    assert (o["tasks"], o["certified"], o["traces"]) == (5, 2, 2)
    # the torn trajectory file, the torn catalog line and the bad trace line
    assert o["skipped_files"] == 3 and o["skipped_records"] == 3 and report.bad == 3
    skipped = {p["path"]: p for p in queries.problems(index.reader())}
    assert set(skipped) == {"catalog.jsonl", "traces/forager_calc_abc.jsonl", "trajectories/calc/torn.jsonl"}
    assert skipped["catalog.jsonl"]["records"] == 5 and "byte" in skipped["catalog.jsonl"]["error"]


def test_collections_match_what_was_written(store):
    index = open_index(store.home)
    index.refresh()
    found = {(c["policy"], c["model"]): c for c in queries.collections(index.reader())}
    assert set(found) == set(store.collections)
    for key, expected in store.collections.items():
        assert found[key]["n"] == expected["n"]
        assert found[key]["solved"] == expected["solved"]
        assert found[key]["exit_reasons"] == expected["exits"]
    qwen = queries.collection(index.reader(), "openai", "qwen2.5-coder-7b")
    assert sum(count for _, count in qwen["steps_histogram"]) == store.collections[("openai", "qwen2.5-coder-7b")]["n"]
    assert {r["repo"] for r in qwen["by_repo"]} == {"calc", "strutil"} and qwen["branches"] == 1
    assert queries.collection(index.reader(), "openai", "no-such-model") is None


def test_a_refresh_with_nothing_changed_reads_no_file(store):
    index = open_index(store.home)
    first = index.refresh()
    again = index.refresh()
    assert first.read == first.files > 0
    assert again.files == first.files and again.read == 0 and again.removed == 0


def test_changed_new_and_deleted_files_are_picked_up(store):
    index = open_index(store.home)
    index.refresh()
    trajectories = TrajectoryStore(store.home / "trajectories")
    changed = showcase()
    changed.result = EpisodeResult(reward=0.0)
    path = trajectories.write(changed)
    os.utime(path, ns=(time.time_ns(), time.time_ns() + 1_000_000))  # a distinct mtime even on a coarse clock
    (store.home / "trajectories" / "calc" / "torn.jsonl").unlink()
    report = index.refresh()
    assert (report.read, report.removed) == (1, 1)
    qwen = queries.collection(index.reader(), "openai", "qwen2.5-coder-7b")
    assert qwen["solved"] == store.collections[("openai", "qwen2.5-coder-7b")]["solved"] - 1
    assert queries.overview(index.reader())["skipped_files"] == 2

    trajectories.delete(store.branch_id)
    report = index.refresh()
    assert report.removed == 1
    assert queries.trajectory_location(index.reader(), store.branch_id) is None
    assert queries.overview(index.reader())["trajectories"] == store.trajectories - 1


def test_filters_narrow_and_combine(store):
    index = open_index(store.home)
    index.refresh()
    conn = index.reader()

    def count(**kw) -> int:
        return queries.list_trajectories(conn, queries.TrajectoryFilter(**kw))[1]

    assert count() == store.trajectories
    assert count(exit="max_turns") == store.count(exit="max_turns") == 7
    assert count(exit="max_turns", repo="calc") == store.count(exit="max_turns", repo="calc") == 4
    assert count(policy="openai", model="smollm2-135m") == store.count(policy="openai", model="smollm2-135m")
    assert count(model=queries.NO_MODEL) == store.count(model="") == 6
    assert count(kind="issue-fix") == store.count(kind="issue-fix") == 3
    assert count(reward="solved") == sum(1 for r in store.rows if r["reward"] >= 1)
    assert count(reward="partial") == 1
    assert count(task="calc__mf_1") == 3  # the oracle's, the showcase and its branch
    rows, total = queries.list_trajectories(conn, queries.TrajectoryFilter(sort="oldest"))
    assert [r["started_at"] for r in rows] == sorted(r["started_at"] for r in rows)


def test_search_matches_commands_ids_and_problem_text(store):
    index = open_index(store.home)
    index.refresh()
    conn = index.reader()

    def ids(q: str) -> set[str]:
        return {r["id"] for r in queries.list_trajectories(conn, queries.TrajectoryFilter(q=q))[0]}

    assert ids("stash") == {store.branch_id}  # only the branch ran `git stash`
    assert ids("difference of its") == {store.showcase_id, store.branch_id}
    assert len(ids("calc__mf_17")) == 1
    assert ids("no-such-word-anywhere") == set()
    assert queries.fts_query('x" OR 1') == '"x"* "OR"* "1"*'  # quotes cannot break out of the phrase


def test_an_index_reused_for_another_store_is_rebuilt(store, tmp_path):
    db = tmp_path / "shared.sqlite3"
    index = open_index(store.home, db_path=db)
    index.refresh()
    index.close()
    other = tmp_path / "empty-home"
    other.mkdir()
    index = open_index(other, db_path=db)
    index.refresh()
    assert queries.overview(index.reader())["trajectories"] == 0


def test_trace_steps_resolve_unchanged_locals_per_scope():
    frames = [
        TraceFrame(event="call", line=1, source="def f(a):\n", locals={"a": "1"}),
        TraceFrame(event="line", line=2, source="    b = g(a)\n", locals={"a": ".."}),
        TraceFrame(event="call", line=9, source="def g(a):\n", locals={"a": "1"}, depth=1),
        TraceFrame(event="line", line=10, source="    c = a * 5\n", locals={"a": ".."}, depth=1),
        TraceFrame(event="line", line=11, source="    return c\n", locals={"a": "..", "c": "5"}, depth=1),
        TraceFrame(event="return", line=11, source="    return c\n", value="5", depth=1),
        TraceFrame(event="line", line=3, source="    return b\n", locals={"a": "..", "b": "5"}),
        TraceFrame(event="return", line=3, source="    return b\n", value="5"),
    ]
    trace = Trace(id="t", target="call", function="m:f", source="def f(a):\n    b = g(a)\n    return b\n", frames=frames)
    steps = render.trace_steps(trace)
    assert steps[1]["changed"] == {} and steps[1]["kept"] == ["a"]
    assert render.scope_at(steps, 3) == {"a": "1"}  # g's own scope, not f's
    assert steps[5]["value"] == "5" and render.scope_at(steps, 5) == {"a": "1", "c": "5"}  # the scope it leaves
    assert render.scope_at(steps, 6) == {"a": "1", "b": "5"} and steps[6]["changed"] == {"b": "5"}  # f's again


def test_diff_lines_are_classed_and_escaped():
    html = str(render.diff_html("--- a/x.py\n+++ b/x.py\n@@ -1 +1 @@\n-old <b>\n+new <script>\n same\n"))
    assert '<span class="d-del">-old &lt;b&gt;</span>' in html
    assert '<span class="d-add">+new &lt;script&gt;</span>' in html
    assert '<span class="d-hunk">' in html and html.count('class="d-file"') == 2 and '<span class="d-ctx"> same' in html


def test_histogram_bins_keep_every_count():
    counts = [(s, s % 7 + 1) for s in range(1, 101)]
    bins = plots.bucket(counts, max_bins=24)
    assert len(bins) <= 24 and sum(c for _, c in bins) == sum(c for _, c in counts)
    assert bins[0][0] == "1–5"
    assert plots.bucket([(3, 2), (4, 1)]) == [("3", 2), ("4", 1)]
    svg = str(plots.histogram(bins, "steps", "steps distribution"))
    assert svg.startswith("<svg") and svg.count("<rect") == len(bins)


def test_aggregates_are_recomputed_only_when_a_refresh_changed_something(store):
    from forager.viewer.memo import Memo

    index = open_index(store.home)
    index.refresh()
    memo, computed = Memo(index), []

    def total() -> int:
        return memo.get("total", lambda: computed.append(1) or queries.overview(index.reader())["trajectories"])

    assert total() == total() == store.trajectories and len(computed) == 1
    index.refresh()  # nothing changed: the cached figure stands
    assert total() == store.trajectories and len(computed) == 1
    TrajectoryStore(store.home / "trajectories").delete(store.branch_id)
    index.refresh()
    assert total() == store.trajectories - 1 and len(computed) == 2


def test_unchanged_trajectory_directories_are_skipped_until_the_full_sweep(store):
    index = open_index(store.home)
    assert index.refresh().full  # a process's first refresh stats every file
    dirs = [d for d in (store.home / "trajectories").iterdir() if d.is_dir()]
    old = time.time_ns() - 60_000_000_000
    for d in dirs:  # directories written just now are not trusted (racy); these are a minute old
        os.utime(d, ns=(old, old))
    index.refresh(full=False)  # lists them once more and remembers their mtimes
    quiet = index.refresh(full=False)
    assert quiet.skipped_dirs == len(dirs) == 2 and quiet.read == 0
    assert quiet.files == 1 + 2 + 1  # catalog, task files and the trace file only

    fresh = showcase()
    fresh.id, fresh.attempt = "fresh-episode", 9
    TrajectoryStore(store.home / "trajectories").write(fresh)  # a rename into calc/ moves calc's mtime
    report = index.refresh(full=False)
    assert (report.skipped_dirs, report.read) == (1, 1)
    assert queries.trajectory_location(index.reader(), "fresh-episode") == "trajectories/calc/fresh-episode.jsonl"

    # a file rewritten in place leaves its directory's mtime alone: only the full sweep sees it
    strutil = store.home / "trajectories" / "strutil"
    os.utime(strutil, ns=(old, old))
    index.refresh(full=False)
    victim = sorted(strutil.glob("*.jsonl"))[0]
    victim.write_text(victim.read_text().replace('"reward":0.0', '"reward":0.25'))
    os.utime(strutil, ns=(old, old))
    assert index.refresh(full=False).read == 0
    assert index.refresh(full=True).read == 1
    assert queries.list_trajectories(index.reader(), queries.TrajectoryFilter(reward="partial"))[1] == 2
