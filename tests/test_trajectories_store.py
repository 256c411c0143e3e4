"""Trajectory store, exports and dedupe on real files (no Docker)."""

import json
import time

import pytest

from forager.trajectories.dedupe import dedupe_store, jaccard, action_set, near_duplicates
from forager.trajectories.export import export_trajectories, to_chat, to_cwm
from forager.models import Action, EpisodeResult, Observation, PolicyInfo, Step, Trajectory
from forager.trajectories.render import TEXT_TOOLS_HELP, parse_text_action
from forager.trajectories.store import TrajectoryStore, trajectory_id


def make_traj(task="calc__mf_1", attempt=0, commands=("ls", "pytest"), reward=1.0, repo="calc", model=None):
    steps = [Step(index=i, action=Action(tool="shell", arguments={"command": c}, text=f"run {c}"),
                  observation=Observation(output=f"out {i}", exit_code=0)) for i, c in enumerate(commands)]
    steps.append(Step(index=len(steps), action=Action(tool="submit"), observation=Observation(output="Submitted.")))
    return Trajectory(id=trajectory_id(task, attempt, "oracle", model), task_id=task, task_kind="mutate-fix",
                      repo=repo, image="img", commit="c", attempt=attempt, policy=PolicyInfo(name="oracle", model=model),
                      system_prompt="sys", problem_statement="fix it", steps=steps, exit_reason="submitted",
                      result=EpisodeResult(patch="diff", reward=reward), started_at=time.time(), finished_at=time.time())


def test_id_is_deterministic_and_file_safe():
    a = trajectory_id("t/1", 0, "openai", "org/model:7b")
    assert a == trajectory_id("t/1", 0, "openai", "org/model:7b")
    assert a != trajectory_id("t/1", 1, "openai", "org/model:7b") != trajectory_id("t/1", 0, "openai", "other")
    assert "/" not in a and ":" not in a


def test_write_is_atomic_and_a_retry_does_not_duplicate(tmp_path):
    store = TrajectoryStore(tmp_path)
    t = make_traj()
    store.write(t)
    retried = make_traj(reward=0.0)  # same (task, attempt, policy, model) → same id
    store.write(retried)
    assert store.count() == 1 and store.exists(t.id)
    assert store.read(t.id).result.reward == 0.0
    assert not [p for p in tmp_path.rglob("*") if p.name.startswith(".tmp-")]
    store.write(make_traj(attempt=1))
    assert store.count() == 2 and len(list(store.iter())) == 2


def test_a_torn_file_is_skipped_and_reported(tmp_path):
    store = TrajectoryStore(tmp_path)
    store.write(make_traj())
    torn = tmp_path / "calc" / "broken.jsonl"
    torn.write_text('{"schema_version": "1.0", "id": "x"')
    assert len(list(store.iter())) == 1
    assert len(store.problems()) == 1


def test_cwm_export_has_tool_blocks_and_outputs(tmp_path):
    rec = to_cwm(make_traj())
    roles = [t["role"] for t in rec["turns"]]
    # CWM's text protocol: observations come back as user turns, exactly as a text-protocol model reads them
    assert roles[:2] == ["system", "user"] and roles[2:] == ["assistant", "user"] * 3
    assert rec["turns"][0]["content"].endswith(TEXT_TOOLS_HELP)
    assert "<tool: bash>\nls\n</tool>" in rec["text"] and "<output>\nout 0\n</output>" in rec["text"]
    # what the export writes parses back with the text protocol
    action, error = parse_text_action(rec["turns"][2]["content"])
    assert error is None and action.tool == "shell" and action.arguments == {"command": "ls"}


def test_chat_export_pairs_tool_calls_with_tool_messages(tmp_path):
    msgs = to_chat(make_traj())["messages"]
    calls = [m for m in msgs if m.get("tool_calls")]
    tools = [m for m in msgs if m["role"] == "tool"]
    assert len(calls) == len(tools) == 3
    assert [c["tool_calls"][0]["id"] for c in calls] == [t["tool_call_id"] for t in tools]
    assert json.loads(calls[0]["tool_calls"][0]["function"]["arguments"]) == {"command": "ls"}


def test_export_filters_by_reward_and_writes_whole_files(tmp_path):
    trajs = [make_traj(reward=1.0), make_traj(task="b", reward=0.0)]
    out = tmp_path / "out.jsonl"
    res = export_trajectories(trajs, "chat", out, min_reward=1.0)
    assert res["written"] == 1 and res["skipped"] == 1
    assert len(out.read_text().splitlines()) == 1
    with pytest.raises(ValueError):
        export_trajectories(trajs, "nope", out)
    assert len(out.read_text().splitlines()) == 1  # a failed export leaves the old file alone


def test_dedupe_drops_near_duplicates_within_a_repo_only(tmp_path):
    base = [f"cmd {i}" for i in range(20)]
    a = make_traj(task="a", commands=base)
    b = make_traj(task="b", commands=base[:19] + ["other"])  # 20/22 shared ≈ 0.91
    c = make_traj(task="c", commands=["x", "y"])
    d = make_traj(task="d", commands=base, repo="other")  # identical but another repo: kept
    assert jaccard(action_set(a), action_set(b)) >= 0.9
    drops = near_duplicates([a, b, c, d], 0.9)
    assert len(drops) == 1 and {drops[0][0], drops[0][1]} == {a.id, b.id}
    assert near_duplicates([a, b, c, d], 0.95) == []
    store = TrajectoryStore(tmp_path / "t")
    for t in (a, b, c, d):
        store.write(t)
    res = dedupe_store(store, tmp_path / "dropped", 0.9)
    assert res["dropped"] == 1 and store.count() == 3
    assert len(list((tmp_path / "dropped").rglob("*.jsonl"))) == 1  # moved aside, not lost
    with pytest.raises(ValueError):
        near_duplicates([a], 0)
