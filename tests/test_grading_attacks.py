"""The agent is an adversary: one test per way to a reward without the fix, each against the real server.

The task: envtest's calc.py with add() broken by the setup patch (it subtracts); hidden tests
tests/test_calc.py::test_add (fail to pass) and ::test_sub (pass to pass). Every attack below runs in the
agent's env, then submits: the reward must be 0, and where the attack hides a change from git, the
recorded patch must still show it (what is graded is what is recorded).
"""

from __future__ import annotations

import pytest

from tests.test_envserver_grading import ADD, SUB


# A conftest hook that reports every failed test as passed (the attack the issue found working).
FLIP_HOOK = '''import pytest


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if report.failed:
        report.outcome = "passed"
'''
# A test file that the broken add() passes.
FAKE_TEST = "from calc import add, sub\n\n\ndef test_add():\n    assert add(2, 3) == -1\n\n\ndef test_sub():\n    assert sub(5, 3) == 2\n"


@pytest.fixture
def client(env_client):
    return env_client


@pytest.fixture
def env(calc_env):
    return calc_env


def sh(client, env, command: str) -> str:
    result = client.shell(env.id, command, timeout=60)
    assert result.exit_code == 0, result.output
    return result.output


def write(client, env, path: str, text: str) -> None:
    assert client.create(env.id, path, text).ok


def test_control_a_real_fix_earns_one(client, env):
    assert client.edit(env.id, "calc.py", "return a - b\n\n\ndef sub", "return a + b\n\n\ndef sub").ok
    result = client.submit(env.id)
    assert result.reward == 1.0, result.grading_log
    assert result.dropped_files == [] and result.grading_error is None


def test_empty_patch_on_an_unsolved_task(client, env):
    result = client.submit(env.id)
    assert result.graded and result.reward == 0.0 and result.patch == ""
    assert result.fail_to_pass == {ADD: "failed"} and result.pass_to_pass == {SUB: "passed"}


def test_conftest_hook_hidden_by_a_git_exclude(client, env):
    write(client, env, "conftest.py", FLIP_HOOK)
    sh(client, env, "echo conftest.py >> .git/info/exclude && test -z \"$(git status --porcelain)\"")
    result = client.submit(env.id)
    assert result.reward == 0.0
    assert "+++ b/conftest.py" in result.patch and "pytest_runtest_makereport" in result.patch  # recorded = graded
    assert result.dropped_files == ["conftest.py"] and "conftest.py" in result.grading_log


def test_conftest_hook_committed_in_the_patch(client, env):
    write(client, env, "tests/conftest.py", FLIP_HOOK)
    sh(client, env, "git add -A && git commit -qm 'tests: helpers'")
    result = client.submit(env.id)
    assert result.reward == 0.0 and result.dropped_files == ["tests/conftest.py"]
    assert "+++ b/tests/conftest.py" in result.patch


@pytest.mark.parametrize("config_file, text", [
    ("pytest.ini", "[pytest]\naddopts = -p cheat\n"),
    ("pyproject.toml", "[tool.pytest.ini_options]\naddopts = \"-p cheat\"\n"),
    ("setup.cfg", "[metadata]\nname = calc\n\n[tool:pytest]\naddopts = -p cheat\n"),
])
def test_pytest_config_addopts_loading_a_plugin(client, env, config_file, text):
    write(client, env, "cheat.py", FLIP_HOOK)  # a new module of the repo: kept, but nothing loads it any more
    write(client, env, config_file, text)
    assert "passed" in client.shell(env.id, "python -m pytest -q tests 2>&1 | tail -1").output  # it works here
    result = client.submit(env.id)
    assert result.reward == 0.0 and result.dropped_files == [config_file]
    assert f"+++ b/{config_file}" in result.patch and "+++ b/cheat.py" in result.patch


def test_a_config_change_outside_the_pytest_section_is_kept(client, env):
    write(client, env, "setup.cfg", "[metadata]\nname = calc\n")
    assert client.edit(env.id, "calc.py", "return a - b\n\n\ndef sub", "return a + b\n\n\ndef sub").ok
    result = client.submit(env.id)
    assert result.reward == 1.0 and result.dropped_files == [], result.grading_log


