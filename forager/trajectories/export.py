"""Trajectories → training data, rendered by forager.trajectories.render (the code that built what the
model was sent):

- chat: {"id", "task_id", "repo", "policy", "model", "reward", "exit_reason", "protocol", "messages"}: the
  conversation in the trajectory's own protocol ("tools" for policies that have none, e.g. the oracle),
  message for message what a model was sent, plus its last reply and that reply's observation.
- cwm: the same head with "turns" (role, content) and "text" (turns joined under `<|role|>` headers), always
  in CWM's text protocol: for a text-protocol model exactly its conversation; for a function-calling one the
  same turns with each call written as a `<tool: NAME>` block and each observation as `<output>`.
- cwm-trace: execution traces (not trajectories), rendered by forager.trace.export.

Exports replace their output atomically: a failed export never leaves half a file.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from forager import jsonl
from forager.models import Trajectory
from forager.trajectories import render

FORMATS = ("cwm", "chat", "cwm-trace")


def protocol_of(traj: Trajectory) -> str:
    protocol = traj.policy.parameters.get("protocol")
    return protocol if protocol in render.PROTOCOLS else "tools"


def chat_messages(traj: Trajectory) -> list[dict[str, Any]]:
    return render.messages(traj.system_prompt, traj.problem_statement, traj.steps, protocol_of(traj))


def cwm_turns(traj: Trajectory) -> list[dict[str, str]]:
    return [{"role": m["role"], "content": m["content"]}
            for m in render.messages(traj.system_prompt, traj.problem_statement, traj.steps, "text")]


def to_chat(traj: Trajectory) -> dict[str, Any]:
    return {**_head(traj), "protocol": protocol_of(traj), "messages": chat_messages(traj)}


def to_cwm(traj: Trajectory) -> dict[str, Any]:
    turns = cwm_turns(traj)
    text = "".join(f"<|{t['role']}|>\n{t['content']}\n" for t in turns)
    return {**_head(traj), "turns": turns, "text": text}


def _head(traj: Trajectory) -> dict[str, Any]:
    return {"id": traj.id, "task_id": traj.task_id, "repo": traj.repo, "policy": traj.policy.name,
            "model": traj.policy.model, "reward": traj.result.reward, "exit_reason": traj.exit_reason}


def export_trajectories(trajectories: Iterable[Trajectory], fmt: str, out_path: str | Path, *,
                        min_reward: float | None = None) -> dict[str, Any]:
    to_record = {"cwm": to_cwm, "chat": to_chat}.get(fmt)
    if to_record is None:
        raise ValueError(f"unknown trajectory format {fmt!r}: expected cwm or chat")
    written = skipped = 0
    with jsonl.replacing(out_path) as out:
        for traj in trajectories:
            if min_reward is not None and traj.result.reward < min_reward:
                skipped += 1
                continue
            out.write(json.dumps(to_record(traj)) + "\n")
            written += 1
    return {"format": fmt, "written": written, "skipped": skipped, "out": str(out_path)}
