"""SWE-bench predictions graded exactly as a submit is, with SWE-bench's report plus Forager's reasons.

A prediction is {instance_id, model_patch, model_name_or_path} (a JSON list, a JSON object of them keyed by
id, or JSONL); `instance_id` is a Forager task id, of any kind (mutate-fix, mined, imported: a model patch is
a diff against the state an agent starts from). Each one is graded through the env server's API only
(forager.tasks.certify.submit_patch): a fresh env of its task, the patch written and applied in the shell as
an agent would (`git apply`, else `patch --fuzz`, as SWE-bench's harness tries), then `submit`, which grades
in a fresh container. Predictions run in parallel; every result is appended to `results.jsonl` in the run
directory as it comes, so a rerun grades only what is missing, what changed, and what failed for an
infrastructure reason.

Report (`report.json`): SWE-bench's run report (schema 2: counts and id lists) with two differences, both
said here: an empty patch is graded too (an agent that gives up submits an empty patch; it must earn 0), so
its id is in `empty_patch_ids` and in `unresolved_ids`; a patch that does not apply is the model's failure,
so it is unresolved with that reason (SWE-bench files it under errors). `error_ids` are the predictions that
could not be graded (unknown task, infrastructure), and `errors` says why for those and for every line that
is not a prediction. `reasons` gives Forager's reason per instance.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from envserver.errors import EnvServerError
from forager import jsonl
from forager.errors import UsageError
from forager.models import Task
from forager.tasks.certify import Grader, submit_patch

Verdict = Literal["resolved", "unresolved", "error"]


class Prediction(BaseModel):
    model_config = ConfigDict(extra="ignore")
    instance_id: str = Field(min_length=1)
    model_patch: str | None = None
    model_name_or_path: str = ""


class InstanceResult(BaseModel):
    instance_id: str
    model_name_or_path: str = ""
    patch_sha: str = Field(description="sha256 of the model patch: a changed prediction is graded again")
    verdict: Verdict
    reason: str
    empty_patch: bool = False
    patch_exists: bool = False
    patch_successfully_applied: bool = False
    resolved: bool = False
    reward: float | None = None
    tests_status: dict[str, dict[str, list[str]]] = Field(default_factory=dict)
    dropped_files: list[str] = Field(default_factory=list)
    seconds: float = 0.0


def read_predictions(path: str | Path) -> tuple[list[tuple[str, Prediction]], list[str]]:
    """(where, prediction) for every valid prediction, and a message for each that is not one (or repeats an id)."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise UsageError(f"cannot read predictions {path}: {exc.strerror or exc}") from None
    try:
        whole = json.loads(text)
    except ValueError:
        whole = None
    if isinstance(whole, list):
        items = [(f"{path}[{i}]", item) for i, item in enumerate(whole)]
    elif isinstance(whole, dict) and "instance_id" not in whole:
        items = [(f"{path}[{key!r}]", {"instance_id": key, **item} if isinstance(item, dict) else item)
                 for key, item in whole.items()]
    elif isinstance(whole, dict):  # one prediction
        items = [(str(path), whole)]
    else:  # JSONL
        items = [(f"{path}:{n}", obj if obj is not None else line) for n, obj, line in jsonl.read(path)]
    preds: list[tuple[str, Prediction]] = []
    problems: list[str] = []
    seen: dict[str, str] = {}
    for where, item in items:
        if not isinstance(item, dict):
            problems.append(f"{where}: not a prediction (a JSON object per line, or a JSON list of them)")
            continue
        try:
            pred = Prediction.model_validate(item)
        except ValidationError as exc:
            problems.append(f"{where}: " + "; ".join(f"{'.'.join(map(str, e['loc'])) or 'prediction'}: {e['msg']}"
                                                     for e in exc.errors()))
            continue
        if pred.instance_id in seen:
            problems.append(f"{where}: instance_id {pred.instance_id!r} again (first at {seen[pred.instance_id]}): ignored")
            continue
        seen[pred.instance_id] = where
        preds.append((where, pred))
    if not items:
        problems.append(f"{path}: no predictions")
    return preds, problems


def patch_sha(patch: str | None) -> str:
    return hashlib.sha256((patch or "").encode()).hexdigest()


def grade(task: Task, pred: Prediction, grader: Grader, attempts: int = 3) -> InstanceResult:
    """One prediction, graded as a submit of its patch. An infrastructure failure is tried again (a fresh env
    each time, as the fleet retries), then reported as `error`: never a verdict."""
    started = time.monotonic()
    patch = pred.model_patch or ""
    head = dict(instance_id=pred.instance_id, model_name_or_path=pred.model_name_or_path,
                patch_sha=patch_sha(patch), empty_patch=not patch.strip(), patch_exists=bool(patch.strip()))
    for attempt in range(1, attempts + 1):
        try:
            response, not_applied = submit_patch(task, grader, patch, purpose="evaluate")
            break
        except EnvServerError as exc:
            if attempt == attempts:
                return InstanceResult(**head, verdict="error", reason=f"not graded ({attempts} tries): "
                                      f"{type(exc).__name__}: {exc}", seconds=time.monotonic() - started)
            time.sleep(2.0 * attempt)
    if response is None:
        return InstanceResult(**head, verdict="unresolved", reason=not_applied, reward=0.0,
                              seconds=time.monotonic() - started)
    status = {key: {"success": sorted(t for t, o in outcomes.items() if o == "passed"),
                    "failure": sorted(t for t, o in outcomes.items() if o != "passed")}
              for key, outcomes in (("FAIL_TO_PASS", response.fail_to_pass), ("PASS_TO_PASS", response.pass_to_pass))}
    resolved = response.graded and response.reward == 1.0
    return InstanceResult(**head, verdict="resolved" if resolved else "unresolved", reward=response.reward,
                          reason=_reason(response, status, head["empty_patch"]), patch_successfully_applied=True,
                          resolved=resolved, tests_status=status, dropped_files=list(response.dropped_files),
                          seconds=time.monotonic() - started)


