"""The oracle: a scripted policy that knows the fix (the task's gold patch) and acts like a careful agent.

It explores (ls, grep for the function), runs the tests, reads the broken region with line numbers,
applies the known fix with `edit` calls built from the gold patch hunks (`create` for a file the fix
adds, `rm` for one it deletes, `git apply` for what edits cannot express, such as binary files),
re-runs the tests and submits. Every action's text says it applies the known fix, and its trajectories
say policy `oracle`, so they are never mistaken for a model's. Used for demos, tests and pipeline
checks: a task the oracle cannot solve is a broken task.
"""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass

from forager.models import Action, PolicyInfo, Task
from forager.episodes.policies import Decision, Episode


FALLBACK = "The edit did not apply cleanly"


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
        last = episode.steps[-1] if episode.steps else None
        applied = any(s.action.text.startswith(FALLBACK) for s in episode.steps)
        # an edit the file refused (ambiguous context after earlier edits): apply the whole fix with git
        if last and last.action.tool == "edit" and last.observation.error and not applied:
            return Decision(Action(tool="shell", arguments={"command": _git_apply(episode.task.gold_patch)},
                                   text=f"{FALLBACK}; applying the known fix (the gold patch) with git apply."))
        # the next planned action: the plan is matched against what was done (a fallback shifts nothing), and
        # once git apply has put the whole fix in, the plan's own fix actions are passed over
        plan, done, after_fallback = self._plan, 0, False
        for step in episode.steps:
            if step.action.text.startswith(FALLBACK):
                after_fallback = True
                continue
            while after_fallback and done < len(plan) and _is_fix(plan[done]):
                done += 1
            if done < len(plan) and (step.action.tool, step.action.arguments) == (plan[done].tool, plan[done].arguments):
                done += 1
        while applied and done < len(plan) and _is_fix(plan[done]):
            done += 1
        if done < len(plan):
            return Decision(plan[done])
        return Decision(Action(tool="submit", arguments={}, text="Submitting."))

    def plan(self, task: Task) -> list[Action]:
        if not task.gold_patch:
            raise ValueError(f"task {task.id} has no gold patch: the oracle cannot solve it")
        known = "the commit's gold patch" if task.origin == "mined" else "the task's gold patch"
        hunks = [h for h in parse_hunks(task.gold_patch) if h.path != "/dev/null"]  # a deleted file's hunks
        created, deleted = _created_and_deleted(task.gold_patch)
        files = sorted({h.path for h in hunks} | deleted)
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
            if h.path in created or h.path in deleted:
                continue
            first = max(1, h.start - 3)
            last = h.start + h.old.count("\n") + 3
            steps.append(Action(tool="shell", arguments={"command": f"nl -ba {shlex.quote(h.path)} | sed -n '{first},{last}p'"},
                                text=f"Reading {h.path} around line {h.start}."))
        if "GIT binary patch" in task.gold_patch:  # edits cannot carry binary files: the whole fix with git
            steps.append(Action(tool="shell", arguments={"command": _git_apply(task.gold_patch)},
                                text=f"Applying the known fix ({known}) with git apply."))
            hunks, deleted = [], set()
        for h in hunks:
            if h.path in deleted:
                continue
            if h.path in created:
                parent = h.path.rpartition("/")[0]
                if parent:
                    steps.append(Action(tool="shell", arguments={"command": f"mkdir -p {shlex.quote(parent)}"},
                                        text=f"Making the directory {parent} for the file the known fix adds."))
                steps.append(Action(tool="create", arguments={"path": h.path, "content": h.new},
                                    text=f"Applying the known fix ({known}): creating {h.path}."))
            elif h.old and h.old != h.new:
                steps.append(Action(tool="edit", arguments={"path": h.path, "old": h.old, "new": h.new},
                                    text=f"Applying the known fix ({known}) to {h.path}."))
        for path in sorted(deleted):
            steps.append(Action(tool="shell", arguments={"command": f"rm -f {shlex.quote(path)}"},
                                text=f"Applying the known fix ({known}): deleting {path}."))
        if self.run_tests:
            steps.append(Action(tool="shell", arguments={"command": test_cmd}, text="Re-running the tests."))
        steps.append(Action(tool="submit", arguments={}, text=f"The fix touches {', '.join(files)}; submitting."))
        return steps


def _is_fix(action: Action) -> bool:
    return action.tool in ("edit", "create") or "known fix" in action.text


def _created_and_deleted(patch: str) -> tuple[set[str], set[str]]:
    """Files a patch creates (`--- /dev/null`) and deletes (`+++ /dev/null`)."""
    created, deleted = set(), set()
    for m in re.finditer(r"^--- (\S+)\n\+\+\+ (\S+)", patch, re.M):
        old, new = m.group(1), m.group(2)
        if old == "/dev/null":
            created.add(new[2:] if new.startswith("b/") else new)
        elif new == "/dev/null":
            deleted.add(old[2:] if old.startswith("a/") else old)
    return created, deleted


def _git_apply(patch: str) -> str:
    """The whole patch with git, after putting back the files it touches (earlier edits may have changed some)."""
    created, _ = _created_and_deleted(patch)
    touched = {h.path for h in parse_hunks(patch) if h.path != "/dev/null"} | _created_and_deleted(patch)[1]
    existing = sorted(touched - created)
    reset = (f"git checkout -q HEAD -- {' '.join(shlex.quote(p) for p in existing)} && " if existing else "")
    reset += f"rm -f {' '.join(shlex.quote(p) for p in sorted(created))} && " if created else ""
    return f"{reset}git apply --whitespace=nowarn - <<'FORAGER_PATCH_EOF'\n{patch}FORAGER_PATCH_EOF"
