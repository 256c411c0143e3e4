"""Mutate-fix synthesis: turn one validated repo image into many repair tasks, each just a patch.

Pipeline, in long-lived network-less sandboxes of the image (envserver.sandbox):
1. run the suite once under a profiler (probe.py) → which functions each passing test calls;
2. for covered functions, generate single AST mutations (mutations.py), interleaved across
   functions so a small budget still spreads over the repo;
3. per candidate, in one of `workers` sandboxes validating in parallel (schedule.py draws them): write
   the mutated file, run only the covering tests (fast reject, while the measured figures say it pays),
   then the full suite for survivors, restore the file. Keep it if some passing tests now fail (F2P) and
   the rest still pass (P2P); a hang is dropped by the timeout. The statement comes from statements.py.
Every verdict is logged, so a rerun skips what was already tried.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path


from envserver.junit import parse_junit
from envserver.sandbox import Backend, DockerSandbox, run_pytest
from forager import jsonl
from forager.config import Settings
from forager.errors import SynthesisError
from forager.models import ImageRecord, Mutation, Task
from forager.tasks.mutations import unified_diff
from forager.tasks.candidates import candidates_for, is_test_path
from forager.tasks.schedule import Draw, FastReject, digest, narrow_command
from forager.tasks.statements import failure_messages, problem_statement
from forager.tasks.store import append_tasks, load_tasks, tasks_path

PROBE_DIR = "/tmp/forager_probe"
# A mutation often fails a hundred tests at once, and pytest then spends most of the run formatting
# tracebacks nobody reads (six: 3.1 s a run with them, 0.6 s without). The JUnit report keeps each
# failure's message either way, and that is all the problem statement uses.
NO_TRACEBACKS = "--tb=no"
Progress = Callable[[int, int, str], None]  # (candidates done, candidate budget, status)

__all__ = ["SynthReport", "SynthesisError", "run_synthesis", "synthesize", "synthesize_many", "hang_timeout"]


@dataclass
class SynthReport:
    repo: str
    image: str
    tasks: list[Task] = field(default_factory=list)  # every task of this image, earlier runs included
    new_tasks: int = 0
    tried: int = 0  # candidates validated in this run
    skipped: int = 0  # candidates already decided by an earlier run
    verdicts: dict[str, int] = field(default_factory=dict)
    functions: int = 0  # covered functions mutated
    candidates: int = 0  # mutations drawn from them (generated lazily, up to the budget)
    baseline_seconds: float = 0.0
    seconds: float = 0.0
    cpu_seconds: float = 0.0  # CPU time used inside the synthesis containers
    out_of_time: bool = False  # stopped by time_budget before max_tasks / max_candidates
    fast_runs: int = 0  # candidates that ran their covering tests first
    fast_rejects: int = 0  # ... and were rejected by them, without the full suite


def synthesize(record: ImageRecord, settings: Settings, *, max_tasks: int = 20, **kwargs) -> list[Task]:
    """Validated mutate-fix tasks for one `ok` image (resumes; returns all tasks of the image)."""
    return run_synthesis(record, settings, max_tasks=max_tasks, **kwargs).tasks


@dataclass
class RepoOutcome:
    repo: str
    image: str | None
    report: SynthReport | None = None
    error: str | None = None


def synthesize_many(records: list[ImageRecord], settings: Settings, *, on_start: Callable[[ImageRecord], Progress] | None = None,
                    on_done: Callable[[RepoOutcome], None] | None = None, **kwargs) -> list[RepoOutcome]:
    """run_synthesis over several images; one repo's trouble (its suite, a Docker hiccup) never ends the rest.

    `on_start(record)` may return a per-repo progress callback; `on_done(outcome)` follows each repo.
    """
    outcomes = []
    for record in records:
        progress = on_start(record) if on_start else None
        outcome = RepoOutcome(record.repo, record.tag)
        try:
            outcome.report = run_synthesis(record, settings, on_progress=progress, **kwargs)
        except SynthesisError as exc:
            outcome.error = str(exc)
        except Exception as exc:  # noqa: BLE001 - recorded per repo, with its type
            outcome.error = f"{type(exc).__name__}: {exc}"
        outcomes.append(outcome)
        if on_done:
            on_done(outcome)
    return outcomes


def run_synthesis(
    record: ImageRecord,
    settings: Settings,
    *,
    max_tasks: int = 20,
    max_candidates: int = 300,
    timeout: float | None = None,
    seed: int = 0,
    hide_tests: bool = True,
    fast_reject: bool = True,
    time_budget: float | None = None,
    workers: int | None = None,
    backend: Backend | None = None,
    on_progress: Progress | None = None,
) -> SynthReport:
    if record.status != "ok" or not record.tag or not record.test_command:
        raise SynthesisError(f"{record.repo}: image is not usable (status={record.status}, tag={record.tag})")
    started = time.monotonic()
    out_path = tasks_path(settings.tasks_dir, record.repo)
    log_path = out_path.with_name(f"{record.repo}.candidates.jsonl")
    report = SynthReport(record.repo, record.tag)
    existing = [t for t in load_tasks(out_path) if t.image == record.tag] if out_path.exists() else []
    report.tasks = list(existing)
    if len(existing) >= max_tasks:
        report.seconds = time.monotonic() - started
        return report
    done = _decided(log_path, record.tag)
    task_patches = {digest(t.setup_patch) for t in existing}
    workers = max(1, workers or default_workers())
    gate = FastReject(enabled=fast_reject)
    with ExitStack() as stack:
        box = stack.enter_context(_sandbox(record, backend))
        _install_probe(box)
        baseline, covering = _baseline(box, record, timeout)
        report.baseline_seconds = baseline.seconds
        timeout = timeout or hang_timeout(baseline.seconds, record.test_seconds)
        baseline_outcomes = _outcomes(baseline.junit)
        if baseline_outcomes is None:
            raise SynthesisError(f"{record.repo}: the test suite wrote a malformed JUnit report")
        passing = {t for t, o in baseline_outcomes.items() if o == "passed"} - set(record.flaky) - set(record.timed_out_tests)
        if record.test_outcomes:
            passing &= {t for t, o in record.test_outcomes.items() if o == "passed"} or passing
        if not passing:
            raise SynthesisError(f"{record.repo}: no test passes in the image")
        test_files = _test_files(box, baseline_outcomes)
        report.functions, candidates = candidates_for(box, covering, passing, test_files, seed)
        boxes = [box]
        for _ in range(workers - 1):  # more sandboxes of the same image: candidates are independent
            boxes.append(stack.enter_context(_sandbox(record, backend)))
            _install_probe(boxes[-1])
        draw = Draw(candidates, report, done, task_patches, max_tasks, max_candidates, time_budget)

        def work(sandbox: DockerSandbox) -> None:
            while (job := draw.next()) is not None:
                cand, tests, original, key = job
                try:
                    verdict, task = _validate(sandbox, record, cand, original, tests, passing, timeout, test_files,
                                              hide_tests, gate)
                    with draw.lock:
                        if task is not None and digest(task.setup_patch) in task_patches:
                            verdict, task = "duplicate", None  # the same edit validated in another sandbox meanwhile
                        report.tried += 1
                        report.verdicts[verdict] = report.verdicts.get(verdict, 0) + 1
                        if task is not None:
                            append_tasks(out_path, [task])
                            report.tasks.append(task)
                            report.new_tasks += 1
                            task_patches.add(digest(task.setup_patch))
                        jsonl.append(log_path, [{"image": record.tag, "key": key, "verdict": verdict,
                                                 "task_id": task.id if task else None}])
                        if on_progress:
                            on_progress(report.tried, max_candidates, f"{len(report.tasks)} tasks")
                except BaseException:
                    draw.abort()  # the other sandboxes stop drawing; the error surfaces from run_synthesis
                    raise
                draw.finished()

        with ThreadPoolExecutor(len(boxes), thread_name_prefix=f"synth-{record.repo}") as pool:
            for future in [pool.submit(work, b) for b in boxes]:
                future.result()
        for sandbox in boxes:  # every mutated file must be back as it was, in every sandbox
            for path, text in draw.originals.items():
                if sandbox.read(path).decode() != text:
                    raise SynthesisError(f"{record.repo}: {path} was not restored after synthesis")
        report.cpu_seconds = sum(b.cpu_seconds() for b in boxes)
    report.fast_runs, report.fast_rejects = gate.fast_runs, gate.rejects
    report.seconds = time.monotonic() - started
    return report


def hang_timeout(profiled_seconds: float, plain_seconds: float | None) -> float:
    """Seconds after which a candidate's test run counts as a hang.

    Infinite loops are a common mutation (cachetools: 3 in 28), and each costs a whole timeout,
    so it should be tight: 5x the suite's plain run (the builder's timing) or 2x the profiled
    baseline (settrace slows it), at least 10 s. Too tight only drops a candidate as "timeout";
    it can never make a wrong task.
    """
    return max(10.0, 5 * (plain_seconds or 0.0), 2 * profiled_seconds)


def default_workers() -> int:
    """One sandbox per CPU (pytest runs on one core), at most 4: past that the draw and Docker dominate."""
    return max(1, min(4, os.cpu_count() or 1))


def _sandbox(record: ImageRecord, backend: Backend | None) -> DockerSandbox:
    return DockerSandbox.start(record.tag, kind="synth", backend=backend, workdir=record.workdir,
                               labels={"forager.repo": record.repo})


def _install_probe(box: DockerSandbox) -> None:
    box.write(f"{PROBE_DIR}/forager_probe.py", (Path(__file__).parent / "probe.py").read_text())


# ---------------------------------------------------------------- steps


def _baseline(box: DockerSandbox, record: ImageRecord, timeout: float | None):
    """One profiled run of the whole suite: outcomes plus {repo function: covering test ids}."""
    env = {"PYTHONPATH": PROBE_DIR, "FORAGER_PROBE_OUT": f"{PROBE_DIR}/hits.json"}
    run = run_pytest(box, record.test_command, timeout or 1800, env=env, extra_args="-p forager_probe",
                     per_test_timeout=record.per_test_timeout)
    if not run.junit:
        raise SynthesisError(f"{record.repo}: the test suite wrote no report (exit {run.exit_code}): {run.output[-800:]}")
    text = box.read_text(f"{PROBE_DIR}/hits.json")
    if text is None:
        raise SynthesisError(f"{record.repo}: the coverage probe wrote nothing: {run.output[-800:]}")
    covering: dict[str, set[str]] = {}
    for test, funcs in json.loads(text).items():
        for fn in funcs:
            covering.setdefault(fn, set()).add(test)
    return run, covering


def _test_files(box: DockerSandbox, outcomes: dict[str, str]) -> list[str]:
    """Tracked files that belong to the tests (restored from the base at grading)."""
    listing = "/tmp/forager-ls-files.txt"  # read through the archive API: a lost listing would leave test files unrestored
    result = box.run(f"git ls-files > {listing}", 120)
    tracked = (box.read_text(listing) or "").splitlines() if result.exit_code == 0 else []
    files = {f for f in tracked if is_test_path(f)}
    files |= {t.split("::")[0] for t in outcomes if "::" in t and t.split("::")[0] in set(tracked)}
    return sorted(files)


def _validate(box, record, cand, original, tests, passing, timeout, test_files, hide_tests, gate=None):
    """(verdict, task or None): maybe a fast run of the covering tests, then the full suite; file always restored."""
    gate = gate if gate is not None else FastReject(enabled=bool(tests))
    box.write(cand.file, cand.source)
    try:
        # fast reject on the covering tests, unless they are most of the suite anyway or it does not pay here
        if tests and len(tests) * 2 < len(passing) and gate.wanted():
            started = time.monotonic()
            fast_out, timed_out = _fast_run(box, record, tests, passing, timeout, gate)
            if timed_out:
                return "timeout", None
            rejected = fast_out is not None and not any(
                o in ("failed", "error") for t, o in fast_out.items() if t in passing)
            gate.record_fast(time.monotonic() - started, rejected)
            if rejected:
                return "no_f2p", None
        full = run_pytest(box, record.test_command, timeout, extra_args=NO_TRACEBACKS, per_test_timeout=record.per_test_timeout)
        if full.timed_out:
            return "timeout", None
        gate.record_full(full.seconds)
        outcomes = _outcomes(full.junit)
        if outcomes is None:  # no report, or a broken one (a mutated library can garble what pytest writes)
            return "no_report", None
        if any(t not in outcomes for t in passing):
            return "tests_vanished", None  # e.g. a module no longer imports: collection broke
        f2p = sorted(t for t in passing if outcomes[t] != "passed")
        if not f2p:
            return "no_f2p", None
        if len(f2p) == len(passing) and len(passing) > 5:
            return "breaks_everything", None
        p2p = sorted(passing - set(f2p))
        return "task", _task(record, cand, original, f2p, p2p, full.junit, test_files, hide_tests)
    finally:
        box.write(cand.file, original)


def _fast_run(box, record, tests, passing, timeout, gate) -> tuple[dict[str, str] | None, bool]:
    """Outcomes of only the covering tests (None when the run could not be matched to test ids)."""
    narrowed = narrow_command(record.test_command, tests) if gate.narrow is not False else None
    if narrowed:
        # collects only the named tests
        run = run_pytest(box, narrowed, timeout, extra_args=f"-x {NO_TRACEBACKS}", per_test_timeout=record.per_test_timeout)
        if run.timed_out:
            return None, True
        out = _outcomes(run.junit) or {}
        if set(out) & passing:
            gate.narrow = True
            return out, False
        gate.narrow = False  # ids did not line up (rootdir differs): select inside pytest from now on
    select = f"{PROBE_DIR}/select.txt"
    box.write(select, "\n".join(tests) + "\n")
    env = {"PYTHONPATH": PROBE_DIR, "FORAGER_SELECT": select}
    run = run_pytest(box, record.test_command, timeout, env=env, extra_args=f"-p forager_probe -x {NO_TRACEBACKS}",
                     per_test_timeout=record.per_test_timeout)
    if run.timed_out:
        return None, True
    out = _outcomes(run.junit) or {}
    return (out if set(out) & passing else None), False


def _outcomes(junit: str) -> dict[str, str] | None:
    """A run's test outcomes, or None when it wrote no report or one that does not parse."""
    try:
        return parse_junit(junit) if junit else None
    except ValueError:
        return None


