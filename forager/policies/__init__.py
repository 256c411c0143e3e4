"""Policies: whatever proposes the next tool call. A Protocol, not a class tree.

A policy sees the episode so far (`Episode`) and returns a `Decision`: one `Action` plus what it
cost (model time, tokens). An unusable model output is still a Decision, with `format_error` set:
the loop answers it with an error observation instead of crashing. A model endpoint that fails
(after the SDK's own retries) raises `ModelError`; the episode then ends with exit reason model_error.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

from forager.models import Action, PolicyInfo, Step, Task

TOOL_NAMES = ("shell", "edit", "create", "submit")


class ModelError(RuntimeError):
    """The model endpoint failed: not the agent's fault, not the environment's."""


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


def make_policy(name: str, *, model: str | None = None, settings=None, **params: Any) -> Policy:
    """A policy by name: 'oracle' (scripted, mutate-fix/issue-fix with a gold patch) or 'openai'."""
    if name == "oracle":
        from forager.policies.oracle import OraclePolicy

        return OraclePolicy(**params)
    if name == "openai":
        from forager.policies.openai import OpenAIPolicy

        return OpenAIPolicy.from_settings(settings, model=model, **params)
    raise ValueError(f"unknown policy {name!r}: expected 'oracle' or 'openai'")
