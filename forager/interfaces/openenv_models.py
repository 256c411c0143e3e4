"""OpenEnv's wire format for Forager envs: actions, observations, state, and the MCP tool listing.

An action is one tool call, told apart by `type` (shell, edit, create, submit), or one of the MCP actions
OpenEnv's MCPToolClient sends through step (`list_tools`, `call_tool`). `metadata` may carry what the model
said (`text`, `tool_call_id`) and what it cost (`prompt_tokens`, `completion_tokens`): they go into the
trajectory's step. Observations are sent as OpenEnv's serializer does: {"observation": {...}, "reward",
"done"}; reward is None until the episode ends, then the graded reward (0.0 for an episode that ended
without a submit).
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter

from forager.interfaces.driver import Event
from forager.models import Action


class _Action(BaseModel):
    model_config = ConfigDict(extra="forbid")
    metadata: dict[str, Any] = Field(default_factory=dict, description="text, tool_call_id, prompt_tokens, "
                                     "completion_tokens: recorded in the trajectory's step")


class ShellAction(_Action):
    type: Literal["shell"] = "shell"
    command: str


class EditAction(_Action):
    type: Literal["edit"] = "edit"
    path: str
    old: str
    new: str


class CreateAction(_Action):
    type: Literal["create"] = "create"
    path: str
    content: str


class SubmitAction(_Action):
    type: Literal["submit"] = "submit"


class ListToolsAction(_Action):
    type: Literal["list_tools"] = "list_tools"


class CallToolAction(_Action):
    type: Literal["call_tool"] = "call_tool"
    tool_name: str
    arguments: dict[str, Any] = Field(default_factory=dict)


ToolAction = ShellAction | EditAction | CreateAction | SubmitAction
ForagerAction = Annotated[ToolAction | ListToolsAction | CallToolAction, Field(discriminator="type")]
ACTION = TypeAdapter(ForagerAction)
TOOL_ACTION = TypeAdapter(Annotated[ToolAction, Field(discriminator="type")])


class ForagerObservation(BaseModel):
    """What a step (or reset) returns. The episode's first observation carries the task; the last its result."""

    done: bool = False
    reward: float | None = None
    metadata: dict[str, Any] = Field(default_factory=dict)
    episode_id: str
    task_id: str
    step: int | None = Field(default=None, description="index of the step this answers (None: the reset)")
    tool: str | None = None
    output: str = ""
    exit_code: int | None = None
    error: str | None = Field(default=None, description="a tool error the agent should read (failed edit, ...)")
    flags: dict[str, Any] = Field(default_factory=dict, description="timed_out, truncated, graded, ...")
    state: dict[str, Any] | None = Field(default=None, description="what the step changed (Forager's state record)")
    problem_statement: str | None = None
    system_prompt: str | None = None
    tool_schemas: list[dict[str, Any]] | None = Field(default=None, description="the tools, as function schemas")
    exit_reason: str | None = None
    result: dict[str, Any] | None = Field(default=None, description="the graded result: patch, tests, reward")
    trajectory_id: str | None = None


class ForagerState(BaseModel):
    episode_id: str | None = None
    step_count: int = 0
    task_id: str | None = None
    done: bool = False
    reward: float | None = None
    exit_reason: str | None = None
    trajectory_id: str | None = None


def to_forager(action: ToolAction) -> tuple[Action, dict[str, int]]:
    """A wire action as the loop's Action, and the token counts its metadata reports."""
    meta = action.metadata
    arguments = action.model_dump(exclude={"type", "metadata"})
    tokens = {k: int(meta.get(k) or 0) for k in ("prompt_tokens", "completion_tokens")}
    return Action(tool=action.type, arguments=arguments, text=str(meta.get("text") or ""),
                  tool_call_id=meta.get("tool_call_id")), tokens


def observation(event: Event, episode_id: str, task_id: str, *, first: dict[str, Any] | None = None) -> ForagerObservation:
    """The observation of the last step of `event` (or the reset's, with `first`), done and reward included."""
    obs = ForagerObservation(episode_id=episode_id, task_id=task_id, **(first or {}))
    last = event.last
    if last is not None and first is None:
        obs.step, obs.tool = last.index, last.action.tool
        obs.output, obs.exit_code = last.observation.output, last.observation.exit_code
        obs.error, obs.flags = last.observation.error, dict(last.observation.flags)
        obs.state = last.state.model_dump() if last.state is not None else None
    if event.trajectory is not None:
        traj = event.trajectory
        obs.done, obs.reward = True, traj.result.reward
        obs.exit_reason, obs.trajectory_id = traj.exit_reason, traj.id
        obs.result = traj.result.model_dump()
        if traj.exit_reason not in ("submitted", "env_broken") and traj.error:
            obs.error = obs.error or traj.error
    return obs


def wire(obs: ForagerObservation) -> dict[str, Any]:
    """OpenEnv's serialization: the observation's fields, with reward and done beside them."""
    return {"observation": obs.model_dump(exclude={"done", "reward", "metadata"}, mode="json"),
            "reward": obs.reward, "done": obs.done}


def mcp_tools(tool_schemas: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The env server's function schemas as MCP tools (name, description, inputSchema)."""
    out = []
    for schema in tool_schemas:
        fn = schema.get("function", schema)
        params = fn.get("parameters") or {"type": "object", "properties": {}}
        out.append({"name": fn["name"], "description": fn.get("description", ""), "inputSchema": params,
                    "input_schema": params})
    return out


def schemas() -> dict[str, Any]:
    return {"action": ACTION.json_schema(), "observation": ForagerObservation.model_json_schema(),
            "state": ForagerState.model_json_schema()}
