"""Every request and response of the environment server, in one place (server and client share it)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, Field

TestOutcome = Literal["passed", "failed", "error", "skipped"]


class Limits(BaseModel):
    """An env's resources. The server's own ceilings (ServerConfig.max_*) may be lower than these bounds."""

    cpus: float = Field(default=1.0, gt=0, le=64)
    memory_mb: int = Field(default=2048, ge=64, le=262144)
    pids: int = Field(default=512, ge=16, le=65536)
    disk_mb: int = Field(default=10240, ge=64, le=4 * 1024 * 1024,
                         description="disk the env may write (where the storage driver has quotas; see /healthz)")


class GradingSpec(BaseModel):
    """How submit grades: hidden tests the agent never sees, applied only at grading time."""

    test_command: str = Field(description="pytest-compatible command run in the workdir; junit args are appended")
    test_files: list[str] = Field(default_factory=list, description="restored from the base commit before grading")
    test_patch: str = Field(default="", description="applied after restoring test_files (issue-fix)")
    fail_to_pass: list[str] = Field(default_factory=list)
    pass_to_pass: list[str] = Field(default_factory=list)
    timeout: int = Field(default=900, ge=1, le=7200)
    per_test_timeout: int | None = Field(
        default=None, ge=1, le=7200, description="seconds one test may run (needs pytest-timeout in the image)"
    )


class CreateEnvRequest(BaseModel):
    image: str
    limits: Limits = Field(default_factory=Limits)
    ttl: int = Field(default=3600, ge=10, le=86400, description="seconds until the reaper removes the env")
    workdir: str | None = Field(default=None, description="defaults to the image's working directory")
    setup_patch: str = Field(
        default="",
        description="applied to the working tree, then the repo is re-initialised with one base commit "
        "so no earlier state is reachable from git",
    )
    grading: GradingSpec | None = None
    labels: dict[str, str] = Field(default_factory=dict, description="free-form, e.g. task id")
    record_state: bool = Field(default=True, description="record what each tool call changed (StateRecord)")


class ForkRequest(BaseModel):
    """POST /envs/{id}/fork: `count` new envs with the source's files, cwd and exported variables."""

    count: int = Field(default=1, ge=1, le=64)
    ttl: int | None = Field(default=None, ge=10, le=86400, description="default: the source's remaining ttl")
    labels: dict[str, str] = Field(default_factory=dict, description="added to the source's labels")


class EnvInfo(BaseModel):
    id: str
    image: str
    container_id: str
    status: Literal["running", "gone"]
    created_at: float
    expires_at: float
    workdir: str
    base_commit: str | None = None
    labels: dict[str, str] = Field(default_factory=dict)
    gradable: bool = False
    fork_of: str | None = Field(default=None, description="the env this one was forked from")
    cwd: str | None = None


class StateRecord(BaseModel):
    """What one tool call changed in the env (observational world-model data, not a security boundary: the
    agent can hide a change from the stat walk by restoring a file's size, mtime and inode). Mirrors
    forager.models.StateChange."""

    files_created: list[str] = Field(default_factory=list)
    files_modified: list[str] = Field(default_factory=list)
    files_deleted: list[str] = Field(default_factory=list)
    diff: str = Field(default="", description="unified diff of the repository change, capped")
    diff_truncated: bool = False
    diff_bytes: int = 0
    cwd: str | None = None
    cwd_changed: bool = False
    env_changed: dict[str, str | None] = Field(default_factory=dict, description="exported variables (None: unset)")
    tree_digest: str = ""
    seconds: float = 0.0


class ShellRequest(BaseModel):
    command: str
    timeout: float | None = Field(default=None, gt=0, description="seconds; default 120, capped by the server")


class ShellResponse(BaseModel):
    output: str
    exit_code: int | None
    timed_out: bool = False
    truncated: bool = False
    full_output_path: str | None = Field(default=None, description="file inside the env holding the uncut output")
    duration: float = 0.0
    state: StateRecord | None = Field(default=None, description="what the command changed (None: not recorded)")


class EditRequest(BaseModel):
    path: str
    old: str
    new: str


class CreateFileRequest(BaseModel):
    path: str
    content: str


class FileToolResponse(BaseModel):
    """edit/create: success carries a numbered snippet; a tool error is a normal 200 with ok=False."""

    ok: bool
    output: str = Field(description="snippet on success, the error message the agent should read otherwise")
    state: StateRecord | None = None


class SubmitResponse(BaseModel):
    patch: str = Field(description="every difference between the env's files and its base: the bytes that were graded")
    graded: bool = False
    reward: float | None = Field(default=None, description="None when the env has no grading spec")
    tests: dict[str, TestOutcome] = Field(default_factory=dict)
    fail_to_pass: dict[str, TestOutcome] = Field(default_factory=dict)
    pass_to_pass: dict[str, TestOutcome] = Field(default_factory=dict)
    dropped_files: list[str] = Field(
        default_factory=list, description="files of the patch put back to their base version before the tests ran"
    )
    grading_error: str | None = Field(default=None, description="why the patch was graded 0 without a test verdict")
    grading_log: str = ""
    duration: float = 0.0
    test_seconds: float = Field(default=0.0, description="of `duration`, the time the test run itself took")


class ToolSchema(BaseModel):
    type: Literal["function"] = "function"
    function: dict[str, Any]


class ErrorResponse(BaseModel):
    error: Literal["unknown_env", "env_gone", "env_broken", "docker_unavailable", "bad_request", "image_not_allowed",
                   "unauthorized"]
    message: str
