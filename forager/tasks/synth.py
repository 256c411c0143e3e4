"""Mutate-fix synthesis: turn one validated repo image into many repair tasks, each just a patch.

Pipeline, in long-lived network-less containers of the image (sandboxes):
1. run the suite once under a profiler (probe.py) → which functions each passing test calls;
2. for covered functions, generate single AST mutations (mutations.py), interleaved across
   functions so a small budget still spreads over the repo;
3. per candidate, in one of `workers` sandboxes validating in parallel: write the mutated file, run
   only the covering tests (fast reject, while the measured figures say it pays), then the full
   suite for survivors, restore the file. Keep it if some passing tests now fail (F2P) and the
   rest still pass (P2P); a hang is dropped by the timeout.
Every verdict is logged, so a rerun skips what was already tried.
"""

from __future__ import annotations

import ast
import hashlib
import json
import os
import random
import re
import shlex
import threading
import time
import xml.etree.ElementTree as ET
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path

import docker

from envserver.junit import node_id, parse_junit
from forager.config import Settings
from forager.models import ImageRecord, Mutation, Task
from forager.tasks.mutations import Candidate, functions, mutate_function, unified_diff
from forager.tasks.sandbox import RepoContainer
from forager.tasks.store import append_jsonl, append_tasks, load_tasks, read_jsonl, tasks_path

PROBE_DIR = "/tmp/forager_probe"
# A mutation often fails a hundred tests at once, and pytest then spends most of the run formatting
# tracebacks nobody reads (six: 3.1 s a run with them, 0.6 s without). The JUnit report keeps each
# failure's message either way, and that is all the problem statement uses.
NO_TRACEBACKS = "--tb=no"
Progress = Callable[[int, int, str], None]  # (candidates done, candidate budget, status)


class SynthesisError(RuntimeError):
    """The image cannot yield tasks (not ok, no passing tests, the suite does not run)."""


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
    cpu_seconds: float = 0.0  # CPU time used inside the synthesis container
    out_of_time: bool = False  # stopped by time_budget before max_tasks / max_candidates
    fast_runs: int = 0  # candidates that ran their covering tests first
    fast_rejects: int = 0  # ... and were rejected by them, without the full suite


@dataclass
class FastReject:
    """Whether to run a candidate's covering tests before the full suite, decided from what it costs here.

    A fast run costs its seconds on every candidate and saves a full suite on each candidate it
    rejects, so it pays only while reject rate x full-suite seconds > fast-run seconds. On a well
    tested repo most mutations break some test (86% on the default list), and there the fast run
    was pure overhead (0.74x on six). After `warmup` fast runs the measured figures decide; while it
    is off, every `recheck`-th candidate still takes a fast run so the figures stay current.
    """

    enabled: bool = True
    narrow: bool | None = None  # naming covering tests on the command line works here (None: not tried yet)
    warmup: int = 5
    recheck: int = 10
    fast_runs: int = 0
    rejects: int = 0
    fast_seconds: float = 0.0
    full_runs: int = 0
    full_seconds: float = 0.0
    _skipped: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def wanted(self) -> bool:
        if not self.enabled:
            return False
        if self.fast_runs < self.warmup or not self.full_runs or self.pays():
            return True
        self._skipped += 1
        return self._skipped % self.recheck == 0

    def pays(self) -> bool:
        saved = self.rejects / self.fast_runs * (self.full_seconds / self.full_runs)
        return saved > self.fast_seconds / self.fast_runs

    def record_fast(self, seconds: float, rejected: bool) -> None:
        with self._lock:  # sandboxes validate in parallel threads
            self.fast_runs += 1
            self.fast_seconds += seconds
            self.rejects += rejected

    def record_full(self, seconds: float) -> None:
        with self._lock:
            self.full_runs += 1
            self.full_seconds += seconds


def is_test_path(path: str) -> bool:
    parts = path.split("/")
    name = parts[-1]
    return (
        name.startswith("test_") or name.endswith("_test.py") or name == "conftest.py"
        or any(p in ("tests", "test", "testing") for p in parts[:-1])
    )


def synthesize(record: ImageRecord, settings: Settings | None = None, *, max_tasks: int = 20, **kwargs) -> list[Task]:
    """Validated mutate-fix tasks for one `ok` image (resumes; returns all tasks of the image)."""
    return run_synthesis(record, settings, max_tasks=max_tasks, **kwargs).tasks


