"""Issue-fix mining: a repository's git history → validated, certified tasks, with no model and no hosting API.

1. scan (history.py): walk the range and judge every commit by the heuristics; candidates newest first;
2. per candidate, in `jobs` threads: build (or reuse) the image at its parent with the `build(entry)` the
   CLI hands in (dependency layers are shared across commits by the builder's content-addressed tags);
   split the commit into the gold patch and the hidden test patch; validate fail-to-pass (failtopass.py);
3. a task per kept commit, then its certificate (certify.py) through the env server client handed in;
   a task whose certificate fails is not kept.
Every verdict, static or validated, goes to `$FORAGER_HOME/tasks/<repo>.mined.jsonl`; a rerun validates
only candidates with no validated verdict yet (and those whose verdict is `error`, or in `retry`).
"""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from envserver.sandbox import Backend, default_backend
from forager import jsonl
from forager.config import Settings
from forager.models import ImageRecord, Task
from forager.tasks.certify import Grader, certify
from forager.tasks.failtopass import Judgement, validate_fix
from forager.tasks.history import Caps, Verdict, issue_refs, scan, split_patches
from forager.tasks.statements import commit_statement
from forager.tasks.store import append_tasks, load_tasks, tasks_path

Progress = Callable[[int, int, str], None]  # (candidates decided, candidates, status)
Build = Callable[[str], ImageRecord]  # an entry `<source>@<commit>` → the builder's record of that commit


@dataclass
class MineOptions:
    revisions: str = "HEAD"  # a ref or a range `A..B`
    since: str | None = None  # git's --since (a date)
    max_commits: int | None = 500
    caps: Caps = field(default_factory=Caps)
    runs: int = 3  # test runs before and after the fix; outcomes that vary are flaky
    timeout: float | None = None  # seconds per test run (default: 5x the image's suite, at least 60)
    hide_tests: bool = True
    certify_k: int = 3  # gold and empty gradings per certificate
    jobs: int = 1  # candidates validated at once
    max_tasks: int | None = None  # stop once this many tasks of the repo are kept
    max_candidates: int | None = None  # consider only the newest N candidates
    retry: frozenset[str] = frozenset()  # verdicts of earlier runs to decide again (e.g. build_failed)
    commits: frozenset[str] = frozenset()  # only these candidates (full SHAs); empty: all


@dataclass
class MineReport:
    repo: str
    history: str
    scanned: int = 0
    candidates: int = 0
    scan_verdicts: dict[str, int] = field(default_factory=dict)  # scanned commits per heuristic verdict
    verdicts: dict[str, int] = field(default_factory=dict)  # considered candidates per validation verdict (all runs)
    tasks: list[Task] = field(default_factory=list)  # every mined task of the repo, earlier runs included
    new_tasks: int = 0
    tried: int = 0  # candidates validated in this run
    skipped: int = 0  # candidates decided by an earlier run
    errors: list[str] = field(default_factory=list)
    scan_seconds: float = 0.0
    seconds: float = 0.0


def mined_log(settings: Settings, repo: str) -> Path:
    return Path(settings.tasks_dir) / f"{repo}.mined.jsonl"


def mine(history: str, repo: str, settings: Settings, *, build: Build, grader: Grader | None,
         options: MineOptions | None = None, source: str | None = None, backend: Backend | None = None,
         on_progress: Progress | None = None) -> MineReport:
    """Mine `history` (a git repository or bare mirror) into issue-fix tasks of `repo` (resumable).

    `source` is the list entry, without its ref, the builder knows the repository by (default: `history`);
    without a `grader`, tasks are kept uncertified (the CLI always certifies).
    """
    opts = options or MineOptions()
    started = time.monotonic()
    report = MineReport(repo, history)
    verdicts = scan(history, opts.revisions, since=opts.since, max_commits=opts.max_commits, caps=opts.caps)
    report.scan_seconds = round(time.monotonic() - started, 2)
    report.scanned = len(verdicts)
    for v in verdicts:
        report.scan_verdicts[v.verdict] = report.scan_verdicts.get(v.verdict, 0) + 1
    log = mined_log(settings, repo)
    logged = {row.get("commit"): row for row in jsonl.objects(log)} if log.exists() else {}
    jsonl.append(log, [_row(v, "scan", v.verdict, v.detail) for v in verdicts if v.commit.sha not in logged])
    out = tasks_path(settings.tasks_dir, repo)
    mined = [t for t in load_tasks(out) if t.origin == "mined"] if out.exists() else []
    report.tasks = list(mined)
    kept = {t.source_commit for t in mined}
    candidates = [v for v in verdicts if v.is_candidate and (not opts.commits or v.commit.sha in opts.commits)]
    candidates = candidates[: opts.max_candidates or None]
    report.candidates = len(candidates)
    todo = []
    for v in candidates:
        row = logged.get(v.commit.sha)
        if v.commit.sha in kept or (row and row.get("stage") == "validate" and row.get("verdict") not in
                                    ({"error"} | set(opts.retry))):
            verdict = "task" if v.commit.sha in kept else row["verdict"]
            report.verdicts[verdict] = report.verdicts.get(verdict, 0) + 1
            report.skipped += 1
        else:
            todo.append(v)
    lock, done, stop = threading.Lock(), [report.skipped], threading.Event()
    pending = iter(todo)

    def enough() -> bool:
        return opts.max_tasks is not None and len(report.tasks) >= opts.max_tasks

    def work() -> None:
        while True:
            with lock:
                v = None if enough() or stop.is_set() else next(pending, None)
            if v is None:
                return
            verdict, detail, task, judgement = _mine_one(v, history, source or history, build, grader, opts,
                                                         backend or default_backend())
            with lock:
                if task is not None and enough():
                    verdict, detail, task = "not_needed", "max_tasks reached meanwhile", None
                if task is not None:
                    append_tasks(out, [task])
                    report.tasks.append(task)
                    report.new_tasks += 1
                if verdict == "error":
                    report.errors.append(f"{v.commit.sha[:12]}: {detail}")
                if verdict != "not_needed":
                    jsonl.append(log, [_row(v, "validate", verdict, detail, task, judgement)])
                    report.verdicts[verdict] = report.verdicts.get(verdict, 0) + 1
                    report.tried += 1
                done[0] += 1
                if on_progress:
                    on_progress(done[0], len(candidates), f"{len(report.tasks)} tasks, {v.commit.sha[:8]} {verdict}")

    if on_progress:
        on_progress(done[0], len(candidates), f"{len(report.tasks)} tasks")
    with ThreadPoolExecutor(max(1, opts.jobs), thread_name_prefix=f"mine-{repo}") as pool:
        try:
            for future in [pool.submit(work) for _ in range(max(1, opts.jobs))]:
                future.result()
        except BaseException:  # Ctrl-C, SIGTERM: no new candidate is drawn; those in flight finish, recorded
            stop.set()
            raise
    report.seconds = round(time.monotonic() - started, 2)
    return report


