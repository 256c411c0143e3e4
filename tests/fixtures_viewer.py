"""Fixtures for the viewer tests: a store the tests write, the real `forager view` server, Chromium.

`write_viewer_store(home)` writes a small but complete $FORAGER_HOME (catalog with a superseded record
and a torn line, two task files and an ignored candidates file, three collections of trajectories with
steps, state diffs, a branch and a graded result, one torn trajectory file, two execution traces) and
returns a `ViewerStore` saying what it wrote, so tests compare the pages with those figures.

`viewer_store` (session): that store in a temp dir. `viewer_server` (session): `python -m forager.cli view`
serving it on a free loopback port (`.url`). `start_viewer(home, *args)` / `stop_viewer(server)` start
and stop others. `chromium_browser` (session) and `chromium_page`: headless Debian Chromium driven by
Playwright; installs the `chromium` package with apt-get when it is missing. `VIEWER_SCREENSHOTS` (env) is where the browser
tests save page screenshots (default: a temp dir); set it to docs/images to refresh the README's.
"""

from __future__ import annotations

import json
import os
import select
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from forager.models import (
    Action, Certificate, EpisodeResult, ImageRecord, Mutation, Observation, PolicyInfo, StateChange, Step, Task,
    Trajectory,
)
from forager.trace.models import Trace, TraceFrame
from forager.trajectories import TrajectoryStore, trajectory_id

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
T0 = 1_750_000_000.0  # a fixed start time: the list's order is the order written

CALC_DIFF = (
    "diff --git a/calc.py b/calc.py\n--- a/calc.py\n+++ b/calc.py\n@@ -1,2 +1,2 @@\n"
    " def add(a, b):\n-    return a - b\n+    return a + b\n"
)
NOTES_DIFF = "diff --git a/NOTES.md b/NOTES.md\nnew file mode 100644\n--- /dev/null\n+++ b/NOTES.md\n@@ -0,0 +1 @@\n+checked add\n"


@dataclass
class ViewerStore:
    home: Path
    collections: dict[tuple[str, str], dict] = field(default_factory=dict)  # (policy, model) -> n, solved, exits
    showcase_id: str = ""  # a trajectory with four steps, two state diffs and a graded result
    branch_id: str = ""  # a branch of the showcase at step 2
    trace_id: str = ""
    trajectories: int = 0
    torn_files: int = 0
    rows: list[dict] = field(default_factory=list)  # one per trajectory written: policy, model, exit, repo, kind, reward

    def count(self, **where) -> int:
        """Trajectories written with these attributes (exit=, repo=, policy=, model=)."""
        return sum(1 for row in self.rows if all(row[k] == v for k, v in where.items()))


def _steps(commands: list[str], with_state: bool) -> list[Step]:
    steps = []
    for i, command in enumerate(commands):
        steps.append(Step(
            index=i, action=Action(tool="shell", arguments={"command": command}, text=f"Let me run {command}"),
            observation=Observation(output=f"output of {command}", exit_code=0),
            state=StateChange(tree_digest=f"d{i}", cwd="/repo") if with_state else None,
            model_seconds=1.5, env_seconds=0.5, prompt_tokens=100, completion_tokens=20,
        ))
    return steps


