"""setup_patch and the base commit, submit's patch, and grading with hidden tests (JUnit XML only)."""

from __future__ import annotations

import pytest

from envserver.client import BadRequest
from envserver.models import GradingSpec
from tests.fixtures_envserver import containers_of, start_envserver, stop_envserver
from tests.test_envserver_lifecycle import wait_for

MUTATION = """\
diff --git a/calc.py b/calc.py
--- a/calc.py
+++ b/calc.py
@@ -1,5 +1,5 @@
 def add(a, b):
-    return a + b
+    return a - b
 
 
 def sub(a, b):
"""

EXTRA_TEST = """\
diff --git a/tests/test_extra.py b/tests/test_extra.py
new file mode 100644
--- /dev/null
+++ b/tests/test_extra.py
@@ -0,0 +1,5 @@
+from calc import add
+
+
+def test_extra():
+    assert add(1, 1) == 2
"""

ADD, SUB, EXTRA = "tests/test_calc.py::test_add", "tests/test_calc.py::test_sub", "tests/test_extra.py::test_extra"


@pytest.fixture(scope="module")
def client(envserver):
    with envserver.client() as c:
        yield c


@pytest.fixture
def make_env(client, envtest_image):
    made = []

    def make(**kwargs):
        info = client.create_env(envtest_image, ttl=600, **kwargs)
        made.append(info.id)
        return info

    yield make
    for env_id in made:
        client.delete_env(env_id)


def test_submit_returns_patch_with_new_and_binary_files_and_leaves_the_index_alone(client, make_env):
    env = make_env()
    client.shell(env.id, "mkdir notes")
    assert client.create(env.id, "notes/new.txt", "brand new\n").ok
    client.shell(env.id, "printf '\\x00\\x01\\xff' > blob.bin && git add calc.py")
    assert client.edit(env.id, "calc.py", "return a - b", "return b - a").ok
    staged_before = client.shell(env.id, "git diff --cached --name-only; git status --porcelain").output
    result = client.submit(env.id)
    assert not result.graded and result.reward is None
    assert "+++ b/notes/new.txt" in result.patch and "+brand new" in result.patch
    assert "GIT binary patch" in result.patch and "blob.bin" in result.patch
    assert "-    return a - b\n+    return b - a" in result.patch
    # submit neither stages anything nor ends the env
    assert client.shell(env.id, "git diff --cached --name-only; git status --porcelain").output == staged_before
    # the patch applies to a fresh copy of the base
    check = client.shell(env.id, "rm -rf /tmp/copy && git worktree add -q --detach /tmp/copy HEAD && cd /tmp/copy && git apply --binary - <<'PATCH'\n" + result.patch + "PATCH\ncmp blob.bin /repo/blob.bin && cat notes/new.txt")
    assert check.exit_code == 0 and check.output.endswith("brand new\n"), check.output


def test_setup_patch_reinitialises_git_with_one_base_commit(client, make_env):
    plain = make_env()
    env = make_env(setup_patch=MUTATION)
    assert env.base_commit and env.base_commit != plain.base_commit
    log = client.shell(env.id, "git log --all --format=%H; git reflog | wc -l; git branch -a | wc -l; git remote | wc -l")
    assert log.output == f"{env.base_commit}\n0\n1\n0\n"
    assert client.shell(env.id, f"git cat-file -e {plain.base_commit}").exit_code != 0  # the original is unreachable
    assert "return a - b" in client.shell(env.id, "cat calc.py").output
    assert client.shell(env.id, "git status --porcelain").output == ""
    # deterministic: the same patch on the same image gives the same base
    assert make_env(setup_patch=MUTATION).base_commit == env.base_commit


def test_bad_setup_patch_is_a_clear_422(client, envtest_image):
    with pytest.raises(BadRequest, match="does not apply"):
        client.create_env(envtest_image, setup_patch=MUTATION.replace("a + b", "a * b"))


def test_grading_restores_hidden_tests_and_rewards_only_a_real_fix(client, make_env):
    spec = GradingSpec(
        test_command="python -m pytest -q tests", test_files=["tests/test_calc.py"],
        fail_to_pass=[ADD], pass_to_pass=[SUB], timeout=120,
    )
    env = make_env(setup_patch=MUTATION, grading=spec)
    assert client.get_env(env.id).gradable

    # Tampering with the test file (and printing fake results) earns nothing: the hidden file is restored.
    client.shell(env.id, "printf 'def test_add():\\n    print(\"PASSED\")\\n' > tests/test_calc.py")
    cheat = client.submit(env.id)
    assert cheat.graded and cheat.reward == 0.0
    assert cheat.fail_to_pass == {ADD: "failed"} and cheat.pass_to_pass == {SUB: "passed"}
    # ...and the agent's tree is back as it submitted it
    assert "PASSED" in client.shell(env.id, "cat tests/test_calc.py").output

    assert client.edit(env.id, "calc.py", "return a - b\n\n\ndef sub", "return a + b\n\n\ndef sub").ok
    fixed = client.submit(env.id)
    assert fixed.reward == 1.0, fixed.grading_log
    assert fixed.fail_to_pass == {ADD: "passed"} and fixed.pass_to_pass == {SUB: "passed"}
    assert "+    return a + b" in fixed.patch


def test_absent_test_is_failed_and_test_patch_is_applied(client, make_env):
    spec = GradingSpec(
        test_command="python -m pytest -q tests", test_patch=EXTRA_TEST,
        fail_to_pass=[EXTRA, "tests/test_calc.py::test_never_written"], pass_to_pass=[ADD, SUB], timeout=120,
    )
    env = make_env(grading=spec)
    result = client.submit(env.id)
    assert result.tests[EXTRA] == "passed" and result.fail_to_pass[EXTRA] == "passed"
    assert result.fail_to_pass["tests/test_calc.py::test_never_written"] == "failed"
    assert result.reward == 0.0 and "absent" in result.grading_log
    # the hidden test patch does not stay behind for the agent
    assert client.shell(env.id, "test -e tests/test_extra.py || echo gone").output == "gone\n"
    assert client.shell(env.id, "git status --porcelain").output == ""


def test_no_warm_grader_outlives_the_last_env_of_its_image(envtest_image, docker_client):
    """Mined tasks have an image each: a warm grader kept per image ever graded would pile up (it did: one per
    task in a mining run). Once the last gradable env of an image is deleted, its warm graders go too."""
    server = start_envserver()
    try:
        graders = lambda: [c for c in containers_of(docker_client, server.server_id)  # noqa: E731
                           if c["Labels"].get("forager.kind") == "grader"]
        spec = GradingSpec(test_command="python -m pytest -q tests", test_files=["tests/test_calc.py"],
                           fail_to_pass=[ADD], pass_to_pass=[SUB], timeout=120)
        with server.client() as c:
            first, second = (c.create_env(envtest_image, ttl=600, grading=spec) for _ in range(2))
            wait_for(lambda: len(graders()) == 1, "a warm grader for the image")
            c.delete_env(first.id)  # another env of the image may still submit: the grader stays
            assert len(graders()) == 1 and c.health()["grading_pool"][envtest_image]["target"] == 1
            c.delete_env(second.id)
            wait_for(lambda: not graders(), "the warm grader's removal")
            assert envtest_image not in c.health()["grading_pool"]
    finally:
        stop_envserver(server)
