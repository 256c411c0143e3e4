"""Mining end to end on a history the tests make (tests/fixtures_mining.py): real builder images at each
candidate's parent, validation in sandboxes, certificates and episodes through the real env server, the CLI
as a user runs it (`forager tasks mine|export`, `forager run --issue-fix`)."""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import uuid

from envserver.junit import parse_junit
from envserver.sandbox import DockerSandbox, run_pytest
from forager.config import Settings
from forager.episodes.loop import run_episode
from forager.episodes.policies import Decision, make_policy
from forager.models import Action, PolicyInfo
from forager.tasks import mine as mine_module
from forager.tasks.store import load_tasks, tasks_path
from forager.trajectories.store import TrajectoryStore
from tests.conftest import free_port
from tests.fixtures_mining import FLAKY_NAME, mine_cli
from tests.test_fleet_support import REPO, fleet_env, private_db, run_cli, wait_for


def _tasks(home):
    return {t.source_commit: t for t in load_tasks(Settings(home=home).tasks_dir)}


def _log(home, repo="tinytext"):
    rows = [json.loads(line) for line in mine_module.mined_log(Settings(home=home), repo).read_text().splitlines()]
    return {r["commit"]: r for r in rows}  # the last row of a commit wins


class SubmitNow:
    info = PolicyInfo(name="empty")

    def next_action(self, episode):
        return Decision(Action(tool="submit"))


def test_exactly_the_fix_commits_become_certified_tasks(mined):
    (repo,) = mined.summary["repos"]
    assert mined.summary["ok"] and repo["scanned"] == 7 and repo["candidates"] == 4 and repo["tasks"] == 2
    assert repo["scan_verdicts"] == {"root": 1, "docs_only": 1, "no_tests": 1, "candidate": 4}
    assert repo["verdicts"] == {"task": 2, "no_f2p": 2} and repo["tried"] == 4 and not repo["errors"]
    assert "tinytext" in mined.stderr and "4/4" in mined.stderr  # progress on stderr under --json
    shas, tasks, log = mined.shas, _tasks(mined.home), _log(mined.home)
    assert set(tasks) == {shas["fix"], shas["flaky_fix"]}
    assert log[shas["refactor"]]["verdict"] == "no_f2p" and "every test passes before" in log[shas["refactor"]]["detail"]
    assert log[shas["bad_fix"]]["verdict"] == "no_f2p" and "fail after it too" in log[shas["bad_fix"]]["detail"]
    assert "test_mean_of_empty_is_zero" in log[shas["bad_fix"]]["detail"]
    assert (log[shas["docs"]]["verdict"], log[shas["root"]]["verdict"]) == ("docs_only", "root")

    fix = tasks[shas["fix"]]
    assert (fix.kind, fix.origin, fix.commit, fix.id) == ("issue-fix", "mined", shas["root"], f"tinytext__fix-{shas['fix'][:12]}")
    assert fix.fail_to_pass == ["tests/test_core.py::test_slugify_keeps_digits"]
    assert set(fix.pass_to_pass) == {f"tests/test_core.py::{n}" for n in (
        "test_slugify_words", "test_clamp", "test_mean", "test_mean_of_empty_raises", "test_word_count_spaces")}
    assert fix.test_files == ["tests/test_core.py"] and fix.test_command.endswith(" tests/test_core.py")
    assert "tinytext/_chars.py" in fix.gold_patch and "CHANGES.md" not in fix.gold_patch + fix.test_patch
    assert "tests/test_core.py" in fix.test_patch and "tinytext/" not in fix.test_patch
    statement = fix.problem_statement
    assert statement.startswith("Fix slugify dropping digits\n") and "Referenced issues: #3" in statement
    assert "lost the number" in statement and "AssertionError" in statement and "route-66-east" in statement
    assert "return ch.isalnum()" not in statement and "Signed-off-by" not in statement  # no gold line, no trailer
    assert "test_slugify_keeps_digits" not in statement and "@@" not in statement  # tests hidden, no diff
    for task in tasks.values():
        cert = task.certificate
        assert cert.passed and cert.k == 2 and cert.gold_rewards == [1.0] * 2 and cert.empty_rewards == [0.0] * 2
        assert cert.image_id.startswith("sha256:") and any(p.startswith("pytest==") for p in cert.pip_freeze)
    flaky = tasks[shas["flaky_fix"]]
    assert flaky.certificate.flaky == [FLAKY_NAME] and FLAKY_NAME not in flaky.fail_to_pass + flaky.pass_to_pass
    assert flaky.fail_to_pass == ["tests/test_words.py::test_word_count_whitespace"]
    assert flaky.test_files == ["tests/test_words.py"]  # a test module the fix creates: removed before grading