def test_git_replace_of_a_test_files_blob(client, env):
    write(client, env, "/tmp/fake_test.py", FAKE_TEST)
    sh(client, env, "fake=$(git hash-object -w /tmp/fake_test.py) && git replace $(git rev-parse HEAD:tests/test_calc.py) $fake"
                    " && git checkout -- tests/test_calc.py && grep -q -- '== -1' tests/test_calc.py")
    result = client.submit(env.id)
    assert result.reward == 0.0 and result.dropped_files == ["tests/test_calc.py"]
    assert "-    assert add(2, 3) == 5" in result.patch and "+    assert add(2, 3) == -1" in result.patch


def test_textconv_and_clean_filters_that_hide_a_change_from_git(client, env):
    write(client, env, "tests/test_calc.py.fake", FAKE_TEST)
    sh(client, env, "cp tests/test_calc.py /tmp/original.py && mv tests/test_calc.py.fake tests/test_calc.py"
                    " && printf 'tests/* diff=hide filter=hide\\n' > .gitattributes"
                    " && git config diff.hide.textconv 'sh -c \"cat /tmp/original.py\"'"
                    " && git config filter.hide.clean 'cat /tmp/original.py'"
                    " && git add -A && test -z \"$(git diff HEAD --stat -- tests)\"")  # git itself sees nothing
    result = client.submit(env.id)
    assert result.reward == 0.0 and "tests/test_calc.py" in result.dropped_files
    assert "+    assert add(2, 3) == -1" in result.patch and "+++ b/.gitattributes" in result.patch


def test_a_setsid_daemon_rewriting_tests_and_reports_during_grading(client, env):
    write(client, env, "/tmp/fake_test.py", FAKE_TEST)
    write(client, env, "/tmp/fake.xml", '<testsuite><testcase classname="tests.test_calc" name="test_add" '
                                        'file="tests/test_calc.py"/></testsuite>')
    started = client.shell(env.id, "setsid nohup bash -c 'while :; do cp /tmp/fake_test.py tests/test_calc.py; "
                                   "for f in /tmp/*.xml; do cp /tmp/fake.xml \"$f\"; done; sleep 0.05; done' &", timeout=30)
    assert started.exit_code == 0 and not started.timed_out  # the shell call returned though the daemon holds stdout
    result = client.submit(env.id)
    assert result.reward == 0.0 and result.fail_to_pass == {ADD: "failed"}


def test_a_fake_junit_report_at_every_plausible_path(client, env):
    fake = ('<testsuite><testcase classname="tests.test_calc" name="test_add" file="tests/test_calc.py"/>'
            '<testcase classname="tests.test_calc" name="test_sub" file="tests/test_calc.py"/></testsuite>')
    for path in ("/tmp/forager-junit.xml", "/tmp/forager-junit-1.xml", "/repo/report.xml"):
        write(client, env, path, fake)
    result = client.submit(env.id)
    assert result.reward == 0.0


def test_sitecustomize_and_pth_files(client, env):
    fix = "import calc\ncalc.add = lambda a, b: a + b\n"
    write(client, env, "sitecustomize.py", fix)
    write(client, env, "calc_fix.pth", "import sitecustomize\n")
    site = sh(client, env, "python -c 'import site; print(site.getsitepackages()[0])'").strip()
    write(client, env, f"{site}/sitecustomize.py", fix)  # outside the repository: never in a patch at all
    result = client.submit(env.id)
    assert result.reward == 0.0 and result.dropped_files == ["calc_fix.pth", "sitecustomize.py"]


def test_editing_the_hidden_test(client, env):
    assert client.edit(env.id, "tests/test_calc.py", "== 5", "== -1").ok
    result = client.submit(env.id)
    assert result.reward == 0.0 and result.dropped_files == ["tests/test_calc.py"]


def test_deleting_the_tests(client, env):
    sh(client, env, "rm -rf tests")
    result = client.submit(env.id)
    assert result.reward == 0.0 and result.dropped_files == ["tests/test_calc.py"]
    assert result.fail_to_pass == {ADD: "failed"}


def test_a_module_shadowing_pytest(client, env):
    write(client, env, "pytest.py", "import sys\nopen(sys.argv[-1].split('=')[-1], 'w').write('<testsuite/>')\n"
                                    "sys.exit(0)\n")
    result = client.submit(env.id)
    assert result.reward == 0.0 and result.dropped_files == ["pytest.py"]
