"""The trace job: trace one image's test suite (one job per image, run by any fleet worker), and its enqueueing."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from agent.queue import JobSpec, enqueue_many, make_job_id
from forager.models import ImageRecord
from forager.trace.collect import default_timeout, traces_path
from forager.trace.models import TraceRunSummary

JOB_FUNC = "agent.trace_jobs.trace_image_job"


def trace_image_job(record: dict, out: str, force: bool = False, **options: Any) -> dict:
    """Plain JSON in and out, so `rq` can run it. Existing traces are kept (resumable) unless `force`.

    `record` is the image's catalog record (the enqueuer read the catalog); `options` are
    collect_test_traces's keyword arguments.
    """
    from forager.trace.collect import collect_test_traces

    image = ImageRecord.model_validate(record)
    if Path(out).exists() and not force:
        return TraceRunSummary(image=image.tag or "", out=out, skipped=True).model_dump()
    summary = collect_test_traces(image, out, **options)
    if not summary.traces:  # a failed job, visible in the fleet's status (and retried)
        raise RuntimeError(f"{image.tag}: {summary.error}\n{summary.log_tail[-1500:]}")
    return summary.model_dump()


def enqueue_traces(conn, records: list[ImageRecord], out_dir: Path, options: dict[str, Any], *, queue: str,
                   force: bool = False) -> tuple[str, dict[str, str]]:
    """One job per image; (collection name, {job id: outcome}). Images already traced are skipped unless `force`."""
    collection = make_job_id("traces", str(out_dir))
    specs = []
    for record in records:
        out = traces_path(out_dir, record.tag or record.repo)
        kwargs = {"record": record.model_dump(mode="json", exclude={"test_outcomes", "pip_freeze"}),
                  "out": str(out), "force": force, **options}
        job_timeout = int((options.get("timeout") or default_timeout(record)) + 600)
        # --force: a fresh id, since a finished job's id stays taken (that is what makes reruns no-ops)
        job_id = make_job_id("trace", record.tag, out, *([time.time()] if force else []))
        specs.append(JobSpec(JOB_FUNC, kwargs, job_id, timeout=job_timeout, retries=1, intervals=(30,),
                             description=f"trace {record.tag}"))
    outcome = enqueue_many(specs, conn=conn, queue_name=queue, collection=collection,
                           done=None if force else (lambda spec: Path(spec.kwargs["out"]).exists()))
    return collection, outcome
