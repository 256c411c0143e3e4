"""World-model data benchmark: every figure against a baseline measured in the same run.

  1. state recording: the oracle's episodes on the default list's tasks, each run twice in the same server,
     with the state record on and off; the recording's share of step time (its own `seconds` over the
     step's env time), the step time ratio on/off, and a no-op shell round trip on/off;
  2. replay: the main job's trajectories (read-only, from $FORAGER_HOME) and the oracle episodes of part 1,
     replayed in fresh envs: share of steps identical, and the nondeterminism catalog;
  3. forks of a task env (after a few steps) for 1, 4 and 16 forks: `POST /envs/{id}/fork` latency and disk
     per fork, by the server's own mechanism (a snapshot of the env's btrfs layer where Docker runs on btrfs)
     and by `docker commit` (a second server, --fork-mechanism commit), against an env from the warm pool
     (POST /envs, pool ready) and a cold `POST /envs` (no pool); and a third mechanism measured with the
     Docker SDK: the workdir copied through the archive API into started containers (it would lose changes
     outside the workdir). Disk per fork: a snapshot's exclusive bytes (btrfs qgroup), a commit's layer
     shared by the forks plus each one's changes.

Targets: state recording <= 10% of step time; >= 99% of oracle steps replay identically; a fork ready in
under 1 s (the scale target: under 250 ms). The storage driver measured on is printed. The last line is one JSON object with every figure.

    python benchmarks/world_bench.py [--home ~/.forager] [--repos 6] [--forks 1,4,16] [--replay-limit 40]
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import docker
import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from envserver.client import EnvClient  # noqa: E402
from forager.episodes.loop import run_episode  # noqa: E402
from forager.episodes.policies import make_policy  # noqa: E402
from forager.episodes.replay import replay_trajectory, summarize  # noqa: E402
from forager.models import Task  # noqa: E402
from forager.tasks import env_request  # noqa: E402
from forager.tasks.store import load_tasks  # noqa: E402
from forager.trajectories.store import TrajectoryStore  # noqa: E402

TOKEN = secrets.token_hex(16)


def log(*args) -> None:
    print(*args, file=sys.stderr, flush=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(catalog: Path, pool: list[str], *args: str) -> tuple[subprocess.Popen, str]:
    port, home = free_port(), tempfile.mkdtemp(prefix="world-bench-")
    cmd = [sys.executable, "-m", "envserver", "--token", TOKEN, "--port", str(port), "--catalog", str(catalog),
           "--server-id", f"world-bench-{os.getpid()}-{port}", "--max-envs", "128", *args]
    for image in pool:
        cmd += ["--pool", f"{image}=1"]
    proc = subprocess.Popen(cmd, cwd=ROOT, env={**os.environ, "FORAGER_HOME": home}, stdout=subprocess.DEVNULL,
                            stderr=open(f"{home}/server.log", "w"))
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        try:
            health = httpx.get(url + "/healthz", timeout=2).json()
            if all(health["pool"].get(i, {}).get("ready", 0) >= 1 for i in pool):
                return proc, url
        except (httpx.TransportError, KeyError, ValueError):
            pass
        time.sleep(0.3)
    proc.kill()
    sys.exit(f"server did not start: see {home}/server.log")


class NoState:
    """The same client, asking for envs that record no state (the baseline of part 1)."""

    def __init__(self, client: EnvClient):
        self.client = client

    def __getattr__(self, name):
        return getattr(self.client, name)

    def create_env(self, image, **request):
        return self.client.create_env(image, record_state=False, **request)


def bench_state(client: EnvClient, tasks: list[Task]) -> tuple[dict, list]:
    on, off, trajs = [], [], []
    for task in tasks:
        log(f"state: {task.id}")
        for mode, out in (("off", off), ("on", on)):  # off first: the same warm caches for both
            traj = run_episode(task, make_policy("oracle"), client if mode == "on" else NoState(client), max_turns=30)
            steps = [s for s in traj.steps if s.action.tool in ("shell", "edit", "create")]
            out.extend(steps)
            if mode == "on":
                trajs.append(traj)
    state_seconds = sum(s.state.seconds for s in on if s.state)
    env_on, env_off = sum(s.env_seconds for s in on), sum(s.env_seconds for s in off)
    per_step = [s.state.seconds / s.env_seconds for s in on if s.state and s.env_seconds]
    image = tasks[0].image
    rt = {}
    for record in (False, True):
        env = client.create_env(image, record_state=record)
        try:
            times = []
            for _ in range(60):
                t0 = time.perf_counter()
                client.shell(env.id, "true")
                times.append(time.perf_counter() - t0)
        finally:
            client.delete_env(env.id)
        rt["on" if record else "off"] = statistics.median(times[10:])
    return {
        "state_steps": len(on), "state_recorded": sum(1 for s in on if s.state),
        "state_share_of_step_time": round(state_seconds / env_on, 4) if env_on else None,
        "state_share_per_step_p50": round(statistics.median(per_step), 4) if per_step else None,
        "state_seconds_p50_ms": round(1000 * statistics.median([s.state.seconds for s in on if s.state]), 2),
        "step_time_ratio_on_off": round(env_on / env_off, 3) if env_off else None,
        "noop_shell_p50_ms_off": round(rt["off"] * 1000, 2), "noop_shell_p50_ms_on": round(rt["on"] * 1000, 2),
    }, trajs


def bench_replay(client: EnvClient, home: Path, tasks: dict[str, Task], fresh: list, limit: int) -> dict:
    paths = TrajectoryStore(home / "trajectories").files()[:limit]
    main, skipped = [], 0
    for path in paths:
        traj = TrajectoryStore.load(path)
        if traj.task_id not in tasks:
            skipped += 1
            continue
        log(f"replay: {traj.id}")
        main.append(replay_trajectory(traj, tasks[traj.task_id], client))
        if main[-1].error:
            log(f"replay: {traj.id}: {main[-1].error}")
    fresh_reports = [replay_trajectory(t, tasks[t.task_id], client) for t in fresh]
    m, f = summarize(main), summarize(fresh_reports)
    return {"replay_main_trajectories": m["trajectories"], "replay_main_steps": m["steps"],
            "replay_main_share": m["share"], "replay_main_errors": m["errors"], "replay_main_skipped": skipped,
            "replay_main_catalog": m["catalog"][:20], "replay_main_error_examples": [r.error for r in main if r.error][:5],
            "replay_fresh_steps": f["steps"], "replay_fresh_share": f["share"],
            "replay_fresh_digests_compared": f["digests_compared"], "replay_fresh_catalog": f["catalog"][:20]}


def rw_bytes(api, container_id: str) -> int:
    """The container's writable layer size (GET /containers/{id}/json?size=1; docker-py has no argument for it)."""
    return api._result(api._get(api._url("/containers/{0}/json", container_id), params={"size": 1}), True).get("SizeRw") or 0


