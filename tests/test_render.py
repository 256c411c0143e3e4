"""One renderer: the conversation an export writes is, message for message, what the model server received.

The openai policy talks to a real OpenAI-compatible HTTP server with scripted replies (the only stand-in
allowed); the env is the in-memory scripted env server. Both protocols, format errors included.
"""

from __future__ import annotations

import pytest

from forager.episodes.loop import run_episode
from forager.episodes.policies import make_policy
from forager.trajectories.export import to_chat, to_cwm
from forager.trajectories.render import TEXT_TOOLS_HELP, text_action
from forager.models import Action
from tests.test_episode_loop import TASK


def _replies(protocol: str) -> list[dict]:
    edit = Action(tool="edit", arguments={"path": "calc.py", "old": "return a - b", "new": "return a + b"})
    if protocol == "tools":
        return [{"tool": "shell", "arguments": {"command": "cat calc.py"}},
                {"text": "no call here"},  # a format error the model is shown
                {"tool": "shell", "raw_arguments": "{oops"},
                {"tool": "edit", "arguments": edit.arguments},
                {"tool": "submit", "arguments": {}}]
    return [{"text": "Let me look.\n<tool: bash>\ncat calc.py\n</tool>"},
            {"text": "no block"},
            {"text": "Fixing.\n" + text_action(edit)},
            {"text": "<tool: submit>\n</tool>"}]


@pytest.mark.parametrize("protocol", ["tools", "text"])
def test_exported_conversation_is_what_the_model_was_sent(scripted_model, scripted_env, protocol):
    scripted_model.script(_replies(protocol))
    policy = make_policy("openai", model="scripted-model", base_url=scripted_model.base_url, protocol=protocol,
                         max_retries=0)
    traj = run_episode(TASK, policy, scripted_env, max_turns=10)
    assert traj.exit_reason == "submitted" and traj.result.reward == 1.0
    sent = [r["messages"] for r in scripted_model.requests]
    exported = to_chat(traj)
    assert exported["protocol"] == protocol
    # every request is a prefix of the exported conversation, message for message; the last one is it
    # but for the final reply (the submit) and that reply's observation
    for messages in sent:
        assert exported["messages"][: len(messages)] == messages
    assert len(exported["messages"]) == len(sent[-1]) + 2
    if protocol == "tools":
        assert all(r.get("tools") for r in scripted_model.requests)
        assert any(m["role"] == "tool" for m in sent[-1])
    else:
        assert sent[0][0]["content"].endswith(TEXT_TOOLS_HELP)
        # the CWM export is CWM's text protocol: for a text-protocol model, exactly its conversation
        assert to_cwm(traj)["turns"] == [{"role": m["role"], "content": m["content"]} for m in exported["messages"]]
