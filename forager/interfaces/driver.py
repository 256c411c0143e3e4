"""One Forager episode driven from outside: the caller (an OpenEnv client, a Gymnasium user) is the policy.

`run_episode` (forager/episodes/loop.py) runs in a thread of its own with a policy whose `next_action` waits
for the caller's next action. The loop does everything else exactly as it does for the fleet: it makes the
env from the task (the broken start state, the hidden grader), runs each tool call, records each step with
the server's state record, grades on submit, ends on a budget, always deletes the env, and returns the
Trajectory, which the driver writes to the store. Nothing of a step or a trajectory is recorded here again.

A request (`start`, `step`) returns a `concurrent.futures.Future` resolved with an `Event` when the loop
next asks for an action (the observation is its last step) or when the episode ends (the trajectory).
Sync callers wait with `.result()`; async ones `await asyncio.wrap_future(...)`, so a server holds no
thread per waiting request.

An episode the caller abandons (`close(reason)`: a client gone, a session timeout; or no action within
`idle_timeout`) ends as `model_error` with that reason: the policy, which is the caller's model, gave no
next action. Its env is deleted and its trajectory kept, like every other.
"""

from __future__ import annotations

import queue
import threading
import time
import uuid
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from forager.episodes.loop import EnvServer, run_episode
from forager.episodes.policies import Decision, Episode
from forager.episodes.prompts import SYSTEM_PROMPT
from forager.errors import ModelError, UsageError
from forager.models import Action, PolicyInfo, Step, Task, Trajectory
from forager.trajectories.store import TrajectoryStore, trajectory_id


class EpisodeOver(UsageError):
    """A step was sent to an episode that has ended (submitted, out of budget, closed): reset first."""


class EpisodeBusy(UsageError):
    """A step was sent while the previous one is still running: one action at a time."""


@dataclass
class Event:
    """What the caller gets back: the steps so far, and once the episode ended its trajectory."""

    steps: list[Step]
    trajectory: Trajectory | None = None
    path: Path | None = None  # where the trajectory was written

    @property
    def done(self) -> bool:
        return self.trajectory is not None

    @property
    def last(self) -> Step | None:
        return self.steps[-1] if self.steps else None


@dataclass
class _Abort:
    reason: str


class _CallerPolicy:
    """The loop's policy: hand the caller what the last action did, then wait for its next action."""

    def __init__(self, driver: "EpisodeDriver", info: PolicyInfo):
        self.driver, self.info = driver, info

    def next_action(self, episode: Episode) -> Decision:
        self.driver._steps = episode.steps
        self.driver._answer(Event(steps=episode.steps))
        asked = time.monotonic()
        try:
            item = self.driver._actions.get(timeout=self.driver.idle_timeout)
        except queue.Empty:
            raise ModelError(f"no action within the session timeout ({self.driver.idle_timeout:g} s)") from None
        if isinstance(item, _Abort):
            raise ModelError(item.reason)
        item.model_seconds = item.model_seconds or time.monotonic() - asked
        return item


class EpisodeDriver:
    """One episode of `task` on `env_server`, one caller action at a time; the trajectory goes to `store`."""

    def __init__(self, task: Task, env_server: EnvServer, store: TrajectoryStore | None, *, interface: str,
                 model: str | None = None, protocol: str = "tools", episode_id: str | None = None,
                 max_turns: int = 100, idle_timeout: float | None = None, system_prompt: str = SYSTEM_PROMPT,
                 labels: dict[str, str] | None = None, env_ttl: int | None = None):
        self.task, self.store, self.idle_timeout = task, store, idle_timeout
        self.episode_id = episode_id or uuid.uuid4().hex
        self.info = PolicyInfo(name=interface, model=model, parameters={"protocol": protocol})
        # One trajectory per episode: the episode id makes the id unique (a trainer runs a task many times).
        self.trajectory_id = trajectory_id(task.id, 0, interface, model, branch=f"ep{self.episode_id}")
        self.system_prompt = system_prompt
        self._run_args: dict[str, Any] = dict(
            max_turns=max_turns, wall_clock=None, trajectory_id=self.trajectory_id, system_prompt=system_prompt,
            env_labels={"interface": interface, "episode": self.episode_id[:63], **(labels or {})}, env_ttl=env_ttl)
        self._env_server = env_server
        self._actions: queue.SimpleQueue[Decision | _Abort] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._pending: Future | None = None
        self.finished: Future = Future()  # resolved with the last Event when the episode has ended
        self._thread: threading.Thread | None = None
        self._steps: list[Step] = []

    @property
    def steps_taken(self) -> int:
        return len(self._steps)

    def start(self) -> Future:
        """Make the env; resolved with the first Event (no steps yet), or the last if the env could not be made."""
        with self._lock:
            if self._thread is not None:
                raise UsageError("this episode has started already")
            self._pending = Future()
            self._thread = threading.Thread(target=self._run, name=f"episode-{self.episode_id[:8]}", daemon=True)
            pending = self._pending
        self._thread.start()
        return pending

    def step(self, action: Action, *, format_error: str | None = None, prompt_tokens: int = 0,
             completion_tokens: int = 0) -> Future:
        """Run one tool call (or answer an unusable reply with `format_error`); resolved with the next Event."""
        with self._lock:
            if self.finished.done() or self._thread is None:
                raise EpisodeOver("the episode has ended: reset to start another" if self._thread else
                                  "no episode yet: reset first")
            if self._pending is not None:
                raise EpisodeBusy("the previous action is still running: one action at a time")
            self._pending = pending = Future()
        self._actions.put(Decision(action, format_error=format_error, prompt_tokens=prompt_tokens,
                                   completion_tokens=completion_tokens))
        return pending

    def close(self, reason: str = "the client closed the session before submitting") -> Future:
        """End the episode if it is still running (its env is deleted, its trajectory kept); resolved when ended."""
        if self._thread is None:
            self.finished.set_result(Event(steps=[]))
        elif not self.finished.done():
            self._actions.put(_Abort(reason))
        return self.finished

    @property
    def done(self) -> bool:
        return self.finished.done()

    def _answer(self, event: Event) -> None:
        with self._lock:
            pending, self._pending = self._pending, None
        if pending is not None:
            pending.set_result(event)

    def _run(self) -> None:
        policy = _CallerPolicy(self, self.info)
        try:
            traj = run_episode(self.task, policy, self._env_server, **self._run_args)
            path = self.store.write(traj) if self.store is not None else None
            event = Event(steps=traj.steps, trajectory=traj, path=path)
        except BaseException as exc:  # a bug, not an episode outcome: whoever waits gets it
            with self._lock:
                pending, self._pending = self._pending, None
            for fut in (pending, self.finished):
                if fut is not None and not fut.done():
                    fut.set_exception(exc)
            return
        self._answer(event)
        self.finished.set_result(event)
