"""Trajectories → training data, rendered by forager.trajectories.render (the code that built what the
model was sent):

- chat: {"id", "task_id", "repo", "policy", "model", "reward", "exit_reason", "parent_id", "branch_step",
  "protocol", "messages"}: the conversation in the trajectory's own protocol ("tools" for policies that have
  none, e.g. the oracle), message for message what a model was sent, plus its last reply and its observation.
- cwm: the same head with "turns" (role, content) and "text" (turns joined under `<|role|>` headers), always
  in CWM's text protocol: for a text-protocol model exactly its conversation; for a function-calling one the
  same turns with each call written as a `<tool: NAME>` block and each observation as `<output>`.
- cwm-trace: execution traces (not trajectories), rendered by forager.trace.export.

`with_state` adds each step's state record (render.state_text) as its own field beside the observation
(`"state"` on the observation message or turn; in cwm's text a `<|state|>` section after it): never inside
what the model saw, which stays byte for byte the same. `tree="triples"` flattens trajectories (and
branching trees) into (state, action) → observation records instead: one per step that reached the env,
a branch contributing only its own steps, so counterfactual branches share their `state` (docs/world.md).

Exports replace their output atomically: a failed export never leaves half a file.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from forager import jsonl
from forager.models import Trajectory
from forager.trajectories import render

FORMATS = ("cwm", "chat", "cwm-trace")
TREE_MODES = ("episodes", "triples")


def protocol_of(traj: Trajectory) -> str:
    protocol = traj.policy.parameters.get("protocol")
    return protocol if protocol in render.PROTOCOLS else "tools"


def chat_messages(traj: Trajectory, with_state: bool = False) -> list[dict[str, Any]]:
    messages = render.messages(traj.system_prompt, traj.problem_statement, traj.steps, protocol_of(traj))
    return _with_states(messages, traj) if with_state else messages


def cwm_turns(traj: Trajectory, with_state: bool = False) -> list[dict[str, str]]:
    turns = [{"role": m["role"], "content": m["content"]}
             for m in render.messages(traj.system_prompt, traj.problem_statement, traj.steps, "text")]
    return _with_states(turns, traj) if with_state else turns


def _with_states(messages: list[dict[str, Any]], traj: Trajectory) -> list[dict[str, Any]]:
    """Every step renders as two messages (its turn, then its observation) after the system and problem."""
    for i, step in enumerate(traj.steps):
        messages[2 + 2 * i + 1]["state"] = render.state_text(step.state)
    return messages


def to_chat(traj: Trajectory, with_state: bool = False) -> dict[str, Any]:
    return {**_head(traj), "protocol": protocol_of(traj), "messages": chat_messages(traj, with_state)}


def to_cwm(traj: Trajectory, with_state: bool = False) -> dict[str, Any]:
    turns = cwm_turns(traj, with_state)
    text = "".join(f"<|{t['role']}|>\n{t['content']}\n" + (f"<|state|>\n{t['state']}\n" if "state" in t else "")
                   for t in turns)
    return {**_head(traj), "turns": turns, "text": text}


def _head(traj: Trajectory) -> dict[str, Any]:
    return {"id": traj.id, "task_id": traj.task_id, "repo": traj.repo, "policy": traj.policy.name,
            "model": traj.policy.model, "reward": traj.result.reward, "exit_reason": traj.exit_reason,
            "parent_id": traj.parent_id, "branch_step": traj.branch_step}


def triples(traj: Trajectory) -> Iterator[dict[str, Any]]:
    """(state, action) → observation, next state: the steps this trajectory took itself (a branch's start at
    its branch step). `state` is the tree digest and cwd before the action (`initial:<task id>` before the
    first: a task's starting state is the same in every env)."""
    digest, cwd = f"initial:{traj.task_id}", None
    for step in traj.steps:
        if step.index >= (traj.branch_step or 0) and step.action.tool is not None:
            yield {"trajectory": traj.id, "parent_id": traj.parent_id, "task_id": traj.task_id, "step": step.index,
                   "state": {"tree_digest": digest, "cwd": cwd},
                   "action": {"tool": step.action.tool, "arguments": step.action.arguments},
                   "observation": render.observation_text(step.observation),
                   "next_state": step.state.model_dump() if step.state is not None else None}
        if step.state is not None:
            digest, cwd = step.state.tree_digest, step.state.cwd


def records(trajectories: Iterable[Trajectory], fmt: str, *, min_reward: float | None = None,
            with_state: bool = False, tree: str = "episodes", skipped: list[str] | None = None
            ) -> Iterator[dict[str, Any]]:
    """The export's records (JSONL here, Parquet in forager.interfaces.parquet); ids below `min_reward` go to
    `skipped`."""
    to_record = {"cwm": to_cwm, "chat": to_chat}.get(fmt)
    if to_record is None:
        raise ValueError(f"unknown trajectory format {fmt!r}: expected cwm or chat")
    if tree not in TREE_MODES:
        raise ValueError(f"unknown tree mode {tree!r}: expected {' or '.join(TREE_MODES)}")
    for traj in trajectories:
        if min_reward is not None and traj.result.reward < min_reward:
            if skipped is not None:
                skipped.append(traj.id)
            continue
        yield from (triples(traj) if tree == "triples" else [to_record(traj, with_state)])


def export_trajectories(trajectories: Iterable[Trajectory], fmt: str, out_path: str | Path, *,
                        min_reward: float | None = None, with_state: bool = False,
                        tree: str = "episodes") -> dict[str, Any]:
    skipped: list[str] = []
    rows = records(trajectories, fmt, min_reward=min_reward, with_state=with_state, tree=tree, skipped=skipped)
    written = 0
    with jsonl.replacing(out_path) as out:
        for record in rows:
            out.write(json.dumps(record) + "\n")
            written += 1
    return {"format": fmt, "tree": tree, "written": written, "skipped": len(skipped), "out": str(out_path)}
