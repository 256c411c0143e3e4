"""Mutate-fix synthesis on a real image built by the builder: tasks are real, checked outside the synthesizer."""

from envserver.errors import EnvServerError
from envserver.junit import parse_junit
from envserver.sandbox import DockerSandbox, run_pytest
from forager.tasks.store import load_tasks, tasks_path
from forager.tasks.synth import run_synthesis


def test_synthesis_yields_validated_tasks(synthesized):
    rep, tasks = synthesized.report, synthesized.tasks
    assert len(tasks) == 6, rep
    assert rep.tried >= len(tasks) and rep.verdicts["task"] == len(tasks)
    for t in tasks:
        assert t.kind == "mutate-fix" and t.image == synthesized.record.tag
        assert t.fail_to_pass and not set(t.fail_to_pass) & set(t.pass_to_pass)
        assert t.setup_patch.startswith("diff --git") and t.gold_patch.startswith("diff --git")
        assert t.mutation and t.mutation.file not in t.test_files and t.test_files
        for test in t.fail_to_pass:  # hidden: neither the test's name nor the mutated line is in the statement
            assert test.split("::")[-1] not in t.problem_statement
        mutated = [l[1:].strip() for l in t.setup_patch.splitlines() if l.startswith("+") and not l.startswith("+++")]
        assert not any(m and len(m) > 12 and m in t.problem_statement for m in mutated)
    assert len({t.setup_patch for t in tasks}) == len(tasks)  # no duplicates
    assert {t.id for t in load_tasks(tasks_path(synthesized.settings.tasks_dir, synthesized.record.repo))} == {t.id for t in tasks}


def test_f2p_really_fail_with_the_patch_and_pass_without(synthesized, docker_client):
    """Independent check in a fresh container: apply setup_patch with git, run the suite, read JUnit."""
    rec = synthesized.record
    with DockerSandbox.start(rec.tag, kind="test", workdir=rec.workdir) as box:
        for task in synthesized.tasks[:2]:
            clean = parse_junit(run_pytest(box, rec.test_command, 300).junit)
            assert all(clean[t] == "passed" for t in task.fail_to_pass + task.pass_to_pass)
            box.write("/tmp/setup.diff", task.setup_patch)
            assert box.run("git apply /tmp/setup.diff", 60).exit_code == 0
            broken = parse_junit(run_pytest(box, rec.test_command, 300).junit)
            assert all(broken.get(t) in ("failed", "error") for t in task.fail_to_pass)
            assert all(broken[t] == "passed" for t in task.pass_to_pass)
            box.write("/tmp/gold.diff", task.gold_patch)
            assert box.run("git apply /tmp/gold.diff", 60).exit_code == 0
            assert box.run("git status --porcelain --untracked-files=no", 60).text.strip() == ""


def test_rerun_resumes_and_skips_decided_candidates(synthesized, tmp_path):
    import shutil

    rep = synthesized.report
    settings = synthesized.settings.model_copy(update={"home": tmp_path})  # a copy: the session's tasks stay as made
    shutil.copytree(synthesized.settings.tasks_dir, settings.tasks_dir)
    again = run_synthesis(synthesized.record, settings, max_tasks=6, max_candidates=40, seed=1)
    assert again.tried == 0 and [t.id for t in again.tasks] == [t.id for t in synthesized.tasks]
    # one sandbox now, two before: candidates are drawn in the same order, so the skips line up exactly
    more = run_synthesis(synthesized.record, settings, max_tasks=7, max_candidates=rep.tried + 2, seed=1, workers=1)
    assert more.skipped == rep.tried  # every candidate decided before is skipped, not re-validated
    assert more.tried <= 2 and len(more.tasks) >= 6
    assert len(load_tasks(settings.tasks_dir)) == len(more.tasks)


def test_a_hanging_mutation_is_dropped_by_the_timeout(synthesized, docker_client):
    """A candidate that loops forever is killed (the whole process group) and rejected, file restored."""
    from forager.tasks.mutations import Candidate
    from forager.tasks.synth import PROBE_DIR, _validate

    rec = synthesized.record
    path = "tinycalc/core.py"
    with DockerSandbox.start(rec.tag, kind="test", workdir=rec.workdir) as box:
        original = box.read(path).decode()
        hang = original.replace("def add(a, b):\n", "def add(a, b):\n    while True:\n        pass\n", 1)
        assert hang != original
        cand = Candidate(path, "add", 1, "remove_conditional", "hangs", hang)
        box.run(f"mkdir -p {PROBE_DIR}", 30)
        passing = {t for t, o in rec.test_outcomes.items() if o == "passed"}
        verdict, task = _validate(box, rec, cand, original, [], passing, 3, [], True)
        assert verdict == "timeout" and task is None
        assert box.read(path).decode() == original
        procs = box.run("for p in /proc/[0-9]*; do tr '\\0' ' ' < $p/cmdline; echo; done", 30).text
        assert "while read" in procs and "pytest" not in procs  # the listing works, and nothing is left running