def exclusive_bytes(snapshots, container_id: str) -> int | None:
    """Bytes only this container's btrfs layer holds (its qgroup's `excl`): what a fork costs on disk."""
    if snapshots is None:
        return None
    layer = snapshots.layer(container_id)
    subprocess.run(["btrfs", "filesystem", "sync", str(layer)], check=True, capture_output=True)
    rootid = subprocess.run(["btrfs", "inspect-internal", "rootid", str(layer)], check=True, capture_output=True,
                            text=True).stdout.strip()
    shown = subprocess.run(["btrfs", "qgroup", "show", "--raw", "-f", str(layer)], capture_output=True, text=True).stdout
    for line in shown.splitlines():
        if line.split()[:1] == [f"0/{rootid}"]:
            return int(line.split()[2])
    return None


def measure_forks(client: EnvClient, dclient, src, n: int, base_image: str, prefix: str, out: dict,
                  snapshots=None) -> None:
    t0 = time.perf_counter()
    forks = client.fork(src.id, n)
    seconds = time.perf_counter() - t0
    first = client.shell(forks[0].id, "cat /repo/NOTES.txt; echo $STAGE; pwd").output
    assert first == "note\n1\n/tmp\n", first
    rw = [rw_bytes(dclient.api, f.container_id) for f in forks]
    image = dclient.api.inspect_container(forks[0].container_id)["Image"]
    layer = dclient.api.inspect_image(image)["Size"] - dclient.api.inspect_image(base_image)["Size"]
    # disk: a commit's layer shared by the n forks plus each one's writes; a snapshot shares the source's blocks
    # (only what differs is its own: the qgroup's exclusive bytes), so its changed-file size is an upper bound
    excl = [exclusive_bytes(snapshots, f.container_id) for f in forks] if not layer else []
    for f in forks:
        client.delete_env(f.id)
    out[f"{prefix}{n}_s"] = round(seconds, 3)
    out[f"{prefix}{n}_per_fork_s"] = round(seconds / n, 3)
    out[f"{prefix}{n}_changed_bytes_per_fork"] = int(statistics.mean(rw))
    out[f"{prefix}{n}_disk_per_fork_bytes"] = (int(statistics.mean(excl)) if excl and None not in excl
                                              else int(layer / n + statistics.mean(rw)))
    out[f"{prefix}{n}_vs_pool_env"] = round(seconds / out["pool_env_s"], 2)
    out[f"{prefix}{n}_vs_cold_env_x_n"] = round(seconds / (out["cold_env_s"] * n), 2)
    log(f"{prefix} x{n}: {seconds:.2f}s ({out[f'{prefix}{n}_disk_per_fork_bytes']} B on disk per fork)")


