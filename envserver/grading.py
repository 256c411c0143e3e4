"""Git inside the env: the base commit, the agent's patch, and grading with hidden tests.

All of it runs in separate execs (never the agent's bash session) so nothing the agent exported
or aliased changes what we measure. Outcomes come from the JUnit XML pytest writes, never from
printed text, and a test missing from the report counts as failed.
"""

from __future__ import annotations

import asyncio
import posixpath
import secrets
import shlex
import time

from envserver.docker_backend import Backend
from envserver.errors import BadRequest
from envserver.junit import parse_junit, pytest_args
from envserver.models import GradingSpec, SubmitResponse

GIT = "git -c core.hooksPath=/dev/null -c commit.gpgsign=false"
# A fixed identity and date: the same setup_patch on the same image always gives the same base commit.
_IDENTITY = (
    "GIT_AUTHOR_NAME=forager GIT_AUTHOR_EMAIL=forager@localhost GIT_COMMITTER_NAME=forager "
    "GIT_COMMITTER_EMAIL=forager@localhost GIT_AUTHOR_DATE='2000-01-01T00:00:00Z' "
    "GIT_COMMITTER_DATE='2000-01-01T00:00:00Z'"
)
SETUP_PATCH_PATH = "/tmp/forager-setup.patch"
AGENT_PATCH_PATH = "/tmp/forager-agent.patch"
TEST_PATCH_PATH = "/tmp/forager-test.patch"
LOG_LIMIT = 20_000


async def _run(backend: Backend, cid: str, script: str, workdir: str, timeout: float = 300):
    r = await asyncio.to_thread(backend.run_script, cid, script, timeout, None, workdir)
    return (137 if r.timed_out else r.exit_code), r.output


async def head_commit(session) -> str | None:
    """The image's HEAD, asked through the env's fresh bash session (before any agent step; no extra exec)."""
    result = await session.run("git rev-parse --verify -q HEAD 2>/dev/null", 60)
    sha = result.output.decode(errors="replace").strip()
    return sha if result.exit_code == 0 and len(sha) in (40, 64) else None


async def make_base(backend: Backend, cid: str, workdir: str, setup_patch: str) -> str:
    """Apply setup_patch, then re-initialise git with ONE commit so no earlier state is reachable."""
    await asyncio.to_thread(backend.write_file, cid, SETUP_PATCH_PATH, setup_patch.encode())
    script = f"""set -e
{GIT} apply --whitespace=nowarn {SETUP_PATCH_PATH} || {{ echo "setup_patch does not apply"; exit 3; }}
rm -f {SETUP_PATCH_PATH}
rm -rf .git
git init -q -b main
{GIT} add -A
{_IDENTITY} {GIT} commit -q --allow-empty -m base
git reflog expire --expire=now --all
git rev-parse HEAD
"""
    code, out = await _run(backend, cid, script, workdir)
    text = out.decode(errors="replace").strip()
    if code != 0:
        raise BadRequest(f"setup failed in {workdir} (exit {code}): {text[-4000:]}")
    return text.splitlines()[-1]


async def agent_patch(backend: Backend, cid: str, workdir: str, base: str) -> bytes:
    """`git diff <base>` of the working tree, new files included, binary-safe; the agent's index is untouched."""
    script = f"""set -e
export GIT_INDEX_FILE=$(mktemp /tmp/forager-index.XXXXXX)
trap 'rm -f "$GIT_INDEX_FILE"' EXIT
rm -f "$GIT_INDEX_FILE"
cp "$(git rev-parse --git-path index)" "$GIT_INDEX_FILE" 2>/dev/null || {GIT} read-tree {base}
{GIT} add -A
{GIT} diff --cached --binary --no-color --no-ext-diff --full-index {base}
"""
    code, out = await _run(backend, cid, script, workdir)
    if code != 0:
        raise RuntimeError(f"could not compute the patch (exit {code}): {out.decode(errors='replace')[-2000:]}")
    return out


