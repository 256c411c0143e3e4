"""The domain's data contracts: every record that crosses a module or process boundary.

Tests are named by their pytest node id (``tests/test_x.py::TestA::test_b[p]``) everywhere:
in the catalog, in tasks, in grading and in trajectories, the same form SWE-bench uses.
"""

from __future__ import annotations

import time
from typing import Any, Literal

from pydantic import BaseModel, Field

TestOutcome = Literal["passed", "failed", "error", "skipped"]

# ---------------------------------------------------------------- repositories and images

SourceKind = Literal["github", "git", "local", "pypi"]
BuildStatus = Literal[
    "ok", "clone", "detect", "install", "collect", "timeout", "low_pass_rate", "error",
    "toolchain",  # compiled code that needs a compiler or a toolchain the image could not get
    "system_library",  # a system library (headers) a dependency needs is missing
    "resolution",  # dependencies do not resolve (at the commit's date)
    "python_unavailable",  # no base image for a Python the project supports
]


class RepoSpec(BaseModel):
    """One entry of a repository list."""

    source: str = Field(description="the entry as written, e.g. 'pypi:six==1.16.0' or 'psf/requests@v2.31.0'")
    kind: SourceKind
    location: str = Field(description="git URL, local path, or PyPI project name")
    ref: str | None = Field(default=None, description="branch/tag/commit, or the PyPI version")
    name: str = Field(description="short, tag-safe name of the repository, e.g. 'six'")
    python: str | None = None
    install: list[str] | None = Field(default=None, description="override: shell commands run in /repo to install")
    test_command: str | None = Field(default=None, description="override: the test command, pytest-compatible")
    system_packages: list[str] = Field(default_factory=list)
    line: int | None = Field(default=None, description="line number in the list file")


class ImageRecord(BaseModel):
    """One catalog record: a repository at a commit and the outcome of building it."""

    repo: str = Field(description="RepoSpec.name")
    source: str
    commit: str | None = None
    status: BuildStatus
    reason: str = ""
    tag: str | None = Field(default=None, description="the runnable image: repository at its commit")
    deps_tag: str | None = None
    size_bytes: int | None = None
    python: str | None = None
    workdir: str = "/repo"
    install_commands: list[str] = Field(default_factory=list)
    test_command: str | None = None
    tests_collected: int = 0
    tests_passed: int = 0
    tests_failed: int = 0
    tests_skipped: int = 0
    flaky: list[str] = Field(default_factory=list)
    test_outcomes: dict[str, TestOutcome] = Field(default_factory=dict)
    test_seconds: float | None = Field(default=None, description="wall time of one validation run of the suite")
    build_seconds: float = 0.0
    validate_seconds: float = 0.0
    log_path: str | None = None
    pip_freeze: list[str] = Field(default_factory=list)
    test_runner: str | None = Field(default=None, description="'pytest', or 'unittest' (a unittest suite run through pytest)")
    per_test_timeout: int | None = Field(
        default=None, description="seconds one test may run in validation and grading (pytest-timeout); None: no limit"
    )
    timed_out_tests: list[str] = Field(default_factory=list, description="tests killed by the per-test timeout")
    commit_date: float | None = Field(default=None, description="the commit's committer date (unix time)")
    created_at: float = Field(default_factory=time.time)

    @property
    def pass_rate(self) -> float:
        counted = self.tests_passed + self.tests_failed
        return self.tests_passed / counted if counted else 0.0


# ---------------------------------------------------------------- tasks

TaskKind = Literal["mutate-fix", "issue-fix"]
TaskOrigin = Literal["synthesized", "mined", "imported"]


class Mutation(BaseModel):
    operator: str
    file: str
    function: str
    lineno: int
    description: str = ""


class Certificate(BaseModel):
    """Proof that a task grades as it should: the gold patch passes and the empty patch fails, k times each,
    each in a fresh grading container."""

    k: int
    gold_rewards: list[float] = Field(default_factory=list)
    empty_rewards: list[float] = Field(default_factory=list)
    flaky: list[str] = Field(default_factory=list, description="tests whose outcome varied between runs (dropped)")
    image_id: str = Field(default="", description="the Docker image id (sha256:...) the gradings ran in")
    pip_freeze: list[str] = Field(default_factory=list)
    passed: bool = False
    created_at: float = Field(default_factory=time.time)


