"""The ForagerAgent loop: one task, one policy, one environment server → one Trajectory.

create env (the task's broken state + hidden grading) → system prompt + problem statement → one tool
call per turn until submit or a budget (turns, tokens, wall clock) ends it. Every end has an exit reason:

- the agent's mistakes (a failed edit, a bad tool call, a non-zero exit) are observations, not ends;
- `env_broken`: the agent's own command broke its env (exhausted its memory, removed its shell): the
  trajectory is kept and the job is not retried, since running it again would only break it again;
- `infra_error`: the infrastructure failed (server unreachable, Docker down, env gone for reasons of its
  own); never shown to the agent as output. With `raise_infra=True` it is re-raised as
  `EpisodeInfraError` (carrying the partial trajectory) so the fleet can retry.

The env is always deleted. `EnvServer` is all the loop needs of an env server: `envserver.client.EnvClient`
is the real one; tests also drive the loop with a scripted one in memory.

Each step keeps the server's state record (`Step.state`: files changed, diff, cwd, exported variables, tree
digest) when the server sends one. A branch of a branching collection (forager/episodes/branching.py) is an
episode that starts in a forked env (`env_id`) after its parent's steps (`prefix`), possibly with set
actions first (`first_actions`); `before_action` lets the caller fork the env before a step.

One loop, two drivers. The loop is written once, without I/O of its own (`episode_steps`, a generator):
it yields each call it needs made (`Call`: the policy's next action, an env server tool) and is sent the
result, or has the call's exception thrown in. `run_episode` drives it with blocking calls (`drive`);
`arun_episode` drives it in an event loop (`adrive`: a call that returns an awaitable is awaited), so a
worker runs hundreds of episodes as coroutines with `AsyncEnvClient` and an async policy, and the blocking
path costs no event loop at all. `make_step` and `make_trajectory` are the pieces that record one step
and close a trajectory, for callers that drive an env step by step themselves (an OpenEnv server).
"""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Callable, Generator
from dataclasses import dataclass, field
from typing import Any, Protocol

from envserver.errors import EnvBroken, EnvServerError
from forager.errors import EpisodeInfraError, ModelError
from forager.episodes.policies import Decision, Episode, Policy
from forager.episodes.prompts import SYSTEM_PROMPT
from forager.models import (Action, EpisodeResult, ExitReason, Observation, PolicyInfo, StateChange, Step, Task,
                            Trajectory)
from forager.tasks import env_request
from forager.trajectories.store import trajectory_id as make_trajectory_id

FORMAT_ERROR_LIMIT = 3

__all__ = ["Call", "blocking", "EnvServer", "EpisodeInfraError", "FORMAT_ERROR_LIMIT", "act", "act_steps", "adrive", "arun_episode",
           "drive", "episode_steps", "make_step", "make_trajectory", "run_episode"]


class EnvServer(Protocol):
    """The env server as the loop uses it (the methods of envserver.client.EnvClient)."""

    def create_env(self, image: str, **request: Any) -> Any: ...  # returns an object with `.id`
    def tools(self) -> list[dict[str, Any]]: ...
    def shell(self, env_id: str, command: str, timeout: float | None = None) -> Any: ...
    def edit(self, env_id: str, path: str, old: str, new: str) -> Any: ...
    def create(self, env_id: str, path: str, content: str) -> Any: ...
    def submit(self, env_id: str) -> Any: ...
    def delete_env(self, env_id: str) -> None: ...
    # forks (branching collection only): `count` envs with this env's state, objects with `.id`
    def fork(self, env_id: str, count: int = 1) -> list[Any]: ...


@dataclass
class Call:
    """One call the loop needs made: `fn(*args, **kwargs)`. A driver makes it and sends back the result.
    `blocking`: a blocking call (a file write with fsync) that the async driver runs in a thread, so one
    episode's disk never stalls the others."""

    fn: Callable[..., Any]
    args: tuple = ()
    kwargs: dict[str, Any] = field(default_factory=dict)
    blocking: bool = False


