"""The fleet: a Redis (RQ) queue of episode jobs, workers that run them, and the bookkeeping around them.

Modules, one purpose each:
  queue    -- connect, enqueue with deterministic ids (generic, for any importable job function)
  jobs     -- the episode job (blocking and as a coroutine, one body): env, episode, trajectory, release
  worker   -- an RQ worker tuned for fast abandoned-job recovery, and a pool of worker processes
  async_worker -- the RQ worker `forager worker` runs: many jobs in flight as coroutines in one process
  status   -- counts for a collection (queued, running, done, failed, trajectories, reward)
  metrics  -- Prometheus metrics served by `forager worker --metrics-port`
  joblog   -- structured JSON-lines log per job
  services -- start Redis / an env server / a worker pool as subprocesses when none is reachable
  trace_jobs -- the trace job (one image's test suite traced) and its enqueueing

The fleet imports forager (the kernel and the episodes, trajectories and trace domains) and envserver's
face; `forager run` (forager/cli/run.py) drives it from above.
"""
