"""RQ workers for the fleet, and a pool that keeps N of them running.

Why a subclass of rq.Worker at all: recovery from a dead worker. RQ re-runs a job whose worker
stopped heart-beating (StartedJobRegistry cleanup), but its stock heartbeat lease is the monitoring
interval + 60 s and its maintenance runs every 10 minutes. Here both are settings (env vars below),
so a SIGKILLed worker's job is back on the queue within seconds in tests and within a minute or two
in production. And every process a worker forks (the work horse running the episode, the retry
scheduler) dies with it (PR_SET_PDEATHSIG): an orphaned horse would finish an episode whose job
was already handed to someone else.

A plain `rq worker <queue>` also runs these jobs; it just recovers from crashes more slowly.
`forager worker` runs the async worker (agent/async_worker.py: many jobs per process, same RQ
bookkeeping) unless asked for the fork-per-job one (`--fork`).
"""

from __future__ import annotations

import argparse
import ctypes
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from rq import Worker

from agent.queue import SERIALIZER, connect
from forager.config import Settings
from forager.errors import PoolError

PR_SET_PDEATHSIG = 1


def die_with_parent(parent: int | None = None) -> None:
    """Ask Linux to SIGKILL this process when its parent dies (no-op elsewhere)."""
    if not sys.platform.startswith("linux"):
        return
    parent = parent or os.getppid()
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    if os.getppid() != parent:  # the parent died before prctl took effect
        os._exit(1)


class ForagerWorker(Worker):
    """An RQ worker with a short heartbeat lease, JSON jobs, and children that never outlive it.

    Small intervals (Settings: job_monitor_interval, heartbeat_grace, maintenance_interval) make crash
    recovery fast at the cost of a few more Redis writes.
    """

    def __init__(self, *args, settings: Settings, **kwargs):
        kwargs.setdefault("job_monitoring_interval", settings.job_monitor_interval)
        kwargs.setdefault("maintenance_interval", settings.maintenance_interval)
        kwargs.setdefault("serializer", SERIALIZER)
        self.heartbeat_grace = settings.heartbeat_grace
        super().__init__(*args, **kwargs)

    @property
    def dequeue_timeout(self) -> int:
        # An idle worker wakes up this often to run maintenance (requeue abandoned jobs); RQ's
        # default would block on an empty queue for ~400 s between sweeps.
        return max(1, min(int(self.maintenance_interval), self.worker_ttl - 15))

    def get_heartbeat_ttl(self, job, working_time: float = 0.0) -> int:
        period = self.job_monitoring_interval
        if job.timeout and job.timeout > 0:
            period = max(1, min(job.timeout - working_time, period))
        return int(period) + self.heartbeat_grace

    def execute_job(self, job, queue):
        started = time.monotonic()
        try:
            return super().execute_job(job, queue)
        finally:
            from agent import metrics

            metrics.job_done(job, time.monotonic() - started)


def preload(settings: Settings) -> None:
    """Import the episode job's modules once, here: every job runs in a fresh fork of this process,
    which would otherwise import them again (pydantic models, HTTP and model clients) for every job.
    The env client is made here too (no connection yet: each work horse opens its own)."""
    import agent.jobs  # noqa: F401  (the import is the point)
    import forager.episodes.policies.openai  # noqa: F401
    import forager.episodes.policies.oracle  # noqa: F401

    agent.jobs.env_client(settings)


def worker_name() -> str:
    return f"{socket.gethostname()}-{os.getpid()}"


def run_worker(queue_name: str, redis_url: str, burst: bool = False, with_scheduler: bool = False,
               log_level: str = "INFO", concurrency: int | None = None) -> bool:
    """Run one worker in this process until stopped (or, with burst, until the queue is empty).

    `concurrency` N: the async worker, N jobs in flight as coroutines (agent/async_worker.py); None: RQ's
    fork-per-job worker, one job at a time in a work horse."""
    settings = Settings.from_env()
    os.register_at_fork(after_in_child=die_with_parent)
    preload(settings)
    conn = connect(redis_url)
    if concurrency is None:
        worker = ForagerWorker([queue_name], connection=conn, name=worker_name(), settings=settings)
        return worker.work(burst=burst, with_scheduler=with_scheduler, logging_level=log_level)
    from agent.async_worker import AsyncWorker

    raise_fd_limit()
    worker = AsyncWorker([queue_name], connection=conn, name=worker_name(), settings=settings, concurrency=concurrency)
    return worker.work(burst=burst, logging_level=log_level)


