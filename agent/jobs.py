"""The episode job: one (task, attempt, policy) run by a worker, written once to the store.

`run_episode_job` is what RQ calls: a top-level function with plain JSON arguments, so any worker
(`forager worker`, or a stock `rq worker` with the JSON serializer) on any host can run it. The async
worker runs the same job as a coroutine (`arun_episode_job`, one body for both: `episode_job_steps`). It uses the
env server of its host (FORAGER_ENVSERVER_URL) and writes to its trajectory store (FORAGER_HOME).

Failure policy:
  - an agent that fails (wrong patch, turn budget, bad tool calls, an env its own commands broke) is a
    result: the trajectory is written and the job finishes;
  - infrastructure that fails (env server unreachable, Docker error, env gone) raises InfraError,
    and RQ retries the job with backoff (the Retry set at enqueue); a refused request (bad image,
    bad token) is not retried, since trying again cannot help;
  - a worker killed mid-episode leaves its env behind: the env carries this job's id as a label and
    an expiry, the next try removes it first, and the server's reaper removes it anyway.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from rq import get_current_job

from agent.joblog import JobLog
from agent.queue import JobSpec, enqueue_many, episode_job_id, slug
from agent.status import RESULTS_KEY, record_result
from envserver.client import AsyncEnvClient, EnvClient
from envserver.errors import BadRequest, EnvServerError, ImageNotAllowed, Unauthorized, UnknownEnv
from forager.config import Settings
from forager.episodes.branching import ROOT, BranchPlan, branching_steps
from forager.episodes.loop import Steps, adrive, blocking, call, drive, episode_steps
from forager.episodes.policies import OpenAIConfig, OracleConfig, load_policy_config
from forager.errors import EpisodeInfraError, InfraError
from forager.models import Task, Trajectory
from forager.trajectories.store import TrajectoryStore, trajectory_id

JOB_FUNC = "agent.jobs.run_episode_job"
JOB_LABEL = "forager.job"
# The job is killed this long after the episode's own wall-clock budget, to leave time for grading.
JOB_TIMEOUT_MARGIN = 600

__all__ = ["ASYNC_JOBS", "EpisodeSpec", "InfraError", "arun_episode_job", "collection_name", "enqueue_episodes",
           "run_episode_job"]


@dataclass
class EpisodeSpec:
    policy: OracleConfig | OpenAIConfig
    max_turns: int = 30
    episode_timeout: int = 1800
    branching: BranchPlan | None = None  # a branching collection: each job writes a tree of trajectories

    def job_kwargs(self) -> dict[str, Any]:
        kwargs = {"policy": self.policy.model_dump(mode="json"), "max_turns": self.max_turns,
                  "episode_timeout": self.episode_timeout}
        if self.branching is not None:  # only then, so a plain collection's jobs stay as they were
            kwargs["branching"] = self.branching.model_dump(mode="json")
        return kwargs


def collection_name(policy: str, model: str | None) -> str:
    return slug(f"{policy}-{model}" if model else policy, 80)


# ---------------------------------------------------------------- enqueue side


def enqueue_episodes(conn, tasks: Iterable[Task], attempts: int, spec: EpisodeSpec, *, collection: str,
                     settings: Settings, on_progress: Callable[[int, str], None] | None = None) -> dict[str, str]:
    """One job per (task, attempt); skips ids already taken and episodes already in the store."""
    store = TrajectoryStore(settings.trajectories_dir)
    name, model = spec.policy.name, spec.policy.model
    specs: list[JobSpec] = []
    traj_ids: dict[str, str] = {}
    branch = ROOT if spec.branching else None
    for task in tasks:
        for attempt in range(attempts):
            job_id = episode_job_id(task.id, attempt, name, model) + ("-tree" if branch else "")
            traj_ids[job_id] = trajectory_id(task.id, attempt, name, model, branch=branch)
            specs.append(JobSpec(
                JOB_FUNC,
                {"task": task.model_dump(mode="json"), "attempt": attempt, "collection": collection,
                 **spec.job_kwargs()},
                job_id,
                # a tree runs its branches one after another, each with the episode's budget
                timeout=(spec.episode_timeout + JOB_TIMEOUT_MARGIN) * (1 + _branch_count(spec.branching)),
                retries=len(settings.retry_intervals),
                intervals=settings.retry_intervals,
                description=f"{task.id} attempt {attempt} ({name})",
            ))

    def done(js: JobSpec) -> bool:
        traj_id = traj_ids[js.job_id]
        if not store.exists(traj_id):
            return False
        record_result(conn, js.job_id, summarize(store.read(traj_id), existing=True))
        return True

    outcome: dict[str, str] = {}
    for i in range(0, len(specs), 200):  # batches, so the caller's bar moves
        batch = enqueue_many(specs[i:i + 200], conn=conn, queue_name=settings.queue, collection=collection, done=done)
        rerun = [job_id for job_id, state in batch.items() if state == "enqueued"]
        if rerun:  # a result an earlier run (another FORAGER_HOME on this Redis) recorded is not this run's
            conn.hdel(RESULTS_KEY, *rerun)
        outcome.update(batch)
        if on_progress:
            on_progress(len(outcome), f"{sum(v == 'enqueued' for v in outcome.values())} new")
    return outcome


# ---------------------------------------------------------------- worker side


def _branch_count(plan: BranchPlan | None) -> int:
    return len(plan.at) * plan.branches if plan else 0


def run_episode_job(task: dict, attempt: int = 0, policy: dict | None = None, collection: str | None = None,
                    max_turns: int = 30, episode_timeout: int = 1800, branching: dict | None = None) -> dict[str, Any]:
    """The episode job as RQ's work horse (or a stock `rq worker`) runs it: blocking calls."""
    settings = Settings.from_env()  # a job is an entry point: the worker's host decides where things are
    config = load_policy_config(policy or {"name": "oracle"})
    return drive(episode_job_steps(get_current_job(), settings, config.make(settings), env_client(settings), task,
                                   attempt, max_turns, episode_timeout, branching))


