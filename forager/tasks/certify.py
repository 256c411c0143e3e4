"""A task's reproducibility certificate, graded by the env server exactly as an agent's episode is.

k times: a fresh env of the task (`env_request(task)`: the image, the start state, the hidden grader), the
gold patch written to /tmp with the `create` tool and applied with `git apply` in the shell, then `submit`:
the reward must be 1. k times: a fresh env and `submit` with no change: the reward must be 0. Every
grading runs in its own env container, so one run's leftovers can never help the next. The certificate
also records the flaky tests validation dropped, the image id the gradings ran in and the image's
`pip freeze`, so a later run can tell whether it grades the same thing.
"""

from __future__ import annotations

from typing import Protocol

from envserver.models import CreateEnvRequest, EnvInfo, FileToolResponse, ShellResponse, SubmitResponse
from forager.models import Certificate, Task
from forager.tasks import env_request

PATCH_PATH = "/tmp/forager-patch.diff"  # outside the repository: never part of the graded patch
APPLY = ("git apply --whitespace=nowarn {path} || {{ command -v patch >/dev/null && "
         "patch --batch --fuzz=5 -p1 -i {path}; }}; status=$?; rm -f {path}; exit $status")


class Grader(Protocol):
    """What certification needs of an env server client (envserver.client.EnvClient has it)."""

    def create_env(self, image: str, **fields) -> EnvInfo: ...
    def create(self, env_id: str, path: str, content: str) -> FileToolResponse: ...
    def shell(self, env_id: str, command: str, timeout: float | None = None) -> ShellResponse: ...
    def submit(self, env_id: str) -> SubmitResponse: ...
    def delete_env(self, env_id: str) -> None: ...


def certify(task: Task, grader: Grader, *, k: int = 3, image_id: str = "", pip_freeze: list[str] | None = None,
            flaky: list[str] | None = None) -> Certificate:
    """Grade the gold patch k times and the empty patch k times, each in a fresh env; passed = 1s and 0s."""
    if not task.gold_patch:
        raise ValueError(f"task {task.id} has no gold patch to certify")
    gold = [grade_patch(task, grader, task.gold_patch) for _ in range(k)]
    empty = [grade_patch(task, grader, "") for _ in range(k)]
    return Certificate(k=k, gold_rewards=gold, empty_rewards=empty, flaky=sorted(flaky or []), image_id=image_id,
                       pip_freeze=list(pip_freeze or []),
                       passed=all(r == 1.0 for r in gold) and all(r == 0.0 for r in empty))


def grade_patch(task: Task, grader: Grader, patch: str) -> float:
    """The reward the env server gives `patch` (applied as an agent would) in a fresh env of the task."""
    response, _ = submit_patch(task, grader, patch, purpose="certificate")
    return float(response.reward or 0.0) if response is not None else 0.0  # a gold patch that does not apply fails


def submit_patch(task: Task, grader: Grader, patch: str, *, purpose: str) -> tuple[SubmitResponse | None, str]:
    """Apply `patch` in a fresh env of the task as an agent would (written with `create`, applied in the shell:
    `git apply`, else `patch --fuzz`, as SWE-bench's harness tries), then submit it: (the graded response, "")
    or (None, why the patch does not apply). The env is deleted either way."""
    req: CreateEnvRequest = env_request(task, ttl=1800)
    env = grader.create_env(req.image, workdir=req.workdir, setup_patch=req.setup_patch, grading=req.grading,
                            ttl=req.ttl, labels={**req.labels, "purpose": purpose})
    try:
        if patch:
            written = grader.create(env.id, PATCH_PATH, patch)
            if not written.ok:
                return None, f"the patch could not be written: {written.output}"
            applied = grader.shell(env.id, APPLY.format(path=PATCH_PATH), 300)
            if applied.exit_code != 0:
                return None, f"the patch does not apply: {applied.output.strip()[-2000:]}"
        return grader.submit(env.id), ""
    finally:
        grader.delete_env(env.id)
