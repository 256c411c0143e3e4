"""Environment server benchmark: every figure against a baseline measured in the same run.

  1. shell round trip through the server (HTTP + persistent bash session) vs one `docker exec`
     of the same command (the CLI, and the SDK's exec_run, which skips the CLI's start-up);
     (the transport with the state record off; the same with it on is printed beside it);
  2. env acquire from the warm pool (POST /envs) vs a cold `docker run` of the same image;
  3. N concurrent envs (default 64; 512 for the scale target), each driven by its own async client doing M
     shell steps; memory per env with all N up (container, containerd shim, the server's share).

Targets: round trip p50 <= 3 ms and >= 15x faster than docker exec; warm acquire p50 <= 20 ms;
64 concurrent envs with zero errors and p99 step <= 250 ms. The last line is one JSON object
holding every figure printed.

    python benchmarks/envserver_bench.py [--envs 64] [--steps 20] [--image forager/base:py3.11]
    flock /tmp/forager-heavy.lock python benchmarks/envserver_bench.py --envs 512   (the scale target: 0 errors)
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import socket
import secrets
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import docker
import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from envserver.client import AsyncEnvClient, EnvClient  # noqa: E402
from envserver.models import Limits  # noqa: E402
from benchmarks import memory  # noqa: E402

COMMAND = "echo hello"

TOKEN = secrets.token_hex(16)  # the env server always requires one
SERVER_ID = f"bench-{os.getpid()}"


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


def ms(seconds: float) -> float:
    return round(seconds * 1000, 3)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(image: str, pool: int, max_envs: int = 512) -> tuple[subprocess.Popen, str]:
    port = free_port()
    home = tempfile.mkdtemp(prefix="envserver-bench-")
    proc = subprocess.Popen(
        [sys.executable, "-m", "envserver", "--token", TOKEN, "--port", str(port), "--allow", image, "--pool", f"{image}={pool}",
         "--server-id", SERVER_ID, "--max-envs", str(max_envs)],
        cwd=ROOT, env={**os.environ, "FORAGER_HOME": home}, stdout=subprocess.DEVNULL, stderr=open(f"{home}/server.log", "w"),
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 180
    while True:
        try:
            if httpx.get(url + "/healthz", timeout=2).json()["pool"][image]["ready"] >= pool:
                return proc, url
        except (httpx.TransportError, KeyError, ValueError):
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            sys.exit(f"server did not start: see {home}/server.log")
        time.sleep(0.2)


def wait_pool(client: EnvClient, image: str, at_least: int) -> None:
    while client.health()["pool"][image]["ready"] < at_least:
        time.sleep(0.05)


def bench_round_trip(client: EnvClient, dclient, image: str, rounds: int, baseline_rounds: int) -> dict:
    # The transport alone (no state record); the same with the record, in an env of the same image.
    env = client.create_env(image, record_state=False)
    recorded = client.create_env(image)
    try:
        with_state = []
        for i in range(rounds // 5 + 20):
            t0 = time.perf_counter()
            client.shell(recorded.id, COMMAND)
            if i >= 20:  # after the first steps (its baseline, the probe's start)
                with_state.append(time.perf_counter() - t0)
        for _ in range(20):
            client.shell(env.id, COMMAND)  # warm the connection and the session
        server = []
        for _ in range(rounds):
            t0 = time.perf_counter()
            r = client.shell(env.id, COMMAND)
            server.append(time.perf_counter() - t0)
            assert r.output == "hello\n", r
        container = dclient.containers.get(env.container_id)
        sdk, cli = [], []
        for _ in range(baseline_rounds):
            t0 = time.perf_counter()
            code, out = container.exec_run(["bash", "-c", COMMAND])
            sdk.append(time.perf_counter() - t0)
            assert out == b"hello\n"
            t0 = time.perf_counter()
            out = subprocess.run(["docker", "exec", env.container_id, "bash", "-c", COMMAND], capture_output=True).stdout
            cli.append(time.perf_counter() - t0)
            assert out == b"hello\n"
    finally:
        client.delete_env(env.id)
        client.delete_env(recorded.id)
    p50 = pct(server, 0.5)
    return {
        "shell_p50_ms": ms(p50), "shell_p99_ms": ms(pct(server, 0.99)),
        "shell_with_state_p50_ms": ms(pct(with_state, 0.5)),
        "docker_exec_cli_p50_ms": ms(pct(cli, 0.5)), "docker_exec_sdk_p50_ms": ms(pct(sdk, 0.5)),
        "speedup_vs_docker_exec_cli": round(pct(cli, 0.5) / p50, 1),
        "speedup_vs_docker_exec_sdk": round(pct(sdk, 0.5) / p50, 1),
    }


def bench_acquire(client: EnvClient, dclient, image: str, samples: int) -> dict:
    warm, cold_server, cold_run = [], [], []
    for _ in range(samples):
        wait_pool(client, image, 1)
        t0 = time.perf_counter()
        env = client.create_env(image)
        warm.append(time.perf_counter() - t0)
        client.delete_env(env.id)
    for _ in range(samples):
        t0 = time.perf_counter()
        c = dclient.containers.run(image, ["sleep", "infinity"], detach=True, init=True, network_mode="none",
                                   labels={"forager.bench": "cold"})
        cold_run.append(time.perf_counter() - t0)
        c.remove(force=True)
        # non-default limits bypass the pool: a cold start through the server (container + bash + base commit)
        t0 = time.perf_counter()
        env = client.create_env(image, limits=Limits(cpus=0.9))
        cold_server.append(time.perf_counter() - t0)
        client.delete_env(env.id)
    return {
        "acquire_warm_p50_ms": ms(pct(warm, 0.5)), "acquire_warm_p99_ms": ms(pct(warm, 0.99)),
        "docker_run_cold_p50_ms": ms(pct(cold_run, 0.5)), "acquire_cold_server_p50_ms": ms(pct(cold_server, 0.5)),
        "speedup_warm_vs_docker_run": round(pct(cold_run, 0.5) / pct(warm, 0.5), 1),
    }


def cpu_seconds(pid: int) -> float:
    """user+system CPU of a process so far (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def bench_concurrent(url: str, image: str, envs: int, steps: int, server_pid: int) -> dict:
    # As many connections as envs (a create waits for Docker, not for a connection), and no pool deadline.
    admin = AsyncEnvClient(url, token=TOKEN, max_connections=envs, pool_timeout=None)
    errors: list[str] = []
    server_rss0 = memory.rss(server_pid)
    t0 = time.perf_counter()
    created = await asyncio.gather(*(admin.create_env(image) for _ in range(envs)), return_exceptions=True)
    create_seconds = time.perf_counter() - t0
    ids = [e.id for e in created if not isinstance(e, BaseException)]
    errors += [repr(e) for e in created if isinstance(e, BaseException)]
    # Memory per env, with every env up: its container (cgroup, less page cache), its containerd shim, and
    # what the server holds for it (its RSS growth over the envs).
    containers = {e.container_id for e in created if not isinstance(e, BaseException)}
    mem = {"container": sum(memory.container_memory(c) for c in containers), "shims": memory.shims(containers),
           "server": memory.rss(server_pid) - server_rss0, "server_rss": memory.rss(server_pid)}
    live = max(1, len(containers))
    latencies: list[float] = []
    server_side: list[float] = []  # ShellResponse.duration: time spent on the session inside the server

    # One client (one keep-alive connection) per env, made before the clock starts: building an httpx
    # client costs tens of ms of CPU (SSL context), which would otherwise land on the first steps.
    clients = [AsyncEnvClient(url, token=TOKEN) for _ in ids]
    await asyncio.gather(*(c.health() for c in clients))  # connect each one

    async def drive(env_id: str, n: int) -> None:
        c = clients[n]
        for i in range(steps):
            t = time.perf_counter()
            try:
                r = await c.shell(env_id, f"echo step-{n}-{i}")
                server_side.append(r.duration)
                if r.output != f"step-{n}-{i}\n":
                    errors.append(f"wrong output {r.output!r}")
            except Exception as exc:
                errors.append(repr(exc))
            latencies.append(time.perf_counter() - t)

    t0, server_cpu0, client_cpu0 = time.perf_counter(), cpu_seconds(server_pid), time.process_time()
    await asyncio.gather(*(drive(env_id, n) for n, env_id in enumerate(ids)))
    wall = time.perf_counter() - t0
    server_cpu, client_cpu = cpu_seconds(server_pid) - server_cpu0, time.process_time() - client_cpu0
    await asyncio.gather(*(c.close() for c in clients))
    await asyncio.gather(*(admin.delete_env(i) for i in ids), return_exceptions=True)
    await admin.close()
    return {
        "concurrent_envs": envs, "steps_per_env": steps, "concurrent_errors": len(errors),
        "concurrent_step_p50_ms": ms(pct(latencies, 0.5)) if latencies else None,
        "concurrent_step_p99_ms": ms(pct(latencies, 0.99)) if latencies else None,
        "concurrent_steps_per_s": round(len(latencies) / wall, 1) if wall else None,
        "concurrent_in_server_p50_ms": ms(pct(server_side, 0.5)) if server_side else None,
        "concurrent_in_server_p99_ms": ms(pct(server_side, 0.99)) if server_side else None,
        "server_cpu_ms_per_step": round(server_cpu / max(1, len(latencies)) * 1000, 3),
        "client_cpu_ms_per_step": round(client_cpu / max(1, len(latencies)) * 1000, 3),
        "concurrent_create_seconds": round(create_seconds, 2), "concurrent_first_errors": errors[:3],
        "mem_per_env_container_mb": memory.mb(mem["container"] / live),
        "mem_per_env_shim_mb": memory.mb(mem["shims"]["rss"] / live),
        "mem_per_env_server_mb": memory.mb(mem["server"] / live),
        "mem_per_env_total_mb": memory.mb((mem["container"] + mem["shims"]["rss"] + mem["server"]) / live),
        "server_rss_mb_at_peak": memory.mb(mem["server_rss"]),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--image", default="forager/base:py3.11")
    p.add_argument("--envs", type=int, default=64)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--rounds", type=int, default=500)
    p.add_argument("--baseline-rounds", type=int, default=40)
    p.add_argument("--acquire-samples", type=int, default=20)
    p.add_argument("--pool", type=int, default=4)
    args = p.parse_args()

    dclient = docker.from_env()
    proc, url = start_server(args.image, args.pool, max_envs=max(512, args.envs + args.pool + 4))
    figures: dict = {"image": args.image, "cpus": os.cpu_count(), "loadavg_1m_start": round(os.getloadavg()[0], 2)}
    try:
        with EnvClient(url, token=TOKEN) as client:
            rt = bench_round_trip(client, dclient, args.image, args.rounds, args.baseline_rounds)
            print(f"shell round trip   p50 {rt['shell_p50_ms']} ms  p99 {rt['shell_p99_ms']} ms  (with the state record "
                  f"p50 {rt['shell_with_state_p50_ms']} ms)  | docker exec CLI p50 "
                  f"{rt['docker_exec_cli_p50_ms']} ms ({rt['speedup_vs_docker_exec_cli']}x), SDK exec_run p50 "
                  f"{rt['docker_exec_sdk_p50_ms']} ms ({rt['speedup_vs_docker_exec_sdk']}x)")
            figures.update(rt)
            acq = bench_acquire(client, dclient, args.image, args.acquire_samples)
            print(f"acquire warm       p50 {acq['acquire_warm_p50_ms']} ms  p99 {acq['acquire_warm_p99_ms']} ms  | cold docker run "
                  f"p50 {acq['docker_run_cold_p50_ms']} ms ({acq['speedup_warm_vs_docker_run']}x); cold through the server "
                  f"p50 {acq['acquire_cold_server_p50_ms']} ms")
            figures.update(acq)
        conc = asyncio.run(bench_concurrent(url, args.image, args.envs, args.steps, proc.pid))
        print(f"{args.envs} concurrent envs x {args.steps} steps: p50 {conc['concurrent_step_p50_ms']} ms  p99 "
              f"{conc['concurrent_step_p99_ms']} ms  errors {conc['concurrent_errors']}  "
              f"({conc['concurrent_steps_per_s']} steps/s; {args.envs} envs created in {conc['concurrent_create_seconds']} s)")
        print(f"  inside the server p50 {conc['concurrent_in_server_p50_ms']} ms  p99 {conc['concurrent_in_server_p99_ms']} ms;"
              f" CPU per step: server {conc['server_cpu_ms_per_step']} ms, this client {conc['client_cpu_ms_per_step']} ms")
        print(f"  memory per env: {conc['mem_per_env_total_mb']} MB = container {conc['mem_per_env_container_mb']} MB + "
              f"containerd shim {conc['mem_per_env_shim_mb']} MB + env server {conc['mem_per_env_server_mb']} MB "
              f"(server RSS {conc['server_rss_mb_at_peak']} MB with {args.envs} envs)")
        figures.update(conc)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(120)
    figures["loadavg_1m_end"] = round(os.getloadavg()[0], 2)
    figures["targets_met"] = {
        "shell_p50_le_3ms": figures["shell_p50_ms"] <= 3,
        "shell_15x_docker_exec_cli": figures["speedup_vs_docker_exec_cli"] >= 15,
        "shell_15x_docker_exec_sdk": figures["speedup_vs_docker_exec_sdk"] >= 15,
        "warm_acquire_p50_le_20ms": figures["acquire_warm_p50_ms"] <= 20,
        "concurrent_zero_errors": figures["concurrent_errors"] == 0,
        "concurrent_p99_le_250ms": (figures["concurrent_step_p99_ms"] or 1e9) <= 250,
    }
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
