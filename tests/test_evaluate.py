"""`forager evaluate`: SWE-bench predictions graded as submits through the real env server, for a mutate-fix, a
mined and an imported task; gold resolved, empty unresolved, a malformed line and an unknown id reported while
the rest is graded, a patch that does not apply unresolved with its reason, and a rerun that resumes."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from forager.interfaces.evaluate import read_predictions
from tests.fixtures_interfaces import FIX

IDS = ["calc__imported", "calc__mf", "calc__mined"]


def evaluate(envserver, tasks_dir, predictions, home, *args):
    env = {**os.environ, "FORAGER_HOME": str(home), "FORAGER_ENVSERVER_URL": envserver.url,
           "FORAGER_ENVSERVER_TOKEN": envserver.token}
    done = subprocess.run([sys.executable, "-m", "forager.cli", "evaluate", str(predictions), "--tasks", str(tasks_dir),
                           "-j", "3", "--json", *args], env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout)


def test_gold_resolves_empty_does_not_and_bad_lines_are_reported_while_the_rest_is_graded(envserver, calc_tasks,
                                                                                       tmp_path):
    gold = tmp_path / "gold.jsonl"
    lines = [json.dumps({"instance_id": i, "model_patch": FIX, "model_name_or_path": "gold"}) for i in IDS]
    lines.insert(1, '{"instance_id": "calc__mf", "model_patch": ')  # a torn line
    lines.append(json.dumps({"instance_id": "nope", "model_patch": FIX, "model_name_or_path": "gold"}))
    gold.write_text("\n".join(lines) + "\n")
    report = evaluate(envserver, calc_tasks, gold, tmp_path)
    assert report["resolved_ids"] == IDS and report["unresolved_ids"] == [] and report["error_ids"] == ["nope"]
    assert report["submitted_instances"] == 4 and report["completed_instances"] == 3 and report["schema_version"] == 2
    assert any(e.startswith(f"{gold}:2: not a prediction") for e in report["errors"])
    assert any("unknown instance_id 'nope'" in e for e in report["errors"])
    assert report["reasons"]["calc__mf"] == "every FAIL_TO_PASS and PASS_TO_PASS test passes"
    results = tmp_path / "evaluations" / "gold" / "results.jsonl"
    graded = [json.loads(line) for line in results.read_text().splitlines()]
    assert sorted(r["instance_id"] for r in graded) == IDS
    assert all(r["patch_successfully_applied"] and r["tests_status"]["FAIL_TO_PASS"]["failure"] == [] for r in graded)

    again = evaluate(envserver, calc_tasks, gold, tmp_path)  # resumes: nothing graded twice
    assert again["resolved_ids"] == IDS and len(results.read_text().splitlines()) == 3

    empty = tmp_path / "empty.json"  # a JSON list this time
    empty.write_text(json.dumps([{"instance_id": i, "model_patch": "", "model_name_or_path": "nothing"} for i in IDS]))
    report = evaluate(envserver, calc_tasks, empty, tmp_path)
    assert report["unresolved_ids"] == IDS and report["empty_patch_ids"] == IDS and report["resolved_ids"] == []
    assert report["reasons"]["calc__mf"].startswith("empty patch: FAIL_TO_PASS not passing: tests/test_calc.py::test_add")


def test_a_patch_that_does_not_apply_is_unresolved_with_its_reason(envserver, calc_tasks, tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"instance_id": "calc__mf", "model_patch": FIX.replace("a - b", "a * b"),
                               "model_name_or_path": "m"}) + "\n")
    report = evaluate(envserver, calc_tasks, bad, tmp_path, "--run-id", "bad")
    assert report["unresolved_ids"] == ["calc__mf"] and report["error_ids"] == []
    assert report["reasons"]["calc__mf"].startswith("the patch does not apply")


def test_predictions_in_every_shape_swe_bench_writes(tmp_path):
    pred = {"instance_id": "a", "model_patch": "x", "model_name_or_path": "m"}
    keyed = tmp_path / "keyed.json"
    keyed.write_text(json.dumps({"a": {"model_patch": "x", "model_name_or_path": "m"}, "b": 3}))
    preds, problems = read_predictions(keyed)
    assert [p.instance_id for _, p in preds] == ["a"] and problems == [f"{keyed}['b']: not a prediction (a JSON "
                                                                       "object per line, or a JSON list of them)"]
    twice = tmp_path / "twice.jsonl"
    twice.write_text(json.dumps(pred) + "\n" + json.dumps({**pred, "model_patch": "y"}) + "\n[1]\n")
    preds, problems = read_predictions(twice)
    assert [p.model_patch for _, p in preds] == ["x"] and len(problems) == 2 and "again" in problems[0]