def showcase(parent: Trajectory | None = None) -> Trajectory:
    """Inspect, fix with an edit (a diff), add a file (another diff), run the tests, submit."""
    steps = [
        Step(index=0, action=Action(tool="shell", arguments={"command": "cat calc.py"}, text="Look at calc.py first."),
             observation=Observation(output="def add(a, b):\n    return a - b\n", exit_code=0),
             state=StateChange(cwd="/repo", tree_digest="aaa111"), model_seconds=2.0, env_seconds=0.2,
             prompt_tokens=900, completion_tokens=40),
        Step(index=1, action=Action(tool="edit", arguments={"path": "calc.py", "old": "return a - b", "new": "return a + b"},
                                    text="add subtracts: fix the operator."),
             observation=Observation(output="Edited calc.py", exit_code=None),
             state=StateChange(files_modified=["calc.py"], diff=CALC_DIFF, diff_bytes=len(CALC_DIFF), cwd="/repo",
                               tree_digest="bbb222"), model_seconds=2.5, env_seconds=0.1, prompt_tokens=1000,
             completion_tokens=60),
        Step(index=2, action=Action(tool="create", arguments={"path": "NOTES.md", "content": "checked add\n"}),
             observation=Observation(output="Created NOTES.md"),
             state=StateChange(files_created=["NOTES.md"], diff=NOTES_DIFF, diff_bytes=len(NOTES_DIFF),
                               env_changed={"PYTHONHASHSEED": "0"}, tree_digest="ccc333"),
             model_seconds=1.0, env_seconds=0.1, prompt_tokens=1100, completion_tokens=30),
        Step(index=3, action=Action(tool="shell", arguments={"command": "python -m pytest -q"}),
             observation=Observation(output="2 passed in 0.01s", exit_code=0),
             state=StateChange(cwd="/repo", tree_digest="ccc333"), model_seconds=1.0, env_seconds=1.5,
             prompt_tokens=1200, completion_tokens=20),
        Step(index=4, action=Action(tool="submit"), observation=Observation(output="Submitted."), state=None,
             model_seconds=0.5, prompt_tokens=1300, completion_tokens=5),
    ]
    attempt = 0 if parent is None else 7
    traj = Trajectory(
        id=trajectory_id("calc__mf_1", attempt, "openai", "qwen2.5-coder-7b"), task_id="calc__mf_1",
        task_kind="mutate-fix", repo="calc", image="forager/calc:abc", commit="abc123def456", attempt=attempt,
        policy=PolicyInfo(name="openai", model="qwen2.5-coder-7b", parameters={"temperature": 0.2}),
        system_prompt="You are a careful engineer.",
        problem_statement="add() returns the difference of its arguments instead of their sum.",
        steps=steps, exit_reason="submitted", result=EpisodeResult(
            patch=CALC_DIFF + NOTES_DIFF, reward=1.0,
            tests={"tests/test_calc.py::test_add": "passed", "tests/test_calc.py::test_sub": "passed",
                   "tests/test_calc.py::test_mul": "skipped"},
            fail_to_pass={"tests/test_calc.py::test_add": "passed"},
            pass_to_pass={"tests/test_calc.py::test_sub": "passed"}, dropped_files=["tests/conftest.py"]),
        started_at=T0 + 10_000, finished_at=T0 + 10_020, prompt_tokens=5500, completion_tokens=155,
    )
    if parent is not None:  # a branch: the parent's first two steps, then its own way (gives up)
        traj.parent_id, traj.branch_step = parent.id, 2
        traj.steps = traj.steps[:2] + [Step(index=2, action=Action(tool="shell", arguments={"command": "git stash"}),
                                            observation=Observation(output="Saved working directory", exit_code=0),
                                            state=StateChange(files_modified=["calc.py"], tree_digest="aaa111"))]
        traj.exit_reason, traj.result = "max_turns", EpisodeResult(reward=0.0)
        traj.started_at, traj.finished_at = T0 + 10_100, T0 + 10_130
    return traj


# (policy, model, exit reason, reward, repo, task kind, how many)
PLAN = [
    ("oracle", None, "submitted", 1.0, "calc", "mutate-fix", 4),
    ("oracle", None, "submitted", 0.0, "strutil", "mutate-fix", 2),
    ("openai", "qwen2.5-coder-7b", "submitted", 1.0, "strutil", "issue-fix", 2),
    ("openai", "qwen2.5-coder-7b", "submitted", 0.5, "calc", "mutate-fix", 1),
    ("openai", "qwen2.5-coder-7b", "max_turns", 0.0, "calc", "mutate-fix", 3),
    ("openai", "qwen2.5-coder-7b", "format_error_limit", 0.0, "strutil", "issue-fix", 1),
    ("openai", "smollm2-135m", "max_turns", 0.0, "strutil", "mutate-fix", 3),
    ("openai", "smollm2-135m", "model_error", 0.0, "calc", "mutate-fix", 1),
]


def write_viewer_store(home: Path) -> ViewerStore:
    home.mkdir(parents=True, exist_ok=True)
    store = ViewerStore(home=home)
    _write_catalog(home)
    _write_tasks(home)
    trajectories = TrajectoryStore(home / "trajectories")
    serial = 0
    for policy, model, exit_reason, reward, repo, kind, n in PLAN:
        for _ in range(n):
            serial += 1
            task = f"{repo}__{'mf' if kind == 'mutate-fix' else 'issue'}_{serial}"
            steps = _steps(["ls", "python -m pytest -q", f"grep -n def {repo}.py"][: 1 + serial % 3], serial % 2 == 0)
            traj = Trajectory(
                id=trajectory_id(task, 0, policy, model), task_id=task, task_kind=kind, repo=repo,
                image=f"forager/{repo}:abc", commit="abc123", policy=PolicyInfo(name=policy, model=model),
                problem_statement=f"Task {serial} of {repo}: make the suite pass.", steps=steps,
                exit_reason=exit_reason, result=EpisodeResult(reward=reward), started_at=T0 + serial * 60,
                finished_at=T0 + serial * 60 + 12,
            )
            trajectories.write(traj)
            store.rows.append({"policy": policy, "model": model or "", "exit": exit_reason, "repo": repo,
                               "kind": kind, "reward": reward})
    parent = showcase()
    branch = showcase(parent)
    for traj in (parent, branch):
        trajectories.write(traj)
        store.rows.append({"policy": "openai", "model": "qwen2.5-coder-7b", "exit": traj.exit_reason,
                           "repo": "calc", "kind": "mutate-fix", "reward": traj.result.reward})
    store.showcase_id, store.branch_id = parent.id, branch.id
    (home / "trajectories" / "calc" / "torn.jsonl").write_text('{"schema_version": "1.0", "id": "torn"')
    store.torn_files = 1
    store.trajectories = len(store.rows)
    for row in store.rows:
        key = (row["policy"], row["model"])
        c = store.collections.setdefault(key, {"n": 0, "solved": 0, "exits": {}})
        c["n"] += 1
        c["solved"] += row["reward"] >= 1.0
        c["exits"][row["exit"]] = c["exits"].get(row["exit"], 0) + 1
    store.trace_id = _write_traces(home)
    return store