def _reason(response, status: dict[str, dict[str, list[str]]], empty: bool) -> str:
    prefix = "empty patch: " if empty else ""
    if not response.graded:
        return prefix + "the task has no grader"
    if response.grading_error:
        return prefix + response.grading_error
    if response.reward == 1.0:
        return prefix + "every FAIL_TO_PASS and PASS_TO_PASS test passes"
    failing = [f"{key} not passing: {', '.join(f'{t} ({response.fail_to_pass.get(t) or response.pass_to_pass.get(t)})' for t in status[key]['failure'][:10])}"
               for key in ("FAIL_TO_PASS", "PASS_TO_PASS") if status[key]["failure"]]
    return prefix + ("; ".join(failing) or f"reward {response.reward}")


class Evaluation:
    """One run: predictions against a task set, results in `run_dir` (results.jsonl, report.json)."""

    def __init__(self, tasks: list[Task], grader: Grader, run_dir: str | Path, *, run_id: str):
        self.tasks = {t.id: t for t in tasks}
        self.grader, self.run_dir, self.run_id = grader, Path(run_dir), run_id
        self.results_path = self.run_dir / "results.jsonl"

    def previous(self) -> dict[str, InstanceResult]:
        """The last result of each instance from earlier runs of this run id."""
        out: dict[str, InstanceResult] = {}
        for obj in jsonl.objects(self.results_path):
            try:
                result = InstanceResult.model_validate(obj)
            except ValidationError:
                continue
            out[result.instance_id] = result
        return out

    def run(self, preds: list[tuple[str, Prediction]], problems: list[str], *, jobs: int = 4,
            on_result: Callable[[InstanceResult], None] | None = None) -> dict[str, Any]:
        errors = list(problems)
        results: dict[str, InstanceResult] = {}
        todo: list[Prediction] = []
        done = self.previous()
        for where, pred in preds:
            if pred.instance_id not in self.tasks:
                errors.append(f"{where}: unknown instance_id {pred.instance_id!r}: no such task in the task set")
                results[pred.instance_id] = InstanceResult(instance_id=pred.instance_id, patch_sha=patch_sha(
                    pred.model_patch), verdict="error", reason="unknown instance_id: no such task")
                if on_result:
                    on_result(results[pred.instance_id])
                continue
            old = done.get(pred.instance_id)
            if old is not None and old.verdict != "error" and old.patch_sha == patch_sha(pred.model_patch):
                results[pred.instance_id] = old  # graded before: resume
                if on_result:
                    on_result(old)
            else:
                todo.append(pred)
        with ThreadPoolExecutor(max_workers=jobs) as pool:
            futures = [pool.submit(grade, self.tasks[p.instance_id], p, self.grader) for p in todo]
            for future in as_completed(futures):
                result = future.result()
                jsonl.append(self.results_path, [result])
                results[result.instance_id] = result
                if on_result:
                    on_result(result)
        errors += [f"{r.instance_id}: {r.reason}" for r in results.values()
                   if r.verdict == "error" and r.instance_id in self.tasks]
        report = self.report(preds, results, errors)
        jsonl.replace(self.run_dir / "report.json", [report])
        return report

    def report(self, preds: list[tuple[str, Prediction]], results: dict[str, InstanceResult],
               errors: list[str]) -> dict[str, Any]:
        def ids(check) -> list[str]:
            return sorted(i for i, r in results.items() if check(r))

        resolved, unresolved = ids(lambda r: r.verdict == "resolved"), ids(lambda r: r.verdict == "unresolved")
        empty, failed = ids(lambda r: r.empty_patch and r.verdict != "error"), ids(lambda r: r.verdict == "error")
        submitted = sorted(p.instance_id for _, p in preds)
        return {
            "total_instances": len(self.tasks), "submitted_instances": len(submitted),
            "completed_instances": len(resolved) + len(unresolved), "resolved_instances": len(resolved),
            "unresolved_instances": len(unresolved), "empty_patch_instances": len(empty),
            "error_instances": len(failed), "completed_ids": sorted(resolved + unresolved),
            "incomplete_ids": sorted(set(self.tasks) - set(submitted)), "empty_patch_ids": empty,
            "submitted_ids": submitted, "resolved_ids": resolved, "unresolved_ids": unresolved, "error_ids": failed,
            "schema_version": 2, "run_id": self.run_id,
            "model_name_or_path": sorted({p.model_name_or_path for _, p in preds if p.model_name_or_path}),
            "errors": errors, "reasons": {i: r.reason for i, r in sorted(results.items())},
            "results": str(self.results_path),
        }
