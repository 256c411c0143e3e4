"""`forager run` end to end on one machine, then again to show it resumes without redoing work.

Real builder (the tiny repo; its image is already in the session's catalog, copied here, so the
build stage takes the cached path), real synthesis, a real env server and worker pool that the run
starts itself (nothing answers at the configured env server URL), real Redis.
"""

from __future__ import annotations

import json
import shutil
import uuid

import httpx

from forager.config import Settings
from forager.trajectories import TrajectoryStore
from tests.conftest import free_port
from tests.test_fleet_support import fleet_env, private_db, run_cli


def test_run_end_to_end_then_resume(tiny_repo_image, tiny_repo_path, images_home, redis_url, forager_home, tmp_path):
    shutil.copy(images_home / "catalog.jsonl", forager_home / "catalog.jsonl")
    repos = tmp_path / "repos.txt"
    repos.write_text(f"# the tiny test repository\n{tiny_repo_path}\n")
    envserver_url = f"http://127.0.0.1:{free_port()}"
    env = fleet_env(private_db(redis_url), forager_home, f"run-{uuid.uuid4().hex[:8]}",
                    FORAGER_ENVSERVER_URL=envserver_url)
    for var in ("FORAGER_MODEL_BASE_URL", "OPENAI_BASE_URL", "FORAGER_MODEL"):
        env.pop(var, None)  # no model endpoint: the oracle policy
    args = ["run", str(repos), "--tasks-per-repo", "2", "--max-candidates", "12", "--workers", "2", "--json"]

    first = run_cli(env, *args, timeout=900)
    assert first.returncode == 0, first.stderr[-3000:]
    s = json.loads(first.stdout)
    assert s["ok"] and s["policy"] == "oracle"
    assert s["repos"]["total"] == 1 and s["repos"]["ok"] == 1
    assert s["tasks"] == 2 and s["trajectories"] == 2 and s["solve_rate"] == 1.0 and s["failed_jobs"] == 0
    assert s["jobs"] == {"enqueued": 2}
    assert set(s["started_services"]) == {"envserver", "workers"}  # Redis was reachable: used as is
    assert {"build", "synth", "collect", "total"} <= set(s["seconds"])
    assert s["data"]["trajectories"] == str(Settings(home=forager_home).trajectories_dir)
    assert "episodes" in first.stderr  # the progress bar
    store = TrajectoryStore(s["data"]["trajectories"])
    ids = {t.id for t in store.iter()}
    assert len(ids) == 2
    # what the run started, it stopped
    try:
        httpx.get(envserver_url + "/healthz", timeout=2)
        raise AssertionError("the env server the run started is still answering")
    except httpx.TransportError:
        pass

    second = run_cli(env, *args, timeout=900)
    assert second.returncode == 0, second.stderr[-3000:]
    s2 = json.loads(second.stdout)
    assert s2["jobs"] == {"finished": 2}  # nothing redone
    assert s2["started_services"] == []  # nothing to run: no env server, no workers
    assert s2["tasks"] == 2 and s2["trajectories"] == 2
    assert {t.id for t in store.iter()} == ids and store.count() == 2


def test_run_with_a_missing_list_is_a_clear_error(forager_home, redis_url, tmp_path):
    env = fleet_env(redis_url, forager_home, "nowhere")
    out = run_cli(env, "run", str(tmp_path / "nope.txt"), "--json")
    assert out.returncode == 1
    assert "no such repository list" in json.loads(out.stdout)["error"]
