"""Build and validate repository images: fetch → detect → base → deps layer → repo layer → validate → catalog.

Every outcome, good or bad, is appended to the catalog as an ImageRecord with a failure class and the
path of a log holding everything that happened. An `ok` record whose image still exists makes the next
run skip that repo@commit (resume); `force` rebuilds. A base image the chosen Python needs is made on
demand (images.base: a minute or two of debootstrap); when it cannot be, the repo fails as
`python_unavailable`. Dependencies resolve as of the commit's date (images.history, images.layers).
"""

from __future__ import annotations

import shutil
import tempfile
import threading
import time
import traceback
from concurrent.futures import ThreadPoolExecutor
from collections.abc import Callable
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version as package_version
from pathlib import Path

import docker
from docker.errors import DockerException

from forager.config import BASE_IMAGE_REPO, Settings
from forager.errors import PushError, SetupError
from forager.models import ImageRecord, RepoSpec
from images import base, catalog, history, layers, sources
from images.assemble import LayerFailure, build_layers
from images.detect import DetectError, detect
from images.validate import validate

STAGES = ("fetch", "detect", "deps", "repo", "validate")


@dataclass
class BuildOptions:
    force: bool = False
    min_pass_rate: float = 0.9
    test_timeout: int = 1200  # seconds per validation run: the backstop (greenlet's suite: 700 s on a loaded host)
    runs: int = 2  # validation runs; outcomes that differ between them are flaky
    push: str | None = None  # REGISTRY/PREFIX to tag and push ok images to
    no_cache: bool = False  # also bypass Docker's layer cache (cold-build measurements)
    per_test_timeout: int | None = 60  # seconds one test may run in validation (pytest-timeout); None: no limit
    resolve_at: str = "commit"  # "commit": dependencies as of the commit's date; "today": the index as it is now
    make_base: bool = True  # make a missing base image (debootstrap) the chosen Python needs
    install_host_packages: Callable[[list[str]], None] | None = None  # host apt-get, for debootstrap (the CLI's)


class _Log:
    """One build's log file; also feeds an optional live callback."""

    def __init__(self, path: Path):
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._fh = open(path, "a", encoding="utf-8")
        self._start = time.monotonic()

    def __call__(self, text: str) -> None:
        stamp = f"[{time.monotonic() - self._start:7.1f}s] "  # where the time of a build goes
        self._fh.write("".join(stamp + line + "\n" for line in text.rstrip("\n").split("\n")))
        self._fh.flush()

    def close(self) -> None:
        self._fh.close()


_tag_locks: dict[str, threading.Lock] = {}
_tag_guard = threading.Lock()


def _tag_lock(tag: str) -> threading.Lock:
    with _tag_guard:
        return _tag_locks.setdefault(tag, threading.Lock())


def available_pythons(client: docker.DockerClient, makeable: bool = True) -> list[str]:
    """Python versions with a local base image (forager/base:pyX.Y), plus those we can make (images.base.RELEASES)."""
    versions = list(base.RELEASES) if makeable else []
    for image in client.images.list(name=BASE_IMAGE_REPO):
        for tag in image.tags:
            if tag.startswith(f"{BASE_IMAGE_REPO}:py"):
                versions.append(tag.split(":py", 1)[1])
    return sorted(set(versions))


def uv_version() -> str:
    """The uv the dependency layer installs: the host's own (a pinned, known-good version)."""
    try:
        return package_version("uv")
    except PackageNotFoundError:
        return "missing"


def uv_binary() -> Path:
    try:
        from uv import find_uv_bin

        return Path(find_uv_bin())
    except (ImportError, FileNotFoundError) as exc:
        raise SetupError("uv is not installed on this host (`pip install uv`): the dependency layer needs it") from exc


def _ensure_base(client, python: str, opts: BuildOptions, log) -> None:
    """Make the base (and the tools image over it) for `python` if missing; SetupError when it cannot be made."""
    from forager.config import base_image_tag

    tag = base_image_tag(python)
    with _tag_lock(tag):
        if not layers.image_exists(client, tag):
            if not opts.make_base:
                raise SetupError(f"{tag} is missing (make it with `forager setup --pythons {python}`)")
            log(f"base: {tag} is missing; making it")
            base.ensure_base_image(client, python, log=log, install=opts.install_host_packages)
        base.ensure_tools_image(client, python, uv_version(), uv_binary(), log)


def build_repo(spec: RepoSpec, settings: Settings, options: BuildOptions | None = None, *, client=None, on_stage=None) -> ImageRecord:
    """Build, validate and catalog one repository; never raises for a repository's own failure."""
    record, _cached = _build(spec, settings, options or BuildOptions(), client or docker.from_env(timeout=900), on_stage)
    return record


