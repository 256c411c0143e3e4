"""World-model data end to end: state in trajectories, replay of the oracle, branching trees and their exports.

Real env server, real images (the synthesized tasks of the builder's tiny repo), the scripted oracle.
"""

from __future__ import annotations

import json
import shutil

import pytest
from typer.testing import CliRunner

from forager.cli.app import app
from forager.episodes.branching import BranchPlan, run_branching_episode
from forager.episodes.loop import run_episode
from forager.episodes.policies import make_policy
from forager.episodes.policies.oracle import parse_hunks
from forager.episodes.replay import replay_trajectory, summarize
from forager.models import Action
from forager.trajectories.export import export_trajectories
from forager.trajectories.store import TrajectoryStore


@pytest.fixture(scope="module")
def oracle_runs(synthesized, envserver):
    """Two oracle episodes (tests run before and after the fix), recorded with their states."""
    with envserver.client() as client:
        return [run_episode(task, make_policy("oracle"), client, max_turns=20) for task in synthesized.tasks[:2]]


def test_oracle_steps_carry_their_state(oracle_runs, synthesized):
    for traj, task in zip(oracle_runs, synthesized.tasks):
        assert traj.result.reward == 1.0
        acting = [s for s in traj.steps if s.action.tool in ("shell", "edit", "create")]
        assert acting and all(s.state is not None and s.state.tree_digest for s in acting)
        edits = [s for s in acting if s.action.tool == "edit"]
        assert [p for s in edits for p in s.state.files_modified] == [h.path for h in parse_hunks(task.gold_patch)]
        assert all(not s.state.files_modified for s in acting if s.action.tool == "shell")  # ls, grep, nl, tests
        assert len({s.state.tree_digest for s in acting}) == 1 + len(edits)  # only the edits change the tree


def test_oracle_trajectories_replay_step_identically(oracle_runs, synthesized, envserver):
    tasks = {t.id: t for t in synthesized.tasks}
    with envserver.client() as client:
        reports = [replay_trajectory(traj, tasks[traj.task_id], client) for traj in oracle_runs]
        assert not [e for e in client.list_envs() if "forager.replay" in e.labels]
    summary = summarize(reports)
    assert summary["errors"] == 0 and summary["catalog"] == [], summary
    assert summary["share"] == 1.0 and summary["steps"] == sum(len(t.steps) for t in oracle_runs)
    assert summary["digests_compared"] == sum(s.action.tool != "submit" for t in oracle_runs for s in t.steps)

    # a step whose recorded output is not what the env prints is caught, and catalogued by its command
    doctored = oracle_runs[0].model_copy(deep=True)
    doctored.steps[0].observation.output += "something else\n"
    with envserver.client() as client:
        report = replay_trajectory(doctored, tasks[doctored.task_id], client)
    assert report.identical == report.steps - 1 and report.differing[0].action == "ls"
    assert "something else" in report.differing[0].difference


def test_a_branching_episode_writes_a_tree(synthesized, envserver, tmp_path):
    task = synthesized.tasks[0]
    plan = BranchPlan(at=[1], alternatives=[Action(tool="shell", arguments={"command": "echo alt > alt.txt"}),
                                            Action(tool="shell", arguments={"command": "cd /tmp && export X=1"})])
    with envserver.client() as client:
        parent, *children = run_branching_episode(task, make_policy("oracle", run_tests=False), client, plan,
                                                  max_turns=20)
        assert not [e for e in client.list_envs() if e.labels.get("task") == task.id]  # forks deleted too
    assert parent.parent_id is None and "__root__" in parent.id
    assert [c.parent_id for c in children] == [parent.id] * 2 and [c.branch_step for c in children] == [1, 1]
    assert children[0].id != children[1].id and all("__s1b" in c.id for c in children)
    for child in children:  # the parent's first step, then the branch's own
        assert child.steps[0] == parent.steps[0] and child.steps[1].action.arguments != parent.steps[1].action.arguments
        assert child.result.reward == 1.0  # the policy carried on from the branch's state
    assert children[0].steps[1].state.files_created == ["alt.txt"]
    shell = children[1].steps[1].state
    assert shell.cwd == "/tmp" and shell.env_changed == {"X": "1"}
    assert "alt.txt" in children[0].result.patch and "alt.txt" not in parent.result.patch

    store = TrajectoryStore(tmp_path / "trajs")
    for t in (parent, *children):
        store.write(t)
    out = tmp_path / "triples.jsonl"
    res = export_trajectories(store.iter(), "cwm", out, tree="triples")
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert res["written"] == len(rows) == sum(len(t.steps) for t in (parent, *children)) - 2 * 1
    at_branch = [r for r in rows if r["step"] == 1]  # three counterfactual actions from one state
    assert len(at_branch) == 3 and len({json.dumps(r["state"]) for r in at_branch}) == 1
    assert len({json.dumps(r["action"]) for r in at_branch}) == 3
    res = export_trajectories(store.iter(), "cwm", tmp_path / "cwm.jsonl", with_state=True)
    rec = next(json.loads(line) for line in (tmp_path / "cwm.jsonl").read_text().splitlines()
               if json.loads(line)["id"] == children[0].id)
    assert rec["parent_id"] == parent.id and rec["branch_step"] == 1
    assert "<|state|>\ncwd: /repo\ncreated: alt.txt\n" in rec["text"]
    plain = export_trajectories(store.iter(), "cwm", tmp_path / "plain.jsonl")
    assert plain["written"] == 3 and "<|state|>" not in (tmp_path / "plain.jsonl").read_text()


def test_the_branching_job_and_the_replay_verb(synthesized, envserver, tmp_path, monkeypatch):
    from agent.jobs import run_episode_job

    home = tmp_path / "home"
    shutil.copytree(synthesized.settings.tasks_dir, home / "tasks")
    monkeypatch.setenv("FORAGER_HOME", str(home))
    monkeypatch.setenv("FORAGER_ENVSERVER_URL", envserver.url)
    monkeypatch.setenv("FORAGER_ENVSERVER_TOKEN", envserver.token)
    task = synthesized.tasks[1]
    summary = run_episode_job(task.model_dump(mode="json"), policy={"name": "oracle", "run_tests": False},
                              branching={"at": [0, 2], "branches": 2})
    assert summary["branches"] == 4 and summary["reward"] == 1.0
    store = TrajectoryStore(home / "trajectories")
    tree = list(store.iter())
    assert len(tree) == 5
    assert sorted(-1 if t.branch_step is None else t.branch_step for t in tree) == [-1, 0, 0, 2, 2]
    assert {t.parent_id for t in tree if t.parent_id} == {summary["trajectory"]}

    runner = CliRunner()
    res = runner.invoke(app, ["replay", str(home / "trajectories"), "--json"])
    assert res.exit_code == 0, res.output
    out = json.loads(res.stdout.strip().splitlines()[-1])
    assert out["trajectories"] == 5 and out["share"] == 1.0 and out["catalog"] == []
    res = runner.invoke(app, ["replay", "no-such-trajectory", "--json"])
    assert res.exit_code == 1 and "no trajectory 'no-such-trajectory'" in res.stdout
    shutil.rmtree(home / "tasks")
    res = runner.invoke(app, ["replay", summary["trajectory"], "--json"])
    assert res.exit_code == 1 and "is not in" in json.loads(res.stdout.strip().splitlines()[-1])["reports"][0]["error"]