async def submit(backend: Backend, cid: str, workdir: str, base: str | None, spec: GradingSpec | None) -> SubmitResponse:
    t0 = time.monotonic()
    if base is None:
        raise BadRequest(f"{workdir} was not a git repository when the env was created: there is no base to diff")
    try:
        patch = await agent_patch(backend, cid, workdir, base)
    except RuntimeError as exc:
        if spec is None:
            raise BadRequest(str(exc)) from exc
        return SubmitResponse(patch="", graded=True, reward=0.0, grading_log=str(exc), duration=time.monotonic() - t0)
    text = patch.decode(errors="replace")
    if spec is None:
        return SubmitResponse(patch=text, duration=time.monotonic() - t0)
    result = await grade(backend, cid, workdir, base, spec, patch)
    result.patch = text
    result.duration = time.monotonic() - t0
    return result


async def grade(backend: Backend, cid: str, workdir: str, base: str, spec: GradingSpec, patch: bytes) -> SubmitResponse:
    log: list[str] = []
    await asyncio.to_thread(backend.write_file, cid, AGENT_PATCH_PATH, patch)
    try:
        # 1. hidden tests: test files back to the base version (or gone if the base has none), then the test patch
        restore = [f"cd {shlex.quote(workdir)}"]
        for f in spec.test_files:
            q = shlex.quote(f)
            restore.append(
                f"if git cat-file -e {base}:{q} 2>/dev/null; then {GIT} checkout -q {base} -- {q}; else rm -rf -- {q}; fi"
            )
        if spec.test_patch:
            await asyncio.to_thread(backend.write_file, cid, TEST_PATCH_PATH, spec.test_patch.encode())
            restore.append(f"{GIT} apply --whitespace=nowarn {TEST_PATCH_PATH} || {{ echo 'test_patch does not apply'; exit 3; }}")
        code, out = await _run(backend, cid, "\n".join(restore), workdir)
        if code != 0:
            log.append(f"preparing the hidden tests failed (exit {code}):\n{out.decode(errors='replace')}")
            outcomes = {}
        else:
            outcomes = await _run_tests(backend, cid, workdir, spec, log)
    finally:
        # 2. the agent's tree back as it submitted it, for inspection
        await _run(backend, cid, f"""{GIT} read-tree --reset -u {base}
git clean -fdq
[ ! -s {AGENT_PATCH_PATH} ] || {GIT} apply --binary --whitespace=nowarn {AGENT_PATCH_PATH}
rm -f {TEST_PATCH_PATH}""", workdir)
    f2p = {t: outcomes.get(t, "failed") for t in spec.fail_to_pass}
    p2p = {t: outcomes.get(t, "failed") for t in spec.pass_to_pass}
    passed = all(o == "passed" for o in (*f2p.values(), *p2p.values()))
    missing = [t for t in (*spec.fail_to_pass, *spec.pass_to_pass) if t not in outcomes]
    if missing:
        log.append(f"{len(missing)} graded tests absent from the report (counted as failed): {', '.join(missing[:20])}")
    return SubmitResponse(
        patch="", graded=True, reward=1.0 if passed else 0.0, tests=outcomes, fail_to_pass=f2p, pass_to_pass=p2p,
        grading_log="\n".join(log)[-LOG_LIMIT:],
    )


async def _run_tests(backend: Backend, cid: str, workdir: str, spec: GradingSpec, log: list[str]) -> dict:
    # A fresh report name per run: a file the agent left behind can never be read as the result.
    xml = f"/tmp/forager-junit-{secrets.token_hex(8)}.xml"
    code, out = await _run(backend, cid, f"{spec.test_command} {pytest_args(xml)}", workdir, spec.timeout)
    text = out.decode(errors="replace")
    log.append(f"$ {spec.test_command}  (exit {code})\n{text[-LOG_LIMIT:]}")
    if code == 137:
        log.append(f"the test command was killed (timeout {spec.timeout}s or out of memory)")
    try:
        data, member = await asyncio.to_thread(backend.read_file, cid, xml)
    except Exception as exc:  # no report: every graded test is absent, hence failed
        log.append(f"no JUnit report at {xml}: {exc}")
        return {}
    finally:
        await _run(backend, cid, f"rm -f {xml}", posixpath.dirname(xml), 30)
    try:
        return parse_junit(data.decode(errors="replace"))
    except ValueError as exc:
        log.append(str(exc))
        return {}
