"""Mutate-fix synthesis benchmark on the default repository list, with a same-run baseline.

For every ok image of the list (built by the builder if the catalog lacks it):
  1. synthesize up to --max-tasks validated tasks (fresh FORAGER_HOME unless --home): tasks per repo,
     per CPU-minute (the synthesis container's own CPU time) and per wall-minute, and the share of
     candidate mutations that validate;
  2. baselines, same run: on a typical repo (median suite time), the same candidates validated by one
     sandbox running the full suite for every candidate (the plain method), by one sandbox with the
     adaptive fast reject, and by --workers sandboxes in parallel → seconds per candidate and speed-ups;
  3. the oracle's solve rate: oracle episodes through a real env server on up to --oracle-per-repo
     tasks per repo (target 100%).
Target: >= 20 validated tasks for each of >= 80% of the ok repos. The last line is one JSON object
holding every figure printed.

    python benchmarks/tasks_bench.py [--list examples/repos.txt] [--max-tasks 20] [--max-candidates 200]
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import secrets
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


from forager.config import Settings  # noqa: E402
from forager.tasks.synth import SynthesisError, default_workers, run_synthesis  # noqa: E402
from forager.cli.ui import progress  # noqa: E402

TOKEN = secrets.token_hex(16)  # the env server always requires one


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def ok_images(list_path: Path, settings: Settings) -> tuple[list, int]:
    """The list's ok images: from the catalog where present, else built now by the builder."""
    from images.build import build_list
    from images.catalog import ok_records
    from images.sources import parse_list

    specs, errors = parse_list(list_path)
    for e in errors:
        print(f"list: {e}", file=sys.stderr)
    catalog = {r.repo: r for r in ok_records(settings.catalog_path)} if settings.catalog_path.exists() else {}
    missing = [s for s in specs if s.name not in catalog]
    if missing:
        print(f"building {len(missing)} repos with the builder (catalog: {settings.catalog_path})", file=sys.stderr)
        with progress() as bar:
            build_list(missing, settings, jobs=1, progress=bar)
        catalog = {r.repo: r for r in ok_records(settings.catalog_path)}
    return [catalog[s.name] for s in specs if s.name in catalog], len(specs)


