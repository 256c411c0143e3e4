"""How synthesis spends its sandboxes: which candidate goes next (`Draw`) and whether a cheap run of the
covering tests goes before the full suite (`FastReject`)."""

from __future__ import annotations

import hashlib
import shlex
import threading
import time
from dataclasses import dataclass, field


def digest(patch: str) -> str:
    return hashlib.sha1(patch.encode()).hexdigest()


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


class Draw:
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
                if digest(cand.diff(original)) in self.task_patches:  # same edit reached from another function
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