def bench_forks(client: EnvClient, commit_client: EnvClient, dclient, task: Task, counts: list[int]) -> dict:
    """Forks by the server's own mechanism (a btrfs layer snapshot here) and by docker commit (a second server,
    --fork-mechanism commit), for each count, against envs from the warm pool and cold ones."""
    from envserver.layers import LayerSnapshots

    snapshots = LayerSnapshots.find(dclient.api.info())
    req = env_request(task)
    kwargs = dict(setup_patch=req.setup_patch, grading=req.grading, workdir=req.workdir)
    out: dict = {"fork_mechanism": "snapshot" if snapshots else "commit"}
    # baselines: a task env from the warm pool, and a cold one
    pooled, cold = [], []
    for _ in range(3):
        while client.health()["pool"].get(task.image, {}).get("ready", 0) < 1:
            time.sleep(0.2)
        t0 = time.perf_counter()
        e = client.create_env(task.image, **kwargs)
        pooled.append(time.perf_counter() - t0)
        client.delete_env(e.id)
    for _ in range(2):
        t0 = time.perf_counter()
        e = client.create_env(task.image, ttl=600, limits={"cpus": 1.0, "memory_mb": 2047}, **kwargs)
        cold.append(time.perf_counter() - t0)
        rw_cold = rw_bytes(dclient.api, e.container_id)
        client.delete_env(e.id)
    out.update(pool_env_s=round(statistics.median(pooled), 3), cold_env_s=round(statistics.median(cold), 3),
               env_rw_bytes=rw_cold)
    for prefix, each in (("fork", client), ("commit_fork", commit_client)):
        src = each.create_env(task.image, ttl=1200, **kwargs)
        try:
            each.shell(src.id, "echo note > NOTES.txt && cd /tmp && export STAGE=1 && pip list >/dev/null")
            if prefix == "commit_fork":
                commits = []  # the commit alone, for the breakdown of a fork's time
                for _ in range(3):
                    t0 = time.perf_counter()
                    made = dclient.api.commit(src.container_id, repository="forager-bench/commit", tag=secrets.token_hex(4))
                    commits.append(time.perf_counter() - t0)
                    dclient.api.remove_image(made["Id"], force=True)
                out["commit_only_s"] = round(statistics.median(commits), 3)
            for n in counts:
                # Twice each: the first fork of a count finds fewer containers made ahead (envserver/forkready.py:
                # the server keeps as many as the last fork took); the second is a branching collection's steady
                # state, and the figure. Both are printed.
                measure_forks(each, dclient, src, n, task.image, prefix + "_first", out, snapshots)
                measure_forks(each, dclient, src, n, task.image, prefix, out, snapshots)
                if prefix == "fork":
                    out.update(bench_copy(dclient, src.container_id, task.image, req.workdir, n))
        finally:
            each.delete_env(src.id)
    return out


