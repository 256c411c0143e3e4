"""Policies: whatever proposes the next tool call. A Protocol, not a class tree.

A policy sees the episode so far (`Episode`) and returns a `Decision`: one `Action` plus what it
cost (model time, tokens). An unusable model output is still a Decision, with `format_error` set:
the loop answers it with an error observation instead of crashing. A model endpoint that fails
(after its retries, per request: policies/endpoint.py) raises `ModelError`; the episode then ends with exit reason model_error.

A policy is named by a config (`OracleConfig | OpenAIConfig`, told apart by `name`) that validates its
parameters where it is made, so a bad parameter fails when a job is enqueued, not later in a worker,
and `make(settings)` builds the policy it names.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Annotated, Any, Literal, Protocol

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError

from forager.config import Settings
from forager.errors import ModelError, UsageError
from forager.models import Action, PolicyInfo, Step, Task
from forager.trajectories.render import TOOL_NAMES

__all__ = ["Decision", "Episode", "ModelError", "Policy", "PolicyConfig", "OracleConfig", "OpenAIConfig",
           "TOOL_NAMES", "make_policy", "policy_config"]


@dataclass
class Episode:
    task: Task
    system_prompt: str
    problem_statement: str
    tools: list[dict[str, Any]] = field(default_factory=list)  # the env server's function schemas
    steps: list[Step] = field(default_factory=list)


@dataclass
class Decision:
    action: Action
    model_seconds: float = 0.0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    format_error: str | None = None  # set when the output held no usable tool call


class Policy(Protocol):
    info: PolicyInfo

    def next_action(self, episode: Episode) -> Decision: ...


class OracleConfig(BaseModel):
    """The scripted policy that knows the fix (the task's gold patch)."""

    model_config = ConfigDict(extra="forbid")
    name: Literal["oracle"] = "oracle"
    model: None = None
    run_tests: bool = True

    def make(self, settings: Settings | None = None) -> Policy:
        from forager.episodes.policies.oracle import OraclePolicy

        return OraclePolicy(run_tests=self.run_tests)

    def make_async(self, settings: Settings | None = None) -> Policy:
        return self.make(settings)  # no I/O of its own: its next_action is the same in an event loop


class OpenAIConfig(BaseModel):
    """A chat model behind an OpenAI-compatible endpoint; endpoint and key come from the worker's Settings
    unless given (the key is never put in a job)."""

    model_config = ConfigDict(extra="forbid")
    name: Literal["openai"] = "openai"
    model: str = Field(min_length=1)
    protocol: Literal["tools", "text"] = "tools"
    base_url: str | None = None
    temperature: float = 0.0
    max_completion_tokens: int | None = 4096
    timeout: float = 600
    max_retries: int = Field(default=5, ge=0, description="retries of one failed request (429, 5xx, timeout)")
    extra_body: dict[str, Any] = Field(default_factory=dict)

    def make(self, settings: Settings | None = None) -> Policy:
        from forager.episodes.policies.openai import OpenAIPolicy

        return OpenAIPolicy(*self._endpoint(settings), **self._options(settings))

    def make_async(self, settings: Settings | None = None):
        """The policy as a coroutine (`await policy.next_action(episode)`), for an async worker."""
        from forager.episodes.policies.openai import AsyncOpenAIPolicy

        return AsyncOpenAIPolicy(*self._endpoint(settings), **self._options(settings))

    def _endpoint(self, settings: Settings | None) -> tuple[str, str, str | None]:
        base_url = self.base_url or (settings.model_base_url if settings else None)
        if not base_url:
            raise UsageError("the openai policy needs an endpoint: FORAGER_MODEL_BASE_URL or base_url")
        return base_url, self.model, settings.model_api_key if settings else None

    def _options(self, settings: Settings | None) -> dict[str, Any]:
        return dict(protocol=self.protocol, temperature=self.temperature, max_completion_tokens=self.max_completion_tokens,
                    timeout=self.timeout, max_retries=self.max_retries, extra_body=self.extra_body,
                    max_concurrency=settings.model_max_concurrency if settings else 64)


PolicyConfig = Annotated[OracleConfig | OpenAIConfig, Field(discriminator="name")]
_ADAPTER: TypeAdapter = TypeAdapter(PolicyConfig)
POLICY_NAMES = ("oracle", "openai")


def policy_config(name: str, *, model: str | None = None, settings: Settings | None = None,
                  **params: Any) -> OracleConfig | OpenAIConfig:
    """A validated policy config from a name, a model and KEY=VALUE parameters (UsageError when invalid)."""
    if name not in POLICY_NAMES:
        raise UsageError(f"unknown policy {name!r}: expected {' or '.join(POLICY_NAMES)}")
    fields: dict[str, Any] = {"name": name, **params}
    if name == "openai":
        fields["model"] = model or (settings.model_name if settings else None) or ""
        if not fields["model"]:
            raise UsageError("the openai policy needs a model name (FORAGER_MODEL or --model)")
        if settings is not None:
            fields.setdefault("protocol", settings.model_protocol)
    elif model:
        raise UsageError(f"the {name} policy takes no model")
    try:
        return _ADAPTER.validate_python(fields)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc'][1:])) or name}: {e['msg']}" for e in exc.errors())
        raise UsageError(f"bad {name} policy parameters: {problems}") from None


def make_policy(name: str, *, model: str | None = None, settings: Settings | None = None, **params: Any) -> Policy:
    """A ready policy from a name and parameters (validated as policy_config does)."""
    return policy_config(name, model=model, settings=settings, **params).make(settings)


def load_policy_config(data: dict[str, Any]) -> OracleConfig | OpenAIConfig:
    """A config back from its JSON form (a job's kwargs)."""
    return _ADAPTER.validate_python(data)