def run_synthesis(
    record: ImageRecord,
    settings: Settings | None = None,
    *,
    max_tasks: int = 20,
    max_candidates: int = 300,
    timeout: float | None = None,
    seed: int = 0,
    hide_tests: bool = True,
    fast_reject: bool = True,
    time_budget: float | None = None,
    workers: int | None = None,
    client: docker.DockerClient | None = None,
    on_progress: Progress | None = None,
) -> SynthReport:
    settings = settings or Settings.from_env()
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
    task_patches = {_digest(t.setup_patch) for t in existing}
    client = client or docker.from_env(timeout=600)
    workers = max(1, workers or default_workers())
    gate = FastReject(enabled=fast_reject)
    with ExitStack() as stack:
        box = stack.enter_context(RepoContainer(client, record.tag, record.workdir))
        _install_probe(box)
        baseline, covering = _baseline(box, record, timeout)
        report.baseline_seconds = baseline.seconds
        timeout = timeout or hang_timeout(baseline.seconds, record.test_seconds)
        baseline_outcomes = _outcomes(baseline.junit)
        if baseline_outcomes is None:
            raise SynthesisError(f"{record.repo}: the test suite wrote a malformed JUnit report")
        passing = {t for t, o in baseline_outcomes.items() if o == "passed"} - set(record.flaky)
        if record.test_outcomes:
            passing &= {t for t, o in record.test_outcomes.items() if o == "passed"} or passing
        if not passing:
            raise SynthesisError(f"{record.repo}: no test passes in the image")
        test_files = _test_files(box, baseline_outcomes)
        report.functions, candidates = _candidates(box, covering, passing, test_files, seed)
        boxes = [box]
        for _ in range(workers - 1):  # more sandboxes of the same image: candidates are independent
            boxes.append(stack.enter_context(RepoContainer(client, record.tag, record.workdir)))
            _install_probe(boxes[-1])
        draw = _Draw(candidates, report, done, task_patches, max_tasks, max_candidates, time_budget)

        def work(sandbox: RepoContainer) -> None:
            while (job := draw.next()) is not None:
                cand, tests, original, key = job
                try:
                    verdict, task = _validate(sandbox, record, cand, original, tests, passing, timeout, test_files,
                                              hide_tests, gate)
                    with draw.lock:
                        if task is not None and _digest(task.setup_patch) in task_patches:
                            verdict, task = "duplicate", None  # the same edit validated in another sandbox meanwhile
                        report.tried += 1
                        report.verdicts[verdict] = report.verdicts.get(verdict, 0) + 1
                        if task is not None:
                            append_tasks(out_path, [task])
                            report.tasks.append(task)
                            report.new_tasks += 1
                            task_patches.add(_digest(task.setup_patch))
                        append_jsonl(log_path, [{"image": record.tag, "key": key, "verdict": verdict,
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
                if sandbox.read_bytes(path).decode() != text:
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


class _Draw:
    """Hands candidates to the sandboxes one at a time, under the stop rules, without overshooting.

    A candidate is drawn only while tasks + candidates in flight < max_tasks (so a run ends with exactly
    max_tasks when enough validate); a sandbox that hits that cap waits for the ones in flight, since
    a rejected one frees the slot again.
    """

    def __init__(self, candidates, report, done, task_patches, max_tasks, budget, time_budget):
        self.candidates, self.report = candidates, report
        self.done, self.task_patches = done, task_patches
        self.max_tasks, self.budget, self.time_budget = max_tasks, budget, time_budget
        self.started = time.monotonic()  # the time budget is for validating candidates, after the baseline
        self.originals: dict[str, str] = {}
        self.in_flight = 0
        self.stopped = False
        self.lock = threading.Lock()
        self._slot_freed = threading.Condition(self.lock)

    def next(self):
        """(candidate, covering tests, original file text, key), or None when the run is over."""
        report = self.report
        with self.lock:
            while True:
                if self.stopped or report.tried + self.in_flight >= self.budget:
                    return None
                if self.time_budget and time.monotonic() - self.started > self.time_budget:
                    report.out_of_time = True
                    return None
                if len(report.tasks) + self.in_flight >= self.max_tasks:
                    if not self.in_flight or len(report.tasks) >= self.max_tasks:
                        return None
                    self._slot_freed.wait()
                    continue
                item = next(self.candidates, None)
                if item is None:
                    self.stopped = True
                    return None
                # the file's text as read before validation began, which the mutation was made from:
                # its diff and every restore use exactly that text, and the draw never touches a sandbox
                cand, tests, original = item
                report.candidates += 1
                self.originals.setdefault(cand.file, original)
                key = cand.key(original)
                if key in self.done:
                    report.skipped += 1
                    continue
                self.done.add(key)
                if _digest(cand.diff(original)) in self.task_patches:  # same edit reached from another function
                    continue
                self.in_flight += 1
                return cand, tests, original, key

    def finished(self) -> None:
        with self.lock:
            self.in_flight -= 1
            self._slot_freed.notify_all()

    def abort(self) -> None:
        with self.lock:
            self.stopped = True
            self.in_flight -= 1
            self._slot_freed.notify_all()


def _install_probe(box: RepoContainer) -> None:
    box.sh(f"mkdir -p {PROBE_DIR}")
    box.write(f"{PROBE_DIR}/forager_probe.py", (Path(__file__).parent / "probe.py").read_text())


# ---------------------------------------------------------------- steps


def _baseline(box: RepoContainer, record: ImageRecord, timeout: float | None):
    """One profiled run of the whole suite: outcomes plus {repo function: covering test ids}."""
    env = {"PYTHONPATH": PROBE_DIR, "FORAGER_PROBE_OUT": f"{PROBE_DIR}/hits.json"}
    run = box.run_tests(record.test_command, timeout or 1800, env=env, extra_args="-p forager_probe")
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


def _test_files(box: RepoContainer, outcomes: dict[str, str]) -> list[str]:
    """Tracked files that belong to the tests (restored from the base at grading)."""
    code, out = box.output("git ls-files")  # a lost listing would leave test files unrestored at grading
    tracked = out.splitlines() if code == 0 else []
    files = {f for f in tracked if is_test_path(f)}
    files |= {t.split("::")[0] for t in outcomes if "::" in t and t.split("::")[0] in set(tracked)}
    return sorted(files)


def _candidates(box, covering, passing, test_files, seed) -> tuple[int, Iterator[tuple[Candidate, list[str], str]]]:
    """(covered functions, their mutations round-robin across functions in a seeded order).

    A function's mutations are generated only when the round-robin first reaches it: generating
    every covered function's mutations up front took minutes on a large repo (boltons), for a
    budget that draws a few dozen.
    """
    rng = random.Random(seed)
    tests_set = set(test_files)
    by_file: dict[str, list[str]] = {}
    for key in sorted(covering):
        path, _, qualname = key.partition("::")
        if path in tests_set or is_test_path(path) or "<" in qualname or path.startswith(("setup.py", "docs/")):
            continue
        by_file.setdefault(path, []).append(qualname)
    entries: list[tuple[str, str, str, list[str]]] = []
    for path, names in sorted(by_file.items()):
        try:
            source = box.read_bytes(path).decode()
            known = {n for n, _ in functions(ast.parse(source))}
        except (FileNotFoundError, SyntaxError, UnicodeDecodeError, docker.errors.NotFound):
            continue
        for name in names:
            if name not in known:
                continue
            tests = sorted(t for t in covering[f"{path}::{name}"] if t in passing) or sorted(covering[f"{path}::{name}"])
            entries.append((path, source, name, tests))
    rng.shuffle(entries)
    return len(entries), _round_robin(entries, rng)


def _round_robin(entries, rng: random.Random) -> Iterator[tuple[Candidate, list[str], str]]:
    """(mutation, covering tests, the file's original text): one mutation per function per round, in the
    entries' order; later rounds take each function's next one."""
    rounds: deque[tuple[Iterator[Candidate], list[str], str]] = deque()
    for path, source, name, tests in entries:  # first round: generate lazily, function by function
        cands = iter(_interleave_operators(mutate_function(path, source, name), rng))
        first = next(cands, None)
        if first is not None:
            yield first, tests, source
            rounds.append((cands, tests, source))
    while rounds:
        cands, tests, source = rounds.popleft()
        nxt = next(cands, None)
        if nxt is not None:
            yield nxt, tests, source
            rounds.append((cands, tests, source))


def _interleave_operators(cands: list[Candidate], rng: random.Random) -> list[Candidate]:
    """One of each operator in turn (shuffled), so operators with many sites (e.g. remove_arg) don't crowd out the rest."""
    groups: dict[str, list[Candidate]] = {}
    for c in cands:
        groups.setdefault(c.operator, []).append(c)
    order = list(groups.values())
    for g in order:
        rng.shuffle(g)
    rng.shuffle(order)
    out: list[Candidate] = []
    while order:
        for g in list(order):
            out.append(g.pop(0))
            if not g:
                order.remove(g)
    return out


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
        full = box.run_tests(record.test_command, timeout, extra_args=NO_TRACEBACKS)
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
        run = box.run_tests(narrowed, timeout, extra_args=f"-x {NO_TRACEBACKS}")  # collects only the named tests
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
    run = box.run_tests(record.test_command, timeout, env=env, extra_args=f"-p forager_probe -x {NO_TRACEBACKS}")
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


# pytest options whose value is the next token (so that token is not mistaken for a test path)
_VALUE_OPTIONS = {
    "-k", "-m", "-p", "-c", "-o", "-W", "-r", "-n", "--rootdir", "--confcutdir", "--basetemp", "--deselect",
    "--ignore", "--ignore-glob", "--import-mode", "--tb", "--durations", "--maxfail", "--override-ini",
    "--log-level", "--timeout", "--cov", "--cov-report", "--cov-config", "--junitxml", "--junit-xml",
}


def narrow_command(test_command: str, node_ids: list[str], max_chars: int = 60000) -> str | None:
    """The test command with its path arguments replaced by node ids; None if it is not a plain pytest call."""
    try:
        tokens = shlex.split(test_command)
    except ValueError:
        return None
    if any(t in ("&&", "||", ";", "|") for t in tokens):
        return None
    at = next((i for i, t in enumerate(tokens) if t in ("pytest", "py.test") or t.endswith("/pytest")), None)
    if at is None:
        return None
    kept, expect_value = tokens[: at + 1], False
    for tok in tokens[at + 1 :]:
        if expect_value:
            kept.append(tok)
            expect_value = False
        elif tok.startswith("-"):
            kept.append(tok)
            expect_value = tok in _VALUE_OPTIONS
        # a positional argument is a test path: dropped, the node ids replace it
    command = shlex.join(kept + sorted(node_ids))
    return command if len(command) <= max_chars else None


def _task(record, cand, original, f2p, p2p, junit, test_files, hide_tests) -> Task:
    setup_patch = cand.diff(original)
    gold_patch = unified_diff(cand.file, cand.source, original)
    digest = hashlib.sha1(f"{record.tag}\n{setup_patch}".encode()).hexdigest()[:12]
    mutated_lines = {line[1:].strip() for line in setup_patch.splitlines() if line.startswith(("+", "-"))}
    return Task(
        id=f"{record.repo}__mf_{digest}",
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
        mutation=Mutation(operator=cand.operator, file=cand.file, function=cand.function,
                          lineno=cand.lineno, description=cand.description),
        hide_tests=hide_tests,
    )


# ---------------------------------------------------------------- problem statements


def failure_messages(junit_xml: str) -> dict[str, str]:
    """{test id: the failure's message} from a JUnit report (message attribute, else first text lines)."""
    messages: dict[str, str] = {}
    for case in ET.fromstring(junit_xml).iter("testcase"):
        for child in case:
            if child.tag in ("failure", "error"):
                body = (child.text or "").strip().splitlines()
                text = child.get("message") or (body[-1] if body else "")
                tid = node_id(case.get("classname", ""), case.get("name", ""), case.get("file"))
                messages[tid] = text or child.tag
                break
    return messages


def problem_statement(repo: str, f2p: list[str], messages: dict[str, str], hidden_lines: set[str],
                      hide_tests: bool = True, limit: int = 4) -> str:
    """What a user would report: the failing behaviour and its errors, never the changed line."""
    seen: list[str] = []
    for test in f2p:
        msg = _clean(messages.get(test, ""), hidden_lines)
        if msg and msg not in seen:
            seen.append(msg)
    lines = [
        f"Something in `{repo}` is broken: part of its behaviour no longer works as the project's test suite expects.",
        "",
        f"{len(f2p)} test{'s' if len(f2p) != 1 else ''} of the existing suite now fail{'s' if len(f2p) == 1 else ''}. "
        "The errors observed:",
        "",
    ]
    lines += [f"- {m}" for m in seen[:limit]] or ["- (the tests fail without a message)"]
    if not hide_tests:
        lines += ["", "Failing tests:", *[f"- {t}" for t in f2p]]
    lines += ["", "Find the cause in the library's source code and fix it. The tests are correct: do not change them."]
    return "\n".join(lines)


def _clean(message: str, hidden_lines: set[str]) -> str:
    keep = []
    for line in message.splitlines():
        stripped = line.strip()
        if not stripped or stripped in hidden_lines or any(h and h in stripped for h in hidden_lines if len(h) > 12):
            continue
        keep.append(stripped)
        if len(keep) == 3:
            break
    text = " / ".join(keep)
    return re.sub(r"\s+", " ", text)[:300]


# ---------------------------------------------------------------- resume bookkeeping


def _decided(log_path: Path, image: str) -> set[str]:
    if not log_path.exists():
        return set()
    return {obj["key"] for _, obj, _ in read_jsonl(log_path) if obj and obj.get("image") == image and "key" in obj}


def _digest(patch: str) -> str:
    return hashlib.sha1(patch.encode()).hexdigest()
