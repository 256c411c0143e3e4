"""Replay: re-run a trajectory's actions in a fresh env of the same task and compare, step by step, what they
printed (after forager.trajectories.masks) and the state they left (`Step.state.tree_digest`, when recorded).

A step replays identically when its masked observation text (what the model read) is the same and, where
both runs recorded a state, the tree digests are the same. Steps whose reply held no tool call are not
replayed (they never reached the env). The report of a set of trajectories adds up the share of identical
steps and lists the actions that did not replay (the nondeterminism catalog), most frequent first.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Iterable

from pydantic import BaseModel, Field

from envserver.errors import EnvBroken, EnvServerError
from forager.episodes.loop import EnvServer, act
from forager.models import Action, Task, Trajectory
from forager.tasks import env_request
from forager.trajectories.masks import first_difference, mask
from forager.trajectories.render import observation_text


class StepReplay(BaseModel):
    index: int
    action: str = Field(description="the command, or `edit PATH` / `create PATH` / `submit`")
    output_same: bool
    digest_same: bool | None = Field(default=None, description="None: a state was not recorded in both runs")
    difference: str = ""

    @property
    def identical(self) -> bool:
        return self.output_same and self.digest_same is not False


class ReplayReport(BaseModel):
    trajectory: str
    task_id: str
    steps: int = 0
    identical: int = 0
    digests_compared: int = 0
    differing: list[StepReplay] = Field(default_factory=list)
    error: str | None = None
    seconds: float = 0.0

    @property
    def share(self) -> float:
        return self.identical / self.steps if self.steps else 0.0


def describe(action: Action) -> str:
    if action.tool == "shell":
        command = str(action.arguments.get("command", ""))
        first = command.splitlines()[0] if command else ""
        return first[:160] + (" ..." if len(first) > 160 or "\n" in command else "")
    if action.tool in ("edit", "create"):
        return f"{action.tool} {action.arguments.get('path', '')}"
    return str(action.tool)


def replay_trajectory(traj: Trajectory, task: Task, env_server: EnvServer, *,
                      shell_timeout: float | None = None) -> ReplayReport:
    """Replay one trajectory in a fresh env of `task` (the env is always deleted)."""
    report = ReplayReport(trajectory=traj.id, task_id=traj.task_id)
    t0 = time.monotonic()
    env_id = None
    try:
        req = env_request(task)
        env_id = env_server.create_env(req.image, ttl=max(req.ttl, 3600), workdir=req.workdir,
                                       setup_patch=req.setup_patch, grading=req.grading,
                                       labels={**req.labels, "forager.replay": traj.id}).id
        for step in traj.steps:
            if step.action.tool is None or step.observation.flags.get("format_error"):
                continue
            report.steps += 1
            try:
                obs, _, state = act(env_server, env_id, step.action, shell_timeout)
            except EnvBroken:  # the recorded run broke its env here too, or this one differs
                same = bool(step.observation.flags.get("env_broken"))
                report.identical += same
                if not same:
                    report.differing.append(StepReplay(index=step.index, action=describe(step.action),
                                                       output_same=False, difference="the env broke on replay"))
                break
            recorded, replayed = mask(observation_text(step.observation)), mask(observation_text(obs))
            result = StepReplay(index=step.index, action=describe(step.action), output_same=recorded == replayed)
            if step.state is not None and state is not None and step.state.tree_digest and state.tree_digest:
                report.digests_compared += 1
                result.digest_same = step.state.tree_digest == state.tree_digest
            if result.identical:
                report.identical += 1
            else:
                result.difference = (first_difference(recorded, replayed) if not result.output_same
                                     else "same output, different tree digest: " + _files(step.state, state))
                report.differing.append(result)
    except EnvServerError as exc:
        report.error = f"{type(exc).__name__}: {exc.message}"
    finally:
        if env_id is not None:
            try:
                env_server.delete_env(env_id)
            except EnvServerError:
                pass
        report.seconds = round(time.monotonic() - t0, 3)
    return report


def _files(recorded, replayed) -> str:
    a = set(recorded.files_created + recorded.files_modified + recorded.files_deleted)
    b = set(replayed.files_created + replayed.files_modified + replayed.files_deleted)
    return f"recorded changed {sorted(a)[:10]}, replay changed {sorted(b)[:10]}"


def summarize(reports: Iterable[ReplayReport]) -> dict:
    """The collection's figures and the nondeterminism catalog (actions that did not replay, with an example)."""
    reports = list(reports)
    steps = sum(r.steps for r in reports if r.error is None)
    identical = sum(r.identical for r in reports if r.error is None)
    counts: Counter[str] = Counter()
    example: dict[str, str] = {}
    for r in reports:
        for d in r.differing:
            counts[d.action] += 1
            example.setdefault(d.action, d.difference)
    return {
        "trajectories": len(reports), "errors": sum(r.error is not None for r in reports),
        "steps": steps, "identical": identical, "share": round(identical / steps, 4) if steps else 0.0,
        "trajectories_identical": sum(r.error is None and r.identical == r.steps for r in reports),
        "digests_compared": sum(r.digests_compared for r in reports),
        "catalog": [{"action": a, "count": n, "example": example[a]} for a, n in counts.most_common()],
    }
