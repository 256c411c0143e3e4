"""Fixtures for the interface tests (OpenEnv, Gymnasium, evaluate, Parquet).

`calc_tasks` (session): a task directory with three tasks on the envtest image (tests/fixtures_envserver.py),
all with calc.add broken by the setup patch: `calc__mf` (mutate-fix, hidden test_add), `calc__mined` and
`calc__imported` (issue-fix, origin mined / imported: the hidden test patch adds tests/test_extra.py). Each
has the gold patch FIX. `start_openenv(envserver, tasks_dir, *args)` runs `forager openenv` as its own
process against the session's env server and returns an `OpenEnvProc` (url, trajectories dir, proc).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.fixtures_envserver import free_port
from tests.test_envserver_grading import ADD, EXTRA, EXTRA_TEST, MUTATION, SUB

FIX = MUTATION.replace("-    return a + b\n+    return a - b", "-    return a - b\n+    return a + b")


def calc_task(task_id: str, origin: str):
    from forager.models import Task

    issue = origin != "synthesized"
    return Task(id=task_id, kind="issue-fix" if issue else "mutate-fix", repo="calc", image="forager/envtest:latest",
                commit="c", origin=origin, problem_statement="add() returns the difference of its arguments",
                setup_patch=MUTATION, gold_patch=FIX, test_command="python -m pytest -q tests",
                test_files=["tests/test_calc.py"] + (["tests/test_extra.py"] if issue else []),
                test_patch=EXTRA_TEST if issue else "", fail_to_pass=[EXTRA if issue else ADD], pass_to_pass=[SUB])


@pytest.fixture(scope="session")
def calc_tasks(tmp_path_factory, envtest_image) -> Path:
    from forager.tasks.store import append_tasks

    tasks_dir = tmp_path_factory.mktemp("calc-tasks")
    append_tasks(tasks_dir / "calc.jsonl", [calc_task("calc__mf", "synthesized"), calc_task("calc__mined", "mined"),
                                            calc_task("calc__imported", "imported")])
    return tasks_dir


@dataclass
class OpenEnvProc:
    url: str
    trajectories: Path
    proc: subprocess.Popen
    log: Path


def start_openenv(envserver, tasks_dir: Path, *args: str) -> OpenEnvProc:
    home = Path(tempfile.mkdtemp(prefix="openenv-home-"))
    port = free_port()
    env = {**os.environ, "FORAGER_HOME": str(home), "FORAGER_ENVSERVER_URL": envserver.url,
           "FORAGER_ENVSERVER_TOKEN": envserver.token}
    log = home / "openenv.log"
    cmd = [sys.executable, "-m", "forager.cli", "openenv", "--port", str(port), "--tasks", str(tasks_dir), "--json",
           *args]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=open(log, "wb"), text=True)
    line = proc.stdout.readline()  # printed once the socket is bound
    if not line:
        proc.wait(30)
        raise RuntimeError(f"forager openenv exited with {proc.returncode}: {log.read_text()[-3000:]}")
    info = json.loads(line)
    return OpenEnvProc(info["url"], Path(info["trajectories"]), proc, log)


def stop_openenv(server: OpenEnvProc) -> None:
    if server.proc.poll() is None:
        server.proc.send_signal(signal.SIGTERM)  # shutdown ends every session: envs deleted, trajectories kept
        try:
            server.proc.wait(120)
        except subprocess.TimeoutExpired:
            server.proc.kill()
            server.proc.wait(10)


@pytest.fixture(scope="module")
def openenv_server(envserver, calc_tasks):
    server = start_openenv(envserver, calc_tasks, "--max-sessions", "4")
    yield server
    stop_openenv(server)
