"""`forager run` end to end on one machine: interrupted, resumed, then run again with nothing left to do.

Real builder (the tiny repo; its image is already in the session's catalog, copied here, so the
build stage takes the cached path), real synthesis, a real env server and worker pool that the run
starts itself (nothing answers at the configured env server URL), real Redis.
"""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import uuid

import httpx
import pytest

from forager.config import Settings
from forager.trajectories.store import TrajectoryStore
from tests.conftest import free_port
from tests.test_fleet_support import FORAGER, REPO, fleet_env, private_db, run_cli, wait_for


def test_run_end_to_end_interrupted_then_resumed(tiny_repo_image, tiny_repo_path, images_home, redis_url,
                                                forager_home, tmp_path):
    shutil.copy(images_home / "catalog.jsonl", forager_home / "catalog.jsonl")
    repos = tmp_path / "repos.txt"
    repos.write_text(f"# the tiny test repository\n{tiny_repo_path}\n")
    envserver_url = f"http://127.0.0.1:{free_port()}"
    env = fleet_env(private_db(redis_url), forager_home, f"run-{uuid.uuid4().hex[:8]}",
                    FORAGER_ENVSERVER_URL=envserver_url)
    for var in ("FORAGER_MODEL_BASE_URL", "OPENAI_BASE_URL", "FORAGER_MODEL"):
        env.pop(var, None)  # no model endpoint: the oracle policy
    args = ["run", str(repos), "--tasks-per-repo", "2", "--max-candidates", "12", "--attempts", "3",
            "--workers", "2", "--json"]
    store = TrajectoryStore(Settings(home=forager_home).trajectories_dir)

    # 1. interrupted (SIGTERM) once episodes are being collected
    proc = subprocess.Popen([*FORAGER, *args], env=env, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    try:
        wait_for(lambda: store.count() >= 1 or proc.poll() is not None, "the first trajectory", deadline=600)
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, err[-3000:]
    assert json.loads(out)["error"] == "interrupted"
    with pytest.raises(httpx.TransportError):  # the env server this run started was stopped
        httpx.get(envserver_url + "/healthz", timeout=2)
    assert 1 <= store.count() < 6

    # 2. resumed: the rest is collected, nothing twice
    second = run_cli(env, *args, timeout=900)
    assert second.returncode == 0, second.stderr[-3000:]
    s = json.loads(second.stdout)
    assert s["ok"] and s["policy"] == "oracle"
    assert s["repos"]["total"] == 1 and s["repos"]["ok"] == 1
    assert s["tasks"] == 2 and s["trajectories"] == 6 and s["solve_rate"] == 1.0 and s["failed_jobs"] == 0
    assert s["jobs"].get("finished", 0) >= 1 and sum(s["jobs"].values()) == 6
    assert set(s["started_services"]) == {"envserver", "workers"}  # Redis was reachable: used as is
    assert {"build", "synth", "collect", "total"} <= set(s["seconds"])
    assert s["data"]["trajectories"] == str(store.root)
    assert "episodes" in second.stderr  # the progress bar
    trajs = list(store.iter())
    assert len(trajs) == 6 == len({(t.task_id, t.attempt) for t in trajs})
    with pytest.raises(httpx.TransportError):
        httpx.get(envserver_url + "/healthz", timeout=2)

    # 3. nothing left to do: nothing redone, nothing started
    third = run_cli(env, *args, timeout=900)
    assert third.returncode == 0, third.stderr[-3000:]
    s3 = json.loads(third.stdout)
    assert s3["jobs"] == {"finished": 6} and s3["trajectories"] == 6
    assert s3["started_services"] == []
    assert store.count() == 6


def test_run_with_a_missing_list_is_a_clear_error(forager_home, redis_url, tmp_path):
    env = fleet_env(redis_url, forager_home, "nowhere")
    out = run_cli(env, "run", str(tmp_path / "nope.txt"), "--json")
    assert out.returncode == 1
    assert "no such repository list" in json.loads(out.stdout)["error"]
