"""The OpenEnv interface with the real openenv-core client (PyPI) against the real server (`forager openenv`),
which drives the session's real env server: reset, steps, a real fix earning 1, an empty submit earning 0,
the MCP tool listing, many sessions at once and the cap, a client that disappears (its env is removed), an
HTTP episode that idles past the session timeout, and every episode recorded as a Forager trajectory."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time

import httpx
import pytest
from openenv.core import GenericEnvClient
from openenv.core.mcp_client import MCPToolClient
from websockets.exceptions import ConnectionClosedError

from forager.models import Trajectory
from forager.trajectories.store import TrajectoryStore
from tests.fixtures_interfaces import FIX, start_openenv, stop_openenv
from tests.test_envserver_grading import ADD


def envs_of(envserver, episode_id: str) -> list:
    with envserver.client() as c:
        return [e for e in c.list_envs() if e.labels.get("episode") == episode_id]


def trajectory(server, episode_id: str, wait: float = 120) -> Trajectory:
    """The trajectory of an episode: written when the episode ends (the loop deletes the env first)."""
    deadline = time.monotonic() + wait
    while True:
        found = [t for t in TrajectoryStore(server.trajectories).iter() if f"ep{episode_id}" in t.id]
        if found or time.monotonic() > deadline:
            assert found, f"no trajectory for episode {episode_id}"
            return found[0]
        time.sleep(0.2)


def test_a_real_fix_earns_1_and_the_episode_is_a_forager_trajectory(openenv_server, envserver):
    with GenericEnvClient(base_url=openenv_server.url).sync() as env:
        first = env.reset(task_id="calc__mf", model="trainer-model")
        obs = first.observation
        assert (first.done, first.reward, obs["task_id"]) == (False, None, "calc__mf")
        assert obs["problem_statement"] == "add() returns the difference of its arguments"
        assert {t["function"]["name"] for t in obs["tool_schemas"]} == {"shell", "edit", "create", "submit"}
        assert ADD not in json.dumps(obs) and FIX not in json.dumps(obs)  # nothing points at the answer
        episode = obs["episode_id"]
        assert len(envs_of(envserver, episode)) == 1

        seen = env.step({"type": "shell", "command": "grep -n return calc.py"})
        assert "a - b" in seen.observation["output"] and seen.observation["exit_code"] == 0
        assert (seen.done, seen.reward, seen.observation["step"]) == (False, None, 0)
        edit = env.step({"type": "edit", "path": "calc.py", "old": "add(a, b):\n    return a - b",
                         "new": "add(a, b):\n    return a + b",
                         "metadata": {"text": "fix the operator", "prompt_tokens": 7}})
        assert edit.observation["error"] is None and edit.observation["state"]["files_modified"] == ["calc.py"]
        state = env.state()
        assert (state["episode_id"], state["step_count"], state["done"]) == (episode, 2, False)

        graded = env.step({"type": "submit"})
        assert (graded.done, graded.reward, graded.observation["exit_reason"]) == (True, 1.0, "submitted")
        assert graded.observation["result"]["fail_to_pass"] == {ADD: "passed"}
        with pytest.raises(RuntimeError, match="episode has ended"):
            env.step({"type": "shell", "command": "echo after"})
        assert env.state()["done"] is True and env.state()["reward"] == 1.0

    traj = trajectory(openenv_server, episode)
    assert traj.id == graded.observation["trajectory_id"] and traj.exit_reason == "submitted"
    assert (traj.policy.name, traj.policy.model, traj.result.reward) == ("openenv", "trainer-model", 1.0)
    assert [s.action.tool for s in traj.steps] == ["shell", "edit", "submit"]
    assert traj.steps[1].state.files_modified == ["calc.py"] and "+    return a + b" in traj.steps[1].state.diff
    assert (traj.steps[1].action.text, traj.steps[1].prompt_tokens) == ("fix the operator", 7)
    assert envs_of(envserver, episode) == []


def test_an_empty_submit_earns_0_and_a_seed_draws_the_same_task(openenv_server):
    with GenericEnvClient(base_url=openenv_server.url).sync() as env:
        drawn = [env.reset(seed=7).observation["task_id"] for _ in range(2)]
        assert drawn[0] == drawn[1]
        graded = env.step({"type": "submit"})
        assert (graded.done, graded.reward) == (True, 0.0)
        with pytest.raises(RuntimeError, match="VALIDATION_ERROR"):
            env.step({"type": "rm -rf", "command": "x"})
    # the first draw was reset before submitting: recorded too, ended by the client's reset
    trajs = [t for t in TrajectoryStore(openenv_server.trajectories).iter() if t.task_id == drawn[0]
             and t.policy.model is None]
    assert {t.exit_reason for t in trajs} >= {"submitted", "model_error"}
    assert any(t.error == "the client reset before submitting" for t in trajs)


def test_the_mcp_tool_listing_and_a_tool_call(openenv_server):
    with MCPToolClient(base_url=openenv_server.url).sync() as env:
        tools = env.list_tools()
        assert {t.name for t in tools} == {"shell", "edit", "create", "submit"}
        assert tools[0].input_schema["type"] == "object"
        env.reset(task_id="calc__mined")
        out = env.call_tool("shell", command="echo from-mcp")
        assert out["output"] == "from-mcp\n" and out["exit_code"] == 0
        with pytest.raises(RuntimeError, match="tool_not_found"):
            env.call_tool("rm", path="/")


def test_many_sessions_at_once_and_the_cap(openenv_server, envserver):
    async def session(i: int):
        client = GenericEnvClient(base_url=openenv_server.url)
        await client.connect()
        first = await client.reset(task_id="calc__mf")
        echoed = await client.step({"type": "shell", "command": f"export N={i}; echo session-$N"})
        return client, first.observation["episode_id"], echoed.observation["output"]

    async def run():
        opened = await asyncio.gather(*(session(i) for i in range(4)))
        extra = GenericEnvClient(base_url=openenv_server.url)
        # refused as OpenEnv's own server refuses: an error frame, then a close (1013 try again later);
        # openenv-core 0.3.0 reports whichever of the two it reads first
        with pytest.raises((RuntimeError, ConnectionClosedError), match="CAPACITY_REACHED|1013"):
            await extra.reset(task_id="calc__mf")
        await extra.close()
        for client, _, _ in opened:
            await client.close()
        return opened

    opened = asyncio.run(run())
    assert [out for _, _, out in opened] == [f"session-{i}\n" for i in range(4)]  # each its own env
    for _, episode, _ in opened:
        traj = trajectory(openenv_server, episode)
        assert traj.exit_reason == "model_error" and traj.error == "the client disconnected before submitting"
        assert envs_of(envserver, episode) == []


CLIENT = """
import sys, time
from openenv.core import GenericEnvClient
env = GenericEnvClient(base_url=sys.argv[1]).sync()
env.connect()
first = env.reset(task_id="calc__imported")
env.step({"type": "shell", "command": "echo working"})
print(first.observation["episode_id"], flush=True)
time.sleep(600)
"""


def test_a_client_that_disappears_mid_episode_loses_its_env(openenv_server, envserver):
    client = subprocess.Popen([sys.executable, "-c", CLIENT, openenv_server.url], stdout=subprocess.PIPE, text=True)
    try:
        episode = client.stdout.readline().strip()
        assert episode and len(envs_of(envserver, episode)) == 1
    finally:
        client.kill()  # SIGKILL: no close frame; the kernel closes the socket
        client.wait(10)
    traj = trajectory(openenv_server, episode)
    assert traj.exit_reason == "model_error" and traj.error == "the client disconnected before submitting"
    assert [s.observation.output for s in traj.steps] == ["working\n"]
    assert envs_of(envserver, episode) == []


def test_an_http_episode_idle_past_the_session_timeout_is_ended_and_a_token_is_required(envserver, calc_tasks,
                                                                                          tmp_path):
    token = tmp_path / "token"
    token.write_text("openenv-test-token\n")
    server = start_openenv(envserver, calc_tasks, "--session-timeout", "2", "--token-file", str(token))
    try:
        assert httpx.get(server.url + "/health").status_code == 401
        auth = {"Authorization": "Bearer openenv-test-token"}
        with httpx.Client(base_url=server.url, headers=auth, timeout=300) as http:
            assert http.get("/health").json() == {"status": "healthy"}
            first = http.post("/reset", json={"task_id": "calc__mf"}).json()
            episode = first["observation"]["episode_id"]
            step = http.post("/step", json={"episode_id": episode, "action": {"type": "shell", "command": "pwd"}})
            assert step.json()["observation"]["output"] == "/repo\n"
            assert http.get("/state", params={"episode_id": episode}).json()["step_count"] == 1
            traj = trajectory(server, episode)  # nobody steps: the session times out
            assert traj.exit_reason == "model_error" and "session timeout" in traj.error
            assert envs_of(envserver, episode) == []
            assert http.get("/state", params={"episode_id": episode}).status_code == 404
    finally:
        stop_openenv(server)
