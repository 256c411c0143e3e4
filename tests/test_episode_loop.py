"""The episode loop against a scripted env server in memory: budgets, format errors and every exit reason,
in milliseconds (the real-server episode tests are in test_agent_episode.py)."""

from __future__ import annotations

import pytest

from envserver.errors import DockerUnavailable, EnvBroken, EnvGone
from forager.episodes.loop import run_episode
from forager.episodes.policies import Decision, make_policy
from forager.errors import EpisodeInfraError, ModelError
from forager.models import Action, PolicyInfo, Task

TASK = Task(id="calc__mf_1", kind="mutate-fix", repo="calc", image="forager/envtest:latest", commit="c",
            problem_statement="add() subtracts", test_command="python -m pytest -q", fail_to_pass=["t::a"],
            setup_patch="diff --git a/calc.py b/calc.py\n",
            gold_patch="diff --git a/calc.py b/calc.py\n--- a/calc.py\n+++ b/calc.py\n@@ -1,2 +1,2 @@\n"
                       " def add(a, b):\n-    return a - b\n+    return a + b\n")


class Scripted:
    """A policy that plays back decisions (and raises ModelError where the script says so)."""

    def __init__(self, *decisions):
        self.info = PolicyInfo(name="scripted")
        self.decisions = list(decisions)

    def next_action(self, episode):
        item = self.decisions.pop(0) if self.decisions else Decision(Action(tool="shell", arguments={"command": "ls"}))
        if isinstance(item, Exception):
            raise item
        return item


def shell(command: str, tokens: int = 0) -> Decision:
    return Decision(Action(tool="shell", arguments={"command": command}), prompt_tokens=tokens)


def test_the_oracle_solves_the_task_and_the_env_is_deleted(scripted_env):
    traj = run_episode(TASK, make_policy("oracle"), scripted_env, max_turns=20)
    assert traj.exit_reason == "submitted" and traj.result.reward == 1.0
    assert scripted_env.files["calc.py"] == "def add(a, b):\n    return a + b\n"
    assert traj.result.fail_to_pass == {"t::a": "passed"} and traj.result.patch.startswith("diff --git")
    assert scripted_env.deleted == ["env1"]
    req = scripted_env.created[0]
    assert req["setup_patch"] == TASK.setup_patch and req["grading"].fail_to_pass == ["t::a"]


def test_turn_budget(scripted_env):
    traj = run_episode(TASK, Scripted(), scripted_env, max_turns=3)
    assert traj.exit_reason == "max_turns" and len(traj.steps) == 3 and scripted_env.deleted == ["env1"]


def test_token_budget_counts_the_last_call(scripted_env):
    traj = run_episode(TASK, Scripted(shell("a", 10), shell("b", 500), shell("c", 10)), scripted_env, max_tokens=400)
    assert traj.exit_reason == "max_tokens" and len(traj.steps) == 2


def test_wall_clock(scripted_env):
    traj = run_episode(TASK, Scripted(), scripted_env, wall_clock=1e-9)
    assert traj.exit_reason == "wall_clock" and traj.steps == []


def test_format_errors_are_observations_until_the_limit(scripted_env):
    bad = Decision(Action(tool=None, text="I think..."), format_error="No tool call found.")
    traj = run_episode(TASK, Scripted(bad, shell("ls"), bad, bad, bad), scripted_env, format_error_limit=3)
    assert traj.exit_reason == "format_error_limit" and len(traj.steps) == 5
    assert traj.steps[0].observation.error == "No tool call found." and traj.steps[0].observation.flags["format_error"]
    assert [c[0] for c in scripted_env.calls] == ["shell"]  # malformed replies never reach the env


def test_tool_errors_are_observations_not_ends(scripted_env):
    edit = Decision(Action(tool="edit", arguments={"path": "nope.py", "old": "a", "new": "b"}))
    missing = Decision(Action(tool="create", arguments={"path": "x.py"}))
    unknown = Decision(Action(tool="teleport"))
    traj = run_episode(TASK, Scripted(edit, missing, unknown), scripted_env, max_turns=3)
    assert traj.exit_reason == "max_turns"
    assert [s.observation.error for s in traj.steps] == [
        "nope.py: no such file", "create: missing argument 'content'", "unknown tool 'teleport'"]


def test_model_error_ends_the_episode(scripted_env):
    traj = run_episode(TASK, Scripted(shell("ls"), ModelError("HTTP 500")), scripted_env)
    assert traj.exit_reason == "model_error" and traj.error == "HTTP 500" and len(traj.steps) == 1


def test_an_env_the_agent_broke_keeps_its_trajectory(scripted_env):
    scripted_env.fail_on["shell"] = EnvBroken("env env1 is gone: its memory ran out during the agent's command")
    traj = run_episode(TASK, Scripted(shell("python -c 'x=[1]*10**12'")), scripted_env, raise_infra=True)
    assert traj.exit_reason == "env_broken" and len(traj.steps) == 1
    assert traj.steps[0].observation.flags == {"env_broken": True} and "memory" in traj.error
    assert scripted_env.deleted == ["env1"]


@pytest.mark.parametrize("error", [EnvGone("env env1 is gone: expired"), DockerUnavailable("daemon down")])
def test_infrastructure_failures_end_with_infra_error_or_raise_for_a_retry(scripted_env, error):
    scripted_env.fail_on["shell"] = error
    traj = run_episode(TASK, Scripted(shell("ls")), scripted_env)
    assert traj.exit_reason == "infra_error" and type(error).__name__ in traj.error
    scripted_env.fail_on["shell"] = error
    with pytest.raises(EpisodeInfraError) as info:
        run_episode(TASK, Scripted(shell("ls"), shell("ls")), scripted_env, raise_infra=True)
    assert info.value.trajectory.exit_reason == "infra_error"
    assert scripted_env.deleted == ["env1", "env2"]


def test_a_failed_create_deletes_nothing_and_is_infra(scripted_env):
    scripted_env.fail_on["create_env"] = DockerUnavailable("daemon down")
    traj = run_episode(TASK, Scripted(), scripted_env)
    assert traj.exit_reason == "infra_error" and traj.steps == [] and scripted_env.deleted == []
