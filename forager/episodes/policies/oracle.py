"""The oracle: a scripted policy that knows the fix (the task's gold patch) and acts like a careful agent.

It explores (ls, grep for the function), runs the tests, reads the broken region with line numbers,
reverts it with `edit` calls built from the gold patch hunks, re-runs the tests and submits. Its
trajectories say policy `oracle`, so they are never mistaken for a model's. Used for demos, tests and
pipeline checks: a task the oracle cannot solve is a broken task.
"""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass

from forager.models import Action, PolicyInfo, Task
from forager.episodes.policies import Decision, Episode


@dataclass
class Hunk:
    path: str
    old: str
    new: str
    start: int  # first line of the hunk in the broken file


def parse_hunks(patch: str) -> list[Hunk]:
    """Unified diff → (path, old text, new text) per hunk; old is what the file holds before the patch."""
    hunks: list[Hunk] = []
    path = None
    old: list[str] = []
    new: list[str] = []
    start = 0
    in_hunk = False

    def flush() -> None:
        if in_hunk and path and (old or new):
            hunks.append(Hunk(path, "".join(old), "".join(new), start))

    last = ""
    for line in patch.splitlines(keepends=True):
        if line.startswith("diff --git "):
            flush()
            in_hunk, path = False, None
        elif line.startswith("+++ "):
            flush()
            in_hunk = False
            target = line[4:].strip().split("\t")[0]
            path = target[2:] if target.startswith("b/") else target
        elif line.startswith("--- "):
            flush()
            in_hunk = False
        elif line.startswith("@@"):
            flush()
            m = re.match(r"@@ -(\d+)", line)
            start = int(m.group(1)) if m else 1
            old, new, in_hunk = [], [], True
        elif in_hunk and line.startswith("\\"):
            # "\ No newline at end of file": the previous line had no newline in its side(s)
            if last[:1] in (" ", "-") and old:
                old[-1] = old[-1].rstrip("\n")
            if last[:1] in (" ", "+") and new:
                new[-1] = new[-1].rstrip("\n")
        elif in_hunk and line[:1] in (" ", "-", "+"):
            body = line[1:] if line.endswith("\n") else line[1:] + "\n"
            if line[0] in (" ", "-"):
                old.append(body)
            if line[0] in (" ", "+"):
                new.append(body)
        last = line
    flush()
    return hunks


class OraclePolicy:
    def __init__(self, run_tests: bool = True):
        self.info = PolicyInfo(name="oracle", model=None, parameters={"run_tests": run_tests})
        self.run_tests = run_tests
        self._plan: list[Action] | None = None
        self._task_id: str | None = None

    def next_action(self, episode: Episode) -> Decision:
        if self._plan is None or self._task_id != episode.task.id:
            self._plan, self._task_id = self.plan(episode.task), episode.task.id
        i = len(episode.steps)
        last = episode.steps[-1] if episode.steps else None
        # an edit the file refused (ambiguous context after earlier edits): apply the whole fix with git
        if last and last.action.tool == "edit" and last.observation.error and not any(
            s.action.arguments.get("command", "").startswith("git apply") for s in episode.steps
        ):
            return Decision(Action(tool="shell", arguments={"command": _git_apply(episode.task.gold_patch)},
                                   text="The edit did not apply cleanly; applying the known fix with git apply."))
        if i < len(self._plan):
            return Decision(self._plan[i])
        return Decision(Action(tool="submit", arguments={}, text="Submitting."))

    def plan(self, task: Task) -> list[Action]:
        if not task.gold_patch:
            raise ValueError(f"task {task.id} has no gold patch: the oracle cannot solve it")
        hunks = parse_hunks(task.gold_patch)
        files = sorted({h.path for h in hunks})
        test_cmd = f"{task.test_command} -q -x 2>&1 | tail -n 25"
        steps = [Action(tool="shell", arguments={"command": "ls"}, text="Let me look at the repository layout.")]
        mutation = task.mutation
        if mutation:
            name = mutation.function.split(".")[-1]
            # sorted: grep -r lists files in directory order, which differs between filesystems (replay)
            steps.append(Action(tool="shell", arguments={"command": f"grep -rn {shlex.quote('def ' + name)} --include=*.py . | sort | head -n 20"},
                                text=f"Looking for `{name}`."))
        if self.run_tests:
            steps.append(Action(tool="shell", arguments={"command": test_cmd}, text="Running the tests to see the failure."))
        for h in hunks:
            first = max(1, h.start - 3)
            last = h.start + h.old.count("\n") + 3
            steps.append(Action(tool="shell", arguments={"command": f"nl -ba {shlex.quote(h.path)} | sed -n '{first},{last}p'"},
                                text=f"Reading {h.path} around line {h.start}."))
        for h in hunks:
            if h.old and h.old != h.new:
                steps.append(Action(tool="edit", arguments={"path": h.path, "old": h.old, "new": h.new},
                                    text=f"Fixing {h.path}."))
            elif not h.old:  # a new file in the fix
                steps.append(Action(tool="create", arguments={"path": h.path, "content": h.new}, text=f"Creating {h.path}."))
        if self.run_tests:
            steps.append(Action(tool="shell", arguments={"command": test_cmd}, text="Re-running the tests."))
        steps.append(Action(tool="submit", arguments={}, text=f"The fix touches {', '.join(files)}; submitting."))
        return steps


def _git_apply(patch: str) -> str:
    return f"git apply --whitespace=nowarn - <<'FORAGER_PATCH_EOF'\n{patch}FORAGER_PATCH_EOF"
