"""The ForagerAgent loop end to end: real env server, real image, grading by hidden tests.

The only stand-in is the model (a scripted OpenAI-compatible HTTP server on loopback); the
'cheat'/'empty' policies below are real policies, just simple ones.
"""

import pytest

from envserver.client import EnvClient
from forager.episodes.loop import EpisodeInfraError, run_episode
from forager.models import Action, PolicyInfo
from forager.episodes.policies import Decision, make_policy
from forager.episodes.policies.openai import OpenAIPolicy
from forager.trajectories.render import text_action as render_text_action
from forager.episodes.policies.oracle import parse_hunks
from forager.trajectories.store import TrajectoryStore
from tests.conftest import free_port


class Scripted:
    """A fixed list of actions (then submit): the simplest real policy."""

    def __init__(self, name, actions):
        self.info = PolicyInfo(name=name)
        self.actions = list(actions)

    def next_action(self, episode):
        i = len(episode.steps)
        return Decision(self.actions[i] if i < len(self.actions) else Action(tool="submit"))


def no_envs_left(client, task):
    return not [e for e in client.list_envs() if e.labels.get("task") == task.id]


def test_oracle_solves_every_synthesized_task(synthesized, envserver, tmp_path):
    store = TrajectoryStore(tmp_path / "trajs")
    with envserver.client() as client:
        for i, task in enumerate(synthesized.tasks):
            # the first two episodes run the suite before and after the fix; the rest go straight to the edit
            traj = run_episode(task, make_policy("oracle", run_tests=i < 2), client, max_turns=20)
            assert traj.exit_reason == "submitted", traj.error
            assert traj.result.reward == 1.0, (task.id, traj.result.tests)
            assert traj.policy.name == "oracle"
            assert all(traj.result.tests[t] == "passed" for t in task.fail_to_pass)
            tools = [s.action.tool for s in traj.steps]
            assert tools[0] == "shell" and "edit" in tools and tools[-1] == "submit"
            store.write(traj)
            store.write(traj)  # a retried write keeps one copy
        assert no_envs_left(client, task)
    assert store.count() == len(synthesized.tasks)


def test_empty_submit_gets_zero(synthesized, envserver):
    task = synthesized.tasks[0]
    with envserver.client() as client:
        traj = run_episode(task, Scripted("empty", []), client)
    assert traj.exit_reason == "submitted" and traj.result.reward == 0.0
    assert any(traj.result.tests.get(t) != "passed" for t in task.fail_to_pass)


def test_editing_the_tests_does_not_earn_reward(synthesized, envserver):
    """Rewrite every test file so each F2P test trivially passes: grading restores the real tests."""
    task = synthesized.tasks[0]
    actions = []
    for path in sorted({t.split("::")[0] for t in task.fail_to_pass}):
        names = [t.split("::")[-1] for t in task.fail_to_pass if t.startswith(path + "::")]
        body = "".join(f"def {n}():\n    pass\n\n" for n in names)
        actions.append(Action(tool="shell", arguments={"command": f"cat > {path} <<'EOF'\n{body}EOF"}))
    actions.append(Action(tool="shell", arguments={"command": f"{task.test_command} -q 2>&1 | tail -n 3"}))
    with envserver.client() as client:
        traj = run_episode(task, Scripted("cheat", actions), client)
    assert "passed" in traj.steps[-2].observation.output  # the doctored suite passes in the env...
    assert traj.result.reward == 0.0  # ...but not at grading
    assert all(traj.result.tests.get(t) != "passed" for t in task.fail_to_pass)


def _fix_calls(task):
    return [{"path": h.path, "old": h.old, "new": h.new} for h in parse_hunks(task.gold_patch)]


def test_openai_policy_function_calling(synthesized, envserver, scripted_model):
    task = synthesized.tasks[0]
    script = [{"text": "I think I should look around first."},  # malformed: no tool call
              {"tool": "shell", "arguments": {"command": "ls"}},
              {"tool": "shell", "raw_arguments": "{not json"},  # malformed arguments
              *[{"tool": "edit", "arguments": a} for a in _fix_calls(task)],
              {"tool": "submit", "arguments": {}}]
    scripted_model.script(script)
    policy = OpenAIPolicy(scripted_model.base_url, "scripted-model", protocol="tools")
    with envserver.client() as client:
        traj = run_episode(task, policy, client)
        assert no_envs_left(client, task)
    assert traj.exit_reason == "submitted" and traj.result.reward == 1.0
    assert len(traj.steps) == len(script)
    errors = [s for s in traj.steps if s.observation.error]
    assert [s.index for s in errors] == [0, 2] and all(s.observation.flags.get("format_error") for s in errors)
    assert traj.policy.name == "openai" and traj.policy.model == "scripted-model"
    assert traj.prompt_tokens > 0 and traj.completion_tokens > 0
    # the model was given the server's tool schemas and saw the error answer to its malformed reply
    req = scripted_model.requests[1]
    assert {t["function"]["name"] for t in req["tools"]} >= {"shell", "edit", "create", "submit"}
    assert "No tool call" in req["messages"][-1]["content"]


