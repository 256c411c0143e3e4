"""Issue-fix import round trip on a real project: cachetools 3.1.0 → the 3.1.1 fix for pickled cache keys.

cachetools 3.1.1 ("Fix pickling/unpickling of cache keys") cached the key's hash in the pickled state and
used an `object()` marker that lost its identity through pickle; the release added `test_pickle`. The
test writes that fix as a SWE-bench record (gold patch = the 3.1.1 source change, test_patch = the 3.1.1
test) over the real 3.1.0 sdist (shipped in tests/data, so the test fetches nothing), builds the image with
the builder at the base version, and grades through the env server: gold patch → 1, no patch → 0.
"""

import json
import tarfile
from pathlib import Path

import pytest

from forager.episodes.loop import run_episode
from forager.config import Settings
from forager.models import Action, PolicyInfo
from forager.episodes.policies import Decision, make_policy
from forager.tasks.store import load_tasks
from forager.tasks.swebench import import_instances, read_instances, repo_entry
from images.build import build_repo
from images.sources import parse_entry

SDIST = Path(__file__).parent / "data" / "swebench" / "cachetools-3.1.0.tar.gz"

GOLD_PATCH = 'diff --git a/cachetools/keys.py b/cachetools/keys.py\nindex adb9dad..25ac0a7 100644\n--- a/cachetools/keys.py\n+++ b/cachetools/keys.py\n@@ -6,6 +6,12 @@ __all__ = (\'hashkey\', \'typedkey\')\n \n \n class _HashedTuple(tuple):\n+    """A tuple that ensures that hash() will be called no more than once\n+    per element, since cache decorators will hash the key multiple\n+    times on a cache miss.  See also _HashedSeq in the standard\n+    library functools implementation.\n+\n+    """\n \n     __hashvalue = None\n \n@@ -21,8 +27,13 @@ class _HashedTuple(tuple):\n     def __radd__(self, other, add=tuple.__add__):\n         return _HashedTuple(add(other, self))\n \n+    def __getstate__(self):\n+        return {}\n+\n \n-_kwmark = (object(),)\n+# used for separating keyword arguments; we do not use an object\n+# instance here so identity is preserved when pickling/unpickling\n+_kwmark = (_HashedTuple,)\n \n \n def hashkey(*args, **kwargs):\n'

TEST_PATCH = "diff --git a/tests/test_keys.py b/tests/test_keys.py\nindex 2b9ced6..8137704 100644\n--- a/tests/test_keys.py\n+++ b/tests/test_keys.py\n@@ -43,3 +43,16 @@ class CacheKeysTest(unittest.TestCase):\n         self.assertIsInstance(key(1, 2, 3) + key(4, 5, 6), type(key()))\n         self.assertIsInstance(key(1, 2, 3) + (4, 5, 6), type(key()))\n         self.assertIsInstance((1, 2, 3) + key(4, 5, 6), type(key()))\n+\n+    def test_pickle(self, key=cachetools.keys.hashkey):\n+        import pickle\n+\n+        for k in [key(), key('abc'), key('abc', 123), key('abc', q='abc')]:\n+            # white-box test: assert cached hash value is not pickled\n+            self.assertEqual(len(k.__dict__), 0)\n+            h = hash(k)\n+            self.assertEqual(len(k.__dict__), 1)\n+            pickled = pickle.loads(pickle.dumps(k))\n+            self.assertEqual(len(pickled.__dict__), 0)\n+            self.assertEqual(k, pickled)\n+            self.assertEqual(h, hash(pickled))\n"

F2P = ["tests/test_keys.py::CacheKeysTest::test_pickle"]
P2P = ["tests/test_keys.py::CacheKeysTest::test_addkeys", "tests/test_keys.py::CacheKeysTest::test_hashkey",
       "tests/test_keys.py::CacheKeysTest::test_typedkey", "tests/test_lru.py::LRUCacheTest::test_lru"]

STATEMENT = """Cache keys do not survive pickling.

`cachetools.keys.hashkey(...)` returns a key that caches its hash. After `pickle.loads(pickle.dumps(key))`
the key keeps the hash computed in the original process (so it is wrong wherever hash randomisation
differs), and keys made with keyword arguments no longer compare equal to the original after a round
trip, so a pickled cache misses on every lookup. Keys should pickle without their cached hash and
compare equal (with equal hashes) after unpickling."""


def instance(source: str) -> dict:
    return {"instance_id": "tkem__cachetools-pickle-keys", "repo": "tkem/cachetools", "base_commit": "v3.1.0",
            "source": source, "problem_statement": STATEMENT, "patch": GOLD_PATCH, "test_patch": TEST_PATCH,
            "FAIL_TO_PASS": json.dumps(F2P), "PASS_TO_PASS": json.dumps(P2P)}


class SubmitNow:
    info = PolicyInfo(name="empty")

    def next_action(self, episode):
        return Decision(Action(tool="submit"))


@pytest.fixture(scope="module")
def imported(tmp_path_factory, base_image):
    work = tmp_path_factory.mktemp("swebench")
    with tarfile.open(SDIST) as tar:
        tar.extractall(work, filter="data")
    home = work / "home"
    settings = Settings.from_env().model_copy(update={"home": home})
    jsonl = work / "instances.jsonl"
    jsonl.write_text("\n".join([
        json.dumps(instance(str(work / "cachetools-3.1.0"))),
        "{not json",
        json.dumps({**instance("x"), "FAIL_TO_PASS": "[]", "instance_id": "empty-f2p"}),
        json.dumps({k: v for k, v in instance("x").items() if k != "base_commit"}),
    ]) + "\n")
    def build(inst):
        entry, overrides = repo_entry(inst)
        return build_repo(parse_entry(entry, **overrides), settings)

    return import_instances(jsonl, settings, build=build), settings


def test_malformed_records_are_reported_by_line_and_skipped(imported):
    report, settings = imported
    assert len(report.tasks) == 1
    assert [e.split(":")[1] for e in report.errors] == ["2", "3", "4"]
    assert "FAIL_TO_PASS" in report.errors[1] and "base_commit" in report.errors[2]
    assert [t.id for t in load_tasks(settings.tasks_dir)] == ["tkem__cachetools-pickle-keys"]


def test_string_or_list_test_fields(tmp_path):
    path = tmp_path / "i.jsonl"
    path.write_text(json.dumps({**instance("x"), "PASS_TO_PASS": P2P}) + "\n")
    (good, errors) = read_instances(path)
    assert not errors and good[0][1].FAIL_TO_PASS == F2P and good[0][1].PASS_TO_PASS == P2P


def test_gold_patch_earns_one_and_no_patch_zero(imported, envserver):
    report, _ = imported
    (task,) = report.tasks
    assert task.kind == "issue-fix" and task.test_files == ["tests/test_keys.py", "tests/test_lru.py"]
    with envserver.client() as client:
        empty = run_episode(task, SubmitNow(), client)
        assert empty.exit_reason == "submitted" and empty.result.reward == 0.0
        assert empty.result.tests[F2P[0]] == "failed"
        assert all(empty.result.tests[t] == "passed" for t in P2P)
        solved = run_episode(task, make_policy("oracle", run_tests=False), client)
    assert solved.exit_reason == "submitted" and solved.result.reward == 1.0, solved.result.tests
    assert "__getstate__" in solved.result.patch