def test_the_image_is_the_parent_and_no_future_is_visible(mined, docker_client):
    """Independent of the miner: in a fresh container the F2P test fails with the test patch and passes with gold."""
    fix = _tasks(mined.home)[mined.shas["fix"]]
    with DockerSandbox.start(fix.image, kind="test", workdir=fix.workdir) as box:
        assert box.run("git log --oneline | wc -l > /tmp/n; git remote | wc -l >> /tmp/n", 60).exit_code == 0
        assert box.read_text("/tmp/n").split() == ["1", "0"]  # one commit, no remote: no history to read the fix from
        assert "isalpha" in box.read_text("tinytext/core.py") and box.read_text("tinytext/_chars.py") is None
        box.write("/tmp/t.patch", fix.test_patch)
        box.write("/tmp/g.patch", fix.gold_patch)
        assert box.run("git apply /tmp/t.patch", 60).exit_code == 0
        before = parse_junit(run_pytest(box, fix.test_command, 300).junit)
        assert box.run("git apply /tmp/g.patch", 60).exit_code == 0
        after = parse_junit(run_pytest(box, fix.test_command, 300).junit)
    assert before[fix.fail_to_pass[0]] == "failed" and after[fix.fail_to_pass[0]] == "passed"
    assert all(before[t] == after[t] == "passed" for t in fix.pass_to_pass)


def test_gold_earns_one_empty_zero_and_the_oracle_applies_the_known_fix(mined, envserver):
    tasks = _tasks(mined.home)
    with envserver.client() as client:
        for task in tasks.values():
            empty = run_episode(task, SubmitNow(), client)
            assert empty.exit_reason == "submitted" and empty.result.reward == 0.0
            solved = run_episode(task, make_policy("oracle"), client)
            assert solved.exit_reason == "submitted" and solved.result.reward == 1.0, solved.result.grading_log[-2000:]
    with envserver.client() as client:
        solved = run_episode(tasks[mined.shas["fix"]], make_policy("oracle"), client)
    fixing = [s.action for s in solved.steps if "known fix" in s.action.text]
    assert {a.tool for a in fixing} >= {"edit", "create"}
    assert all("Applying the known fix (the commit's gold patch)" in a.text for a in fixing if a.tool != "shell")
    assert [a.arguments["path"] for a in fixing if a.tool == "create"] == ["tinytext/_chars.py"]
    assert "tinytext/_chars.py" in solved.result.patch and "keep(ch)" in solved.result.patch


def test_a_rerun_resumes_and_a_killed_run_loses_nothing(mined, tmp_path):
    home = tmp_path / "home"
    shutil.copytree(mined.home, home)
    env = {**mined.env, "FORAGER_HOME": str(home)}
    again = mine_cli(env, str(mined.history), "--json")
    assert again.returncode == 0, again.stderr[-2000:]
    (repo,) = json.loads(again.stdout)["repos"]
    assert (repo["tried"], repo["skipped"], repo["tasks"], repo["new_tasks"]) == (0, 4, 2, 0)
    # forget every validation, then stop a run (SIGTERM) as soon as it has decided one candidate
    log = mine_module.mined_log(Settings(home=home), "tinytext")
    log.write_text("".join(line + "\n" for line in log.read_text().splitlines() if '"validate"' not in line))
    tasks_path(Settings(home=home).tasks_dir, "tinytext").unlink()
    # (one gold and one empty grading per certificate here: the certificates themselves are checked above)
    proc = subprocess.Popen([sys.executable, "-m", "forager.cli", "tasks", "mine", str(mined.history), "--json",
                             "-j", "1", "-k", "1"], env=env, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait_for(lambda: '"validate"' in log.read_text() or proc.poll() is not None, "a first verdict", deadline=900)
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=600)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130 and "interrupted" in json.loads(out)["error"], err[-2000:]
    decided = sum('"validate"' in line for line in log.read_text().splitlines())
    assert 1 <= decided <= 2  # the one decided, and at most the one in flight: no new candidate after the signal
    resumed = mine_cli(env, str(mined.history), "--json", "-k", "1")
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    (repo,) = json.loads(resumed.stdout)["repos"]
    assert (repo["tried"], repo["skipped"], repo["tasks"]) == (4 - decided, decided, 2)
    assert set(_tasks(home)) == set(_tasks(mined.home))