def test_openai_policy_cwm_text_protocol(synthesized, envserver, scripted_model):
    task = synthesized.tasks[1]
    fixes = [Action(tool="edit", arguments=a) for a in _fix_calls(task)]
    script = [{"text": "Let me list the files.\n<tool: bash>\nls\n</tool>"},
              {"text": "<tool: frobnicate>\n</tool>"},  # unknown tool → error observation
              *[{"text": "Fixing it.\n" + render_text_action(a)} for a in fixes],
              {"text": "<tool: submit>\n</tool>"}]
    scripted_model.script(script)
    policy = OpenAIPolicy(scripted_model.base_url, "scripted-model", protocol="text")
    with envserver.client() as client:
        traj = run_episode(task, policy, client)
    assert traj.exit_reason == "submitted" and traj.result.reward == 1.0
    assert traj.steps[1].observation.error and "Unknown tool" in traj.steps[1].observation.error
    # observations go back wrapped in <output> tags
    assert scripted_model.requests[1]["messages"][-1]["content"].startswith("<output>\n")


def test_budgets_and_format_error_limit_end_the_episode(synthesized, envserver, scripted_model):
    task = synthesized.tasks[0]
    with envserver.client() as client:
        traj = run_episode(task, make_policy("oracle"), client, max_turns=2)
        assert traj.exit_reason == "max_turns" and len(traj.steps) == 2 and traj.result.reward == 0.0
        scripted_model.script([{"text": "hmm"}] * 5)
        traj = run_episode(task, OpenAIPolicy(scripted_model.base_url, "m", protocol="tools"), client,
                           format_error_limit=3)
        assert traj.exit_reason == "format_error_limit" and len(traj.steps) == 3
        scripted_model.script([])  # the endpoint answers 400: a model error, not a crash
        traj = run_episode(task, OpenAIPolicy(scripted_model.base_url, "m", max_retries=0), client)
        assert traj.exit_reason == "model_error" and "script exhausted" in traj.error
        assert no_envs_left(client, task)


def test_infra_errors_end_with_infra_error_and_can_be_raised(synthesized, envserver):
    task = synthesized.tasks[0]
    dead = EnvClient(f"http://127.0.0.1:{free_port()}")
    traj = run_episode(task, make_policy("oracle"), dead)
    assert traj.exit_reason == "infra_error" and "ServerUnreachable" in traj.error and not traj.steps
    with pytest.raises(EpisodeInfraError) as info:
        run_episode(task, make_policy("oracle"), dead, raise_infra=True)
    assert info.value.trajectory.exit_reason == "infra_error"

    class KillsItsEnv(Scripted):  # the env disappears mid-episode (e.g. the container was removed)
        def next_action(self, episode):
            if len(episode.steps) == 1:
                with envserver.client() as admin:
                    for env in admin.list_envs():
                        if env.labels.get("task") == task.id:
                            admin.delete_env(env.id)
            return super().next_action(episode)

    with envserver.client() as client:
        traj = run_episode(task, KillsItsEnv("k", [Action(tool="shell", arguments={"command": "ls"})] * 3), client)
    assert traj.exit_reason == "infra_error" and len(traj.steps) == 1


def test_cli_episode_writes_one_trajectory_and_exports_it(synthesized, envserver, tmp_path, monkeypatch):
    import json
    import shutil

    from typer.testing import CliRunner

    from forager.cli.app import app

    home = tmp_path / "home"
    shutil.copytree(synthesized.settings.tasks_dir, home / "tasks")
    monkeypatch.setenv("FORAGER_HOME", str(home))
    monkeypatch.setenv("FORAGER_ENVSERVER_URL", envserver.url)
    monkeypatch.setenv("FORAGER_ENVSERVER_TOKEN", envserver.token)
    task = synthesized.tasks[2]
    runner = CliRunner()
    for _ in range(2):  # the same (task, attempt, policy) twice: one record
        res = runner.invoke(app, ["episode", task.id, "--json"])
        assert res.exit_code == 0, res.output
    out = json.loads(res.stdout.strip().splitlines()[-1])
    assert out["reward"] == 1.0 and out["exit_reason"] == "submitted"
    assert TrajectoryStore(home / "trajectories").count() == 1
    res = runner.invoke(app, ["episode", "nope", "--json"])
    assert res.exit_code == 1 and "no task" in res.stdout
    for fmt in ("cwm", "chat"):
        res = runner.invoke(app, ["export", "--format", fmt, "--out", str(tmp_path / f"{fmt}.jsonl"), "--json"])
        assert res.exit_code == 0 and json.loads(res.stdout.strip().splitlines()[-1])["written"] == 1
    rec = json.loads((tmp_path / "cwm.jsonl").read_text())
    assert "<tool: edit>" in rec["text"] and "<output>" in rec["text"] and rec["reward"] == 1.0