async def arun_episode_job(job, settings: Settings, client: AsyncEnvClient, *, task: dict, attempt: int = 0,
                           policy: dict | None = None, collection: str | None = None, max_turns: int = 30,
                           episode_timeout: int = 1800, branching: dict | None = None) -> dict[str, Any]:
    """The same job as a coroutine, for the async worker (agent/async_worker.py): one of many in one process,
    sharing its env client and the model endpoint's gate."""
    config = load_policy_config(policy or {"name": "oracle"})
    return await adrive(episode_job_steps(job, settings, config.make_async(settings), client, task, attempt,
                                          max_turns, episode_timeout, branching))


# Jobs the async worker runs as coroutines (by the function path RQ stores); any other job runs in a thread.
ASYNC_JOBS = {JOB_FUNC: arun_episode_job}


def job_weight(kwargs: dict[str, Any]) -> int:
    """Envs a job holds at once: one, plus the forks of a branching episode (held until their branch runs)."""
    plan = kwargs.get("branching")
    return 1 + (len(plan.get("at") or []) * max(plan.get("branches") or len(plan.get("alternatives") or []), 1)
                if isinstance(plan, dict) else 0)


def episode_job_steps(job, settings: Settings, policy, client, task: dict, attempt: int, max_turns: int,
                      episode_timeout: int, branching: dict | None) -> Steps:
    """The job's body, written once for both drivers (forager.episodes.loop): its env server calls and the
    episode are yielded as calls, and so are the store's and the job log's writes (fsynced: the async driver
    makes them in a thread); Redis is written directly (quick)."""
    task_obj = Task.model_validate(task)
    info = policy.info
    job_id = job.id if job else episode_job_id(task_obj.id, attempt, info.name, info.model)
    tries = (job.meta.get("tries", 0) + 1) if job else 1
    if job:
        job.meta["tries"] = tries
        job.save_meta()
    log = JobLog(job_id, settings, task=task_obj.id, attempt=attempt, policy=info.name, attempt_try=tries)
    store = TrajectoryStore(settings.trajectories_dir)
    plan = BranchPlan.model_validate(branching) if branching else None
    traj_id = trajectory_id(task_obj.id, attempt, info.name, info.model, branch=ROOT if plan else None)
    yield blocking(log, "start", trajectory=traj_id, envserver=settings.envserver_url)

    if (yield blocking(store.exists, traj_id)):  # an earlier try wrote it and died before reporting
        summary = summarize((yield blocking(store.read, traj_id)), existing=True)
        _report(job, job_id, summary)
        yield blocking(log, "skip", reason="trajectory exists", **summary)
        return summary

    started = time.monotonic()
    try:
        if tries > 1:  # only a try that was killed can have left an env behind
            removed = yield from leftovers_steps(client, job_id)
            if removed:
                yield blocking(log, "leftovers_removed", envs=removed)
        options = dict(max_turns=max_turns, wall_clock=episode_timeout, raise_infra=True,
                       env_labels={JOB_LABEL: job_id}, env_ttl=episode_timeout + JOB_TIMEOUT_MARGIN)
        if plan is not None:
            traj, *branches = yield from branching_steps(task_obj, policy, client, plan, attempt=attempt, **options)
        else:
            traj = yield from episode_steps(task_obj, policy, client, attempt=attempt, trajectory_id=traj_id, **options)
            branches = []
    except (EnvServerError, EpisodeInfraError) as exc:
        cause = exc.__cause__ if isinstance(exc, EpisodeInfraError) and exc.__cause__ is not None else exc
        error = f"{type(cause).__name__}: {cause}"
        if isinstance(cause, (BadRequest, ImageNotAllowed, Unauthorized)):
            yield blocking(log, "refused", error=error)
            if job:
                job.retries_left = 0  # retrying a refused request cannot help
            raise
        yield blocking(log, "infra_error", error=error, retries_left=getattr(job, "retries_left", None))
        raise InfraError(error) from exc
    except BaseException as exc:  # a bug, a timeout, a cancelled coroutine: logged, then RQ decides (retry or fail)
        yield blocking(log, "error", error=f"{type(exc).__name__}: {exc}")
        raise

    for branch in branches:  # before the parent: a written parent means its whole tree is written
        yield blocking(store.write, branch)
    yield blocking(store.write, traj)
    summary = summarize(traj)
    if plan is not None:
        summary["branches"] = len(branches)
    summary["job_seconds"] = round(time.monotonic() - started, 3)
    _report(job, job_id, summary)
    yield blocking(log, "done", **summary)
    return summary


