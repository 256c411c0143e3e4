"""Every error Forager raises on purpose outside the env server, in one tree.

    ForagerError                    anything Forager means to tell the user; the CLI catches this once
    ├── UsageError                  bad input from the user: a list line, a task id, a path, an option
    ├── SetupError                  this machine cannot be set up as asked (says what to do instead)
    ├── BuildError                  the builder (images/)
    │   ├── SourceError             fetching a source failed              (failure class `clone`)
    │   ├── DetectError             nothing usable detected                (failure class `detect`)
    │   └── PushError               tagging or pushing to a registry failed
    ├── TaskError                   tasks (forager/tasks/)
    │   ├── SynthesisError          an image cannot yield mutate-fix tasks
    │   └── MiningError             a repository's history cannot yield issue-fix tasks
    ├── ModelError                  the model endpoint failed (not the agent's fault, nor the env's)
    ├── EpisodeInfraError           the env failed under an episode; carries the partial trajectory
    └── FleetError                  the fleet (agent/)
        ├── ServiceError            Redis, the env server or workers cannot be reached or started
        ├── PoolError               a worker pool cannot run
        └── InfraError              a job's infrastructure failed: RQ retries the job

    envserver.errors.EnvServerError is the env server's own tree (typed HTTP errors, shared with its
    client). It is not a ForagerError because the server imports nothing of Forager; the CLI catches
    both; sandboxes (envserver.sandbox) raise it too, since they live in the server's package. An agent's mistake (a failed edit, a non-zero exit code) is never an exception at all.
"""

from __future__ import annotations

from typing import Any


class ForagerError(Exception):
    """Base of every error Forager raises on purpose; its message is written for the user."""


class UsageError(ForagerError):
    pass


class SetupError(ForagerError):
    pass


class BuildError(ForagerError):
    pass


class SourceError(BuildError):
    pass


class DetectError(BuildError):
    pass


class PushError(BuildError):
    pass


class TaskError(ForagerError):
    pass


class SynthesisError(TaskError):
    pass


class MiningError(TaskError):
    pass


class ModelError(ForagerError):
    pass


class EpisodeInfraError(ForagerError):
    """The environment failed under the episode (retryable); `.trajectory` holds what was recorded."""

    def __init__(self, message: str, trajectory: Any):
        super().__init__(message)
        self.trajectory = trajectory


class FleetError(ForagerError):
    pass


class ServiceError(FleetError):
    pass


class PoolError(FleetError):
    pass


class InfraError(FleetError):
    """The environment failed, not the agent: the job is retried."""
