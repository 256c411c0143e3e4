"""`forager view` as a real server on loopback, over HTTP: errors, the token rules, live refresh."""

from __future__ import annotations

import html
import json
import subprocess
import sys
import time
from pathlib import Path

import httpx

from forager.models import EpisodeResult
from forager.trajectories import TrajectoryStore
from tests.fixtures_viewer import showcase, start_viewer, stop_viewer, write_viewer_store

ROOT = Path(__file__).resolve().parent.parent


def run_view(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "forager.cli", "view", "--json", *args], capture_output=True, text=True,
                          timeout=60, cwd=ROOT, env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"})


def test_unknown_ids_are_404_pages(viewer_server):
    for path, what in (("/trajectories/no-such-id", "no trajectory 'no-such-id'"),
                       ("/trajectories/no-such-id/raw", "no trajectory"),
                       ("/traces/no-such-trace", "no trace 'no-such-trace'"),
                       ("/tasks/no-such-task", "no task 'no-such-task'"),
                       ("/collections/view?policy=nobody", "no trajectories of policy 'nobody'")):
        r = httpx.get(viewer_server.url + path)
        assert r.status_code == 404, path
        assert r.headers["content-type"].startswith("text/html") and what in html.unescape(r.text)


def test_the_raw_record_is_the_file(viewer_server, viewer_store):
    r = httpx.get(f"{viewer_server.url}/trajectories/{viewer_store.showcase_id}/raw")
    assert r.status_code == 200 and json.loads(r.text)["id"] == viewer_store.showcase_id


def test_a_missing_store_is_a_clear_error(tmp_path):
    result = run_view("--home", str(tmp_path / "nowhere"))
    assert result.returncode == 2
    doc = json.loads(result.stdout)
    assert doc["ok"] is False and "does not exist" in doc["error"] and str(tmp_path / "nowhere") in doc["error"]


def test_binding_beyond_loopback_needs_a_token(tmp_path):
    result = run_view("--home", str(tmp_path), "--host", "0.0.0.0", "--port", "0")
    assert result.returncode == 2
    assert "refusing to bind 0.0.0.0 without --token" in json.loads(result.stdout)["error"]


def test_the_token_gate(tmp_path):
    home = tmp_path / "home"
    home.mkdir()
    server = start_viewer(home, "--token", "s3cret word", "--refresh", "0")
    try:
        url = server.url
        assert httpx.get(url + "/").status_code == 401
        assert httpx.get(url + "/", headers={"Authorization": "Bearer wrong"}).status_code == 401
        assert httpx.get(url + "/", headers={"Authorization": "Bearer s3cret word"}).status_code == 200
        assert httpx.get(url + "/healthz").status_code == 200  # liveness stays open, as on the env server
        # ?token= once: a redirect without it that sets a cookie, which then opens every page
        first = httpx.get(url + "/trajectories", params={"token": "s3cret word", "exit": "max_turns"})
        assert first.status_code == 303 and first.headers["location"] == "/trajectories?exit=max_turns"
        assert "s3cret" not in first.headers["set-cookie"]
        with httpx.Client(base_url=url, follow_redirects=True) as browser:
            assert browser.get("/catalog", params={"token": "s3cret word"}).status_code == 200
            assert browser.get("/collections").status_code == 200
        assert httpx.get(url + "/", params={"token": "wrong"}).status_code == 401
    finally:
        stop_viewer(server)


def test_the_server_keeps_its_index_in_step_with_the_store(tmp_path):
    store = write_viewer_store(tmp_path / "home")
    server = start_viewer(store.home, "--refresh", "0.2")
    try:
        assert server.ready["files"] > store.trajectories and server.ready["skipped"] == 3
        before = _total(server.url, {"exit": "max_turns"})
        assert before == store.count(exit="max_turns")
        fresh = showcase()
        fresh.attempt, fresh.id, fresh.exit_reason = 3, "fresh-max-turns-episode", "max_turns"
        fresh.result = EpisodeResult(reward=0.0)
        TrajectoryStore(store.home / "trajectories").write(fresh)
        deadline = time.time() + 30
        while _total(server.url, {"exit": "max_turns"}) != before + 1:
            assert time.time() < deadline, "the new trajectory never showed up"
            time.sleep(0.2)
        assert httpx.get(f"{server.url}/trajectories/fresh-max-turns-episode").status_code == 200
    finally:
        stop_viewer(server)


def _total(url: str, params: dict) -> int:
    r = httpx.get(url + "/trajectories", params=params)
    r.raise_for_status()
    marker = '<span class="muted" id="total">'
    return int(r.text.split(marker, 1)[1].split("<", 1)[0].replace(",", ""))


def test_a_record_that_broke_since_the_last_refresh_is_a_410_page(tmp_path):
    store = write_viewer_store(tmp_path / "home")
    server = start_viewer(store.home, "--refresh", "0")  # no refresh: the index still lists the file
    try:
        path = next((store.home / "trajectories").glob(f"*/{store.showcase_id}.jsonl"))
        path.write_text('{"id": "cut short')
        r = httpx.get(f"{server.url}/trajectories/{store.showcase_id}")
        assert r.status_code == 410 and "no longer reads" in r.text
        assert httpx.get(f"{server.url}/trajectories/{store.branch_id}").status_code == 200
    finally:
        stop_viewer(server)
