"""Branching collection: counterfactual transitions from one state.

The parent episode runs as usual; before each of its steps listed in `BranchPlan.at`, its env is forked K
ways (`POST /envs/{id}/fork`: same files, cwd, exported variables and grading state). When the parent ends,
each fork continues as a branch: the policy decides from the parent's steps so far, or the branch first takes
`alternatives[i]` (a set of alternative actions, one per branch) and the policy carries on from there.

The result is a tree of trajectories: the parent (id with branch "root"), and per branch point N and
branch i a child with `parent_id` = the parent's id, `branch_step` = N, the parent's first N steps (copied,
so every trajectory is a whole episode) followed by its own, and the id `trajectory_id(..., branch="sNbI")`.
Branches do not branch again. Forks not yet used when something fails are deleted.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field, model_validator

from envserver.errors import EnvServerError
from forager.episodes.loop import EnvServer, Steps, adrive, call, drive, episode_steps
from forager.episodes.policies import Policy
from forager.models import Action, Step, Task, Trajectory
from forager.trajectories.store import trajectory_id

ROOT = "root"


class BranchPlan(BaseModel):
    at: list[int] = Field(description="fork before these step indices (0: before the first action)")
    branches: int = Field(default=0, ge=0, le=64, description="forks per branch point (default: one per alternative)")
    alternatives: list[Action] = Field(default_factory=list, description="branch i first takes alternatives[i]")

    @model_validator(mode="after")
    def _check(self) -> "BranchPlan":
        if not self.branches:
            self.branches = len(self.alternatives)
        if self.branches < 1:
            raise ValueError("a branching plan needs --branches K or a list of alternative actions")
        if any(n < 0 for n in self.at) or not self.at:
            raise ValueError("branch points are step indices >= 0")
        self.at = sorted(set(self.at))
        return self


def branch_name(step: int, branch: int) -> str:
    return f"s{step}b{branch}"


def run_branching_episode(task: Task, policy: Policy, env_server: EnvServer, plan: BranchPlan, *,
                          attempt: int = 0, **episode: Any) -> list[Trajectory]:
    """The parent and its branches (parent first), with blocking calls."""
    return drive(branching_steps(task, policy, env_server, plan, attempt=attempt, **episode))


async def arun_branching_episode(task: Task, policy: Any, env_server: Any, plan: BranchPlan, *,
                                 attempt: int = 0, **episode: Any) -> list[Trajectory]:
    """The same tree as coroutines (an AsyncEnvClient, a sync or async policy)."""
    return await adrive(branching_steps(task, policy, env_server, plan, attempt=attempt, **episode))


def branching_steps(task: Task, policy: Policy, env_server: EnvServer, plan: BranchPlan, *,
                    attempt: int = 0, **episode: Any) -> Steps:
    """The tree as a generator of calls (forager.episodes.loop). `episode` holds the budget and env options."""
    info = policy.info
    parent_id = trajectory_id(task.id, attempt, info.name, info.model, branch=ROOT)
    pending: list[tuple[int, list[Step], list[str]]] = []  # (branch step, the parent's steps so far, fork ids)

    def fork_here(env_id: str, steps: list[Step]) -> Steps:
        if len(steps) in plan.at and all(n != len(steps) for n, _, _ in pending):
            forks = yield call(env_server.fork, env_id, plan.branches)
            pending.append((len(steps), [s.model_copy(deep=True) for s in steps], [f.id for f in forks]))

    trajectories: list[Trajectory] = []
    try:
        trajectories.append((yield from episode_steps(task, policy, env_server, attempt=attempt,
                                                      trajectory_id=parent_id, before_action=fork_here, **episode)))
        while pending:
            step, prefix, fork_ids = pending[0]
            while fork_ids:
                i = plan.branches - len(fork_ids)
                env_id = fork_ids.pop(0)
                first = [plan.alternatives[i]] if i < len(plan.alternatives) else None
                trajectories.append((yield from episode_steps(
                    task, policy, env_server, attempt=attempt, env_id=env_id, prefix=prefix, first_actions=first,
                    parent_id=parent_id, trajectory_id=trajectory_id(task.id, attempt, info.name, info.model,
                                                                     branch=branch_name(step, i)), **episode)))
            pending.pop(0)
    finally:
        for _, _, fork_ids in pending:  # forks no branch got to use (the parent or a branch raised)
            for env_id in fork_ids:
                try:
                    yield call(env_server.delete_env, env_id)
                except EnvServerError:
                    pass
    return trajectories