def _mine_one(v: Verdict, history: str, source: str, build: Build, grader: Grader | None, opts: MineOptions,
              backend: Backend) -> tuple[str, str, Task | None, Judgement | None]:
    """(verdict, detail, task or None, judgement) for one candidate; never raises for a candidate's trouble."""
    try:
        patches = split_patches(history, v.commit)
        record = build(f"{source}@{v.commit.parent}")
        if (record.status != "ok" or not record.tag) and _docker_trouble(record):
            time.sleep(5)  # the daemon, not the commit (an image pruned under the build): once more
            record = build(f"{source}@{v.commit.parent}")
        if record.status != "ok" or not record.tag:
            # Docker's own trouble is an error (tried again by the next run); the commit's is a verdict
            verdict = "error" if _docker_trouble(record) else "build_failed"
            return verdict, f"{record.status}: {record.reason}"[:300], None, None
        timeout = opts.timeout or max(60.0, 5 * (record.test_seconds or 0.0))
        judgement = validate_fix(record, patches, runs=opts.runs, timeout=timeout, backend=backend)
        if judgement.verdict != "task":
            return judgement.verdict, judgement.detail, None, judgement
        task = make_task(v, record, patches, judgement, opts.hide_tests)
        if grader is not None:
            task.certificate = certify(task, grader, k=opts.certify_k, image_id=backend.image_id(record.tag),
                                       pip_freeze=record.pip_freeze, flaky=judgement.flaky)
            if not task.certificate.passed:
                cert = task.certificate
                return ("certificate_failed", f"gold rewards {cert.gold_rewards}, empty rewards {cert.empty_rewards}",
                        None, judgement)
        return "task", f"{len(judgement.fail_to_pass)} F2P, {len(judgement.pass_to_pass)} P2P", task, judgement
    except Exception as exc:  # noqa: BLE001 - Docker or the env server failing: recorded, retried by a rerun
        return "error", f"{type(exc).__name__}: {exc}"[:500], None, None


DOCKER_TROUBLE = re.compile(r"/var/lib/docker|failed to get digest|Cannot connect to the Docker daemon|"
                            r"No such image|context deadline exceeded|docker: ", re.I)


def _docker_trouble(record: ImageRecord) -> bool:
    return record.status == "error" or bool(DOCKER_TROUBLE.search(record.reason or ""))


def make_task(v: Verdict, record: ImageRecord, patches, judgement: Judgement, hide_tests: bool = True) -> Task:
    commit = v.commit
    id_files = {t.split("::")[0] for t in judgement.fail_to_pass + judgement.pass_to_pass if "::" in t}
    return Task(
        id=f"{record.repo}__fix-{commit.sha[:12]}",
        kind="issue-fix",
        repo=record.repo,
        image=record.tag or "",
        commit=record.commit or commit.parent or "",
        workdir=record.workdir,
        problem_statement=commit_statement(commit.message, issue_refs(commit.message, v.pull_request),
                                           judgement.fail_to_pass, judgement.messages, patches.gold_patch, hide_tests),
        test_patch=patches.test_patch,
        test_files=sorted(set(patches.test_files) | id_files),
        test_command=judgement.test_command,
        fail_to_pass=judgement.fail_to_pass,
        pass_to_pass=judgement.pass_to_pass,
        gold_patch=patches.gold_patch,
        per_test_timeout=record.per_test_timeout,
        hide_tests=hide_tests,
        origin="mined",
        source_commit=commit.sha,
    )


def _row(v: Verdict, stage: str, verdict: str, detail: str, task: Task | None = None,
         judgement: Judgement | None = None) -> dict:
    row = {"commit": v.commit.sha, "parent": v.commit.parent, "stage": stage, "verdict": verdict, "detail": detail,
           "subject": v.commit.subject[:200], "evidence": v.evidence, "pull_request": v.pull_request,
           "task_id": task.id if task else None, "at": time.time()}
    if judgement is not None:
        row.update(f2p=len(judgement.fail_to_pass), p2p=len(judgement.pass_to_pass), flaky=judgement.flaky,
                   runs=judgement.runs, seconds=judgement.seconds)
    return row