def _write_catalog(home: Path) -> None:
    records = [
        ImageRecord(repo="calc", source="local:/src/calc", commit="abc123", status="install", reason="pip failed"),
        ImageRecord(repo="calc", source="local:/src/calc", commit="abc123", status="ok", tag="forager/calc:abc",
                    tests_collected=12, tests_passed=11, tests_failed=1, build_seconds=42.0, validate_seconds=8.5,
                    test_seconds=3.2, python="3.11", size_bytes=180_000_000, flaky=["tests/test_calc.py::test_flaky"]),
        ImageRecord(repo="strutil", source="pypi:strutil==1.0", commit="fff000", status="ok", tag="forager/strutil:fff",
                    tests_collected=30, tests_passed=30, build_seconds=65.0, validate_seconds=11.0, python="3.11"),
        ImageRecord(repo="broken-lib", source="psf/broken@v1", commit="0badc0de", status="install",
                    reason="ERROR: No matching distribution found for numpy==0.1", build_seconds=20.0),
        ImageRecord(repo="slowpkg", source="pypi:slowpkg==2.0", commit="5105", status="timeout",
                    reason="validation took over 900s", build_seconds=900.0),
    ]
    lines = [r.model_dump_json() for r in records]
    lines.insert(2, '{"repo": "torn", "status": ')  # a torn line: skipped and counted
    (home / "catalog.jsonl").write_text("\n".join(lines) + "\n")


def _write_tasks(home: Path) -> None:
    def task(i: int, repo: str, kind: str, cert: Certificate | None, origin=None) -> Task:
        return Task(id=f"{repo}__{'mf' if kind == 'mutate-fix' else 'issue'}_{i}", kind=kind, repo=repo,
                    image=f"forager/{repo}:abc", commit="abc123def", problem_statement=f"Fix {repo} task {i}.",
                    setup_patch=CALC_DIFF.replace("+    return a + b", "+    return a * b"), gold_patch=CALC_DIFF,
                    test_command="python -m pytest -q", fail_to_pass=["tests/test_calc.py::test_add"],
                    pass_to_pass=["tests/test_calc.py::test_sub"], origin=origin, certificate=cert,
                    mutation=Mutation(operator="swap_op", file="calc.py", function="add", lineno=2)
                    if kind == "mutate-fix" else None)

    good = Certificate(k=3, gold_rewards=[1.0, 1.0, 1.0], empty_rewards=[0.0, 0.0, 0.0], passed=True,
                       image_id="sha256:feed", flaky=["tests/test_calc.py::test_time"])
    bad = Certificate(k=3, gold_rewards=[1.0, 0.0, 1.0], empty_rewards=[0.0, 0.0, 0.0], passed=False)
    tasks_dir = home / "tasks"
    tasks_dir.mkdir()
    calc = [task(1, "calc", "mutate-fix", good, "synthesized"), task(2, "calc", "mutate-fix", bad, "synthesized"),
            task(3, "calc", "mutate-fix", None), task(1, "calc", "mutate-fix", good, "synthesized")]  # id 1 twice: last wins
    (tasks_dir / "calc.jsonl").write_text("".join(t.model_dump_json() + "\n" for t in calc))
    strutil = [task(4, "strutil", "issue-fix", None, "imported"), task(5, "strutil", "issue-fix", good, "mined")]
    (tasks_dir / "strutil.jsonl").write_text("".join(t.model_dump_json() + "\n" for t in strutil))
    (tasks_dir / "calc.candidates.jsonl").write_text(task(99, "calc", "mutate-fix", None).model_dump_json() + "\n")


