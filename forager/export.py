"""Trajectories → training data: CWM's text format, or OpenAI chat messages for SFT.

- cwm: one record per trajectory, {"id", "task_id", "repo", "reward", "turns", "text"}. `turns` are
  (role, content) pairs: system, user (the task), assistant (the model's text with the action as a
  `<tool: NAME>…</tool>` block), tool (the observation as `<output>…</output>`); `text` joins them
  with `<|role|>` headers.
- chat: {"id", "task_id", "repo", "reward", "messages"} with native `tool_calls` and `tool` messages.
- cwm-trace: execution traces (not trajectories), rendered by forager.trace.export.

Exports are written to a temp file and renamed: a failed export never leaves half a file.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from forager.models import Trajectory
from forager.policies.openai import render_observation, render_text_action

FORMATS = ("cwm", "chat", "cwm-trace")


def cwm_turns(traj: Trajectory) -> list[dict[str, str]]:
    turns = [{"role": "system", "content": traj.system_prompt}, {"role": "user", "content": traj.problem_statement}]
    for step in traj.steps:
        action = step.action
        said = action.text or ""
        if action.tool and "<tool:" not in said:
            said = f"{said}\n{render_text_action(action)}" if said else render_text_action(action)
        turns.append({"role": "assistant", "content": said})
        turns.append({"role": "tool", "content": f"<output>\n{render_observation(step.observation)}\n</output>"})
    return turns


def to_cwm(traj: Trajectory) -> dict[str, Any]:
    turns = cwm_turns(traj)
    text = "".join(f"<|{t['role']}|>\n{t['content']}\n" for t in turns)
    return {**_head(traj), "turns": turns, "text": text}


def chat_messages(traj: Trajectory) -> list[dict[str, Any]]:
    messages: list[dict[str, Any]] = [{"role": "system", "content": traj.system_prompt},
                                      {"role": "user", "content": traj.problem_statement}]
    for step in traj.steps:
        action, observation = step.action, render_observation(step.observation)
        if action.tool:
            call_id = action.tool_call_id or f"call_{step.index}"
            messages.append({"role": "assistant", "content": action.text or None, "tool_calls": [
                {"id": call_id, "type": "function",
                 "function": {"name": action.tool, "arguments": json.dumps(action.arguments)}}]})
            messages.append({"role": "tool", "tool_call_id": call_id, "content": observation})
        else:  # a malformed reply and the error the agent was shown
            messages.append({"role": "assistant", "content": action.text})
            messages.append({"role": "user", "content": observation})
    return messages


def to_chat(traj: Trajectory) -> dict[str, Any]:
    return {**_head(traj), "messages": chat_messages(traj)}


def _head(traj: Trajectory) -> dict[str, Any]:
    return {"id": traj.id, "task_id": traj.task_id, "repo": traj.repo, "policy": traj.policy.name,
            "model": traj.policy.model, "reward": traj.result.reward, "exit_reason": traj.exit_reason}


def export_trajectories(trajectories: Iterable[Trajectory], fmt: str, out_path: str | Path, *,
                        min_reward: float | None = None) -> dict[str, Any]:
    render = {"cwm": to_cwm, "chat": to_chat}.get(fmt)
    if render is None:
        raise ValueError(f"unknown trajectory format {fmt!r}: expected cwm or chat")
    written = skipped = 0
    out_path = Path(out_path)
    with _atomic(out_path) as out:
        for traj in trajectories:
            if min_reward is not None and traj.result.reward < min_reward:
                skipped += 1
                continue
            out.write(json.dumps(render(traj)) + "\n")
            written += 1
    return {"format": fmt, "written": written, "skipped": skipped, "out": str(out_path)}


def export_traces(in_path: str | Path, out_path: str | Path) -> dict[str, Any]:
    """cwm-trace: the trace engineer's renderer (imported lazily: traces are an optional area)."""
    from forager.trace.export import export_traces as _export

    return {"format": "cwm-trace", **_export(in_path, out_path)}


class _atomic:
    def __init__(self, path: Path):
        self.path = path
        self.tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")

    def __enter__(self):
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.fh = open(self.tmp, "w", encoding="utf-8")
        return self.fh

    def __exit__(self, exc_type, *_):
        self.fh.close()
        if exc_type is None:
            os.replace(self.tmp, self.path)
        else:
            self.tmp.unlink(missing_ok=True)
