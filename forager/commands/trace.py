"""`forager trace`: execution traces in CWM's format, from an image's tests, one call, or a snippet."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Optional

import typer

from forager.config import Settings, base_image_tag
from forager.ui import console, print_json, progress


def _fail(message: str, json_out: bool) -> None:
    if json_out:
        print_json({"ok": False, "error": message})
    console.print(f"[red]error:[/] {message}")
    raise typer.Exit(1)


def _records(settings: Settings, images: list[str], all_images: bool, json_out: bool):
    from images.catalog import load_catalog

    catalog = load_catalog(settings.catalog_path)
    if all_images:
        records = [r for r in catalog.values() if r.status == "ok"]
        if not records:
            _fail(f"no ok images in the catalog {settings.catalog_path}; build some with `forager build`", json_out)
        return records
    if not images:
        _fail("name images (catalog tags), or pass --all", json_out)
    missing = [i for i in images if i not in catalog]
    if missing:
        _fail(f"not in the catalog {settings.catalog_path}: {', '.join(missing)}", json_out)
    unusable = [f"{i} ({catalog[i].status})" for i in images if catalog[i].status != "ok"]
    if unusable:
        _fail(f"images that did not validate cannot be traced: {', '.join(unusable)}", json_out)
    return [catalog[i] for i in images]


def _trace_call(settings, images, call, snippet, out, follow, safe_repr, limits, timeout, json_out) -> None:
    import docker

    from forager.trace.collect import trace_call_in_image

    if len(images) > 1:
        _fail("--call traces in one image", json_out)
    code = None
    if snippet is not None:
        if not snippet.is_file():
            _fail(f"no snippet file {snippet}", json_out)
        code = snippet.read_text()
    image = images[0] if images else (base_image_tag() if snippet else None)
    if image is None:
        _fail("name the image whose code --call runs (or give --snippet)", json_out)
    record = None
    if images:
        from images.catalog import load_catalog

        record = load_catalog(settings.catalog_path).get(image)
    with progress(disable=json_out) as bar:
        task = bar.add_task(f"trace {call}", total=1, status=image)
        try:
            trace = trace_call_in_image(
                docker.from_env(timeout=600), image, call, snippet=code,
                workdir=record.workdir if record else "/repo", repo=record.repo if record else None,
                commit=record.commit if record else None, timeout=timeout, follow_libraries=follow,
                safe_repr=safe_repr, **limits,
            )
        except (RuntimeError, TimeoutError, docker.errors.DockerException) as exc:
            _fail(str(exc), json_out)
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
    import docker

    from forager.trace.collect import collect_test_traces, traces_path
    from forager.trace.models import TraceRunSummary

    client = docker.from_env(timeout=600)
    summaries = []
    with progress(disable=json_out) as bar:
        task = bar.add_task("trace images", total=len(records), status="")
        for record in records:
            out = traces_path(out_dir, record.tag)
            bar.update(task, status=record.tag)
            if out.exists() and not force:
                summaries.append(TraceRunSummary(image=record.tag, repo=record.repo, out=str(out), skipped=True))
            else:
                try:
                    summaries.append(collect_test_traces(client, record, out, **options))
                except docker.errors.DockerException as exc:
                    summaries.append(TraceRunSummary(image=record.tag, repo=record.repo, error=str(exc)))
            bar.advance(task)
    return [s.model_dump() for s in summaries]


def _trace_queue(settings, records, out_dir, force, options, wait, json_out) -> dict:
    import redis

    from agent.queue import JobSpec, connect, enqueue_many, make_job_id
    from forager.trace.collect import traces_path

    conn = connect(settings.redis_url)
    try:
        conn.ping()
    except redis.RedisError as exc:
        _fail(f"cannot reach Redis at {settings.redis_url} ({exc}); start it (`forager setup`) or set FORAGER_REDIS_URL",
              json_out)
    collection = make_job_id("traces", str(out_dir))
    specs = []
    for record in records:
        out = traces_path(out_dir, record.tag)
        kwargs = {"image": record.tag, "out": str(out), "catalog": str(settings.catalog_path), "force": force,
                  **options}
        job_timeout = int((options.get("timeout") or max(600, 30 * (record.test_seconds or 20))) + 600)
        # --force: a fresh id, since a finished job's id stays taken (that is what makes reruns no-ops)
        job_id = make_job_id("trace", record.tag, out, *([time.time()] if force else []))
        specs.append(JobSpec("forager.trace.jobs.trace_image_job", kwargs, job_id,
                             timeout=job_timeout, retries=1, intervals=(30,), description=f"trace {record.tag}"))
    outcome = enqueue_many(specs, conn=conn, queue_name=settings.queue, collection=collection,
                           done=None if force else (lambda spec: Path(spec.kwargs["out"]).exists()))
    result = {"collection": collection, "jobs": outcome,
              "enqueued": sum(v == "enqueued" for v in outcome.values()),
              "skipped_existing": sum(v == "exists" for v in outcome.values())}
    if wait:
        result["states"] = _follow(conn, outcome, json_out)
        result["failed"] = sorted(i for i, state in result["states"].items() if state in FAILED)
    return result


FAILED = {"failed", "stopped", "canceled"}


def _follow(conn, outcome: dict[str, str], json_out: bool) -> dict[str, str]:
    """A bar over this run's jobs (not the whole collection) until each is finished or failed."""
    from agent.queue import job_state

    with progress(disable=json_out) as bar:
        task = bar.add_task("trace images (queue)", total=len(outcome), status="")
        while True:
            states = {i: "exists" if o == "exists" else (job_state(conn, i) or "queued") for i, o in outcome.items()}
            ended = sum(s in FAILED or s in ("finished", "exists") for s in states.values())
            counts = {k: sum(s == k for s in states.values()) for k in ("queued", "started", "scheduled")}
            hint = "  (no worker running? start one: forager worker)" if counts["queued"] == len(states) else ""
            bar.update(task, completed=ended, status=f"queued {counts['queued']} running {counts['started']} "
                       f"retrying {counts['scheduled']} failed {sum(s in FAILED for s in states.values())}{hint}")
            if ended == len(states):
                return states
            time.sleep(1.0)


def register(app: typer.Typer) -> None:
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
        safe_repr = not full_repr
        if snippet is not None and call is None:
            _fail("--snippet needs --call 'func(args)'", json_out)
        if call is not None:
            if queue or all_images:
                _fail("--call traces one call here; it does not combine with --queue or --all", json_out)
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