def bench_copy(dclient, source: str, image: str, workdir: str, n: int) -> dict:
    """The alternative: the workdir copied through the archive API into n started containers (cold here)."""
    api = dclient.api
    started = []
    for _ in range(n):
        c = api.create_container(image, ["bash", "-c", "sleep 600"], network_disabled=True,
                                 labels={"forager.kind": "bench", "forager.expires": str(int(time.time() + 900))})
        api.start(c["Id"])
        started.append(c["Id"])
    try:
        t0 = time.perf_counter()
        stream, _ = api.get_archive(source, workdir)
        data = b"".join(stream)
        parent = workdir.rstrip("/").rpartition("/")[0] or "/"
        with ThreadPoolExecutor(min(n, 8)) as pool:
            list(pool.map(lambda cid: api.put_archive(cid, parent, data), started))
        seconds = time.perf_counter() - t0
        rw = statistics.mean(rw_bytes(api, c) for c in started)
    finally:
        for c in started:
            api.remove_container(c, force=True)
    return {f"copy{n}_s": round(seconds, 3), f"copy{n}_disk_per_fork_bytes": int(rw), "copy_tar_bytes": len(data)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--home", type=Path, default=Path(os.environ.get("FORAGER_HOME", Path.home() / ".forager")))
    ap.add_argument("--repos", type=int, default=6, help="tasks (one per repository) for the state benchmark")
    ap.add_argument("--forks", default="1,4,16")
    ap.add_argument("--replay-limit", type=int, default=40)
    ap.add_argument("--parts", default="state,forks,replay", help="which parts to run (a quick check of one part)")
    args = ap.parse_args()
    parts = set(args.parts.split(","))
    dclient = docker.from_env(timeout=600)
    info = dclient.api.info()
    tasks = {t.id: t for t in load_tasks(args.home / "tasks")}
    images = {r["tag"] for r in map(json.loads, (args.home / "catalog.jsonl").read_text().splitlines())
              if r.get("status") == "ok" and r.get("tag")}
    by_repo: dict[str, Task] = {}
    for t in tasks.values():
        if t.image in images and t.gold_patch:
            by_repo.setdefault(t.repo, t)
    chosen = sorted(by_repo.values(), key=lambda t: t.repo)[: args.repos]
    fork_task = max(chosen, key=lambda t: len(t.repo))  # any default-list task; the name only makes it stable
    proc, url = start_server(args.home / "catalog.jsonl", [fork_task.image])
    commit_proc, commit_url = (start_server(args.home / "catalog.jsonl", [], "--fork-mechanism", "commit")
                               if "forks" in parts else (None, None))
    figures: dict = {"storage_driver": info.get("Driver"), "backing_fs": dict(info.get("DriverStatus") or []).get(
        "Backing Filesystem"), "cpus": os.cpu_count(), "tasks": [t.id for t in chosen], "fork_task": fork_task.id}
    try:
        with EnvClient(url, token=TOKEN) as client:
            fresh = []
            if "state" in parts:
                state, fresh = bench_state(client, chosen)
                figures.update(state)
                log(json.dumps(state))
            if "forks" in parts:
                with EnvClient(commit_url, token=TOKEN) as commit_client:
                    figures.update(bench_forks(client, commit_client, dclient, fork_task,
                                               [int(x) for x in args.forks.split(",")]))
            if "replay" in parts:
                figures.update(bench_replay(client, args.home, tasks, fresh, args.replay_limit))
    finally:
        for server in (proc, commit_proc):
            if server is not None:
                server.terminate()
                server.wait(60)
    if parts == {"state", "forks", "replay"}:
        print_table(figures)
    print(json.dumps(figures))


def print_table(f: dict) -> None:
    rows = [("storage driver", f"{f['storage_driver']} on {f['backing_fs']}"),
            ("state recording: share of step time", f"{f['state_share_of_step_time']:.1%} (target <= 10%)"),
            ("state recording: per-step share p50", f"{f['state_share_per_step_p50']:.1%}"),
            ("state recording: p50 per step", f"{f['state_seconds_p50_ms']} ms"),
            ("step time on/off", f"{f['step_time_ratio_on_off']}x"),
            ("no-op shell p50 off -> on", f"{f['noop_shell_p50_ms_off']} -> {f['noop_shell_p50_ms_on']} ms"),
            ("replay, main job's trajectories", f"{f['replay_main_share']:.2%} of {f['replay_main_steps']} steps"),
            ("replay, fresh oracle (with digests)", f"{f['replay_fresh_share']:.2%} of {f['replay_fresh_steps']} steps "
                                                    "(target >= 99%)"),
            ("env from warm pool / cold", f"{f['pool_env_s']} s / {f['cold_env_s']} s")]
    for key in sorted((k for k in f if k.startswith("fork") and k.endswith("_s") and "per" not in k), key=lambda k: int(k[4:-2])):
        n = key[4:-2]
        rows.append((f"fork x{n} ({f['fork_mechanism']}) / commit / copy",
                     f"{f[key]} s ({f[f'fork{n}_per_fork_s']} s each, {f[f'fork{n}_disk_per_fork_bytes'] / 1e6:.2f} MB "
                     f"on disk per fork) / {f.get(f'commit_fork{n}_s')} s ({f.get(f'commit_fork{n}_disk_per_fork_bytes', 0) / 1e6:.2f} MB)"
                     f" / {f.get(f'copy{n}_s')} s ({f.get(f'copy{n}_disk_per_fork_bytes', 0) / 1e6:.2f} MB)"))
    width = max(len(r[0]) for r in rows)
    for name, value in rows:
        print(f"{name:<{width}}  {value}")


if __name__ == "__main__":
    main()
