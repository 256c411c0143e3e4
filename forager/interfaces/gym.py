"""A Gymnasium environment over Forager's tasks, for an RL loop in the same Python process.

Actions and observations are text in CWM's protocol (forager/trajectories/render.py), what a text-protocol
model writes and reads. reset's observation is the problem statement (info: the system prompt with the tool
help, the task id); an action is the model's reply holding one `<tool: NAME>…</tool>` block; the observation
after it is the tool's result as the model reads it (`render.observation_text`). A reply without a usable
block is answered with the error (three in a row end the episode, as for any policy). The reward is 0.0 until
the episode ends, then the graded reward of the submit (fresh-container grading); `terminated` on a submit
(or an env the agent's own command broke), `truncated` when the turn budget ran out.

Each episode runs Forager's own loop (forager.interfaces.driver), so it is a trajectory in the store (policy
"gymnasium", protocol "text"): exports give back exactly the conversation the model had. An infrastructure
failure raises EpisodeInfraError (never an observation). `check_env` passes: a reset with a seed draws the
task from the env's `np_random`, and observations and infos hold nothing that differs between two runs of the
same action (no ids, no timings; the trajectory id is `env.trajectory_id`).

    env = ForagerEnv("~/.forager/tasks", envserver_url=url, envserver_token=token, store="~/.forager/trajectories")
    # or gymnasium.make("forager/Forager-v0", tasks=..., envserver_url=..., envserver_token=...) after register()
    obs, info = env.reset(seed=0)
    obs, reward, terminated, truncated, info = env.step("<tool: bash>\\nls\\n</tool>")
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import gymnasium as gym
from gymnasium import spaces

from envserver.client import EnvClient
from forager.episodes.loop import EnvServer
from forager.episodes.prompts import SYSTEM_PROMPT
from forager.errors import EpisodeInfraError, UsageError
from forager.interfaces.driver import EpisodeDriver, Event
from forager.interfaces.taskset import TaskSet
from forager.models import Action
from forager.trajectories import render
from forager.trajectories.store import TrajectoryStore


class UnicodeText(spaces.Text):
    """Any Unicode string of up to `max_length` characters (samples still come from the alphanumeric charset)."""

    def contains(self, x: Any) -> bool:
        return isinstance(x, str) and self.min_length <= len(x) <= self.max_length


class ForagerEnv(gym.Env):
    metadata = {"render_modes": ["ansi"], "render_fps": 4}  # fps: the checker asks for one; text has no clock

    def __init__(self, tasks: TaskSet | str | Path, env_server: EnvServer | None = None,
                 store: TrajectoryStore | str | Path | None = None, *, envserver_url: str | None = None,
                 envserver_token: str | None = None, max_turns: int = 30, model: str | None = None,
                 render_mode: str | None = None, max_action_chars: int = 100_000,
                 max_observation_chars: int = 1_000_000):
        """`tasks`: a TaskSet or a task file/dir; the env server: a client, or its URL and token (what
        `gymnasium.make` can pass: its kwargs are copied); `store`: where trajectories go (None: nowhere)."""
        self.tasks = tasks if isinstance(tasks, TaskSet) else TaskSet.load(tasks)
        self._own_client = env_server is None
        if env_server is None:
            if not envserver_url:
                raise UsageError("ForagerEnv needs an env server: env_server=EnvClient(...) or envserver_url=")
            env_server = EnvClient(envserver_url, token=envserver_token)
        self.env_server = env_server
        self.store = store if store is None or isinstance(store, TrajectoryStore) else TrajectoryStore(store)
        self.max_turns, self.model, self.render_mode = max_turns, model, render_mode
        self.action_space = UnicodeText(max_length=max_action_chars)
        self.observation_space = UnicodeText(max_length=max_observation_chars)
        self.system_prompt = render.system_message(SYSTEM_PROMPT, "text")
        self._driver: EpisodeDriver | None = None
        self._last = ""

    @property
    def trajectory_id(self) -> str | None:
        """The id of the current (or last) episode's trajectory in the store."""
        return self._driver.trajectory_id if self._driver else None

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> tuple[str, dict[str, Any]]:
        super().reset(seed=seed)
        self._end("the caller reset before submitting")
        index = int(self.np_random.integers(len(self.tasks)))  # drawn even when a task is named: same stream
        task = self.tasks.choose(task_id=(options or {}).get("task_id"), index=index)
        self._driver = EpisodeDriver(task, self.env_server, self.store, interface="gymnasium", model=self.model,
                                     protocol="text", max_turns=self.max_turns)
        event = self._driver.start().result()
        if event.done:
            raise EpisodeInfraError(f"could not make the env of task {task.id}: {event.trajectory.error}",
                                    event.trajectory)
        self._last = task.problem_statement
        return task.problem_statement, {"task_id": task.id, "repo": task.repo, "system_prompt": self.system_prompt}

    def step(self, action: str | Action) -> tuple[str, float, bool, bool, dict[str, Any]]:
        if self._driver is None or self._driver.done:
            raise UsageError("the episode has ended (or not begun): call reset()")
        if isinstance(action, Action):
            parsed, error = action, None
        else:
            parsed, error = render.parse_text_action(str(action))
        event = self._driver.step(parsed, format_error=error).result()
        return self._answer(event)

    def _answer(self, event: Event) -> tuple[str, float, bool, bool, dict[str, Any]]:
        last = event.last
        info: dict[str, Any] = {"task_id": self._driver.task.id}
        obs = ""
        if last is not None:
            obs = render.observation_text(last.observation)
            info.update(step=last.index, tool=last.action.tool, exit_code=last.observation.exit_code,
                        error=last.observation.error, flags=dict(last.observation.flags),
                        state=last.state.model_dump(exclude={"seconds"}) if last.state is not None else None)
        self._last = obs
        traj = event.trajectory
        if traj is None:
            return obs, 0.0, False, False, info
        if traj.exit_reason == "infra_error":
            raise EpisodeInfraError(traj.error or "infrastructure error", traj)
        info.update(exit_reason=traj.exit_reason, tests=dict(traj.result.tests), error=info.get("error") or traj.error)
        terminated = traj.exit_reason in ("submitted", "env_broken")
        return obs, float(traj.result.reward), terminated, not terminated, info

    def render(self) -> str | None:
        return self._last if self.render_mode == "ansi" else None

    def close(self) -> None:
        self._end("the caller closed the env before submitting")
        if self._own_client and hasattr(self.env_server, "close"):
            self.env_server.close()
        super().close()

    def _end(self, reason: str) -> None:
        if self._driver is not None and not self._driver.done:
            self._driver.close(reason).result()


def register(env_id: str = "forager/Forager-v0") -> None:
    """Make `gymnasium.make(env_id, tasks=..., envserver_url=..., envserver_token=...)` build a ForagerEnv."""
    if env_id not in gym.registry:
        gym.register(id=env_id, entry_point="forager.interfaces.gym:ForagerEnv")
