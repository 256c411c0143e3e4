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
BuildStatus = Literal["ok", "clone", "detect", "install", "collect", "timeout", "low_pass_rate", "error"]


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
    created_at: float = Field(default_factory=time.time)

    @property
    def pass_rate(self) -> float:
        counted = self.tests_passed + self.tests_failed
        return self.tests_passed / counted if counted else 0.0


# ---------------------------------------------------------------- tasks

TaskKind = Literal["mutate-fix", "issue-fix"]


class Mutation(BaseModel):
    operator: str
    file: str
    function: str
    lineno: int
    description: str = ""


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
    mutation: Mutation | None = None
    hide_tests: bool = True
    created_at: float = Field(default_factory=time.time)


# ---------------------------------------------------------------- trajectories

TRAJECTORY_SCHEMA_VERSION = "1.0"

ExitReason = Literal[
    "submitted", "max_turns", "max_tokens", "wall_clock", "model_error", "infra_error", "format_error_limit"
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


class Step(BaseModel):
    index: int
    action: Action
    observation: Observation
    model_seconds: float = 0.0
    env_seconds: float = 0.0
    prompt_tokens: int = 0
    completion_tokens: int = 0


class EpisodeResult(BaseModel):
    patch: str = ""
    reward: float = 0.0
    tests: dict[str, TestOutcome] = Field(default_factory=dict)


class Trajectory(BaseModel):
    schema_version: str = TRAJECTORY_SCHEMA_VERSION
    id: str = Field(description="derived from (task, attempt, policy, model): a retry overwrites, never duplicates")
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