def raise_fd_limit() -> None:
    """Hundreds of episodes hold hundreds of connections (env server, model endpoint): lift the soft limit
    on open files to the hard one."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def run_scheduler(queue_name: str, redis_url: str, poll: float = 1.0) -> None:
    """Move jobs whose retry wait is over back onto the queue (RQ's scheduler, with a faster takeover).

    One scheduler per queue holds a lock in Redis; every pool runs a candidate. Unlike RQ's own
    loop (standbys retry the lock every 2 minutes), each candidate tries every `poll` seconds, so when
    a host dies its retries stall only until its lock lease (61 s) runs out.
    """
    import logging

    import redis
    from rq.scheduler import RQScheduler

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    scheduler = RQScheduler([queue_name], connection=connect(redis_url), interval=int(poll) or 1,
                            serializer=SERIALIZER)
    scheduler._install_signal_handlers()
    while not scheduler._stop_requested:
        try:
            scheduler.register_birth()
            scheduler.acquire_locks()  # acquires a free lock, or refreshes ours
            if scheduler.acquired_locks:
                scheduler.enqueue_scheduled_jobs()
        except redis.ConnectionError as exc:  # Redis restarting: keep trying
            scheduler.log.warning("scheduler: redis unreachable (%s)", exc)
        time.sleep(poll)
    scheduler.stop()


# ---------------------------------------------------------------- pool


class Pool:
    """Worker processes, respawned if one dies, stopped together (SIGTERM = finish current jobs).

    `concurrency` is the number of jobs in flight. Async mode (the default): `processes` async workers
    share them (N/P coroutines each). Fork mode (`per_job_process=True`, RQ's classic worker): one worker
    process, and one work horse, per job in flight.
    """

    def __init__(self, concurrency: int, queue_name: str, redis_url: str, burst: bool = False,
                 metrics_port: int | None = None, metrics_host: str = "127.0.0.1", log_dir: Path | None = None,
                 processes: int = 1, per_job_process: bool = False):
        if concurrency < 1 or processes < 1:
            raise ValueError("concurrency and processes must be at least 1")
        self.concurrency, self.queue_name, self.redis_url, self.burst = concurrency, queue_name, redis_url, burst
        self.metrics_port, self.metrics_host, self.log_dir = metrics_port, metrics_host, log_dir
        self.per_job_process = per_job_process
        self.processes = concurrency if per_job_process else min(processes, concurrency)
        # N places over P processes: the first N % P processes take one more
        self.shares = [] if per_job_process else [concurrency // self.processes + (i < concurrency % self.processes)
                                                  for i in range(self.processes)]
        self.procs: list[subprocess.Popen] = []
        self.scheduler: subprocess.Popen | None = None
        self.spawned = 0
        self.respawns: list[tuple[float, int | None]] = []  # (when, share) of workers to start again
        self.quick_deaths = 0
        self.stopping = False
        self.metrics_dir = tempfile.mkdtemp(prefix="forager-metrics-") if metrics_port else None

    def _spawn(self, role: str = "worker", share: int | None = None) -> subprocess.Popen:
        env = dict(os.environ)
        env["FORAGER_POOL_PID"] = str(os.getpid())  # the child ties its life to ours (see main())
        if self.metrics_dir:
            env["PROMETHEUS_MULTIPROC_DIR"] = self.metrics_dir
        cmd = [sys.executable, "-m", "agent.worker", "--queue", self.queue_name, "--url", self.redis_url]
        if role == "scheduler":
            cmd.append("--scheduler")
        else:
            if self.burst:
                cmd.append("--burst")
            if share is not None:
                cmd += ["--concurrency", str(share)]
        self.spawned += 1
        out = None
        if self.log_dir:
            self.log_dir.mkdir(parents=True, exist_ok=True)
            out = open(self.log_dir / f"{role}-{os.getpid()}-{self.spawned}.log", "ab")
        # No preexec_fn: it is unsafe with threads (the progress bar, the metrics server).
        proc = subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT if out else None)
        proc.share = share  # type: ignore[attr-defined]  (a respawn takes the same share)
        proc.spawned_at = time.monotonic()  # type: ignore[attr-defined]
        if out:
            out.close()
        return proc

    def _respawn_delay(self, proc) -> float:
        """None for a worker that ran a while; growing waits (up to a minute) for one that keeps dying at once
        (Redis gone, a broken install), so a pool never spins."""
        if time.monotonic() - getattr(proc, "spawned_at", 0.0) > 30:
            self.quick_deaths = 0
            return 0.0
        self.quick_deaths += 1
        return min(60.0, 0.5 * 2 ** self.quick_deaths)

    def stop(self, *_):
        """First call: warm shutdown (workers finish their current job). Second call: kill them."""
        sig = signal.SIGKILL if self.stopping else signal.SIGTERM
        self.stopping = True
        for p in [*self.procs, *([self.scheduler] if self.scheduler else [])]:
            if p.poll() is None:
                p.send_signal(sig)

    def run(self) -> int:
        if self.metrics_port:
            from agent import metrics

            try:
                metrics.serve_pool(self.metrics_port, self.metrics_host, self.metrics_dir, self.redis_url,
                                   self.queue_name)
            except OSError as exc:
                raise PoolError(f"cannot serve metrics on {self.metrics_host}:{self.metrics_port}: {exc}") from exc
        signal.signal(signal.SIGTERM, self.stop)
        signal.signal(signal.SIGINT, self.stop)
        shares = self.shares or [None] * self.processes
        self.procs = [self._spawn(share=share) for share in shares]
        try:
            while True:
                if not self.stopping and (self.scheduler is None or self.scheduler.poll() is not None):
                    self.scheduler = self._spawn("scheduler")
                alive = []
                for p in self.procs:
                    if p.poll() is None:
                        alive.append(p)
                        continue
                    if self.metrics_dir:
                        from prometheus_client import multiprocess

                        multiprocess.mark_process_dead(p.pid, self.metrics_dir)
                    if not self.stopping and not self.burst:  # a crashed worker is replaced, soon
                        self.respawns.append((time.monotonic() + self._respawn_delay(p), getattr(p, "share", None)))
                moment = time.monotonic()
                due = [r for r in self.respawns if r[0] <= moment]
                self.respawns = [r for r in self.respawns if r[0] > moment]
                alive += [self._spawn(share=share) for _, share in due if not self.stopping]
                self.procs = alive
                if not self.procs and self.respawns and not self.stopping:
                    time.sleep(0.5)
                    continue
                if not self.procs:
                    return 0
                time.sleep(0.5)
        finally:
            if not self.stopping:
                self.stop()
            elif self.scheduler and self.scheduler.poll() is None:
                self.scheduler.terminate()  # releases its lock, so another pool's scheduler takes over at once
            for p in [*self.procs, *([self.scheduler] if self.scheduler else [])]:
                try:
                    p.wait(60)
                except subprocess.TimeoutExpired:
                    p.kill()
                    p.wait()
            if self.metrics_dir:
                shutil.rmtree(self.metrics_dir, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="one Forager RQ worker (the pool runs these)")
    parser.add_argument("--queue", required=True)
    parser.add_argument("--url", required=True)
    parser.add_argument("--burst", action="store_true")
    parser.add_argument("--with-scheduler", action="store_true", help="also run RQ's scheduler (standalone use)")
    parser.add_argument("--scheduler", action="store_true", help="run only the retry scheduler (the pool does)")
    parser.add_argument("--log-level", default="INFO")
    parser.add_argument("--concurrency", type=int, default=None,
                        help="jobs in flight in this process (the async worker); default: RQ's fork-per-job worker")
    args = parser.parse_args(argv)
    pool_pid = os.environ.pop("FORAGER_POOL_PID", None)
    if pool_pid:
        die_with_parent(int(pool_pid))  # a pool killed with SIGKILL takes its workers with it
    if args.scheduler:
        run_scheduler(args.queue, args.url)
    else:
        run_worker(args.queue, args.url, burst=args.burst, with_scheduler=args.with_scheduler, log_level=args.log_level,
                   concurrency=args.concurrency)
    return 0


if __name__ == "__main__":
    sys.exit(main())
