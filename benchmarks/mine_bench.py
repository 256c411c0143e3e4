"""Issue-fix mining benchmark: real repositories' histories → validated, certified tasks.

For each repository (a local git repository or bare mirror, named NAME=PATH; cloned locally as NAME.git
so the builder names its images after the project):
  1. scan the last --max-commits commits with the heuristics: commits scanned per minute, and a same-run
     baseline, a plain `git log --numstat` walk of the same commits (the heuristics' cost over it), plus
     how many builds they save (units touching library and tests vs candidates);
  2. validate every candidate (or the newest --max-candidates, or until --max-tasks kept) in images built at
     each parent, fail-to-pass with --runs runs, and certify kept tasks through a private env server
     (gold 1 and empty 0 in k of k fresh envs): candidates, kept tasks, commits per minute end to end;
  3. with --baseline-sample N, also validate the newest N commits the softest rule (no_fix_evidence)
     rejected, in a scratch home: what the rule throws away, measured the same way.
Reported: per-repo table, the share of scanned commits each heuristic rejects and the share of validated
candidates each validation verdict rejects, the certificate pass rate of kept tasks (must be 100%).
Target: >= 10 kept tasks from the last 500 commits on at least 4 of 5 repositories. The last line is one
JSON object holding every figure printed.

    python benchmarks/mine_bench.py --repo click=/work/.mirror/pallets+click/repo --repo ... [-j 2] [--home DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from envserver.client import EnvClient  # noqa: E402
from forager.cli.mining import parent_builder  # noqa: E402
from forager.cli.ui import interruptible, progress  # noqa: E402
from forager.config import Settings  # noqa: E402
from forager.tasks.history import RULES, Caps, read_commits, scan  # noqa: E402
from forager.tasks.mine import MineOptions, mine  # noqa: E402
from forager.tasks.store import load_tasks, tasks_path  # noqa: E402
from images.sources import parse_entry  # noqa: E402

DEFAULT_REPOS = ["click=/work/.mirror/pallets+click/repo", "sqlparse=/work/.mirror/andialbrecht+sqlparse/repo",
                 "tomlkit=/work/.mirror/python-poetry+tomlkit/repo", "boltons=/work/.mirror/mahmoud+boltons/repo",
                 "more-itertools=/work/.mirror/more-itertools+more-itertools/repo"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


TOKEN = secrets.token_hex(16)  # the private env server's token (every env server requires one)


def start_envserver(home: Path) -> tuple[subprocess.Popen, str]:
    import httpx

    port = free_port()
    log = open(home / "envserver.log", "ab")
    proc = subprocess.Popen([sys.executable, "-m", "envserver", "--token", TOKEN, "--port", str(port),
                             "--allow", "forager/*"],
                            env={**os.environ, "FORAGER_HOME": str(home / "envserver-home")}, stdout=log, stderr=log)
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


def local_clone(name: str, path: str, sources: Path) -> Path:
    """NAME.git: a local mirror clone (hardlinked, no network), so entries and images are named after NAME."""
    dest = sources / f"{name}.git"
    if not dest.exists():
        subprocess.run(["git", "clone", "-q", "--mirror", path, str(dest)], check=True)
    return dest


def plain_walk_seconds(history: str, max_commits: int) -> float:
    started = time.monotonic()
    subprocess.run(["git", "-C", history, "log", "--topo-order", "--no-renames", "--diff-merges=first-parent",
                    "--numstat", f"--max-count={max_commits}", "--format=%H %P%n%B", "HEAD"],
                   check=True, capture_output=True)
    return time.monotonic() - started


def structural_units(history: str, max_commits: int) -> int:
    """Commits that change both library code and tests: what would need an image without the other rules."""
    return sum(1 for c in read_commits(history, max_commits=max_commits) if c.of("test") and c.of("library"))


def shares(counts: dict[str, int], total: int) -> dict[str, float]:
    return {k: round(v / total, 4) for k, v in sorted(counts.items(), key=lambda kv: -kv[1])} if total else {}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repo", action="append", default=None, help="NAME=PATH of a git repository or bare mirror")
    ap.add_argument("--max-commits", type=int, default=500)
    ap.add_argument("--max-tasks", type=int, default=None, help="stop a repository at this many kept tasks")
    ap.add_argument("--max-candidates", type=int, default=None)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--certify-runs", type=int, default=3)
    ap.add_argument("-j", "--jobs", type=int, default=2)
    ap.add_argument("--baseline-sample", type=int, default=0, help="no_fix_evidence commits validated per repo")
    ap.add_argument("--retry", action="append", default=[], help="decide again candidates with this verdict")
    ap.add_argument("--home", default=None, help="FORAGER_HOME of the run (default: a fresh temp dir); reruns resume")
    args = ap.parse_args()
    home = Path(args.home or tempfile.mkdtemp(prefix="mine-bench-"))
    home.mkdir(parents=True, exist_ok=True)
    settings = Settings.from_env().model_copy(update={"home": home})
    print(f"FORAGER_HOME {home}", file=sys.stderr)
    interruptible()  # SIGTERM unwinds: the env server below is stopped, and a rerun with --home resumes
    server, url = start_envserver(home)
    per_repo, scan_rules, validation = [], Counter(), Counter()
    try:
        with EnvClient(url, token=TOKEN) as grader, progress() as bar:
            for item in args.repo or DEFAULT_REPOS:
                name, _, path = item.partition("=")
                history = str(local_clone(name, path, home / "sources"))
                head = subprocess.run(["git", "-C", history, "rev-parse", "HEAD"], capture_output=True, text=True,
                                      check=True).stdout.strip()
                spec = parse_entry(history)
                walk = plain_walk_seconds(history, args.max_commits)
                structural = structural_units(history, args.max_commits)
                opts = MineOptions(max_commits=args.max_commits, runs=args.runs, certify_k=args.certify_runs,
                                   jobs=args.jobs, max_tasks=args.max_tasks, max_candidates=args.max_candidates,
                                   retry=frozenset(args.retry))
                t = bar.add_task(name, total=None, status="scanning")
                rep = mine(history, spec.name, settings, build=parent_builder(spec, settings), grader=grader,
                           options=opts, on_progress=lambda d, n, s, t=t: bar.update(t, completed=d, total=n, status=s))
                kept = [t for t in load_tasks(tasks_path(settings.tasks_dir, spec.name)) if t.origin == "mined"]
                certified = sum(bool(t.certificate and t.certificate.passed) for t in kept)
                validated = sum(rep.verdicts.values())
                row = {
                    "repo": name, "source": path, "mirror_commit": head, "scanned": rep.scanned,
                    "scan_seconds": rep.scan_seconds,
                    "scan_commits_per_min": round(rep.scanned / rep.scan_seconds * 60, 1) if rep.scan_seconds else None,
                    "plain_walk_seconds": round(walk, 3),
                    "scan_over_plain_walk": round(rep.scan_seconds / walk, 1) if walk else None,
                    "structural_units": structural, "candidates": rep.candidates,
                    "builds_saved_ratio": round(structural / rep.candidates, 2) if rep.candidates else None,
                    "validated": validated, "kept": len(kept), "new_kept": rep.new_tasks,
                    "kept_per_validated": round(len(kept) / validated, 3) if validated else 0.0,
                    "certificate_pass_rate_kept": round(certified / len(kept), 4) if kept else None,
                    "certified_of_validated_tasks": round(rep.verdicts.get("task", 0) / (
                        rep.verdicts.get("task", 0) + rep.verdicts.get("certificate_failed", 0)), 4)
                    if rep.verdicts.get("task") else None,
                    "minutes": round(rep.seconds / 60, 1),
                    "commits_per_min_end_to_end": round(rep.scanned / rep.seconds * 60, 2) if rep.seconds else None,
                    "scan_verdicts": rep.scan_verdicts, "verdicts": rep.verdicts, "errors": rep.errors[:10],
                    "target_met": len(kept) >= 10,
                }
                if args.baseline_sample:
                    row["baseline_no_fix_evidence"] = baseline(history, spec, settings, grader, args)
                per_repo.append(row)
                scan_rules.update(rep.scan_verdicts)
                validation.update(rep.verdicts)
                bar.update(t, status=f"{len(kept)} kept of {rep.candidates} candidates")
    finally:
        server.terminate()
        server.wait(120)
    report(per_repo, scan_rules, validation, args)


def baseline(history, spec, settings, grader, args) -> dict:
    """Validate the newest N commits the fix-evidence rule rejected, with that rule off, in a scratch home."""
    rejected = [v.commit.sha for v in scan(history, max_commits=args.max_commits) if v.verdict == "no_fix_evidence"]
    sample = frozenset(rejected[: args.baseline_sample])
    if not sample:
        return {"sampled": 0}
    scratch = settings.model_copy(update={"home": settings.home / "baseline"})
    if settings.catalog_path.exists() and not scratch.catalog_path.exists():  # images built by the run are reused
        scratch.home.mkdir(parents=True, exist_ok=True)
        scratch.catalog_path.write_bytes(settings.catalog_path.read_bytes())
    opts = MineOptions(max_commits=args.max_commits, caps=Caps(fix_evidence=False), runs=args.runs,
                       certify_k=args.certify_runs, jobs=args.jobs, commits=sample)
    rep = mine(history, spec.name, scratch, build=parent_builder(spec, scratch), grader=grader, options=opts)
    kept = [t for t in rep.tasks if t.source_commit in sample]
    # some sampled commits fall to a later rule once this one is off (formatting, tests_unrelated, duplicate)
    return {"sampled": len(sample), "candidates": rep.candidates, "kept": len(kept),
            "kept_share": round(len(kept) / rep.candidates, 3) if rep.candidates else None, "verdicts": rep.verdicts}


def report(per_repo: list[dict], scan_rules: Counter, validation: Counter, args) -> None:
    print()
    head = (f"{'repo':<16}{'mirror':>10}{'scanned':>9}{'scan/min':>10}{'x walk':>8}{'struct':>8}{'cands':>7}"
            f"{'valid.':>8}{'kept':>6}{'kept/v':>8}{'cert':>7}{'min':>7}{'c/min':>7}")
    print(head)
    for r in per_repo:
        print(f"{r['repo']:<16}{r['mirror_commit'][:8]:>10}{r['scanned']:>9}{r['scan_commits_per_min'] or 0:>10}"
              f"{r['scan_over_plain_walk'] or 0:>8}{r['structural_units']:>8}{r['candidates']:>7}{r['validated']:>8}"
              f"{r['kept']:>6}{r['kept_per_validated']:>8}{(r['certificate_pass_rate_kept'] or 0):>7.0%}"
              f"{r['minutes']:>7}{r['commits_per_min_end_to_end'] or 0:>7}")
    scanned = sum(r["scanned"] for r in per_repo)
    validated = sum(validation.values())
    kept = sum(r["kept"] for r in per_repo)
    met = sum(r["target_met"] for r in per_repo)
    scan_shares = shares({k: v for k, v in scan_rules.items() if k != "candidate"}, scanned)
    validation_shares = shares({k: v for k, v in validation.items() if k != "task"}, validated)
    print(f"\nscanned commits rejected by each heuristic (share of {scanned}): "
          + ", ".join(f"{k} {v:.1%}" for k, v in scan_shares.items()))
    print(f"candidates: {scan_rules.get('candidate', 0)} ({scan_rules.get('candidate', 0) / scanned:.1%} of scanned)"
          if scanned else "")
    print(f"validated candidates rejected by each verdict (share of {validated}): "
          + ", ".join(f"{k} {v:.1%}" for k, v in validation_shares.items()))
    certs = [r["certificate_pass_rate_kept"] for r in per_repo if r["certificate_pass_rate_kept"] is not None]
    print(f"kept tasks: {kept}; certificate pass rate of kept tasks: "
          + (f"{min(certs):.0%} (min over repos)" if certs else "n/a"))
    print(f"target (>= 10 kept from the last {args.max_commits} commits): met on {met} of {len(per_repo)} repositories")
    for r in per_repo:
        if "baseline_no_fix_evidence" in r:
            b = r["baseline_no_fix_evidence"]
            print(f"baseline {r['repo']}: of {b.get('sampled', 0)} commits rejected for no fix evidence, "
                  f"{b.get('candidates', 0)} pass the other rules and {b.get('kept', 0)} of them became tasks with the rule off "
                  f"({b.get('kept_share') or 0:.0%}; candidates: "
                  f"{r['kept_per_validated']:.0%})")
    summary = {"benchmark": "mine", "max_commits": args.max_commits, "runs": args.runs, "certify_runs": args.certify_runs,
               "jobs": args.jobs, "max_tasks": args.max_tasks, "max_candidates": args.max_candidates,
               "repos": per_repo, "scanned": scanned, "validated": validated, "kept": kept,
               "heuristic_shares": scan_shares, "validation_shares": validation_shares,
               "rules": list(RULES), "target_met_repos": met, "caps": Caps().__dict__}
    print(json.dumps(summary, separators=(",", ":")))


if __name__ == "__main__":
    main()
