"""The viewer's FastAPI app: one route per page, each a few index queries plus at most one file read."""

from __future__ import annotations

import asyncio
import json
import sys
import threading
from contextlib import asynccontextmanager
from pathlib import Path
from urllib.parse import urlencode

from fastapi import FastAPI, HTTPException, Request
from fastapi.responses import FileResponse, HTMLResponse
from fastapi.templating import Jinja2Templates
from markupsafe import Markup
from pydantic import ValidationError

from forager.models import Task, Trajectory
from forager.trace.models import Trace
from forager.viewer import plots, queries, render
from forager.viewer.auth import TokenGate
from forager.viewer.index import StoreIndex
from forager.viewer.memo import Memo
from forager.viewer.sources import first_line, read_one

HERE = Path(__file__).parent
WARM_COLLECTIONS = 20  # the largest collections' pages are computed ahead; the rest on first visit
NAV = [("/", "Overview"), ("/catalog", "Catalog"), ("/tasks", "Tasks"), ("/collections", "Collections"),
       ("/trajectories", "Trajectories"), ("/traces", "Traces")]


def create_app(index: StoreIndex, token: str | None = None, refresh_seconds: float = 10.0):
    """The ASGI app: routes behind the token gate; a thread refreshes the index every refresh_seconds."""

    memo = Memo(index)

    def db():
        return index.reader()

    def cached(query, *args):
        """A whole-table aggregate, computed once per change of the index (see memo.py)."""
        return memo.get((query.__name__, args), lambda: query(db(), *args))

    def warm() -> None:
        """What the overview and the list need, computed before anyone asks."""
        for query in (queries.overview, queries.filter_options):
            cached(query)
        for c in sorted(cached(queries.collections), key=lambda c: -c["n"])[:WARM_COLLECTIONS]:
            cached(queries.collection, c["policy"], c["model"])
        cached(queries.count_trajectories, queries.TrajectoryFilter())

    @asynccontextmanager
    async def lifespan(_app: FastAPI):
        await asyncio.to_thread(warm)
        stop = threading.Event()
        worker = threading.Thread(target=_refresh_loop, args=(index, stop, refresh_seconds, warm),
                                  name="viewer-refresh", daemon=True)
        if refresh_seconds > 0:
            worker.start()
        yield
        stop.set()

    app = FastAPI(title="Forager viewer", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    templates = Jinja2Templates(directory=HERE / "templates")
    templates.env.filters.update(render.FILTERS)
    # The style sheet and the script are inlined: each page is one response (no request for assets that a
    # loaded machine answers slowly, nothing to cache or version) and a saved page is complete on its own.
    templates.env.globals.update(nav=NAV, urlencode=urlencode, home=str(index.home),
                                 inline_css=Markup((HERE / "static" / "viewer.css").read_text()),
                                 inline_js=Markup((HERE / "static" / "viewer.js").read_text()))

    def show(request: Request, name: str, status: int = 200, **context) -> HTMLResponse:
        return templates.TemplateResponse(request, name, context, status_code=status)

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException):
        return show(request, "error.html", status=exc.status_code, title=f"{exc.status_code}", message=exc.detail)

    @app.get("/healthz", include_in_schema=False)
    def healthz() -> dict:
        return {"ok": True}

    @app.get("/", response_class=HTMLResponse)
    def overview(request: Request):
        return show(request, "overview.html", title="Overview", o=cached(queries.overview),
                    collections=cached(queries.collections), refreshed_at=queries.refreshed_at(db()))

    @app.get("/problems", response_class=HTMLResponse)
    def problems(request: Request):
        return show(request, "problems.html", title="Skipped files", problems=queries.problems(db()))

    @app.get("/catalog", response_class=HTMLResponse)
    def catalog(request: Request):
        return show(request, "catalog.html", title="Catalog", c=cached(queries.catalog))

    @app.get("/tasks", response_class=HTMLResponse)
    def task_sets(request: Request):
        return show(request, "task_sets.html", title="Task sets", sets=cached(queries.task_sets))

    @app.get("/tasks/set", response_class=HTMLResponse)
    def task_set(request: Request, repo: str, kind: str):
        tasks = queries.tasks_in_set(db(), repo, kind)
        if not tasks:
            raise HTTPException(404, f"no {kind} tasks for repository {repo!r}")
        for t in tasks:
            t["certificate"] = json.loads(t["certificate"]) if t["certificate"] else None
        return show(request, "task_set.html", title=f"{repo} · {kind}", repo=repo, kind=kind, tasks=tasks)

    @app.get("/tasks/{task_id:path}", response_class=HTMLResponse)
    def task(request: Request, task_id: str):
        where = queries.task_location(db(), task_id)
        if where is None:
            raise HTTPException(404, f"no task {task_id!r} in the index")
        task = _read_record(where, Task, f"task {task_id!r}")
        return show(request, "task.html", title=task.id, task=task)

    @app.get("/collections", response_class=HTMLResponse)
    def collections(request: Request):
        found = cached(queries.collections)
        time_split = plots.stacked(
            [(_collection_name(c), {"model": c["model_seconds"] or 0, "env": c["env_seconds"] or 0,
                                    "other": c["other_seconds"]}) for c in found], "time split per collection")
        return show(request, "collections.html", title="Collections", collections=found, time_split=time_split)

    @app.get("/collections/view", response_class=HTMLResponse)
    def collection(request: Request, policy: str, model: str = ""):
        c = cached(queries.collection, policy, model)
        if c is None:
            raise HTTPException(404, f"no trajectories of policy {policy!r} with model {model or 'none'!r}")
        charts = {
            "steps": plots.histogram(plots.bucket(c["steps_histogram"]), "steps per trajectory", "steps distribution"),
            "rewards": plots.hbars([(r["repo"], r["mean_reward"] or 0, f"{r['mean_reward'] or 0:.2f} (n={r['n']})")
                                    for r in c["by_repo"]], 1.0, "mean reward by repository"),
            "exits": plots.hbars([(k, v, f"{v:,}") for k, v in c["exit_reasons"].items()], None, "exit reasons"),
            "time": plots.stacked([("all episodes", {"model": c["model_seconds"] or 0, "env": c["env_seconds"] or 0,
                                                     "other": c["other_seconds"]})], "time split"),
        }
        model_param = model or queries.NO_MODEL
        return show(request, "collection.html", title=_collection_name(c), c=c, charts=charts, model_param=model_param)

    @app.get("/trajectories", response_class=HTMLResponse)
    def trajectories(request: Request, repo: str = "", kind: str = "", policy: str = "", model: str = "",
                     reward: str = "", exit: str = "", task: str = "", q: str = "", sort: str = "newest",
                     page: int = 1):
        flt = queries.TrajectoryFilter(repo=repo, kind=kind, policy=policy, model=model, reward=reward, exit=exit,
                                       task=task, q=q.strip(), sort=sort)
        found = queries.page_of_trajectories(db(), flt, page)
        total = cached(queries.count_trajectories, flt)
        pages = max(1, -(-total // queries.PAGE_SIZE))
        return show(request, "trajectories.html", title="Trajectories", rows=found, total=total, flt=flt,
                    options=cached(queries.filter_options), page_no=page, pages=pages,
                    reward_filters=list(queries.REWARD_FILTERS), sorts=list(queries.SORTS))

    @app.get("/trajectories/{traj_id}/raw")
    def trajectory_raw(traj_id: str):
        return FileResponse(_trajectory_path(traj_id), media_type="application/json")

    @app.get("/trajectories/{traj_id}", response_class=HTMLResponse)
    def trajectory(request: Request, traj_id: str):
        path = _trajectory_path(traj_id)
        try:
            traj = Trajectory.model_validate_json(path.read_bytes().strip())
        except (OSError, ValueError, ValidationError) as exc:  # changed since the last refresh
            raise HTTPException(410, f"trajectory {traj_id!r} no longer reads (the store changed; the next refresh "
                                     f"catches up): {first_line(exc)}")
        conn = db()
        others = {k: v for k, v in traj.result.tests.items()
                  if k not in traj.result.fail_to_pass and k not in traj.result.pass_to_pass}
        return show(request, "trajectory.html", title=traj.id, t=traj, children=queries.children(conn, traj.id),
                    parent_known=bool(traj.parent_id and queries.trajectory_location(conn, traj.parent_id)),
                    task_known=queries.exists(conn, "tasks", traj.task_id), other_tests=others,
                    outcome_counts=_outcome_counts(traj.result.tests), clip=render.clip,
                    action_parts=render.action_parts, model_seconds=sum(s.model_seconds for s in traj.steps),
                    env_seconds=sum(s.env_seconds for s in traj.steps))

    def _read_record(where: tuple[str, int, int], model, what: str):
        """One line of a JSONL file at the offset the index recorded; 410 when the file changed since."""
        rel, offset, length = where
        try:
            return read_one(index.home / rel, offset, length, model)
        except (OSError, ValueError, ValidationError) as exc:
            raise HTTPException(410, f"{what} no longer reads (the store changed; the next refresh catches up): "
                                     f"{first_line(exc)}")

    def _trajectory_path(traj_id: str) -> Path:
        rel = queries.trajectory_location(db(), traj_id)
        if rel is None:
            raise HTTPException(404, f"no trajectory {traj_id!r} in the index")
        return index.home / rel

    @app.get("/traces", response_class=HTMLResponse)
    def traces(request: Request, repo: str = "", q: str = "", page: int = 1):
        found, total = queries.list_traces(db(), repo, q.strip(), page)
        return show(request, "traces.html", title="Traces", rows=found, total=total, repo=repo, q=q,
                    repos=cached(queries.trace_repos), page_no=page, pages=max(1, -(-total // queries.PAGE_SIZE)))

    @app.get("/traces/{trace_id}", response_class=HTMLResponse)
    def trace(request: Request, trace_id: str, step: int = 0):
        where = queries.trace_location(db(), trace_id)
        if where is None:
            raise HTTPException(404, f"no trace {trace_id!r} in the index")
        tr = _read_record(where, Trace, f"trace {trace_id!r}")
        steps = render.trace_steps(tr)
        step = min(max(step, 0), max(len(steps) - 1, 0))
        return show(request, "trace.html", title=tr.function, tr=tr, steps=steps, step=step,
                    scope=render.scope_at(steps, step) if steps else {}, lines=render.source_lines(tr),
                    steps_json=json.dumps(steps, separators=(",", ":")).replace("<", "\\u003c"))

    return TokenGate(app, token)


def _collection_name(c: dict) -> str:
    return f"{c['policy']} · {c['model']}" if c["model"] else c["policy"]


def _outcome_counts(tests: dict[str, str]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for outcome in tests.values():
        counts[outcome] = counts.get(outcome, 0) + 1
    return counts


def _refresh_loop(index: StoreIndex, stop: threading.Event, every: float, warm) -> None:
    """Keep the index in step while serving; an error is reported and retried, never fatal."""
    while not stop.wait(every):
        try:
            before = index.generation
            index.refresh()
            if index.generation != before:
                warm()
        except Exception as exc:  # a disk hiccup must not stop the viewer; the next pass retries
            print(f"view: index refresh failed: {exc}", file=sys.stderr)
