"""What the model saw: one renderer of the conversation, used by the policy that sends it and by the
exports that train on it, so an exported conversation is exactly what the model was sent.

A conversation is the system message, the problem statement as the first user message, then per step
the assistant's turn and the observation. How a turn looks depends on the protocol:

- "tools" (native function calling): the assistant message carries `tool_calls` (its text, if any,
  as content); the observation comes back as a `tool` message with the call's id. A step whose reply
  held no usable call is the assistant's text, then the error as a `user` message.
- "text" (CWM's protocol): the system message ends with TEXT_TOOLS_HELP; the assistant writes one
  `<tool: NAME>…</tool>` block in plain text (a scripted policy's prose gets its block appended); the observation comes back as a `user` message
  `<output>\n…\n</output>`. A reply that was unusable is answered the same way, with the error inside.

An observation reads: `ERROR: <tool error>` if any, the output, then `[exit code N]` when non-zero and
`[timed out]` / `[truncated]` flags. Tool-call ids the model did not give (scripted policies) are
`call_<step index>`.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from typing import Any

from forager.models import Action, Observation, StateChange, Step

PROTOCOLS = ("tools", "text")
TOOL_NAMES = ("shell", "edit", "create", "submit")

TEXT_TOOLS_HELP = """\
Act with exactly ONE tool call per reply, written as a block:

<tool: bash>
a shell command (runs in a persistent bash session in the repository)
</tool>

<tool: edit>
path/to/file.py
<<<<<<< SEARCH
exact text to replace (must occur exactly once)
=======
the replacement text
>>>>>>> REPLACE
</tool>

<tool: create>
path/to/new_file.py
the file's full content
</tool>

<tool: submit>
</tool>

Each tool's result comes back as <output>…</output>. Call submit when the fix is done."""

_TOOL_BLOCK = re.compile(r"<tool:\s*([A-Za-z_]+)\s*>\n?(.*?)</tool>", re.S)
_EDIT_BODY = re.compile(r"^(?P<path>[^\n]+)\n<<<<<<< SEARCH\n(?P<old>.*?)\n?=======\n(?P<new>.*?)\n?>>>>>>> REPLACE\s*$", re.S)
_TEXT_TO_TOOL = {"bash": "shell", "shell": "shell", "edit": "edit", "create": "create", "submit": "submit"}
TOOL_TO_TEXT = {"shell": "bash", "edit": "edit", "create": "create", "submit": "submit"}


def check_protocol(protocol: str) -> str:
    if protocol not in PROTOCOLS:
        raise ValueError(f"protocol must be one of {', '.join(PROTOCOLS)}, not {protocol!r}")
    return protocol


# ---------------------------------------------------------------- the conversation


def system_message(system_prompt: str, protocol: str) -> str:
    return system_prompt + ("\n\n" + TEXT_TOOLS_HELP if check_protocol(protocol) == "text" else "")


def messages(system_prompt: str, problem_statement: str, steps: Iterable[Step], protocol: str) -> list[dict[str, Any]]:
    """The chat messages the model is sent after `steps` (the whole conversation, for an export)."""
    out: list[dict[str, Any]] = [{"role": "system", "content": system_message(system_prompt, protocol)},
                                 {"role": "user", "content": problem_statement}]
    for step in steps:
        out.extend(turn(step, protocol))
    return out


def turn(step: Step, protocol: str) -> list[dict[str, Any]]:
    """One step: the assistant's message and the observation, in the protocol's form."""
    action, obs = step.action, observation_text(step.observation)
    if protocol == "text":
        said = action.text
        if action.tool and "<tool:" not in said:  # a scripted policy's prose: the call follows as a block
            said = f"{said}\n{text_action(action)}" if said else text_action(action)
        return [{"role": "assistant", "content": said}, {"role": "user", "content": f"<output>\n{obs}\n</output>"}]
    if action.tool:
        call_id = action.tool_call_id or f"call_{step.index}"
        call = {"id": call_id, "type": "function",
                "function": {"name": action.tool, "arguments": json.dumps(action.arguments)}}
        return [{"role": "assistant", "content": action.text or None, "tool_calls": [call]},
                {"role": "tool", "tool_call_id": call_id, "content": obs}]
    # an unusable reply: show it back, then the error as the user's answer
    return [{"role": "assistant", "content": action.text or ""}, {"role": "user", "content": obs}]


