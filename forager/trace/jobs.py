"""Queue job: trace one image's test suite (one job per image, run by any fleet worker)."""

from __future__ import annotations

from pathlib import Path

from forager.config import Settings
from forager.trace.models import TraceRunSummary


def trace_image_job(
    image: str,
    out: str,
    catalog: str | None = None,
    max_calls: int = 3,
    max_events: int | None = None,
    max_bytes: int | None = None,
    max_repr: int | None = None,
    timeout: float | None = None,
    follow_libraries: bool = False,
    safe_repr: bool = True,
    force: bool = False,
) -> dict:
    """Plain JSON in and out, so `rq` can run it. Existing traces are kept (resumable) unless `force`."""
    import docker

    from forager.trace.collect import collect_test_traces
    from images.catalog import load_catalog

    if Path(out).exists() and not force:
        return TraceRunSummary(image=image, out=out, skipped=True).model_dump()
    catalog_path = catalog or str(Settings.from_env().catalog_path)
    record = load_catalog(catalog_path).get(image)
    if record is None:
        raise LookupError(f"{image} is not in the catalog {catalog_path}")
    summary = collect_test_traces(
        docker.from_env(timeout=600), record, out, max_calls=max_calls, max_events=max_events,
        max_bytes=max_bytes, max_repr=max_repr, timeout=timeout, follow_libraries=follow_libraries,
        safe_repr=safe_repr,
    )
    if not summary.traces:  # a failed job, visible in the fleet's status (and retried)
        raise RuntimeError(f"{image}: {summary.error}\n{summary.log_tail[-1500:]}")
    return summary.model_dump()
