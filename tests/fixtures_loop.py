"""An env server in memory for the loop's fast tests: a deterministic stand-in, not a mock.

`ScriptedEnvServer` implements what `forager.episodes.loop.EnvServer` asks for. Shell commands answer
from a dict (command -> output, exit code), or echo; files live in a dict so edit/create behave as the
real server's do (unique match, file exists); submit grades with a fixed reward. `fail_on` makes a named
tool raise a given env-server error, to drive infra and env_broken endings.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from types import SimpleNamespace

import pytest

from envserver.models import FileToolResponse, ShellResponse, SubmitResponse
from envserver.tools import TOOLS


@dataclass
class ScriptedEnvServer:
    outputs: dict[str, tuple[str, int]] = field(default_factory=dict)
    files: dict[str, str] = field(default_factory=dict)
    reward: float = 1.0
    fail_on: dict[str, Exception] = field(default_factory=dict)
    created: list[dict] = field(default_factory=list)
    deleted: list[str] = field(default_factory=list)
    calls: list[tuple] = field(default_factory=list)

    def create_env(self, image: str, **request) -> SimpleNamespace:
        self._maybe_fail("create_env")
        self.created.append({"image": image, **request})
        return SimpleNamespace(id=f"env{len(self.created)}")

    def tools(self) -> list:
        return TOOLS

    def shell(self, env_id: str, command: str, timeout: float | None = None) -> ShellResponse:
        self.calls.append(("shell", command))
        self._maybe_fail("shell")
        output, code = self.outputs.get(command, (f"ran: {command}\n", 0))
        return ShellResponse(output=output, exit_code=code)

    def edit(self, env_id: str, path: str, old: str, new: str) -> FileToolResponse:
        self.calls.append(("edit", path))
        self._maybe_fail("edit")
        text = self.files.get(path)
        if text is None:
            return FileToolResponse(ok=False, output=f"{path}: no such file")
        if text.count(old) != 1:
            return FileToolResponse(ok=False, output=f"old text occurs {text.count(old)} times in {path}")
        self.files[path] = text.replace(old, new)
        return FileToolResponse(ok=True, output=f"Edited {path}")

    def create(self, env_id: str, path: str, content: str) -> FileToolResponse:
        self.calls.append(("create", path))
        self._maybe_fail("create")
        if path in self.files:
            return FileToolResponse(ok=False, output=f"{path} already exists")
        self.files[path] = content
        return FileToolResponse(ok=True, output=f"Created {path}")

    def submit(self, env_id: str) -> SubmitResponse:
        self.calls.append(("submit",))
        self._maybe_fail("submit")
        return SubmitResponse(patch="diff --git a/x b/x\n", graded=True, reward=self.reward,
                              tests={"t::a": "passed"}, fail_to_pass={"t::a": "passed"})

    def delete_env(self, env_id: str) -> None:
        self.deleted.append(env_id)

    def _maybe_fail(self, tool: str) -> None:
        if tool in self.fail_on:
            raise self.fail_on.pop(tool)


@pytest.fixture
def scripted_env() -> ScriptedEnvServer:
    return ScriptedEnvServer(files={"calc.py": "def add(a, b):\n    return a - b\n"})
