"""Submit: the agent's patch, computed by the server (patch.py), graded in a fresh container of the task's image.

The agent's container is never where grading happens, and nothing in it is run: its files are read through
the archive API. In a grading container started from the image (a warm one from the pool when there is
one): the task's setup patch, then the agent's patch (the exact bytes returned and recorded), then the
test files and test infrastructure put back to their base versions (protect.py says which; the response
lists them), then the hidden test patch, then the tests. The outcome comes from the JUnit report read
through the archive API and from pytest's exit code, which must agree; a test missing from the report is
failed. The grading container is removed afterwards; the agent's env stays for inspection until deleted.
"""

from __future__ import annotations

import asyncio
import io
import secrets
import shlex
import tarfile
import time
from dataclasses import dataclass, field

from envserver import patch as patches
from envserver.docker_backend import Backend
from envserver.errors import BadRequest
from envserver.junit import parse_junit, pytest_args, summarize, timed_out
from envserver.models import GradingSpec, SubmitResponse
from envserver.protect import SHADOW_PROBE, dropped_files

GIT = "git -c core.hooksPath=/dev/null -c commit.gpgsign=false"
# A fixed identity and date: the same setup_patch on the same image always gives the same base commit.
_IDENTITY = (
    "GIT_AUTHOR_NAME=forager GIT_AUTHOR_EMAIL=forager@localhost GIT_COMMITTER_NAME=forager "
    "GIT_COMMITTER_EMAIL=forager@localhost GIT_AUTHOR_DATE='2000-01-01T00:00:00Z' "
    "GIT_COMMITTER_DATE='2000-01-01T00:00:00Z'"
)
FIXED_MTIME = "@946684800"  # 2000-01-01: every file of a task env, so no mtime points at the changed file
WORK = "/tmp/forager-grade"
SETUP_PATCH_PATH = "/tmp/forager-setup.patch"
BASE_COMMIT_PATH = "/tmp/forager-base-commit"
LOG_LIMIT = 20_000


async def _run(backend: Backend, cid: str, script: str, workdir: str, timeout: float = 300):
    return await asyncio.to_thread(backend.run_script, cid, script, timeout, None, workdir)


async def head_commit(session) -> str | None:
    """The image's HEAD, asked through the env's fresh bash session (before any agent step; no extra exec)."""
    result = await session.run("git rev-parse --verify -q HEAD 2>/dev/null", 60)
    sha = result.output.decode(errors="replace").strip()
    return sha if result.exit_code == 0 and len(sha) in (40, 64) else None


async def make_base(backend: Backend, cid: str, workdir: str, setup_patch: str) -> str:
    """Apply setup_patch, re-initialise git with ONE commit (keeping the image's excludes) so no earlier state
    is reachable, and give every file the same mtime so none singles out the changed one."""
    await asyncio.to_thread(backend.write_file, cid, SETUP_PATCH_PATH, setup_patch.encode())
    script = f"""set -e
{GIT} apply --whitespace=nowarn {SETUP_PATCH_PATH} || {{ echo "setup_patch does not apply"; exit 3; }}
rm -f {SETUP_PATCH_PATH}
excludes=$(cat .git/info/exclude 2>/dev/null || true)
rm -rf .git
git init -q -b main
printf '%s\\n' "$excludes" > .git/info/exclude
{GIT} add -A
{_IDENTITY} {GIT} commit -q --allow-empty -m base
git reflog expire --expire=now --all
find . -exec touch -h -d {FIXED_MTIME} {{}} +
git rev-parse HEAD > {BASE_COMMIT_PATH}
"""
    result = await _run(backend, cid, script, workdir)
    text = result.text.strip()
    if result.exit_code != 0:
        raise BadRequest(f"setup failed in {workdir} (exit {result.exit_code}): {text[-4000:]}")
    # Read through the archive API, never from the exec's stream: a loaded daemon can drop a short exec's
    # output (seen with hundreds of envs starting at once), and an empty answer is not a commit. The file
    # holds what `git rev-parse HEAD` tells the agent anyway.
    data, _ = await asyncio.to_thread(backend.read_file, cid, BASE_COMMIT_PATH)
    return data.decode().strip()


@dataclass
class ImageFacts:
    """What grading needs to know of an image, learned once from a pristine container of it."""

    entries: dict[str, patches.Entry]
    importable: set[str] = field(default_factory=set)