def _build(spec: RepoSpec, settings: Settings, opts: BuildOptions, client, on_stage) -> tuple[ImageRecord, bool]:
    stage = on_stage or (lambda _name: None)
    started = time.monotonic()
    stamp = time.strftime("%Y%m%d-%H%M%S")
    log = _Log(settings.logs_dir / "build" / f"{spec.name}-{stamp}-{id(spec) & 0xFFFF:04x}.log")
    record = ImageRecord(repo=spec.name, source=spec.source, status="error", log_path=str(log.path))

    def fail(status: str, reason: str) -> tuple[ImageRecord, bool]:
        log(f"FAILED [{status}]: {reason}")
        record.status, record.reason = status, reason
        record.build_seconds = record.build_seconds or round(time.monotonic() - started, 2)
        catalog.append_record(settings.catalog_path, record)
        return record, False

    workspace = Path(tempfile.mkdtemp(prefix=f"{spec.name}-", dir=_ensure(settings.build_dir)))
    try:
        log(f"source: {spec.source} ({spec.kind} {spec.location} ref={spec.ref})")
        try:
            mirror, commit = sources.fetch(spec, settings.mirror_dir, log)
        except sources.SourceError as exc:
            return fail("clone", str(exc))
        except Exception as exc:  # an unexpected failure of the source is still a clone failure, logged
            return fail("clone", f"{type(exc).__name__}: {exc}")
        record.commit = commit
        log(f"commit: {commit}")
        stage("fetch")

        record.commit_date = history.commit_date(mirror, commit)
        date = history.resolution_date(record.commit_date) if opts.resolve_at == "commit" else None
        if not opts.force:
            previous = catalog.find_ok(settings.catalog_path, spec.name, commit)
            if (previous and _same_overrides(previous, spec) and layers.image_exists(client, previous.tag)
                    and _deps_date(client, previous) == date):
                log(f"cached: {previous.tag} is ok in the catalog; skipping (use force to rebuild)")
                log.close()
                return previous, True
        tree = sources.export_tree(mirror, commit, workspace / "tree", log)
        try:
            det = detect(tree, spec, available_pythons(client, makeable=opts.make_base), record.commit_date)
        except DetectError as exc:
            return fail("detect", str(exc))
        for note in det.notes:
            log(f"detect: {note}")
        record.python, record.test_command, record.install_commands = det.python, det.test_command, det.install
        record.test_runner = det.test_runner
        if det.toolchain_problem:
            return fail("toolchain", det.toolchain_problem)
        stage("detect")

        try:
            _ensure_base(client, det.python, opts, log)
        except SetupError as exc:
            return fail("python_unavailable", f"Python {det.python} (what the project supports) has no base image: {exc}")

        labels = {"forager.kind": "repo", "forager.repo": spec.name, "forager.commit": commit, "forager.source": spec.source}
        try:
            record.deps_tag, tag = build_layers(
                client, spec.name, commit, det, date, tree, workspace, labels, log,
                force=opts.force, no_cache=opts.no_cache, uv_version=uv_version(), tag_lock=_tag_lock)
        except LayerFailure as exc:
            return fail(exc.status, exc.reason)
        stage("deps")
        record.tag = tag
        record.size_bytes = client.images.get(tag).attrs.get("Size")
        record.build_seconds = round(time.monotonic() - started, 2)
        stage("repo")

        v_started = time.monotonic()
        result = validate(
            tag, det.test_command, timeout=opts.test_timeout, min_pass_rate=opts.min_pass_rate, runs=opts.runs, log=log,
            per_test_timeout=opts.per_test_timeout,
        )
        record.validate_seconds = round(time.monotonic() - v_started, 2)
        record.pip_freeze = result.pip_freeze
        record.test_outcomes, record.flaky, record.test_seconds = result.outcomes, result.flaky, result.test_seconds
        record.tests_collected = len(result.outcomes)
        record.tests_passed, record.tests_failed, record.tests_skipped = result.passed, result.failed, result.skipped
        record.per_test_timeout, record.timed_out_tests = result.per_test_timeout, result.timed_out
        stage("validate")
        if result.status != "ok":
            return fail(result.status, result.reason)
        record.status, record.reason = "ok", result.reason
        log(f"OK: {tag}: {result.reason}")
        catalog.append_record(settings.catalog_path, record)
        return record, False
    except DockerException as exc:
        return fail("error", f"docker: {exc}")
    except Exception as exc:  # a bug or an OS error is still recorded, with its traceback, never lost
        log(traceback.format_exc())
        return fail("error", f"{type(exc).__name__}: {exc}")
    finally:
        shutil.rmtree(workspace, ignore_errors=True)
        log.close()


