"""Records -> index rows: the few columns the pages filter, sort and aggregate on.

Kept apart from the index so a worker process can turn a trajectory file into a row without a
database connection (the first index of a large store parses files in parallel).
"""

from __future__ import annotations

from pathlib import Path

from pydantic import ValidationError

from forager.models import ImageRecord, Task, Trajectory
from forager.trace.models import Trace
from forager.viewer.sources import first_line

# Column order of the trajectories table, shared by the row builder and the INSERT.
TRAJECTORY_COLUMNS = (
    "path", "id", "repo", "task_id", "task_kind", "policy", "model", "attempt", "exit_reason", "reward",
    "steps", "prompt_tokens", "completion_tokens", "model_seconds", "env_seconds", "wall_seconds",
    "started_at", "finished_at", "parent_id", "branch_step", "tests_graded", "grading_error",
)
SEARCH_TEXT_LIMIT = 4000  # characters of problem statement and commands indexed per trajectory
SOLVED = 1.0  # a reward at or above this counts as solved


def trajectory_row(rel_path: str, traj: Trajectory) -> tuple:
    steps = traj.steps
    prompt = traj.prompt_tokens or sum(s.prompt_tokens for s in steps)
    completion = traj.completion_tokens or sum(s.completion_tokens for s in steps)
    return (
        rel_path, traj.id, traj.repo, traj.task_id, traj.task_kind, traj.policy.name, traj.policy.model or "",
        traj.attempt, traj.exit_reason, traj.result.reward, len(steps), prompt, completion,
        sum(s.model_seconds for s in steps), sum(s.env_seconds for s in steps),
        max(0.0, traj.finished_at - traj.started_at), traj.started_at, traj.finished_at, traj.parent_id,
        traj.branch_step, len(traj.result.tests), 1 if traj.result.grading_error else 0,
    )


def trajectory_search_text(traj: Trajectory) -> str:
    """What the search box matches: names, the problem statement, the commands run, errors."""
    parts = [traj.id, traj.task_id, traj.repo, traj.policy.name, traj.policy.model or "", traj.exit_reason,
             traj.error or "", traj.result.grading_error or "", traj.problem_statement[:SEARCH_TEXT_LIMIT]]
    budget = SEARCH_TEXT_LIMIT
    for step in traj.steps:
        command = str(step.action.arguments.get("command") or step.action.arguments.get("path") or "")[:200]
        if command and budget > 0:
            parts.append(command)
            budget -= len(command)
    return "\n".join(p for p in parts if p)


def load_trajectory_file(home: str, rel_path: str) -> tuple[tuple | None, str | None, str | None]:
    """(row, search text, error) for one trajectory file; runs in worker processes, so plain values only."""
    try:
        data = (Path(home) / rel_path).read_bytes().strip()
        traj = Trajectory.model_validate_json(data)
    except (ValidationError, ValueError, OSError) as exc:
        return None, None, first_line(exc)
    return trajectory_row(rel_path, traj), trajectory_search_text(traj), None


def image_row(rec: ImageRecord) -> tuple:
    return (
        rec.repo, rec.source, rec.commit or "", rec.status, rec.reason, rec.tag, rec.python, rec.tests_collected,
        rec.tests_passed, rec.tests_failed, rec.tests_skipped, len(rec.flaky), rec.test_seconds, rec.build_seconds,
        rec.validate_seconds, rec.size_bytes, rec.test_runner, rec.created_at,
    )


def task_row(rel_path: str, offset: int, length: int, task: Task) -> tuple:
    cert = task.certificate
    return (
        task.id, rel_path, offset, length, task.repo, task.kind, task.origin or "", task.commit, task.created_at,
        len(task.fail_to_pass), len(task.pass_to_pass), None if cert is None else int(cert.passed),
        cert.model_dump_json() if cert else None,
    )


def trace_row(rel_path: str, offset: int, length: int, trace: Trace) -> tuple:
    return (
        trace.id, rel_path, offset, length, trace.repo or "", trace.target, trace.function, trace.test or "",
        len(trace.frames), int(trace.truncated), trace.exception,
    )
