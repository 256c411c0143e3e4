"""The async worker: one process runs up to N jobs at once as coroutines, on RQ's own bookkeeping.

An episode spends most of its time waiting (for the model, for the env server), so a process per episode
(RQ's fork-per-job worker, ~54 MB each) wastes memory on waiting. This worker is an `rq` Worker whose
jobs are coroutines in one event loop instead of forked work horses; everything RQ's tooling reads is
RQ's own:

- each job is dequeued from the queue by RQ (`Queue.dequeue_any`, into its intermediate queue), gets an
  RQ `Execution` (the worker's execution set, the queue's StartedJobRegistry: `rq info` and `forager
  status` see N jobs started by this worker), and ends through RQ's own handlers (`_finalize_success`,
  `_finalize_failure`: finished / failed registries, `Retry` with its intervals for infra errors);
- heartbeats: one pipeline every `job_monitoring_interval` extends the worker's key and every in-flight
  execution's lease (what `maintain_heartbeats` does for one horse, for all of them at once), from a
  thread of its own, so a busy event loop never lets a live job's lease run out;
- a SIGKILLed worker takes its coroutines with it (no orphaned horse can finish a job handed to someone
  else); its executions' leases run out and any live worker's maintenance (StartedJobRegistry cleanup)
  re-runs each one once: the job's next try removes the env the killed try left (agent.jobs).

Back-pressure: a job takes `job_weight` places (an episode 1, a branching tree 1 + its forks) of the
`concurrency`, so the worker never holds more envs than that; it dequeues only when it has a free place.
Jobs without a coroutine form (agent.jobs.ASYNC_JOBS) run in a thread each, within the same places.
SIGTERM/SIGINT: stop taking jobs and finish the ones in flight; a second one cancels them (each is
handed back to RQ as failed, so its retries re-run it).
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
import threading
import time
from typing import Any

from redis import RedisError
from rq.job import Job
from rq.timeouts import JobTimeoutException
from rq.utils import now
from rq.worker import WorkerStatus

from agent.worker import ForagerWorker
from envserver.client import AsyncEnvClient
from forager.config import Settings
from forager.episodes.policies.endpoint import endpoint_stats

# Fields this worker adds to its RQ worker hash (read by `forager status`; RQ ignores them).
CONCURRENCY_FIELD = "forager_concurrency"
MODEL_FIELD = "forager_model"
IDLE_POLL = 0.5  # s between looks at an empty queue while there is room


class AsyncWorker(ForagerWorker):
    """An RQ worker with up to `concurrency` jobs in flight as coroutines."""

    def __init__(self, *args, settings: Settings, concurrency: int, **kwargs):
        super().__init__(*args, settings=settings, **kwargs)
        if concurrency < 1:
            raise ValueError("concurrency must be at least 1")
        self.settings, self.concurrency = settings, concurrency
        self.used = 0  # places taken by jobs in flight
        self.running: dict[str, tuple[Job, Any]] = {}  # execution id -> (job, execution)
        self.client: AsyncEnvClient | None = None
        self._tasks: set[asyncio.Task] = set()
        self._stops = 0

    # ------------------------------------------------------------ the loop

    def work(self, burst: bool = False, logging_level: str | None = "INFO", **kwargs) -> bool:
        self.bootstrap(logging_level)
        try:
            return asyncio.run(self._main(burst))
        finally:
            self.teardown()

    def _on_signal(self) -> None:
        self._stops += 1
        self._stop_requested = True
        if self._stops == 1:
            self.log.info("Worker %s: warm shut down: finishing %d jobs in flight", self.name, len(self._tasks))
        else:
            self.log.info("Worker %s: cold shut down: cancelling %d jobs", self.name, len(self._tasks))
            for task in self._tasks:
                task.cancel()

    async def _main(self, burst: bool) -> bool:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._on_signal)
        # One connection per place: a place waiting for a connection would be a place doing nothing.
        self.client = AsyncEnvClient(self.settings.envserver_url, token=self.settings.envserver_token,
                                     max_connections=self.concurrency + 4, pool_timeout=None)
        beating = threading.Event()
        beats = threading.Thread(target=self._beat_forever, args=(beating,), name="heartbeats", daemon=True)
        beats.start()
        worked = False
        try:
            while not self._stop_requested:
                try:
                    if self.should_run_maintenance_tasks:
                        self.run_maintenance_tasks()
                except RedisError as exc:  # Redis restarting: the jobs in flight go on
                    self.log.warning("Worker %s: maintenance failed (%s)", self.name, exc)
                if self.used >= self.concurrency:
                    await self._wait_for_room()
                    continue
                try:
                    got = self.queue_class.dequeue_any(self._ordered_queues, None, connection=self.connection,
                                                       job_class=self.job_class, serializer=self.serializer)
                except RedisError as exc:  # Redis restarting: the jobs in flight go on; try again shortly
                    self.log.warning("Worker %s: dequeue failed (%s)", self.name, exc)
                    got = None
                if got is None:
                    if burst and not self._tasks:
                        break
                    if not self._tasks:
                        self.set_state(WorkerStatus.IDLE)
                    await self._wait_for_room(IDLE_POLL)
                    continue
                worked = True
                self._start(*got)
            if self._tasks:
                await asyncio.gather(*self._tasks, return_exceptions=True)
        finally:
            beating.set()
            beats.join(5)
            await self.client.close()
        return worked

    async def _wait_for_room(self, timeout: float | None = None) -> None:
        """Until a job ends (or `timeout` passes, or a stop is asked)."""
        if self._tasks:
            await asyncio.wait(self._tasks, timeout=timeout or self.job_monitoring_interval,
                               return_when=asyncio.FIRST_COMPLETED)
        else:
            await asyncio.sleep(timeout or IDLE_POLL)

    def _start(self, job: Job, queue) -> None:
        from agent.jobs import job_weight

        weight = min(job_weight(job.kwargs or {}), self.concurrency)
        self.used += weight
        task = asyncio.create_task(self._run(job, queue, weight))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _run(self, job: Job, queue, weight: int) -> None:
        """One job through RQ's lifecycle: execution, started, then RQ's own success/failure handling."""
        from agent import metrics
        from agent.jobs import ASYNC_JOBS

        started = time.monotonic()
        execution = None
        try:
            execution = self.prepare_execution(job)
            self.running[execution.id] = (job, execution)
            coroutine = ASYNC_JOBS.get(job.func_name)
            if coroutine is None:  # a blocking job (a trace job): in a work horse, as RQ runs it
                await self._run_in_horse(job, queue, execution)
                return
            self.prepare_job_execution(job, remove_from_intermediate_queue=len(self.queues) == 1)
            job.started_at = now()
            timeout = job.timeout if job.timeout and job.timeout > 0 else None
            try:
                result = await asyncio.wait_for(coroutine(job, self.settings, self.client, **(job.kwargs or {})),
                                                timeout)
            except asyncio.TimeoutError:
                raise JobTimeoutException(f"Task exceeded maximum timeout value ({timeout} seconds)") from None
            self._finalize_success(job, queue, execution, result)
        except asyncio.CancelledError:
            # cold shutdown: handed back to RQ now (retried if it has retries) rather than after its lease
            if execution is not None and job.get_status(refresh=True) == "started":
                self._finalize_failure(job, queue, execution, sys.exc_info())
        except Exception:
            if execution is not None:
                self._finalize_failure(job, queue, execution, sys.exc_info())
            else:
                self.log.exception("Worker %s: could not start job %s", self.name, job.id)
        finally:
            if execution is not None:
                self.running.pop(execution.id, None)
            self.used -= weight
            metrics.job_done(job, time.monotonic() - started)

    async def _run_in_horse(self, job: Job, queue, execution) -> None:
        """A job with no coroutine form runs in a forked work horse (RQ's `perform_job`: its own bookkeeping,
        its timeout by SIGALRM); this coroutine waits for the horse and fails the job if the horse died."""
        pid = os.fork()
        if pid == 0:  # the horse: no event loop here, RQ's own code from start to end
            code = 0
            try:
                signal.set_wakeup_fd(-1)
                self.setup_work_horse_signals()
                self._is_horse = True
                self.perform_job(job, queue, execution)
            except BaseException:  # noqa: BLE001 - a horse never returns into the worker's loop
                code = 1
            os._exit(code)
        try:
            _, status = await asyncio.to_thread(os.waitpid, pid, 0)
        except asyncio.CancelledError:
            os.kill(pid, signal.SIGKILL)
            await asyncio.to_thread(os.waitpid, pid, 0)
            raise
        if job.get_status(refresh=True) == "started":  # the horse died before RQ recorded an end
            self.handle_job_failure(job, queue=queue, execution=execution,
                                    exc_string=f"Work-horse terminated unexpectedly; waitpid returned {status}")


    # ------------------------------------------------------------ heartbeats

    def _beat_forever(self, stop: threading.Event) -> None:
        """In a thread of its own: a busy event loop (hundreds of episodes) never delays a lease."""
        while not stop.is_set():
            try:
                self.beat()
            except RedisError as exc:
                self.log.warning("Worker %s: heartbeat failed (%s)", self.name, exc)
            stop.wait(self.job_monitoring_interval)

    def beat(self) -> None:
        """Extend the worker's key and every in-flight execution's lease in one pipeline, and publish what
        `forager status` shows (places, the model endpoints' counts)."""
        with self.connection.pipeline() as pipe:
            self.heartbeat(self.job_monitoring_interval + 60, pipeline=pipe)
            for job, execution in list(self.running.copy().values()):
                working = (now() - job.started_at).total_seconds() if job.started_at else 0.0
                ttl = int(self.get_heartbeat_ttl(job, working_time=working))
                execution.heartbeat(job.started_job_registry, ttl, pipeline=pipe)
                job.heartbeat(now(), ttl, pipeline=pipe, xx=True)
            pipe.hset(self.key, mapping={CONCURRENCY_FIELD: self.concurrency,
                                         MODEL_FIELD: json.dumps(endpoint_stats())})
            pipe.execute()


def worker_details(conn, worker) -> dict[str, Any]:
    """What this module adds to a worker's RQ hash, read back (0 / [] for a fork-per-job worker)."""
    concurrency, model = conn.hmget(worker.key, [CONCURRENCY_FIELD, MODEL_FIELD])
    return {"concurrency": int(concurrency) if concurrency else 1,
            "model_endpoints": json.loads(model) if model else []}