def start_envserver(allow: list[str]) -> tuple[subprocess.Popen, str]:
    port = free_port()
    home = tempfile.mkdtemp(prefix="tasks-bench-envserver-")
    args = [sys.executable, "-m", "envserver", "--token", TOKEN, "--port", str(port)]
    for a in allow:
        args += ["--allow", a]
    proc = subprocess.Popen(args, env={**os.environ, "FORAGER_HOME": home}, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    import httpx

    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 120
    while time.time() < deadline:
        try:
            if httpx.get(f"{url}/healthz", timeout=2).status_code == 200:
                return proc, url
        except httpx.TransportError:
            time.sleep(0.2)
    proc.kill()
    raise RuntimeError("env server did not start")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--list", default=str(ROOT / "examples" / "repos.txt"))
    ap.add_argument("--max-tasks", type=int, default=20)
    ap.add_argument("--max-candidates", type=int, default=200)
    ap.add_argument("--baseline-candidates", type=int, default=20)
    ap.add_argument("--baseline-repo", default=None, help="repo for the baselines (default: the median suite time)")
    ap.add_argument("--workers", type=int, default=None, help="sandboxes per repo (default: CPUs, at most 4)")
    ap.add_argument("--oracle-per-repo", type=int, default=None, help="oracle episodes per repo (default: every task)")
    ap.add_argument("--oracle-concurrency", type=int, default=2)
    ap.add_argument("--timeout", type=float, default=None)
    ap.add_argument("--time-budget", type=float, default=300, help="seconds of synthesis per repo")
    ap.add_argument("--max-suite-seconds", type=float, default=None,
                    help="skip (and report) repos whose suite took longer than this in the builder's validation")
    ap.add_argument("--home", default=None, help="where tasks go (default: a fresh temp dir; catalog from FORAGER_HOME)")
    args = ap.parse_args()

    catalog_settings = Settings.from_env()
    home = Path(args.home) if args.home else Path(tempfile.mkdtemp(prefix="tasks-bench-"))
    settings = catalog_settings.model_copy(update={"home": home})
    records, listed = ok_images(Path(args.list), catalog_settings)
    print(f"{len(records)} ok images of {listed} listed; tasks → {settings.tasks_dir}")

    per_repo = []
    skipped_slow = []
    if args.max_suite_seconds:
        skipped_slow = [{"repo": r.repo, "suite_seconds": round(r.test_seconds or 0, 1)} for r in records
                        if (r.test_seconds or 0) > args.max_suite_seconds]
        records = [r for r in records if (r.test_seconds or 0) <= args.max_suite_seconds]
        for s in skipped_slow:
            print(f"  {s['repo']}: skipped, suite takes {s['suite_seconds']} s (> --max-suite-seconds)")
    for rec in records:
        try:
            with progress() as bar:  # on stderr: stdout keeps one result line per repo
                t = bar.add_task(rec.repo, total=args.max_candidates, status="probing tests")
                rep = run_synthesis(rec, settings, max_tasks=args.max_tasks, max_candidates=args.max_candidates,
                                    timeout=args.timeout, time_budget=args.time_budget, workers=args.workers,
                                    on_progress=lambda d, n, st: bar.update(t, completed=d, total=n, status=st))
        except SynthesisError as exc:
            print(f"  {rec.repo}: synthesis failed: {exc}")
            per_repo.append({"repo": rec.repo, "tasks": 0, "error": str(exc)[:300]})
            continue
        cpu_min = rep.cpu_seconds / 60 or float("nan")
        # a resumed repo counts its earlier tasks; rates use only this run's new tasks and CPU
        row = {"repo": rec.repo, "tasks": len(rep.tasks), "new_tasks": rep.new_tasks, "tried": rep.tried,
               "candidates": rep.candidates,
               "functions": rep.functions, "validate_share": round(rep.verdicts.get("task", 0) / max(rep.tried, 1), 3),
               "verdicts": rep.verdicts, "wall_seconds": round(rep.seconds, 1), "cpu_seconds": round(rep.cpu_seconds, 1),
               "tasks_per_cpu_minute": round(rep.new_tasks / cpu_min, 2) if rep.cpu_seconds else None,
               "tasks_per_wall_minute": round(rep.new_tasks / (rep.seconds / 60), 2) if rep.tried else None,
               "suite_seconds": round(rep.baseline_seconds, 2), "out_of_time": rep.out_of_time,
               "fast_runs": rep.fast_runs, "fast_rejects": rep.fast_rejects}
        per_repo.append(row)
        print(f"  {rec.repo}: {row['tasks']} tasks from {row['tried']} candidates "
              f"({row['validate_share']:.0%} validate), {row['tasks_per_cpu_minute']} tasks/CPU-min, "
              f"{row['wall_seconds']} s wall")

    # baselines: the same candidates of one repo, validated three ways, each in a fresh task dir
    baseline = {}
    # on a typical repo: the median suite time among the repos whose covering tests are a small part of the suite
    # (with one covered function, as on text-unidecode, there is nothing for a fast reject to skip)
    by_suite = sorted((r for r in records if r.repo == args.baseline_repo or not args.baseline_repo),
                      key=lambda r: r.test_seconds or float("inf"))
    typical = [r for r in by_suite if next((x.get("functions", 0) for x in per_repo if x["repo"] == r.repo), 0) >= 10]
    first = (typical or by_suite)[len(typical or by_suite) // 2] if by_suite else None
    if first is not None:
        n = args.baseline_candidates
        workers = args.workers or default_workers()
        timed = {}
        for label, fast, w in (("serial_full_suite", False, 1), ("serial_fast_reject", True, 1),
                               (f"parallel_{workers}_sandboxes", True, workers)):
            tmp = settings.model_copy(update={"home": Path(tempfile.mkdtemp(prefix=f"tasks-bench-{label}-"))})
            rep = run_synthesis(first, tmp, max_tasks=10**6, max_candidates=n, fast_reject=fast, workers=w)
            timed[label] = {"tried": rep.tried, "tasks": rep.verdicts.get("task", 0), "fast_runs": rep.fast_runs,
                            "seconds_per_candidate": round((rep.seconds - rep.baseline_seconds) / max(rep.tried, 1), 3)}
        plain = timed["serial_full_suite"]["seconds_per_candidate"]
        speedups = {label: round(plain / max(t["seconds_per_candidate"], 1e-9), 2) for label, t in timed.items()}
        baseline = {"repo": first.repo, **timed, "speedup_vs_serial_full_suite": speedups}
        print(f"baseline on {first.repo} ({n} candidates each): " + "; ".join(
            f"{label} {t['seconds_per_candidate']} s/candidate ({speedups[label]:.2f}x)" for label, t in timed.items()))

    # oracle solve rate through a real env server
    from envserver.client import EnvClient
    from forager.episodes.loop import run_episode
    from forager.episodes.policies import make_policy
    from forager.tasks.store import load_tasks

    tasks = load_tasks(settings.tasks_dir) if settings.tasks_dir.exists() else []
    sample = []
    for rec in records:
        sample += [t for t in tasks if t.repo == rec.repo][: args.oracle_per_repo]
    solved = 0
    oracle_seconds = 0.0
    if sample:
        proc, url = start_envserver(sorted({t.image.split(":")[0] + ":*" for t in sample}) + ["forager/*"])
        started = time.monotonic()
        try:
            def episode(task):
                with EnvClient(url, token=TOKEN) as env_client:  # a client per episode: nothing shared between threads
                    return task, run_episode(task, make_policy("oracle", run_tests=False), env_client, max_turns=20)

            with progress() as bar, ThreadPoolExecutor(args.oracle_concurrency) as pool:
                t = bar.add_task("oracle", total=len(sample), status="")
                for task, traj in pool.map(episode, sample):
                    solved += traj.result.reward == 1.0
                    if traj.result.reward != 1.0:
                        print(f"  oracle failed {task.id}: {traj.exit_reason} {traj.error or ''}")
                    bar.update(t, advance=1, status=f"{solved} solved")
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(60)
        oracle_seconds = time.monotonic() - started
    solve_rate = solved / len(sample) if sample else None
    print(f"oracle solve rate: {solved}/{len(sample)} ({oracle_seconds:.0f} s, {args.oracle_concurrency} at a time)")

    ok_repos = [r for r in per_repo if "error" not in r]
    at_target = [r for r in per_repo if r["tasks"] >= args.max_tasks]
    considered = len(records) + len(skipped_slow)  # a skipped repo counts as missing the target
    share_at_target = len(at_target) / considered if considered else 0.0
    total_cpu = sum(r.get("cpu_seconds") or 0 for r in per_repo)
    total_tasks = sum(r["tasks"] for r in per_repo)
    new_tasks = sum(r.get("new_tasks", 0) for r in per_repo)
    total_tried = sum(r.get("tried", 0) for r in per_repo)
    summary = {
        "listed": listed, "ok_images": len(records), "repos_synthesized": len(ok_repos),
        "tasks_total": total_tasks, "tasks_per_repo": {r["repo"]: r["tasks"] for r in per_repo},
        "tasks_per_cpu_minute": round(new_tasks / (total_cpu / 60), 2) if total_cpu else None,
        "skipped_slow_suites": skipped_slow,
        "validate_share": round(sum(r.get("verdicts", {}).get("task", 0) for r in per_repo) / max(total_tried, 1), 3),
        "repos_at_target": len(at_target), "share_repos_at_target": round(share_at_target, 3),
        "target_met": share_at_target >= 0.8, "oracle_solved": solved, "oracle_episodes": len(sample),
        "oracle_solve_rate": solve_rate, "oracle_seconds": round(oracle_seconds, 1), "baseline": baseline, "per_repo": per_repo,
    }
    print(f"{len(at_target)}/{considered} repos reached {args.max_tasks} tasks "
          f"({share_at_target:.0%}; target 80%: {'met' if summary['target_met'] else 'NOT met'}); "
          f"{summary['tasks_per_cpu_minute']} tasks/CPU-min overall; {summary['validate_share']:.0%} of candidates validate")
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