class Task(BaseModel):
    """A repair task: an image, a broken starting state, hidden tests that grade the fix."""

    id: str
    kind: TaskKind
    repo: str
    image: str
    commit: str
    workdir: str = "/repo"
    problem_statement: str
    setup_patch: str = Field(default="", description="applied before the agent starts (the mutation)")
    test_patch: str = Field(default="", description="hidden test changes applied at grading (issue-fix)")
    test_files: list[str] = Field(default_factory=list, description="files restored from the base before grading")
    test_command: str
    fail_to_pass: list[str]
    pass_to_pass: list[str] = Field(default_factory=list)
    gold_patch: str = Field(default="", description="a known fix, applied to the agent's starting state")
    per_test_timeout: int | None = Field(default=None, description="seconds one test may run at grading (the image's)")
    mutation: Mutation | None = None
    hide_tests: bool = True
    origin: TaskOrigin | None = Field(default=None, description="how the task was made (None: older records)")
    source_commit: str | None = Field(default=None, description="mined: the fix commit the task comes from")
    certificate: Certificate | None = None
    created_at: float = Field(default_factory=time.time)


# ---------------------------------------------------------------- trajectories

TRAJECTORY_SCHEMA_VERSION = "1.0"

ExitReason = Literal[
    "submitted", "max_turns", "max_tokens", "wall_clock", "model_error", "infra_error", "format_error_limit",
    "env_broken",  # the agent's own command broke the env (killed its container, ...): kept, never retried
]


class PolicyInfo(BaseModel):
    name: str = Field(description="'oracle' or 'openai'")
    model: str | None = None
    parameters: dict[str, Any] = Field(default_factory=dict)


class Action(BaseModel):
    tool: str | None = Field(description="shell|edit|create|submit, None when the model output was unusable")
    arguments: dict[str, Any] = Field(default_factory=dict)
    text: str = Field(default="", description="the model's raw text for this turn")
    tool_call_id: str | None = None


class Observation(BaseModel):
    output: str
    exit_code: int | None = None
    error: str | None = Field(default=None, description="tool or format error shown to the agent")
    flags: dict[str, Any] = Field(default_factory=dict, description="timed_out, truncated, ...")


class StateChange(BaseModel):
    """What one action changed in the environment (world-model data): files, shell state, a tree digest.

    Two steps with the same `tree_digest` left the repository in the same state. The diff is capped
    per step; `diff_truncated` says so and `diff_bytes` gives the uncapped size.
    """

    files_created: list[str] = Field(default_factory=list)
    files_modified: list[str] = Field(default_factory=list)
    files_deleted: list[str] = Field(default_factory=list)
    diff: str = Field(default="", description="unified diff of the repository change, capped")
    diff_truncated: bool = False
    diff_bytes: int = 0
    cwd: str | None = Field(default=None, description="the shell's working directory after the action")
    cwd_changed: bool = False
    env_changed: dict[str, str | None] = Field(
        default_factory=dict, description="exported variables set or changed by the action (None: unset)"
    )
    tree_digest: str = Field(default="", description="digest of the repository tree after the action")
    seconds: float = Field(default=0.0, description="time spent recording this state")


class Step(BaseModel):
    index: int
    action: Action
    observation: Observation
    state: StateChange | None = Field(default=None, description="what the action changed (None: not recorded)")
    model_seconds: float = 0.0
    env_seconds: float = 0.0
    prompt_tokens: int = 0
    completion_tokens: int = 0


class EpisodeResult(BaseModel):
    patch: str = Field(default="", description="the agent's patch: exactly the bytes that were graded")
    reward: float = 0.0
    tests: dict[str, TestOutcome] = Field(default_factory=dict)
    fail_to_pass: dict[str, TestOutcome] = Field(default_factory=dict)
    pass_to_pass: dict[str, TestOutcome] = Field(default_factory=dict)
    dropped_files: list[str] = Field(
        default_factory=list, description="files of the patch restored before the graded run (tests, test config)"
    )
    grading_error: str | None = Field(default=None, description="why the patch was graded 0 without a verdict")


class Trajectory(BaseModel):
    schema_version: str = TRAJECTORY_SCHEMA_VERSION
    id: str = Field(description="derived from (task, attempt, policy, model): a retry overwrites, never duplicates")
    parent_id: str | None = Field(default=None, description="branching collection: the trajectory this one forked from")
    branch_step: int | None = Field(default=None, description="branching collection: steps before this index are the parent's")
    task_id: str
    task_kind: TaskKind
    repo: str
    image: str
    commit: str
    attempt: int = 0
    policy: PolicyInfo
    system_prompt: str = ""
    problem_statement: str = ""
    steps: list[Step] = Field(default_factory=list)
    exit_reason: ExitReason
    error: str | None = None
    result: EpisodeResult = Field(default_factory=EpisodeResult)
    started_at: float
    finished_at: float
    prompt_tokens: int = 0
    completion_tokens: int = 0
