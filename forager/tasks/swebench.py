"""Issue-fix tasks from SWE-bench's instance format (JSONL), and any task set back out to it.

Fields read: instance_id, repo, base_commit, problem_statement, test_patch, patch, FAIL_TO_PASS,
PASS_TO_PASS (JSON-encoded string lists or real lists). Optional: `source`, a list entry that
overrides where the code comes from (a local path, a git URL, `pypi:NAME==VERSION`), for hosts that
cannot reach GitHub; `test_command`, `python`, `install` overrides for the builder; and `setup_patch`,
the broken start state of a task that is not a commit (Forager's mutate-fix tasks).

Export writes the same fields (FAIL_TO_PASS/PASS_TO_PASS JSON-encoded, as SWE-bench does) plus `source`,
`test_command`, `version`, `environment_setup_commit`, `created_at` and `hints_text`, so importing an
export gives the same tasks: same ids, patches, tests and problem statements.

The builder makes the image at base_commit; grading restores the touched test files, applies the
test_patch and runs the image's test command narrowed to the test modules the test patch touches and the
graded tests live in (SWE-bench's own convention). Malformed records are reported by line and skipped.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from pydantic import BaseModel, Field, ValidationError, field_validator

from forager.config import Settings
from forager.models import ImageRecord, Task
from forager.tasks.failtopass import narrowed_command
from forager.tasks.history import is_test_module
from forager.tasks.store import append_tasks, load_tasks, tasks_path


class SWEInstance(BaseModel):
    instance_id: str = Field(min_length=1)
    repo: str = Field(min_length=1)
    base_commit: str = Field(min_length=1)
    problem_statement: str = Field(min_length=1)
    test_patch: str = ""
    patch: str = ""
    FAIL_TO_PASS: list[str]
    PASS_TO_PASS: list[str] = Field(default_factory=list)
    source: str | None = None
    test_command: str | None = None
    python: str | None = None
    install: list[str] | None = None
    setup_patch: str = ""

    @field_validator("FAIL_TO_PASS", "PASS_TO_PASS", mode="before")
    @classmethod
    def _decode(cls, value: Any) -> Any:
        if isinstance(value, str):  # SWE-bench stores these lists JSON-encoded
            value = json.loads(value)
        return value

    @field_validator("FAIL_TO_PASS")
    @classmethod
    def _nonempty(cls, value: list[str]) -> list[str]:
        if not value:
            raise ValueError("FAIL_TO_PASS is empty: nothing would grade the fix")
        return value


@dataclass
class ImportReport:
    tasks: list[Task] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)  # "file:line: why" or "instance: why"
    skipped: int = 0  # already imported


def read_instances(path: str | Path) -> tuple[list[tuple[int, SWEInstance]], list[str]]:
    """Valid instances with their line numbers, and one message per malformed line."""
    good: list[tuple[int, SWEInstance]] = []
    errors: list[str] = []
    with open(path, encoding="utf-8") as fh:
        for n, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
                if not isinstance(obj, dict):
                    raise ValueError("not a JSON object")
                good.append((n, SWEInstance.model_validate(obj)))
            except ValidationError as exc:
                why = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'record'}: {e['msg']}" for e in exc.errors())
                errors.append(f"{path}:{n}: {why}")
            except ValueError as exc:
                errors.append(f"{path}:{n}: {exc}")
    return good, errors


def repo_entry(inst: SWEInstance) -> tuple[str, dict[str, Any]]:
    """The repository-list entry that builds this instance's image, and its overrides."""
    overrides = {k: v for k, v in {"test_command": inst.test_command, "python": inst.python,
                                   "install": inst.install}.items() if v}
    return inst.source or f"{inst.repo}@{inst.base_commit}", overrides


def patch_files(patch: str) -> tuple[list[str], list[str]]:
    """(files the patch modifies or deletes, files it creates)."""
    existing, created = [], []
    for m in re.finditer(r"^--- (\S+)\n\+\+\+ (\S+)", patch, re.M):
        old, new = m.group(1), m.group(2)
        path = (new if new != "/dev/null" else old)
        path = path[2:] if path[:2] in ("a/", "b/") else path
        (created if old == "/dev/null" else existing).append(path)
    return existing, created


def graded_command(image_command: str, test_patch: str, tests: list[str]) -> str:
    """The image's test command narrowed to the test modules the test patch leaves and the graded tests live in
    (what SWE-bench runs too); the whole command when a graded test names no file or the command is not pytest."""
    if not tests or any("::" not in t for t in tests):
        return image_command
    kept = {m.group(1) for m in re.finditer(r"^\+\+\+ b/(\S+)", test_patch, re.M) if is_test_module(m.group(1))}
    return narrowed_command(image_command, sorted(kept | {t.split("::")[0] for t in tests}))