def test_histories_that_cannot_be_mined_are_clear_errors(mined, tmp_path):
    (tmp_path / "plain").mkdir()
    out = mine_cli(mined.env, str(tmp_path / "plain"), "--json")
    assert out.returncode == 1 and "is not a git repository" in json.loads(out.stdout)["repos"][0]["error"]
    out = mine_cli(mined.env, str(mined.history), "--range", "nosuch..HEAD", "--json")
    assert out.returncode == 1 and "cannot walk 'nosuch..HEAD'" in json.loads(out.stdout)["repos"][0]["error"]
    out = mine_cli(mined.env, "pypi:six==1.16.0", "--json")
    assert out.returncode == 1 and "no git history" in json.loads(out.stdout)["repos"][0]["error"]


def test_swebench_export_then_import_gives_the_same_tasks(mined, tmp_path):
    path = tmp_path / "mined.jsonl"
    out = run_cli(mined.env, "tasks", "export", "--format", "swebench", "--origin", "mined", "-o", str(path), "--json")
    assert out.returncode == 0 and json.loads(out.stdout)["exported"] == 2, out.stderr[-2000:]
    records = [json.loads(line) for line in path.read_text().splitlines()]
    tasks = {t.id: t for t in _tasks(mined.home).values()}
    for r in records:
        task = tasks[r["instance_id"]]
        assert json.loads(r["FAIL_TO_PASS"]) == task.fail_to_pass and isinstance(r["PASS_TO_PASS"], str)
        assert r["base_commit"] == r["environment_setup_commit"] == task.commit and r["patch"] == task.gold_patch
        assert r["source"] == f"{mined.history}@{task.commit}" and r["version"] == "0.1.0"
    # imported on a fresh FORAGER_HOME, as another machine would: the builder makes each image from `source`
    env = {**mined.env, "FORAGER_HOME": str(tmp_path / "import-home")}
    out = run_cli(env, "tasks", "import", str(path), "--json")
    assert out.returncode == 0 and not json.loads(out.stdout)["errors"], out.stdout + out.stderr[-2000:]
    back = {t.id: t for t in load_tasks(tmp_path / "import-home" / "tasks")}
    assert set(back) == set(tasks)
    same = ("gold_patch", "test_patch", "fail_to_pass", "pass_to_pass", "problem_statement", "commit", "image",
            "test_command", "test_files", "kind")
    for task_id, task in tasks.items():
        assert {f: getattr(back[task_id], f) for f in same} == {f: getattr(task, f) for f in same}
        assert back[task_id].origin == "imported"


def test_run_issue_fix_mines_the_list_git_entries(mined, redis_url, tmp_path):
    """`forager run --issue-fix`: the history entry's mined tasks join the synthesized ones in the collection
    (the verdict log is copied in, so mining resumes and validates nothing again)."""
    home = tmp_path / "home"
    shutil.copytree(mined.home, home, ignore=shutil.ignore_patterns("logs"))
    repos = tmp_path / "repos.txt"
    repos.write_text(f"{mined.history}\n")
    env = fleet_env(private_db(redis_url), home, f"mine-{uuid.uuid4().hex[:8]}",
                    FORAGER_ENVSERVER_URL=f"http://127.0.0.1:{free_port()}")
    for var in ("FORAGER_MODEL_BASE_URL", "OPENAI_BASE_URL", "FORAGER_MODEL"):
        env.pop(var, None)
    out = run_cli(env, "run", str(repos), "--issue-fix", "--tasks-per-repo", "1", "--max-candidates", "6",
                  "--workers", "1", "--json", timeout=1500)
    assert out.returncode == 0, out.stderr[-3000:]
    s = json.loads(out.stdout)
    assert s["mined_by_repo"] == {"tinytext": 1} and s["tasks_by_repo"] == {"tinytext": 1} and s["tasks"] == 2
    assert s["trajectories"] == 2 and s["solve_rate"] == 1.0 and "mine" in s["seconds"]
    trajectories = list(TrajectoryStore(Settings(home=home).trajectories_dir).iter())
    assert {t.task_kind for t in trajectories} == {"mutate-fix", "issue-fix"}
    (issue,) = [t for t in trajectories if t.task_kind == "issue-fix"]
    assert any("gold patch" in step.action.text for step in issue.steps)
