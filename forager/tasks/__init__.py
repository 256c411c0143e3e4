"""Repair tasks: mutate-fix synthesis, SWE-bench import, storage, and the grading spec a task implies."""

from __future__ import annotations

from envserver.models import CreateEnvRequest, GradingSpec
from forager.models import Task


def grading_spec(task: Task, timeout: int = 900) -> GradingSpec:
    """How the env server grades a task: restore the test files, apply the hidden test patch, run F2P + P2P."""
    return GradingSpec(
        test_command=task.test_command,
        test_files=task.test_files,
        test_patch=task.test_patch,
        fail_to_pass=task.fail_to_pass,
        pass_to_pass=task.pass_to_pass,
        timeout=timeout,
        per_test_timeout=task.per_test_timeout,
    )


def env_request(task: Task, ttl: int = 3600) -> CreateEnvRequest:
    """The environment an episode of this task runs in: the image, the broken start state, the grader."""
    return CreateEnvRequest(
        image=task.image,
        workdir=task.workdir,
        setup_patch=task.setup_patch,
        grading=grading_spec(task),
        ttl=ttl,
        labels={"task": task.id},
    )