async def image_facts(backend: Backend, cid: str, workdir: str) -> ImageFacts:
    entries, _ = await asyncio.to_thread(lambda: patches.read_tree(backend.iter_tree(cid, workdir)))
    probe = await _run(backend, cid, f"python -c {shlex.quote(SHADOW_PROBE)} 2>/dev/null", workdir, 120)
    importable = set(probe.text.split()) if probe.exit_code == 0 else set()
    return ImageFacts(entries, importable)


@dataclass
class Submission:
    """What the server knows of an env when it is submitted."""

    container_id: str
    workdir: str
    setup_patch: str
    spec: GradingSpec | None


async def submit(backend: Backend, env: Submission, grader_id: str, facts: ImageFacts, *,
                 patch_cap: int) -> SubmitResponse:
    """The agent's patch, graded (when the env has a grading spec) in the fresh container `grader_id`."""
    t0 = time.monotonic()
    response = SubmitResponse(patch="", graded=env.spec is not None)
    try:
        computed = await _compute_patch(backend, env, grader_id, facts, patch_cap)
    except patches.PatchTooLarge as exc:
        if env.spec is None:
            raise BadRequest(str(exc)) from exc
        response.reward, response.grading_error = 0.0, f"patch refused: {exc}"
        response.duration = time.monotonic() - t0
        return response
    response.patch = computed.patch.decode()
    if env.spec is not None:
        await _grade(backend, env, grader_id, facts, computed, response)
    response.duration = time.monotonic() - t0
    return response


@dataclass
class _Computed:
    patch: bytes
    old: dict[str, tuple[tarfile.TarInfo, bytes]]
    new: dict[str, tuple[tarfile.TarInfo, bytes]]
    paths: set[str]


async def _compute_patch(backend: Backend, env: Submission, grader: str, facts: ImageFacts, cap: int) -> _Computed:
    setup_paths = patches.patch_paths(env.setup_patch)

    def read_agent():
        try:
            return patches.read_tree(backend.iter_tree(env.container_id, env.workdir), want=setup_paths,
                                     base=facts.entries, cap=cap)
        except FileNotFoundError:  # the agent removed its working directory: every file is deleted
            return {}, {}

    agent_entries, new = await asyncio.to_thread(read_agent)
    paths = patches.changed_paths(facts.entries, agent_entries, setup_paths)
    old = await _base_versions(backend, grader, env, paths)
    patch = await asyncio.to_thread(patches.diff, old, new, paths) if paths else b""
    if len(patch) > cap:
        raise patches.PatchTooLarge(f"the patch is {len(patch)} bytes, over the cap of {cap} bytes")
    return _Computed(patch, old, new, paths)


async def _base_versions(backend: Backend, grader: str, env: Submission, paths: set[str]):
    """The base versions of `paths` (the image with the setup patch applied), from the grading container."""
    files = {"paths": b"".join(p.encode() + b"\0" for p in sorted(paths))}
    if env.setup_patch:
        files["setup.patch"] = env.setup_patch.encode()
    await asyncio.to_thread(backend.write_files, grader, WORK, files)
    apply = (f"{GIT} apply --whitespace=nowarn {WORK}/setup.patch || {{ echo 'setup_patch does not apply'; exit 3; }}"
             if env.setup_patch else "true")
    script = f"""set -e
{apply}
while IFS= read -r -d '' p; do if [ -e "$p" ] || [ -L "$p" ]; then printf '%s\\0' "$p"; fi; done < {WORK}/paths > {WORK}/present
tar --null --no-recursion -T {WORK}/present -cf {WORK}/old.tar
"""
    result = await _run(backend, grader, script, env.workdir)
    if result.exit_code != 0:
        raise BadRequest(f"the base state could not be made in the grading container: {result.text[-2000:]}")
    data, _ = await asyncio.to_thread(backend.read_file, grader, f"{WORK}/old.tar")
    old = {}
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        for member in tar:
            if member.isfile() or member.issym():
                old[member.name] = (member, tar.extractfile(member).read() if member.isfile() else member.linkname.encode())
    return old


