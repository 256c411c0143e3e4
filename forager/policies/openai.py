"""A chat model behind any OpenAI-compatible endpoint (vLLM, SGLang, a hosted API), via the `openai` SDK.

Two protocols, chosen by config:
- "tools": native function calling with the env server's tool schemas; observations go back as
  `tool` messages.
- "text": CWM's text protocol: the model writes one `<tool: NAME>…</tool>` block per turn
  (bash/edit/create/submit), observations come back as `<output>…</output>` user messages.
The conversation is rebuilt from the episode's steps every turn, so the trajectory alone is enough
to reproduce exactly what the model saw.
"""

from __future__ import annotations

import json
import re
import time
from typing import Any

from forager.models import Action, Observation, PolicyInfo, Step
from forager.policies import TOOL_NAMES, Decision, Episode, ModelError

# ---------------------------------------------------------------- CWM's text protocol

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
            return Action(tool=None, text=text), "Malformed edit: a path line, then <<<<<<< SEARCH, old, =======, new, >>>>>>> REPLACE."
        return Action(tool="edit", arguments={"path": m["path"].strip(), "old": _nl(m["old"]), "new": _nl(m["new"])}, text=text), None
    if tool == "create":
        path, _, content = body.partition("\n")
        if not path.strip():
            return Action(tool=None, text=text), "Malformed create: the first line must be the path."
        return Action(tool="create", arguments={"path": path.strip(), "content": content}, text=text), None
    return Action(tool="submit", arguments={}, text=text), None


def _nl(block: str) -> str:
    return block + "\n" if block else block


def render_text_action(action: Action) -> str:
    """The `<tool: NAME>` block of an action (for exports and for turns the policy did not write itself)."""
    args = action.arguments
    if action.tool == "shell":
        body = args.get("command", "") + "\n"
    elif action.tool == "edit":
        body = (f"{args.get('path', '')}\n<<<<<<< SEARCH\n{args.get('old', '')}"
                f"{'' if str(args.get('old', '')).endswith(chr(10)) else chr(10)}=======\n{args.get('new', '')}"
                f"{'' if str(args.get('new', '')).endswith(chr(10)) else chr(10)}>>>>>>> REPLACE\n")
    elif action.tool == "create":
        body = f"{args.get('path', '')}\n{args.get('content', '')}"
    else:
        body = ""
    return f"<tool: {TOOL_TO_TEXT.get(action.tool or '', action.tool)}>\n{body}</tool>"


def render_observation(obs: Observation) -> str:
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


# ---------------------------------------------------------------- the policy


class OpenAIPolicy:
    def __init__(self, base_url: str | None, model: str, api_key: str | None = None, protocol: str = "tools",
                 temperature: float = 0.0, max_completion_tokens: int | None = 4096, timeout: float = 600,
                 max_retries: int = 2, extra_body: dict[str, Any] | None = None):
        from openai import OpenAI

        if protocol not in ("tools", "text"):
            raise ValueError(f"protocol must be 'tools' or 'text', not {protocol!r}")
        if not model:
            raise ValueError("the openai policy needs a model name (FORAGER_MODEL or --model)")
        self.protocol, self.model = protocol, model
        self.params = {"temperature": temperature, "max_tokens": max_completion_tokens}
        self.extra_body = extra_body or {}
        self.client = OpenAI(base_url=base_url, api_key=api_key or "unused", timeout=timeout, max_retries=max_retries)
        self.info = PolicyInfo(name="openai", model=model, parameters={"protocol": protocol, "base_url": base_url, **self.params})

    @classmethod
    def from_settings(cls, settings=None, *, model: str | None = None, **params: Any) -> "OpenAIPolicy":
        from forager.config import Settings

        settings = settings or Settings.from_env()
        params.setdefault("protocol", settings.model_protocol)
        return cls(settings.model_base_url, model or settings.model_name or "", settings.model_api_key, **params)

    # -- conversation

    def messages(self, episode: Episode) -> list[dict[str, Any]]:
        system = episode.system_prompt + ("\n\n" + TEXT_TOOLS_HELP if self.protocol == "text" else "")
        msgs: list[dict[str, Any]] = [{"role": "system", "content": system},
                                      {"role": "user", "content": episode.problem_statement}]
        for step in episode.steps:
            msgs.extend(self._turn(step))
        return msgs

    def _turn(self, step: Step) -> list[dict[str, Any]]:
        action, obs = step.action, step.observation
        if self.protocol == "text":
            said = action.text or render_text_action(action)
            return [{"role": "assistant", "content": said},
                    {"role": "user", "content": f"<output>\n{render_observation(obs)}\n</output>"}]
        if action.tool and action.tool_call_id:
            call = {"id": action.tool_call_id, "type": "function",
                    "function": {"name": action.tool, "arguments": json.dumps(action.arguments)}}
            return [{"role": "assistant", "content": action.text or None, "tool_calls": [call]},
                    {"role": "tool", "tool_call_id": action.tool_call_id, "content": render_observation(obs)}]
        # an unusable reply: show it back, then the error as the user's answer
        return [{"role": "assistant", "content": action.text or ""},
                {"role": "user", "content": render_observation(obs)}]

    def next_action(self, episode: Episode) -> Decision:
        kwargs: dict[str, Any] = {"model": self.model, "messages": self.messages(episode), **self.params}
        if self.protocol == "tools":
            kwargs["tools"] = episode.tools
            kwargs["tool_choice"] = "auto"
        if self.extra_body:
            kwargs["extra_body"] = self.extra_body
        started = time.monotonic()
        try:
            resp = self.client.chat.completions.create(**kwargs)
        except Exception as exc:  # noqa: BLE001 - any SDK/HTTP failure is the model's, typed for the loop
            raise ModelError(f"{type(exc).__name__}: {exc}") from exc
        seconds = time.monotonic() - started
        usage = getattr(resp, "usage", None)
        cost = {"model_seconds": seconds,
                "prompt_tokens": getattr(usage, "prompt_tokens", 0) or 0,
                "completion_tokens": getattr(usage, "completion_tokens", 0) or 0}
        if not resp.choices:
            raise ModelError("the model returned no choices")
        message = resp.choices[0].message
        text = message.content or ""
        if self.protocol == "text":
            action, error = parse_text_action(text)
            return Decision(action, format_error=error, **cost)
        action, error = _parse_tool_calls(message, text)
        return Decision(action, format_error=error, **cost)


def _parse_tool_calls(message, text: str) -> tuple[Action, str | None]:
    calls = message.tool_calls or []
    if not calls:
        return Action(tool=None, text=text), "No tool call in your reply: call exactly one of the tools."
    call = calls[0]
    name = call.function.name
    extra = f" (only the first of {len(calls)} tool calls was considered)" if len(calls) > 1 else ""
    if name not in TOOL_NAMES:
        return Action(tool=None, text=text, tool_call_id=call.id), f"Unknown tool {name!r}{extra}."
    try:
        args = json.loads(call.function.arguments or "{}")
        if not isinstance(args, dict):
            raise ValueError("arguments must be a JSON object")
    except ValueError as exc:
        return Action(tool=None, text=text, tool_call_id=call.id), f"Invalid JSON arguments for {name}: {exc}"
    if len(calls) > 1:
        return Action(tool=None, text=text, tool_call_id=call.id), f"Call exactly one tool per reply{extra}."
    return Action(tool=name, arguments=args, text=text, tool_call_id=call.id), None
