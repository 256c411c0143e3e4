"""`forager trace`: execution traces in CWM's format, from an image's tests, one call, or a snippet."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from agent.queue import job_state
from agent.trace_jobs import enqueue_traces
from envserver.errors import EnvServerError
from forager.cli.fleet import redis_conn
from forager.cli.ui import console, fail, interruptible, print_json, progress, watch
from forager.config import Settings, base_image_tag
from forager.trace.collect import collect_test_traces, trace_call_in_image, traces_path
from forager.trace.models import TraceRunSummary
from images.catalog import load_catalog

app = typer.Typer()


def _records(settings: Settings, images: list[str], all_images: bool, json_out: bool):
    catalog = load_catalog(settings.catalog_path)
    if all_images:
        records = [r for r in catalog.values() if r.status == "ok"]
        if not records:
            fail(f"no ok images in the catalog {settings.catalog_path}; build some with `forager build`", json_out)
        return records
    if not images:
        fail("name images (catalog tags), or pass --all", json_out)
    missing = [i for i in images if i not in catalog]
    if missing:
        fail(f"not in the catalog {settings.catalog_path}: {', '.join(missing)}", json_out)
    unusable = [f"{i} ({catalog[i].status})" for i in images if catalog[i].status != "ok"]
    if unusable:
        fail(f"images that did not validate cannot be traced: {', '.join(unusable)}", json_out)
    return [catalog[i] for i in images]


def _trace_call(settings, images, call, snippet, out, follow, safe_repr, limits, timeout, json_out) -> None:
    if len(images) > 1:
        fail("--call traces in one image", json_out)
    code = None
    if snippet is not None:
        if not snippet.is_file():
            fail(f"no snippet file {snippet}", json_out)
        code = snippet.read_text()
    image = images[0] if images else (base_image_tag() if snippet else None)
    if image is None:
        fail("name the image whose code --call runs (or give --snippet)", json_out)
    record = None
    if images:
        record = load_catalog(settings.catalog_path).get(image)
    with progress() as bar:
        task = bar.add_task(f"trace {call}", total=1, status=image)
        try:
            trace = trace_call_in_image(
                image, call, snippet=code,
                workdir=record.workdir if record else "/repo", repo=record.repo if record else None,
                commit=record.commit if record else None, timeout=timeout, follow_libraries=follow,
                safe_repr=safe_repr, **limits,
            )
        except (RuntimeError, TimeoutError, EnvServerError) as exc:
            fail(str(exc), json_out)
        bar.update(task, completed=1, status=f"{len(trace.frames)} frames")
    out = out or settings.traces_dir / "calls.jsonl"
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out, "a", encoding="utf-8") as fh:
        fh.write(trace.model_dump_json() + "\n")
    if json_out:
        print_json(trace)
    else:
        console.print(f"{trace.function}: {len(trace.frames)} frames"
                      f"{' (truncated: ' + str(trace.truncated_reason) + ')' if trace.truncated else ''}"
                      f"{' raised ' + trace.exception if trace.exception else ''} -> {out}")


def _trace_local(settings, records, out_dir, force, options, json_out) -> list[dict]:
    summaries = []
    with progress() as bar:
        task = bar.add_task("trace images", total=len(records), status="")
        for record in records:
            out = traces_path(out_dir, record.tag)
            bar.update(task, status=record.tag)
            if out.exists() and not force:
                summaries.append(TraceRunSummary(image=record.tag, repo=record.repo, out=str(out), skipped=True))
            else:
                try:
                    summaries.append(collect_test_traces(record, out, **options))
                except EnvServerError as exc:
                    summaries.append(TraceRunSummary(image=record.tag, repo=record.repo, error=str(exc)))
            bar.advance(task)
    return [s.model_dump() for s in summaries]


def _trace_queue(settings, records, out_dir, force, options, wait, json_out) -> dict:
    conn = redis_conn(settings, json_out)
    collection, outcome = enqueue_traces(conn, records, out_dir, options, queue=settings.queue, force=force)
    result = {"collection": collection, "jobs": outcome,
              "enqueued": sum(v == "enqueued" for v in outcome.values()),
              "skipped_existing": sum(v == "exists" for v in outcome.values())}
    if wait:
        result["states"] = _follow(conn, outcome)
        result["failed"] = sorted(i for i, state in result["states"].items() if state in FAILED)
    return result


FAILED = {"failed", "stopped", "canceled"}


def _follow(conn, outcome: dict[str, str]) -> dict[str, str]:
    """A bar over this run's jobs (not the whole collection) until each is finished or failed."""
    states: dict[str, str] = {}

    def poll():
        states.update({i: "exists" if o == "exists" else (job_state(conn, i) or "queued") for i, o in outcome.items()})
        ended = sum(s in FAILED or s in ("finished", "exists") for s in states.values())
        counts = {k: sum(s == k for s in states.values()) for k in ("queued", "started", "scheduled")}
        hint = "  (no worker running? start one: forager worker)" if counts["queued"] == len(states) else ""
        status = (f"queued {counts['queued']} running {counts['started']} retrying {counts['scheduled']} "
                  f"failed {sum(s in FAILED for s in states.values())}{hint}")
        return ended, len(states), status, ended == len(states)

    with progress() as bar:
        watch(bar, "trace images (queue)", poll)
    return states