def call(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Call:
    return Call(fn, args, kwargs)


def blocking(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Call:
    return Call(fn, args, kwargs, blocking=True)


Steps = Generator[Call, Any, Any]


def drive(gen: Steps) -> Any:
    """Run a loop generator with blocking calls; returns what the generator returns."""
    value: Any = None
    error: BaseException | None = None
    while True:
        try:
            request = gen.throw(error) if error is not None else gen.send(value)
        except StopIteration as stop:
            return stop.value
        try:
            value, error = request.fn(*request.args, **request.kwargs), None
            if hasattr(type(value), "__await__"):  # (inspect.isawaitable's ABC check costs more, per call)
                raise TypeError(f"{request.fn!r} is asynchronous: drive this loop with adrive (arun_episode)")
        except BaseException as exc:  # thrown into the loop: it decides (an observation, an end, re-raise)
            value, error = None, exc


async def adrive(gen: Steps) -> Any:
    """Run a loop generator in an event loop: a call that returns an awaitable is awaited. A cancelled
    episode still runs its cleanup (the env is deleted) before the cancellation goes on."""
    value: Any = None
    error: BaseException | None = None
    while True:
        try:
            request = gen.throw(error) if error is not None else gen.send(value)
        except StopIteration as stop:
            return stop.value
        try:
            if request.blocking:
                value, error = await asyncio.to_thread(request.fn, *request.args, **request.kwargs), None
            else:
                value, error = request.fn(*request.args, **request.kwargs), None
                if hasattr(type(value), "__await__"):
                    value = await value
        except BaseException as exc:
            value, error = None, exc


def run_episode(task: Task, policy: Policy, env_server: EnvServer, **options: Any) -> Trajectory:
    """Run one episode with blocking calls (`episode_steps` says what `options` are)."""
    return drive(episode_steps(task, policy, env_server, **options))


async def arun_episode(task: Task, policy: Any, env_server: Any, **options: Any) -> Trajectory:
    """The same episode as coroutines: `env_server` an `AsyncEnvClient`, `policy` sync or async."""
    return await adrive(episode_steps(task, policy, env_server, **options))


def episode_steps(
    task: Task,
    policy: Policy,
    env_server: EnvServer,
    *,
    attempt: int = 0,
    max_turns: int = 30,
    max_tokens: int | None = None,
    wall_clock: float | None = 1800,
    trajectory_id: str | None = None,
    raise_infra: bool = False,
    format_error_limit: int = FORMAT_ERROR_LIMIT,
    system_prompt: str = SYSTEM_PROMPT,
    env_labels: dict[str, str] | None = None,
    env_ttl: int | None = None,
    shell_timeout: float | None = None,
    env_id: str | None = None,
    prefix: list[Step] | None = None,
    first_actions: list[Action] | None = None,
    before_action: Callable[[str, list[Step]], Any] | None = None,
    parent_id: str | None = None,
) -> Steps:
    """The episode as a generator of calls. `max_tokens` bounds the conversation (the last call's prompt +
    completion tokens).

    A branch passes the forked `env_id` (used, then deleted, instead of a new env), its parent's `prefix`
    steps, the `first_actions` to take before the policy is asked, and `parent_id`. `before_action(env_id,
    steps)` runs before each action; when it returns a generator of calls, its calls are made too."""
    started = time.time()
    deadline = started + wall_clock if wall_clock else None
    info = policy.info
    traj_id = trajectory_id or make_trajectory_id(task.id, attempt, info.name, info.model)
    episode = Episode(task=task, system_prompt=system_prompt, problem_statement=task.problem_statement,
                      steps=[s.model_copy() for s in prefix or []])
    branch_step = len(episode.steps) if parent_id else None
    forced = list(first_actions or [])
    result = EpisodeResult()
    exit_reason: ExitReason | None = None
    error: str | None = None
    infra: EnvServerError | None = None
    consecutive_format_errors = 0
    context_tokens = 0
    try:
        if env_id is None:
            req = env_request(task)
            if env_labels:
                req.labels.update(env_labels)
            if env_ttl:
                req.ttl = max(req.ttl, int(env_ttl))
            env_id = (yield call(env_server.create_env, req.image, ttl=req.ttl, workdir=req.workdir,
                                 setup_patch=req.setup_patch, grading=req.grading, labels=req.labels)).id
        episode.tools = [_schema(t) for t in (yield call(env_server.tools))]
        while exit_reason is None:
            if len(episode.steps) >= max_turns:
                exit_reason = "max_turns"
                break
            if deadline and time.time() >= deadline:
                exit_reason = "wall_clock"
                break
            if max_tokens and context_tokens >= max_tokens:
                exit_reason = "max_tokens"
                break
            if before_action is not None:
                hook = before_action(env_id, episode.steps)
                if inspect.isgenerator(hook):
                    yield from hook
            try:
                decision = Decision(forced.pop(0)) if forced else (yield call(policy.next_action, episode))
            except ModelError as exc:
                exit_reason, error = "model_error", str(exc)
                break
            context_tokens = decision.prompt_tokens + decision.completion_tokens
            env_started = time.monotonic()
            state = None
            if decision.format_error:
                consecutive_format_errors += 1
                obs = Observation(output="", error=decision.format_error, flags={"format_error": True})
            else:
                consecutive_format_errors = 0
                remaining = deadline - time.time() if deadline else None
                try:
                    obs, submitted, state = yield from act_steps(env_server, env_id, decision.action, shell_timeout,
                                                                 remaining)
                except EnvBroken as exc:  # the step that broke the env is part of the record
                    obs, submitted = Observation(output="", error=str(exc), flags={"env_broken": True}), None
                    exit_reason, error = "env_broken", str(exc)
                if submitted is not None:
                    result = submitted
                    exit_reason = "submitted"
            episode.steps.append(make_step(len(episode.steps), decision, obs, time.monotonic() - env_started, state))
            if exit_reason is None and consecutive_format_errors >= format_error_limit:
                exit_reason = "format_error_limit"
                error = f"{consecutive_format_errors} consecutive malformed replies"
    except EnvBroken as exc:
        exit_reason, error = "env_broken", str(exc)
    except EnvServerError as exc:
        infra, exit_reason, error = exc, "infra_error", f"{type(exc).__name__}: {exc}"
    finally:
        if env_id is not None:
            try:
                yield call(env_server.delete_env, env_id)
            except EnvServerError:
                pass  # gone already, or the server is down: its reaper removes it by expiry
    traj = make_trajectory(task, info, episode, id=traj_id, attempt=attempt, exit_reason=exit_reason or "infra_error",
                           error=error, result=result, started_at=started, parent_id=parent_id,
                           branch_step=branch_step)
    if infra is not None and raise_infra:
        raise EpisodeInfraError(error or "infrastructure error", traj) from infra
    return traj


def make_trajectory(task: Task, info: PolicyInfo, episode: Episode, *, id: str, attempt: int, exit_reason: ExitReason,
                    result: EpisodeResult, started_at: float, error: str | None = None, parent_id: str | None = None,
                    branch_step: int | None = None) -> Trajectory:
    """Close an episode's steps into a Trajectory (token totals summed from the steps)."""
    return Trajectory(
        id=id,
        parent_id=parent_id,
        branch_step=branch_step,
        task_id=task.id,
        task_kind=task.kind,
        repo=task.repo,
        image=task.image,
        commit=task.commit,
        attempt=attempt,
        policy=info,
        system_prompt=episode.system_prompt,
        problem_statement=episode.problem_statement,
        steps=episode.steps,
        exit_reason=exit_reason,
        error=error,
        result=result,
        started_at=started_at,
        finished_at=time.time(),
        prompt_tokens=sum(s.prompt_tokens for s in episode.steps),
        completion_tokens=sum(s.completion_tokens for s in episode.steps),
    )



def _schema(tool: Any) -> dict[str, Any]:
    return tool.model_dump() if hasattr(tool, "model_dump") else dict(tool)


def make_step(index: int, decision: Decision, obs: Observation, env_seconds: float,
              state: StateChange | None = None) -> Step:
    """Record one step: the decision (action and its model cost), what the env answered, and its state."""
    return Step(index=index, action=decision.action, observation=obs, model_seconds=decision.model_seconds,
                env_seconds=env_seconds, prompt_tokens=decision.prompt_tokens,
                completion_tokens=decision.completion_tokens, state=state)


def act(server: EnvServer, env_id: str, action: Action, shell_timeout: float | None = None,
        remaining: float | None = None) -> tuple[Observation, EpisodeResult | None, StateChange | None]:
    """Run one tool call with blocking calls (see act_steps)."""
    return drive(act_steps(server, env_id, action, shell_timeout, remaining))


def act_steps(server: EnvServer, env_id: str, action: Action, shell_timeout: float | None = None,
              remaining: float | None = None) -> Steps:
    """One tool call: (observation, the graded result of a submit, the server's state record if any).
    Tool errors (bad arguments, failed edit) become observations; infra errors raise."""
    args = action.arguments
    try:
        if action.tool == "shell":
            timeout = shell_timeout
            if remaining is not None:
                timeout = max(1.0, min(timeout or 120.0, remaining))
            r = yield call(server.shell, env_id, str(args["command"]), timeout=timeout)
            flags = {k: v for k, v in {"timed_out": r.timed_out, "truncated": r.truncated,
                                       "full_output_path": r.full_output_path}.items() if v}
            return Observation(output=r.output, exit_code=r.exit_code, flags=flags), None, _state(r)
        if action.tool == "edit":
            r = yield call(server.edit, env_id, str(args["path"]), str(args["old"]), str(args["new"]))
            return (Observation(output=r.output) if r.ok else Observation(output="", error=r.output)), None, _state(r)
        if action.tool == "create":
            r = yield call(server.create, env_id, str(args["path"]), str(args["content"]))
            return (Observation(output=r.output) if r.ok else Observation(output="", error=r.output)), None, _state(r)
        if action.tool == "submit":
            r = yield call(server.submit, env_id)
            result = EpisodeResult(
                patch=r.patch, reward=r.reward or 0.0, tests=dict(r.tests), fail_to_pass=dict(r.fail_to_pass),
                pass_to_pass=dict(r.pass_to_pass), dropped_files=list(getattr(r, "dropped_files", []) or []),
                grading_error=getattr(r, "grading_error", None) or None,
            )
            summary = f"Submitted. Reward: {result.reward}" if r.graded else "Submitted."
            return Observation(output=summary, flags={"graded": r.graded}), result, None
    except KeyError as exc:
        return Observation(output="", error=f"{action.tool}: missing argument {exc.args[0]!r}"), None, None
    return Observation(output="", error=f"unknown tool {action.tool!r}"), None, None


def _state(response: Any) -> StateChange | None:
    state = getattr(response, "state", None)
    return StateChange.model_validate(state.model_dump()) if state is not None else None