def _same_overrides(previous: ImageRecord, spec: RepoSpec) -> bool:
    """An ok record counts for a spec only if the spec's overrides would not change what was built or run."""
    return (
        (spec.test_command is None or previous.test_command == spec.test_command)
        and (spec.install is None or previous.install_commands == spec.install)
        and (spec.python is None or previous.python == spec.python)
    )


def _deps_date(client, record: ImageRecord) -> str | None:
    """The date the record's dependency layer resolved at (its label), None for today's index."""
    try:
        return (client.images.get(record.deps_tag).labels or {}).get("forager.deps.date") if record.deps_tag else None
    except DockerException:
        return None


def _ensure(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    return path


def build_list(
    specs: list[RepoSpec],
    settings: Settings,
    jobs: int = 1,
    force: bool = False,
    progress=None,
    options: BuildOptions | None = None,
    summary: dict | None = None,
) -> list[ImageRecord]:
    """Build every spec, `jobs` at a time; records come back in the order of `specs`.

    `progress` is a rich Progress (forager.ui.progress()) or None: one bar per stage. `summary`, when
    given, is filled with counts (ok, cached, failures by class, pushed, push_errors).
    """
    opts = options or BuildOptions(force=force)
    opts.force = opts.force or force
    client = docker.from_env(timeout=900)
    bars = {s: progress.add_task(s, total=len(specs), status="") for s in STAGES} if progress else {}
    bar_lock = threading.Lock()
    active = [0]
    results: list[tuple[ImageRecord, bool] | None] = [None] * len(specs)

    def advance(name: str, spec: RepoSpec) -> None:
        if progress:
            with bar_lock:
                progress.update(bars[name], advance=1, status=spec.name)

    def one(index: int) -> None:
        spec = specs[index]
        done: list[str] = []

        def on_stage(name: str) -> None:
            done.append(name)
            advance(name, spec)

        with bar_lock:
            active[0] += 1
        try:
            results[index] = _build(spec, settings, opts, docker.from_env(timeout=900), on_stage)
        finally:
            # Stages a repo never reached still complete their bars, so every bar ends full.
            for name in STAGES:
                if name not in done:
                    advance(name, spec)
            with bar_lock:
                active[0] -= 1
                idle = active[0] == 0
            if idle and results[index] and not results[index][1]:
                prune_build_leftovers(client)  # only when no build of ours is running mid-way

    with ThreadPoolExecutor(max_workers=max(1, jobs)) as pool:
        list(pool.map(one, range(len(specs))))

    records = [r for r, _ in results]
    if summary is not None:
        summary.update(
            total=len(records),
            ok=sum(r.status == "ok" for r in records),
            cached=sum(cached for _, cached in results),
            failed={s: sum(r.status == s for r in records) for s in sorted({r.status for r in records} - {"ok"})},
            pushed=[],
            push_errors=[],
        )
    if opts.push:
        for record in records:
            if record.status == "ok":
                try:
                    pushed = push_image(client, record, opts.push)
                    if summary is not None:
                        summary["pushed"].append(pushed)
                except PushError as exc:
                    if summary is not None:
                        summary["push_errors"].append(str(exc))
                    else:
                        raise
    prune_build_leftovers(client)
    return records



def push_image(client: docker.DockerClient, record: ImageRecord, destination: str) -> str:
    """Tag `record.tag` as DESTINATION/repo-<name>:<hash> and push it; return the pushed reference."""
    destination = destination.rstrip("/")
    if not destination or " " in destination:
        raise PushError(f"bad push destination {destination!r}: expected REGISTRY/PREFIX")
    name, version = record.tag.split("/", 1)[1].rsplit(":", 1)
    target = f"{destination}/{name}"
    try:
        client.images.get(record.tag).tag(target, version)
        for chunk in client.images.push(target, tag=version, stream=True, decode=True):
            if "error" in chunk:
                raise PushError(f"push of {target}:{version} failed: {chunk['error']}")
    except DockerException as exc:
        raise PushError(f"push of {target}:{version} failed: {exc}") from exc
    return f"{target}:{version}"


def prune_build_leftovers(client: docker.DockerClient) -> int:
    """Remove dangling images left by our builds (failed steps, superseded tags); returns bytes freed."""
    try:
        result = client.images.prune(filters={"dangling": True, "label": f"{layers.BUILD_LABEL}=1"})
    except DockerException:
        return 0
    return int(result.get("SpaceReclaimed") or 0)
