"""The Gymnasium env over Forager's tasks: gymnasium's own environment checker passes, and an episode in CWM's
text protocol earns its graded reward and is a trajectory whose export is the conversation the model had."""

from __future__ import annotations

import warnings

import gymnasium as gym
from gymnasium.utils.env_checker import check_env

from forager.interfaces.gym import ForagerEnv, register
from forager.interfaces.taskset import TaskSet
from forager.trajectories.export import chat_messages
from forager.trajectories.store import TrajectoryStore

FIX = "<tool: edit>\ncalc.py\n<<<<<<< SEARCH\ndef add(a, b):\n    return a - b\n=======\ndef add(a, b):\n    return a + b\n>>>>>>> REPLACE\n</tool>"


def test_gymnasiums_env_checker_passes(envserver, calc_tasks, tmp_path):
    register()
    env = gym.make("forager/Forager-v0", tasks=str(calc_tasks), envserver_url=envserver.url,
                   envserver_token=envserver.token, store=str(tmp_path / "trajectories"))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        check_env(env.unwrapped)  # spaces, seeded resets, step determinism, fresh data, render modes, close
    env.close()
    assert [str(w.message) for w in caught] == []
    assert len(TrajectoryStore(tmp_path / "trajectories").files()) >= 8  # every reset's episode, recorded
    with envserver.client() as client:
        assert [e for e in client.list_envs() if e.labels.get("interface") == "gymnasium"] == []


def test_a_text_protocol_episode_earns_its_reward_and_exports_the_conversation(envserver, calc_tasks, tmp_path):
    store = TrajectoryStore(tmp_path / "trajectories")
    with envserver.client() as client:
        env = ForagerEnv(TaskSet.load(calc_tasks), client, store, model="my-model")
        obs, info = env.reset(options={"task_id": "calc__mf"})
        assert obs == "add() returns the difference of its arguments" and "<tool: bash>" in info["system_prompt"]
        replies = ["Let me look.\n<tool: bash>\ngrep -n return calc.py\n</tool>", "no tool here", FIX,
                   "<tool: submit>\n</tool>"]
        results = [env.step(reply) for reply in replies]
        env.close()
    seen, malformed, edited, graded = results
    assert "return a - b" in seen[0] and seen[1:4] == (0.0, False, False)
    assert malformed[0].startswith("ERROR: No tool call found") and malformed[4]["tool"] is None
    assert edited[4]["state"]["files_modified"] == ["calc.py"]
    assert graded[1:4] == (1.0, True, False) and graded[4]["exit_reason"] == "submitted"

    traj = store.read(env.trajectory_id)
    assert (traj.policy.name, traj.policy.model, traj.policy.parameters) == ("gymnasium", "my-model",
                                                                              {"protocol": "text"})
    messages = chat_messages(traj)
    assert messages[0]["content"] == info["system_prompt"] and messages[1]["content"] == obs
    assert [m["content"] for m in messages[2::2]] == replies  # what the model wrote, verbatim
    assert [m["content"] for m in messages[3::2]] == [f"<output>\n{r[0]}\n</output>" for r in results]
