"""Grading latency: fresh-container grading (the server's submit) against the old in-place grading, same run.

For tasks of the default list's images (synthesized tasks in $FORAGER_HOME/tasks, e.g. after `forager run`):
an env is created from the task, its gold patch applied with git, then
  1. `submit`: the server reads the tree, computes the patch, grades it in a fresh container from the
     grading pool (warm: the benchmark waits until a warm one is ready), as every episode's submit does;
  2. the baseline, on the same env: the old in-place grading (the previous server's code, kept here):
     `git diff` in the agent's container, test files restored there with `git checkout`, the tests run there;
  3. once per repo, a cold submit: a server with no grading pool starts the grading container on demand.
Both must give reward 1. What grading adds around the test run itself is compared, since the test run is
the same work in both and varies with the machine's load: overhead = total - the test run's own seconds,
the best of --rounds per task. Target: fresh-container grading adds <= 0.5 s. The last line is one JSON
object with every figure.

    python benchmarks/grading_bench.py [--home ~/.forager] [--per-repo 2]
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from envserver.client import EnvClient  # noqa: E402
from envserver.docker_backend import Backend  # noqa: E402
from envserver.junit import parse_junit, pytest_args  # noqa: E402
from forager.config import Settings  # noqa: E402
from forager.models import Task  # noqa: E402
from forager.tasks import env_request, grading_spec  # noqa: E402
from forager.tasks.store import load_tasks  # noqa: E402

TOKEN = secrets.token_hex(16)
GIT = "git -c core.hooksPath=/dev/null -c commit.gpgsign=false"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(images: list[str], grading_pool: int, home: Path) -> tuple[subprocess.Popen, str]:
    port = free_port()
    cmd = [sys.executable, "-m", "envserver", "--token", TOKEN, "--port", str(port),
           "--grading-pool-size", str(grading_pool)]
    for image in images:
        cmd += ["--allow", image, "--pool", f"{image}=1"]
    log = open(home / f"envserver-{port}.log", "ab")
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=log, stderr=log)
    url = f"http://127.0.0.1:{port}"
    with EnvClient(url, token=TOKEN) as c:
        for _ in range(600):
            try:
                c.health()
                return proc, url
            except Exception:
                time.sleep(0.2)
    raise RuntimeError("the env server did not start")


def in_place(backend: Backend, cid: str, workdir: str, base: str, task: Task) -> tuple[float, float, float]:
    """The old grading (the server's code before fresh containers), run in the agent's own container:
    (seconds, seconds of the test run, reward)."""
    spec = grading_spec(task)
    started = time.monotonic()
    patch = backend.run_script(cid, f"""set -e
export GIT_INDEX_FILE=$(mktemp /tmp/forager-index.XXXXXX)
trap 'rm -f "$GIT_INDEX_FILE"' EXIT
rm -f "$GIT_INDEX_FILE"
cp "$(git rev-parse --git-path index)" "$GIT_INDEX_FILE" 2>/dev/null || {GIT} read-tree {base}
{GIT} add -A
{GIT} diff --cached --binary --no-color --no-ext-diff --full-index {base} > /tmp/forager-agent.patch
""", 300, None, workdir)
    assert patch.exit_code == 0, patch.text
    restore = [f"if git cat-file -e {base}:{f} 2>/dev/null; then {GIT} checkout -q {base} -- {f}; else rm -rf -- {f}; fi"
               for f in spec.test_files]
    if spec.test_patch:
        backend.write_file(cid, "/tmp/forager-test.patch", spec.test_patch.encode())
        restore.append(f"{GIT} apply --whitespace=nowarn /tmp/forager-test.patch")
    assert backend.run_script(cid, "\n".join(restore) or "true", 300, None, workdir).exit_code == 0
    xml = f"/tmp/forager-junit-{secrets.token_hex(8)}.xml"
    tests = backend.run_script(cid, f"{spec.test_command} {pytest_args(xml)}", spec.timeout, None, workdir)
    outcomes = parse_junit(backend.read_file(cid, xml)[0].decode())
    backend.run_script(cid, f"""{GIT} read-tree --reset -u {base}
git clean -fdq
[ ! -s /tmp/forager-agent.patch ] || {GIT} apply --binary --whitespace=nowarn /tmp/forager-agent.patch
rm -f /tmp/forager-test.patch {xml}""", 300, None, workdir)
    seconds = time.monotonic() - started
    passed = all(outcomes.get(t) == "passed" for t in spec.fail_to_pass + spec.pass_to_pass)
    return seconds, tests.seconds, 1.0 if passed else 0.0


def solved_env(client: EnvClient, task: Task):
    req = env_request(task)
    env = client.create_env(req.image, ttl=900, workdir=req.workdir, setup_patch=req.setup_patch, grading=req.grading)
    applied = client.shell(env.id, "git apply --whitespace=nowarn - <<'GOLD'\n" + task.gold_patch + "GOLD")
    assert applied.exit_code == 0, applied.output
    return env


def wait_warm_grader(client: EnvClient, image: str) -> None:
    for _ in range(600):
        if client.health()["grading_pool"].get(image, {}).get("ready", 0) >= 1:
            return
        time.sleep(0.1)
    raise RuntimeError(f"no warm grading container for {image}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--home", type=Path, default=Settings.from_env().home)
    ap.add_argument("--per-repo", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=3, help="submissions per task; the best is kept")
    args = ap.parse_args()
    tasks_by_repo: dict[str, list[Task]] = {}
    for task in sorted(load_tasks(args.home / "tasks"), key=lambda t: t.id):
        if task.kind == "mutate-fix" and task.gold_patch and len(tasks_by_repo.setdefault(task.repo, [])) < args.per_repo:
            tasks_by_repo[task.repo].append(task)
    tasks = [t for ts in tasks_by_repo.values() for t in ts]
    if not tasks:
        sys.exit(f"no mutate-fix tasks in {args.home / 'tasks'}: run `forager run` first")
    images = sorted({t.image for t in tasks})
    work = Path(os.environ.get("TMPDIR", "/tmp")) / f"grading-bench-{os.getpid()}"
    work.mkdir(parents=True)
    backend = Backend(pool_size=8)
    rows = []
    proc, url = start_server(images, 1, work)
    try:
        with EnvClient(url, token=TOKEN) as client:
            for i, task in enumerate(tasks, 1):
                runs = []
                for _ in range(args.rounds):
                    env = solved_env(client, task)
                    wait_warm_grader(client, task.image)
                    started = time.monotonic()
                    fresh = client.submit(env.id)
                    fresh_s = time.monotonic() - started
                    inplace_s, inplace_tests_s, inplace_reward = in_place(backend, env.container_id, env.workdir,
                                                                          env.base_commit, task)
                    client.delete_env(env.id)
                    runs.append((fresh_s - fresh.test_seconds, inplace_s - inplace_tests_s, fresh_s, inplace_s,
                                 fresh.reward, inplace_reward))
                fresh_over = min(r[0] for r in runs)
                inplace_over = min(r[1] for r in runs)
                rows.append({"task": task.id, "repo": task.repo, "fresh_overhead_s": round(fresh_over, 3),
                             "in_place_overhead_s": round(inplace_over, 3), "added_s": round(fresh_over - inplace_over, 3),
                             "fresh_total_s": round(min(r[2] for r in runs), 3),
                             "in_place_total_s": round(min(r[3] for r in runs), 3),
                             "fresh_reward": min(r[4] for r in runs), "in_place_reward": min(r[5] for r in runs)})
                print(f"[{i}/{len(tasks)}] {task.id}: grading overhead fresh {fresh_over:.3f}s, in place "
                      f"{inplace_over:.3f}s, added {fresh_over - inplace_over:+.3f}s", file=sys.stderr)
    finally:
        proc.terminate()
        proc.wait(120)
    cold = []
    proc, url = start_server(images, 0, work)
    try:
        with EnvClient(url, token=TOKEN) as client:
            for repo, ts in tasks_by_repo.items():
                env = solved_env(client, ts[0])
                started = time.monotonic()
                result = client.submit(env.id)
                cold.append({"repo": repo, "cold_overhead_s": round(time.monotonic() - started - result.test_seconds, 3),
                             "reward": result.reward})
                client.delete_env(env.id)
    finally:
        proc.terminate()
        proc.wait(120)
    added = [r["added_s"] for r in rows]
    summary = {
        "tasks": len(rows), "repos": len(tasks_by_repo), "rounds": args.rounds,
        "fresh_overhead_median_s": round(statistics.median(r["fresh_overhead_s"] for r in rows), 3),
        "in_place_overhead_median_s": round(statistics.median(r["in_place_overhead_s"] for r in rows), 3),
        "added_median_s": round(statistics.median(added), 3), "added_max_s": round(max(added), 3),
        "added_p90_s": round(sorted(added)[int(0.9 * (len(added) - 1))], 3),
        "fresh_total_median_s": round(statistics.median(r["fresh_total_s"] for r in rows), 3),
        "in_place_total_median_s": round(statistics.median(r["in_place_total_s"] for r in rows), 3),
        "ratio_total_fresh_to_in_place": round(sum(r["fresh_total_s"] for r in rows)
                                               / sum(r["in_place_total_s"] for r in rows), 3),
        "fresh_rewards_1": sum(r["fresh_reward"] == 1.0 for r in rows),
        "in_place_rewards_1": sum(r["in_place_reward"] == 1.0 for r in rows),
        "cold_overhead_median_s": round(statistics.median(c["cold_overhead_s"] for c in cold), 3),
        "target_added_s": 0.5, "target_met": statistics.median(added) <= 0.5,
    }
    print(f"{'repo':<16}{'task':<36}{'fresh':>9}{'in place':>10}{'added':>9}   (grading overhead around the tests, s)")
    for r in rows:
        print(f"{r['repo']:<16}{r['task'][-34:]:<36}{r['fresh_overhead_s']:>9.3f}{r['in_place_overhead_s']:>10.3f}"
              f"{r['added_s']:>+9.3f}")
    print(f"added: median {summary['added_median_s']:+.3f}s, p90 {summary['added_p90_s']:+.3f}s, max "
          f"{summary['added_max_s']:+.3f}s; cold (no warm grading container) overhead median "
          f"{summary['cold_overhead_median_s']}s; rewards 1: fresh {summary['fresh_rewards_1']}/{len(rows)}, "
          f"in place {summary['in_place_rewards_1']}/{len(rows)}")
    print(json.dumps({"summary": summary, "rows": rows, "cold": cold}))


if __name__ == "__main__":
    main()