def summarize(traj: Trajectory, existing: bool = False) -> dict[str, Any]:
    """The numbers a collection's status adds up, for one trajectory."""
    return {
        "trajectory": traj.id,
        "task": traj.task_id,
        "attempt": traj.attempt,
        "reward": traj.result.reward,
        "steps": len(traj.steps),
        "exit_reason": traj.exit_reason,
        "episode_seconds": round(traj.finished_at - traj.started_at, 3),
        "env_seconds": round(sum(s.env_seconds for s in traj.steps), 3),
        "model_seconds": round(sum(s.model_seconds for s in traj.steps), 3),
        "existing": existing,
    }


def _report(job, job_id: str, summary: dict[str, Any]) -> None:
    if job is not None:
        record_result(job.connection, job_id, summary)


_CLIENTS: dict[tuple[str, str | None], EnvClient] = {}


def env_client(settings: Settings) -> EnvClient:
    """One client per (url, token) per process. Making one costs ~50 ms (its TLS context), so the
    worker makes it before forking (agent.worker.preload) and every job's work horse inherits it."""
    key = (settings.envserver_url, settings.envserver_token)
    if key not in _CLIENTS:
        _CLIENTS[key] = EnvClient(settings.envserver_url, token=settings.envserver_token)
    return _CLIENTS[key]


def remove_leftovers(client: EnvClient, job_id: str) -> list[str]:
    """Delete envs a previous try of this job left (it was killed before releasing them)."""
    return drive(leftovers_steps(client, job_id))


def leftovers_steps(client, job_id: str) -> Steps:
    leftovers = [e for e in (yield call(client.list_envs)) if e.labels.get(JOB_LABEL) == job_id]
    for env in leftovers:
        try:
            yield call(client.delete_env, env.id)
        except UnknownEnv:  # reaped meanwhile
            pass
    return [e.id for e in leftovers]