def _write_traces(home: Path) -> str:
    source = "def total(items):\n    acc = 0\n    for x in items:\n        acc = acc + x\n    return acc\n"
    frames = [
        TraceFrame(event="call", line=10, source="def total(items):\n", locals={"items": "[1, 2]"}),
        TraceFrame(event="line", line=11, source="    acc = 0\n", locals={"items": ".."}),
        TraceFrame(event="line", line=12, source="    for x in items:\n", locals={"items": "..", "acc": "0"}),
        TraceFrame(event="line", line=13, source="        acc = acc + x\n", locals={"items": "..", "acc": "..", "x": "1"}),
        TraceFrame(event="line", line=12, source="    for x in items:\n", locals={"items": "..", "acc": "1", "x": ".."}),
        TraceFrame(event="line", line=13, source="        acc = acc + x\n", locals={"items": "..", "acc": "..", "x": "2"}),
        TraceFrame(event="line", line=12, source="    for x in items:\n", locals={"items": "..", "acc": "3", "x": ".."}),
        TraceFrame(event="line", line=14, source="    return acc\n", locals={"items": "..", "acc": "..", "x": ".."}),
        TraceFrame(event="return", line=14, source="    return acc\n", value="3"),
    ]
    trace = Trace(id="trace-total-1", target="test", repo="calc", image="forager/calc:abc", function="calc:total",
                  file="calc.py", line=10, source=source, entry_line=1, test="tests/test_calc.py::test_total",
                  frames=frames, events=len(frames))
    raising = Trace(id="trace-div-1", target="call", repo="calc", function="calc:div", file="calc.py", line=20,
                    source="def div(a, b):\n    return a / b\n", call="div(1, 0)",
                    frames=[TraceFrame(event="call", line=20, source="def div(a, b):\n", locals={"a": "1", "b": "0"}),
                            TraceFrame(event="line", line=21, source="    return a / b\n", locals={"a": "..", "b": ".."}),
                            TraceFrame(event="exception", line=21, source="    return a / b\n",
                                       value="ZeroDivisionError('division by zero')"),
                            TraceFrame(event="return", line=21, source="    return a / b\n", value="None")],
                    exception="ZeroDivisionError('division by zero')")
    traces = home / "traces"
    traces.mkdir()
    (traces / "forager_calc_abc.jsonl").write_text(trace.model_dump_json() + "\n" + raising.model_dump_json() + "\nnot json\n")
    return trace.id


# ---------------------------------------------------------------- the server

@dataclass
class ViewerServer:
    url: str
    proc: subprocess.Popen
    home: Path
    ready: dict


def start_viewer(home: Path, *args: str, wait: float = 120) -> ViewerServer:
    """`python -m forager.cli view --port 0 --json` on loopback; returns once its JSON line says it serves."""
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "forager.cli", "view", "--home", str(home), "--port", "0", "--json", *args],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
    )
    ready_to_read, _, _ = select.select([proc.stdout], [], [], wait)  # the line comes whole (one flushed write)
    line = proc.stdout.readline() if ready_to_read else ""
    if not line:
        proc.kill()
        raise RuntimeError(f"viewer did not start within {wait}s: {proc.stderr.read()[-2000:]}")
    ready = json.loads(line)
    if not ready.get("ok"):
        proc.wait(10)
        raise RuntimeError(f"viewer refused to start: {ready}")
    return ViewerServer(url=ready["url"], proc=proc, home=home, ready=ready)


def stop_viewer(server: ViewerServer) -> None:
    server.proc.terminate()
    try:
        server.proc.wait(15)
    except subprocess.TimeoutExpired:
        server.proc.kill()
        server.proc.wait(5)


@pytest.fixture(scope="session")
def viewer_store(tmp_path_factory) -> ViewerStore:
    return write_viewer_store(tmp_path_factory.mktemp("viewer") / "home")


@pytest.fixture(scope="session")
def viewer_server(viewer_store):
    server = start_viewer(viewer_store.home, "--refresh", "0")
    yield server
    stop_viewer(server)


# ---------------------------------------------------------------- the browser

def ensure_chromium() -> str:
    """Debian's chromium package; installed here when missing so a clean CI machine gets it."""
    if not Path(CHROMIUM).exists():
        assert shutil.which("apt-get") and os.geteuid() == 0, f"{CHROMIUM} is missing: apt-get install -y chromium (as root)"
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        subprocess.run(["apt-get", "update", "-qq"], check=True, env=env)
        subprocess.run(["apt-get", "install", "-y", "-qq", "chromium"], check=True, env=env)
    return CHROMIUM


@pytest.fixture(scope="session")
def chromium_browser():
    from playwright.sync_api import sync_playwright

    executable = ensure_chromium()
    with sync_playwright() as pw:
        chromium = pw.chromium.launch(executable_path=executable, args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


@pytest.fixture
def chromium_page(chromium_browser):
    context = chromium_browser.new_context(viewport={"width": 1400, "height": 900})
    tab = context.new_page()
    yield tab
    context.close()


@pytest.fixture(scope="session")
def screenshots(tmp_path_factory) -> Path:
    where = Path(os.environ.get("VIEWER_SCREENSHOTS") or tmp_path_factory.mktemp("screenshots"))
    where.mkdir(parents=True, exist_ok=True)
    return where