async def _grade(backend: Backend, env: Submission, grader: str, facts: ImageFacts, computed: _Computed,
                 response: SubmitResponse) -> None:
    spec, workdir, log = env.spec, env.workdir, []
    touched = patches.patch_paths(computed.patch.decode())
    changed = {p: (computed.old[p][1] if p in computed.old else None, computed.new[p][1] if p in computed.new else None)
               for p in touched & computed.paths}
    response.dropped_files = dropped_files(changed, spec.test_files, set(facts.entries), facts.importable)
    restore = [(computed.old[p][0], computed.old[p][1]) for p in response.dropped_files if p in computed.old]
    files = {"patch.diff": computed.patch, "test.patch": spec.test_patch.encode(),
             "dropped": b"".join(p.encode() + b"\0" for p in response.dropped_files)}
    await asyncio.to_thread(backend.write_files, grader, WORK, files)
    prepared = await _run(backend, grader, f"""set -e
[ ! -s {WORK}/patch.diff ] || {GIT} apply --binary --whitespace=nowarn {WORK}/patch.diff || {{ echo "the patch does not apply"; exit 3; }}
[ ! -s {WORK}/dropped ] || xargs -0 rm -rf -- < {WORK}/dropped
""", workdir)
    if prepared.exit_code != 0:
        return _zero(response, f"the agent's patch does not apply in a fresh container: {prepared.text[-2000:]}")
    if restore:
        await asyncio.to_thread(backend.put_tar, grader, workdir, _tar(restore))
    if spec.test_patch:
        hidden = await _run(backend, grader, f"{GIT} apply --whitespace=nowarn {WORK}/test.patch", workdir)
        if hidden.exit_code != 0:
            return _zero(response, f"the hidden test patch does not apply: {hidden.text[-2000:]}")
    outcomes, agree, response.test_seconds = await _run_tests(backend, grader, workdir, spec, log)
    f2p = {t: outcomes.get(t, "failed") for t in spec.fail_to_pass}
    p2p = {t: outcomes.get(t, "failed") for t in spec.pass_to_pass}
    missing = [t for t in (*spec.fail_to_pass, *spec.pass_to_pass) if t not in outcomes]
    if missing:
        log.append(f"{len(missing)} graded tests absent from the report (counted as failed): {', '.join(missing[:20])}")
    if response.dropped_files:
        log.append("put back before the tests ran (tests and test infrastructure): " + ", ".join(response.dropped_files))
    passed = all(o == "passed" for o in (*f2p.values(), *p2p.values()))
    response.tests, response.fail_to_pass, response.pass_to_pass = outcomes, f2p, p2p
    response.reward = 1.0 if passed and agree is None else 0.0
    response.grading_error = agree
    response.grading_log = "\n".join(log)[-LOG_LIMIT:]


def _zero(response: SubmitResponse, why: str) -> None:
    response.reward, response.grading_error = 0.0, why


async def _run_tests(backend: Backend, grader: str, workdir: str, spec: GradingSpec,
                     log: list[str]) -> tuple[dict, str | None, float]:
    """(outcomes, None when exit code and report agree else why not, seconds the run took)."""
    xml = f"/tmp/forager-junit-{secrets.token_hex(8)}.xml"  # a fresh name per run; a fresh container anyway
    result = await _run(backend, grader, f"{spec.test_command} {pytest_args(xml, spec.per_test_timeout)}", workdir,
                        spec.timeout)
    log.append(f"$ {spec.test_command}  (exit {result.exit_code}{', timed out' if result.timed_out else ''})\n"
               f"{result.text[-LOG_LIMIT:]}")
    if result.timed_out:
        return {}, f"the test run was killed at its timeout ({spec.timeout}s)", result.seconds
    try:
        data, _ = await asyncio.to_thread(backend.read_file, grader, xml)
        report = data.decode(errors="replace")
        outcomes = parse_junit(report)
    except FileNotFoundError:
        return {}, f"no JUnit report at {xml} (pytest exit {result.exit_code})", result.seconds
    except ValueError as exc:
        return {}, str(exc), result.seconds
    if spec.per_test_timeout and (killed := timed_out(report)):
        log.append(f"{len(killed)} tests hit the per-test timeout: {', '.join(killed[:20])}")
    return outcomes, _disagreement(result.exit_code, outcomes), result.seconds


def _disagreement(code: int | None, outcomes: dict) -> str | None:
    """pytest exits 0 when every collected test passed (or was skipped), 1 when some failed: anything else, or
    a report that says otherwise, means the run cannot be trusted."""
    counts = summarize(outcomes)
    bad = counts["failed"] + counts["error"]
    if code == 0 and bad == 0 and outcomes:
        return None
    if code == 1 and bad > 0:
        return None
    return (f"pytest's exit code {code} and its JUnit report ({counts['passed']} passed, {bad} failed or errors) "
            "disagree: the run is not graded")


def _tar(entries: list[tuple[tarfile.TarInfo, bytes]]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for info, data in entries:
            if info.issym():
                tar.addfile(info)
            else:
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()