def observation_text(obs: Observation) -> str:
    """What the model reads back: the tool's output (or error), exit code and flags in plain words."""
    parts = []
    if obs.error:
        parts.append(f"ERROR: {obs.error}")
    if obs.output:
        parts.append(obs.output)
    if obs.exit_code not in (None, 0):
        parts.append(f"[exit code {obs.exit_code}]")
    for flag in ("timed_out", "truncated"):
        if obs.flags.get(flag):
            parts.append(f"[{flag.replace('_', ' ')}]")
    return "\n".join(parts)


def state_text(state: StateChange | None) -> str:
    """A step's state record as text (exports' `--with-state` field; the model never saw it)."""
    if state is None:
        return "[state not recorded]"
    lines = [f"cwd: {state.cwd}" + (" (changed)" if state.cwd_changed else "")] if state.cwd else []
    if state.env_changed:
        lines.append("env: " + ", ".join(f"{k}={v}" if v is not None else f"{k} unset"
                                         for k, v in state.env_changed.items()))
    for label, paths in (("created", state.files_created), ("modified", state.files_modified),
                         ("deleted", state.files_deleted)):
        if paths:
            lines.append(f"{label}: {', '.join(paths)}")
    if not (state.files_created or state.files_modified or state.files_deleted):
        lines.append("files: unchanged")
    lines.append(f"tree: {state.tree_digest}")
    if state.diff:
        lines.append(state.diff.rstrip("\n"))
    if state.diff_truncated:
        lines.append(f"[diff cut: {state.diff_bytes} bytes in total]")
    return "\n".join(lines)


# ---------------------------------------------------------------- CWM's text protocol


def text_action(action: Action) -> str:
    """The `<tool: NAME>` block of an action (turns the policy did not write as text itself)."""
    args = action.arguments
    if action.tool == "shell":
        body = args.get("command", "") + "\n"
    elif action.tool == "edit":
        old, new = str(args.get("old", "")), str(args.get("new", ""))
        body = (f"{args.get('path', '')}\n<<<<<<< SEARCH\n{old}{'' if old.endswith(chr(10)) else chr(10)}"
                f"=======\n{new}{'' if new.endswith(chr(10)) else chr(10)}>>>>>>> REPLACE\n")
    elif action.tool == "create":
        body = f"{args.get('path', '')}\n{args.get('content', '')}"
    else:
        body = ""
    return f"<tool: {TOOL_TO_TEXT.get(action.tool or '', action.tool)}>\n{body}</tool>"


def parse_text_action(text: str) -> tuple[Action, str | None]:
    """One `<tool: NAME>` block → Action, or (Action(tool=None), the error to show the model)."""
    blocks = _TOOL_BLOCK.findall(text)
    if not blocks:
        return Action(tool=None, text=text), "No tool call found. Reply with exactly one <tool: NAME>…</tool> block."
    if len(blocks) > 1:
        return Action(tool=None, text=text), f"Found {len(blocks)} tool calls; use exactly one per reply."
    name, body = blocks[0]
    tool = _TEXT_TO_TOOL.get(name.lower())
    if tool is None:
        return Action(tool=None, text=text), f"Unknown tool {name!r}: use bash, edit, create or submit."
    if tool == "shell":
        command = body.rstrip("\n")
        if not command.strip():
            return Action(tool=None, text=text), "Empty bash command."
        return Action(tool="shell", arguments={"command": command}, text=text), None
    if tool == "edit":
        m = _EDIT_BODY.match(body)
        if not m:
            return Action(tool=None, text=text), ("Malformed edit: a path line, then <<<<<<< SEARCH, old, =======, "
                                                  "new, >>>>>>> REPLACE.")
        return Action(tool="edit", arguments={"path": m["path"].strip(), "old": _nl(m["old"]), "new": _nl(m["new"])},
                      text=text), None
    if tool == "create":
        path, _, content = body.partition("\n")
        if not path.strip():
            return Action(tool=None, text=text), "Malformed create: the first line must be the path."
        return Action(tool="create", arguments={"path": path.strip(), "content": content}, text=text), None
    return Action(tool="submit", arguments={}, text=text), None


def _nl(block: str) -> str:
    return block + "\n" if block else block