def _task(record, cand, original, f2p, p2p, junit, test_files, hide_tests) -> Task:
    setup_patch = cand.diff(original)
    gold_patch = unified_diff(cand.file, cand.source, original)
    task_digest = hashlib.sha1(f"{record.tag}\n{setup_patch}".encode()).hexdigest()[:12]
    mutated_lines = {line[1:].strip() for line in setup_patch.splitlines() if line.startswith(("+", "-"))}
    return Task(
        id=f"{record.repo}__mf_{task_digest}",
        kind="mutate-fix",
        repo=record.repo,
        image=record.tag,
        commit=record.commit or "",
        workdir=record.workdir,
        problem_statement=problem_statement(record.repo, f2p, failure_messages(junit), mutated_lines, hide_tests),
        setup_patch=setup_patch,
        test_files=test_files,
        test_command=record.test_command,
        fail_to_pass=f2p,
        pass_to_pass=p2p,
        gold_patch=gold_patch,
        per_test_timeout=record.per_test_timeout,
        mutation=Mutation(operator=cand.operator, file=cand.file, function=cand.function,
                          lineno=cand.lineno, description=cand.description),
        hide_tests=hide_tests,
        origin="synthesized",
    )


# ---------------------------------------------------------------- resume bookkeeping


def _decided(log_path: Path, image: str) -> set[str]:
    if not log_path.exists():
        return set()
    return {obj["key"] for obj in jsonl.objects(log_path) if obj.get("image") == image and "key" in obj}