def test_cli_tasks_list_export_dedupe_and_synth_resume(synthesized, images_home, tmp_path, monkeypatch):
    import json
    import shutil

    from typer.testing import CliRunner

    from forager.cli.app import app

    home = tmp_path / "home"
    shutil.copytree(synthesized.settings.tasks_dir, home / "tasks")
    shutil.copy(images_home / "catalog.jsonl", home / "catalog.jsonl")
    monkeypatch.setenv("FORAGER_HOME", str(home))
    runner = CliRunner()

    res = runner.invoke(app, ["tasks", "list", "--json"])
    assert res.exit_code == 0, res.output
    listed = json.loads(res.stdout.strip().splitlines()[-1])
    assert listed["count"] == len(synthesized.tasks)

    # enough tasks already: a resumed synth validates nothing new
    res = runner.invoke(app, ["tasks", "synth", synthesized.record.repo, "--max-tasks", "6", "--json"])
    assert res.exit_code == 0, res.output
    out = json.loads(res.stdout.strip().splitlines()[-1])
    assert out["ok"] and out["repos"][0]["tried"] == 0 and out["repos"][0]["tasks"] == len(synthesized.tasks)

    res = runner.invoke(app, ["tasks", "synth", "no-such-repo", "--json"])
    assert res.exit_code == 1 and "no ok image" in res.stdout

    bad = tmp_path / "bad.jsonl"
    bad.write_text("{broken\n")
    res = runner.invoke(app, ["tasks", "import", str(bad), "--json"])
    assert res.exit_code == 1 and ":1:" in json.loads(res.stdout.strip().splitlines()[-1])["errors"][0]

    res = runner.invoke(app, ["export", "--format", "chat", "--out", str(tmp_path / "x.jsonl"), "--json"])
    assert res.exit_code == 0 and json.loads(res.stdout.strip().splitlines()[-1])["written"] == 0
    res = runner.invoke(app, ["export", "--format", "yaml", "--out", str(tmp_path / "x.jsonl"), "--json"])
    assert res.exit_code == 1
    res = runner.invoke(app, ["dedupe", "--dry-run", "--json"])
    assert res.exit_code == 0 and json.loads(res.stdout.strip().splitlines()[-1])["dropped"] == 0


def test_a_sandbox_killed_mid_run_ends_synthesis_with_an_error_and_keeps_what_was_made(synthesized, docker_client,
                                                                                   tmp_path):
    """Parallel sandboxes: one dies → the others stop drawing, the error surfaces, nothing hangs or leaks."""
    import os

    import pytest

    settings = synthesized.settings.model_copy(update={"home": tmp_path})
    filters = {"label": ["forager.kind=synth", f"forager.test_run={os.environ['FORAGER_TEST_RUN']}"],
               "ancestor": synthesized.record.tag}
    made = []

    def kill_one(done, budget, status):
        made.append(done)
        if done == 1:
            docker_client.containers.list(filters=filters)[0].kill()

    with pytest.raises(EnvServerError):
        run_synthesis(synthesized.record, settings, max_tasks=20, max_candidates=40, seed=2, workers=2,
                      on_progress=kill_one)
    assert made and made[0] == 1
    decided = (settings.tasks_dir / f"{synthesized.record.repo}.candidates.jsonl").read_text().splitlines()
    assert len(decided) == len(made)  # every verdict reported before the failure is on disk
    assert docker_client.containers.list(all=True, filters=filters) == []


def test_sandbox_reads_reports_through_the_archive_and_never_a_stale_one(synthesized, docker_client):
    rec = synthesized.record
    with DockerSandbox.start(rec.tag, kind="test", workdir=rec.workdir) as box:
        first = run_pytest(box, rec.test_command, 300)
        assert parse_junit(first.junit) and first.exit_code == 0
        silent = run_pytest(box, "true", 30)  # writes no report: the previous run's must not be returned
        assert silent.exit_code == 0 and silent.junit == ""