def to_task(inst: SWEInstance, record: ImageRecord) -> Task:
    existing, created = patch_files(inst.test_patch)
    id_files = {t.split("::")[0] for t in inst.FAIL_TO_PASS + inst.PASS_TO_PASS if "::" in t}
    return Task(
        id=inst.instance_id,
        kind="issue-fix",
        repo=record.repo,
        image=record.tag or "",
        commit=record.commit or inst.base_commit,
        workdir=record.workdir,
        problem_statement=inst.problem_statement,
        setup_patch=inst.setup_patch,
        test_patch=inst.test_patch,
        # created files too: grading removes them before the test patch creates them (an agent's file of the
        # same name would otherwise make the patch fail to apply)
        test_files=sorted(set(existing) | set(created) | id_files),
        test_command=graded_command(record.test_command or "python -m pytest", inst.test_patch,
                                    inst.FAIL_TO_PASS + inst.PASS_TO_PASS),
        fail_to_pass=inst.FAIL_TO_PASS,
        pass_to_pass=inst.PASS_TO_PASS,
        gold_patch=inst.patch,
        hide_tests=False,
        origin="imported",
    )


def import_instances(
    path: str | Path,
    settings: Settings,
    *,
    build: Callable[[SWEInstance], ImageRecord],
    force: bool = False,
    on_progress: Callable[[int, int, str], None] | None = None,
) -> ImportReport:
    """Build each instance's image at its base commit with `build` (the CLI hands in the builder; it
    caches) and store the task. `build` raises ValueError for an entry it cannot parse."""
    report = ImportReport()
    instances, report.errors = read_instances(path)
    known = {t.id for t in load_tasks(settings.tasks_dir)} if settings.tasks_dir.exists() and not force else set()
    for i, (line, inst) in enumerate(instances, 1):
        if inst.instance_id in known:
            report.skipped += 1
        else:
            try:
                record = build(inst)
            except ValueError as exc:
                report.errors.append(f"{path}:{line}: {inst.instance_id}: {exc}")
                record = None
            if record is not None:
                if record.status != "ok" or not record.tag:
                    report.errors.append(f"{path}:{line}: {inst.instance_id}: image build failed "
                                         f"({record.status}: {record.reason[:300]})")
                else:
                    task = to_task(inst, record)
                    append_tasks(tasks_path(settings.tasks_dir, task.repo), [task])
                    report.tasks.append(task)
                    known.add(task.id)
        if on_progress:
            on_progress(i, len(instances), inst.instance_id)
    return report


def to_instance(task: Task, source: str | None = None, version: str | None = None,
                image_command: str | None = None) -> dict[str, Any]:
    """A task as one SWE-bench record; `source` is the list entry that builds its image and `image_command` the
    image's whole test command (both from the catalog): import narrows it again exactly as the task does."""
    record: dict[str, Any] = {
        "instance_id": task.id,
        "repo": task.repo,
        "base_commit": task.commit,
        "patch": task.gold_patch,
        "test_patch": task.test_patch,
        "problem_statement": task.problem_statement,
        "hints_text": "",
        "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(task.created_at)),
        "version": version or "",
        "FAIL_TO_PASS": json.dumps(task.fail_to_pass),
        "PASS_TO_PASS": json.dumps(task.pass_to_pass),
        "environment_setup_commit": task.commit,
        "source": source,
        "test_command": image_command or task.test_command,
    }
    if task.setup_patch:
        record["setup_patch"] = task.setup_patch
    return record


def package_version(pip_freeze: list[str]) -> str | None:
    """The version of the editable install in a `pip freeze` (the repository itself), if it says."""
    for line in pip_freeze:
        m = re.match(r"^# Editable .*\((\S+)==(\S+)\)\s*$", line)  # "# Editable Git install with no remote (x==1.0)"
        if m:
            return m.group(2)
    return None


def instance_records(tasks: list[Task], sources: dict[str, ImageRecord] | None = None) -> Iterator[dict[str, Any]]:
    """`tasks` as SWE-bench records; `sources` maps an image tag to its catalog record."""
    for task in tasks:
        rec = (sources or {}).get(task.image)
        freeze = (task.certificate.pip_freeze if task.certificate else []) or (rec.pip_freeze if rec else [])
        yield to_instance(task, rec.source if rec else None, package_version(freeze), rec.test_command if rec else None)


def export_instances(tasks: list[Task], out: IO[str], sources: dict[str, ImageRecord] | None = None) -> int:
    """Write `tasks` as SWE-bench JSONL to `out` (the Parquet export writes the same records)."""
    for record in instance_records(tasks, sources):
        out.write(json.dumps(record) + "\n")
    return len(tasks)