@app.command()
def trace(
    images: list[str] = typer.Argument(None, help="catalog image tags"),
    all_images: bool = typer.Option(False, "--all", help="every ok image in the catalog"),
    call: Optional[str] = typer.Option(None, "--call", help="trace one call: 'pkg.mod:func(1, x=[2])'; "
                                       "with --snippet, 'func(args)'"),
    snippet: Optional[Path] = typer.Option(None, "--snippet", help="a Python file defining the --call function"),
    queue: bool = typer.Option(False, "--queue", help="one fleet job per image instead of running here"),
    wait: bool = typer.Option(True, "--wait/--no-wait", help="with --queue: follow the jobs until done"),
    out: Optional[Path] = typer.Option(None, "--out", help="traces directory (tests) or JSONL file (--call)"),
    max_calls: int = typer.Option(3, "--max-calls", min=1, help="traces per function (tests)"),
    max_events: int = typer.Option(10_000, "--max-events", min=1, help="frames per trace before truncation"),
    max_bytes: int = typer.Option(1_000_000, "--max-bytes", min=1000, help="bytes per trace before truncation"),
    max_repr: int = typer.Option(1_000, "--max-repr", min=10, help="characters per value before it is cut"),
    timeout: Optional[float] = typer.Option(None, "--timeout", min=1,
                                            help="seconds per run (default: 30x the suite's time, >= 600)"),
    follow_libraries: bool = typer.Option(False, "--follow-libraries", help="also trace stdlib/site-packages"),
    full_repr: bool = typer.Option(False, "--full-repr", help="also run the repository's own __repr__ code "
                                   "(richer values, as CWM; a __repr__ with side effects can change the run)"),
    force: bool = typer.Option(False, "--force", help="re-trace images whose traces exist"),
    json_out: bool = typer.Option(False, "--json", help="one JSON document on stdout"),
) -> None:
    """Record Python execution traces (CWM format) inside repository images."""
    settings = Settings.from_env()
    images = images or []
    interruptible()
    safe_repr = not full_repr
    if snippet is not None and call is None:
        fail("--snippet needs --call 'func(args)'", json_out)
    if call is not None:
        if queue or all_images:
            fail("--call traces one call here; it does not combine with --queue or --all", json_out)
        _trace_call(settings, images, call, snippet, out, follow_libraries, safe_repr,
                    {"max_events": max_events, "max_bytes": max_bytes, "max_repr": max_repr}, timeout or 300, json_out)
        return
    records = _records(settings, images, all_images, json_out)
    out_dir = out or settings.traces_dir
    options = {"max_calls": max_calls, "max_events": max_events, "max_bytes": max_bytes, "max_repr": max_repr,
               "timeout": timeout,
               "follow_libraries": follow_libraries, "safe_repr": safe_repr}
    if queue:
        result = _trace_queue(settings, records, out_dir, force, options, wait, json_out)
        if json_out:
            print_json(result)
        else:
            console.print(f"collection {result['collection']}: {result['enqueued']} enqueued, "
                          f"{result['skipped_existing']} already traced")
        return
    summaries = _trace_local(settings, records, out_dir, force, options, json_out)
    if json_out:
        print_json({"images": summaries, "traces": sum(s["traces"] for s in summaries)})
        return
    for s in summaries:
        state = "skipped (exists)" if s["skipped"] else s["error"] or f"exit {s['exit_code']}"
        console.print(f"{s['image']}: {s['traces']} traces of {s['functions']} functions, "
                      f"{s['truncated']} truncated, {state} -> {s['out'] or 'nothing written'}")
